"""Choosing the monitored modules and turning their outputs into ``[batch, neurons]`` activations."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from lightning_helpers import DigitsCNN, DigitsMLP, DigitsSequenceModel, observed_readings
from torch import nn

from lightning_infomem.introspection.layers import DEFAULT_MAX_LAYERS, default_layers, resolve_layers
from lightning_infomem.introspection.readings import to_neuron_activations


class Encoder(nn.Module):
    def __init__(self, depth: int = 6, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.layer = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2)


# ------------------------------------------------------------------------------------------ default_layers
def test_default_layers_of_the_digits_models():
    assert default_layers(DigitsMLP()) == ["net.0", "net.2"]  # hidden Linear layers, not the output head
    assert default_layers(DigitsCNN()) == ["net.1", "net.3"]  # the convolutions after their ReLU, not the head
    assert default_layers(DigitsSequenceModel()) == ["encoder.proj", "block.proj"]


def test_default_layers_are_evenly_spaced_and_include_the_deepest():
    model = Encoder(depth=6)
    hidden = ["embed"] + [f"layer.{i}.0" for i in range(6)]  # 7 candidates; "head" is left out
    chosen = default_layers(model)
    assert len(chosen) == DEFAULT_MAX_LAYERS
    assert chosen[0] == "embed" and chosen[-1] == "layer.5.0"
    assert chosen == sorted(chosen, key=hidden.index)  # registration order
    assert set(chosen) <= set(hidden)
    assert default_layers(model, max_layers=2) == ["embed", "layer.5.0"]
    assert default_layers(model, max_layers=10) == hidden
    assert default_layers(Encoder(depth=2)) == ["embed", "layer.0.0", "layer.1.0"]


def test_default_layers_with_a_single_layer_or_none():
    assert default_layers(nn.Sequential(nn.Linear(3, 2))) == ["0"]
    assert default_layers(nn.Sequential(nn.ReLU(), nn.Tanh())) == []
    assert default_layers(Encoder(depth=6), max_layers=1) == ["layer.5.0"]
    with pytest.raises(ValueError, match="max_layers"):
        default_layers(Encoder(depth=6), max_layers=0)


# ------------------------------------------------------------------------------------------ resolve_layers
def test_resolve_exact_names_in_registration_order():
    model = DigitsMLP()
    assert resolve_layers(model, "net.2") == ["net.2"]
    assert resolve_layers(model, ["net.4", "net.0"]) == ["net.0", "net.4"]  # model order, not argument order
    assert resolve_layers(model, ("net.0", "net.0")) == ["net.0"]  # no duplicates
    assert resolve_layers(model, "net") == ["net"]


def test_resolve_glob_patterns():
    model = Encoder(depth=3)
    assert resolve_layers(model, "layer.*.0") == ["layer.0.0", "layer.1.0", "layer.2.0"]
    assert resolve_layers(model, "layer.[02].1") == ["layer.0.1", "layer.2.1"]
    assert resolve_layers(model, ["head", "layer.?.0"]) == ["layer.0.0", "layer.1.0", "layer.2.0", "head"]
    # path semantics: "*" stays within one dotted part, "**" crosses parts (none included)
    assert resolve_layers(model, "*") == ["embed", "layer", "norm", "head"]
    assert resolve_layers(model, "layer.*") == ["layer.0", "layer.1", "layer.2"]
    assert resolve_layers(model, "**") == [name for name, _ in model.named_modules() if name]
    assert resolve_layers(model, "**.1") == ["layer.0.1", "layer.1", "layer.1.1", "layer.2.1"]  # registration order


def test_resolve_module_types_and_mixtures():
    model = DigitsMLP()
    assert resolve_layers(model, nn.Linear) == ["net.0", "net.2", "net.4"]
    assert resolve_layers(model, [nn.ReLU]) == ["net.1", "net.3"]
    assert resolve_layers(model, [nn.ReLU, "net.0"]) == ["net.0", "net.1", "net.3"]
    # subclasses match their base type
    encoder = Encoder(depth=2)
    assert resolve_layers(encoder, nn.Sequential) == ["layer.0", "layer.1"]
    assert resolve_layers(encoder, nn.Module) == [name for name, _ in encoder.named_modules() if name]


def test_resolve_none_gives_the_default_layers():
    assert resolve_layers(DigitsMLP(), None) == default_layers(DigitsMLP())
    with pytest.raises(ValueError, match="no nn.Linear, convolution or repeated block") as info:
        resolve_layers(nn.Sequential(nn.ReLU(), nn.Tanh()), None)
    assert "0 (ReLU)" in str(info.value)


def test_resolve_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="'net.9'") as info:
        resolve_layers(DigitsMLP(), ["net.0", "net.9"])
    message = str(info.value)
    for listed in ("net (Sequential)", "net.0 (Linear)", "net.1 (ReLU)", "net.4 (Linear)"):
        assert listed in message
    with pytest.raises(ValueError, match="Valid names"):
        resolve_layers(DigitsMLP(), "encoder.*")
    with pytest.raises(ValueError, match="Conv2d"):
        resolve_layers(DigitsMLP(), nn.Conv2d)
    with pytest.raises(ValueError, match="empty"):
        resolve_layers(DigitsMLP(), [])
    with pytest.raises(TypeError, match="layers entries"):
        resolve_layers(DigitsMLP(), [0])


def test_the_list_of_valid_names_is_truncated_for_big_models():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(100)])
    with pytest.raises(ValueError) as info:
        resolve_layers(model, "missing")
    assert "(40 more)" in str(info.value)


# ----------------------------------------------------------------------------------- to_neuron_activations
def test_vectors_and_matrices():
    x = torch.randn(5, 7)
    assert to_neuron_activations(x) is x
    v = torch.randn(5)
    assert torch.equal(to_neuron_activations(v), v[:, None])
    with pytest.raises(ValueError, match="batch dimension"):
        to_neuron_activations(torch.tensor(1.0))


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (4, 3, 2, 3, 4), (4, 3, 1, 1)])
def test_convolution_outputs_are_averaged_over_space(shape):
    x = torch.randn(*shape)
    out = to_neuron_activations(x)
    assert out.shape == (4, 3)
    torch.testing.assert_close(out, x.flatten(2).mean(2))


def test_conv2d_module_output_on_digits():
    model = DigitsCNN()
    x = torch.rand(6, 1, 8, 8)
    conv = model.net[0]
    out = to_neuron_activations(conv(x))
    assert out.shape == (6, 8)
    torch.testing.assert_close(out, conv(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("module", [nn.Conv1d(3, 3, 1), nn.BatchNorm1d(3), nn.MaxPool1d(1), nn.AvgPool1d(1)])
def test_channels_first_1d_modules_are_pooled_not_read_as_sequences(module):
    x = torch.randn(4, 3, 10)
    model = nn.Sequential(module).eval()
    reading = observed_readings(model, ["0"], x)["0"]
    assert reading.layout == "channels_first"
    out = to_neuron_activations(model(x), reading, sequence_reduction="first")
    torch.testing.assert_close(out, model(x).mean(dim=2))


def test_sequences_first_mean_or_last_token():
    x = torch.randn(4, 10, 6)
    torch.testing.assert_close(to_neuron_activations(x), x[:, 0])
    torch.testing.assert_close(to_neuron_activations(x, sequence_reduction="first"), x[:, 0])
    torch.testing.assert_close(to_neuron_activations(x, sequence_reduction="mean"), x.mean(1))
    torch.testing.assert_close(to_neuron_activations(x, sequence_reduction="last"), x[:, -1])
    with pytest.raises(ValueError, match="sequence_reduction"):
        to_neuron_activations(x, sequence_reduction="max")


def test_tuple_list_and_dict_outputs_give_the_first_tensor():
    hidden = torch.randn(4, 8)
    other = torch.randn(4, 3)
    assert to_neuron_activations((hidden, other)) is hidden
    assert to_neuron_activations([None, "text", hidden, other]) is hidden
    assert to_neuron_activations({"loss": None, "hidden": hidden, "other": other}) is hidden
    assert to_neuron_activations(OrderedDict(last_hidden_state=hidden)) is hidden
    # nested containers, depth first
    assert to_neuron_activations(({"a": [None, (hidden,)]}, other)) is hidden
    # the first tensor is reduced like any other
    sequence = torch.randn(4, 5, 8)
    torch.testing.assert_close(to_neuron_activations((sequence, hidden), sequence_reduction="mean"), sequence.mean(1))


def test_the_digits_sequence_model_outputs():
    model = DigitsSequenceModel()
    x = torch.rand(6, 64)
    output = model.encoder(x)
    assert isinstance(output, tuple)
    torch.testing.assert_close(to_neuron_activations(output), output[0][:, 0])  # without a reading: the first
    torch.testing.assert_close(to_neuron_activations(output, sequence_reduction="mean"), output[0].mean(1))
    readings = observed_readings(model.eval(), ["encoder", "block"], x)
    assert readings["encoder"].path == (1, "pooled")  # observed: the tensor the next block consumes
    assert to_neuron_activations(output, readings["encoder"]) is output[1]["pooled"]
    block = model.block(output[1]["pooled"])
    assert to_neuron_activations(block, readings["block"]) is block["hidden"]


def test_output_transform_is_applied_first():
    hidden, pooled = torch.randn(4, 5, 8), torch.randn(4, 8)
    out = to_neuron_activations((hidden, {"pooled": pooled}), output_transform=lambda o: o[1]["pooled"])
    assert out is pooled
    # its result goes through the same shape rules
    out = to_neuron_activations(hidden, output_transform=lambda o: o * 2, sequence_reduction="mean")
    torch.testing.assert_close(out, (hidden * 2).mean(1))


def test_outputs_without_a_tensor_are_rejected():
    with pytest.raises(TypeError, match="output_transform"):
        to_neuron_activations((None, "text"))
    with pytest.raises(TypeError, match="module returned a NoneType, which holds no tensor"):
        to_neuron_activations(None)
    with pytest.raises(TypeError, match="output_transform returned list"):
        to_neuron_activations(torch.randn(2, 3), output_transform=lambda o: [o])


def test_a_dotted_class_path_selects_by_type_as_config_files_give_it():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert resolve_layers(model, "torch.nn.Linear") == ["0", "2"]
    assert resolve_layers(model, ["torch.nn.ReLU", "2"]) == ["1", "2"]
    with pytest.raises(ValueError, match="Valid names"):
        resolve_layers(model, "torch.nn.Conv2d")  # a type with no instance: nothing matches
    with pytest.raises(ValueError, match="Valid names"):
        resolve_layers(model, "no.such.module.Linear")


# ------------------------------------------------------------------------------- real module trees
from model_zoo import ResNet18, VisionTransformer, hf_model, real_timm_vit, real_torchvision_resnet18  # noqa: E402

from lightning_infomem.introspection.layers import choose_default_layers, named_layers  # noqa: E402


@pytest.mark.parametrize("kind", ["distilbert", "bert", "gpt2"])
def test_defaults_on_hugging_face_transformers_are_the_blocks(kind):
    blocks = {"distilbert": "distilbert.transformer.layer", "bert": "bert.encoder.layer", "gpt2": "transformer.h"}[kind]
    six = choose_default_layers(hf_model(kind, layers=6))
    assert six.family == "blocks" and six.names == [f"{blocks}.{i}" for i in range(6)]
    twelve = choose_default_layers(hf_model(kind, layers=12))
    assert twelve.names == [f"{blocks}.{i}" for i in (0, 2, 4, 7, 9, 11)]  # evenly spaced, first and deepest


def test_defaults_on_a_resnet_are_its_stages():
    chosen = choose_default_layers(ResNet18())
    assert chosen.family == "stages" and chosen.names == ["layer1", "layer2", "layer3", "layer4"]
    real = real_torchvision_resnet18()
    if real is not None:  # the real library, where it imports beside this torch
        assert choose_default_layers(real).names == chosen.names


def test_defaults_on_a_vit_are_its_blocks():
    chosen = choose_default_layers(VisionTransformer(depth=12))
    assert chosen.family == "blocks" and chosen.names == [f"blocks.{i}" for i in (0, 2, 4, 7, 9, 11)]
    assert choose_default_layers(VisionTransformer(depth=4)).names == [f"blocks.{i}" for i in range(4)]
    real = real_timm_vit()
    if real is not None:
        assert choose_default_layers(real).names == chosen.names


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


def test_two_stages_of_a_cnn_are_stages_not_an_encoder_and_a_decoder():
    model = nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(3, 8, 3),
            stage1=nn.Sequential(_ResidualBlock(8), _ResidualBlock(8)),
            stage2=nn.Sequential(_ResidualBlock(8), _ResidualBlock(8)),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            head=nn.Linear(8, 2),
        )
    )
    chosen = choose_default_layers(model)
    assert chosen.family == "stages" and chosen.names == ["stage1", "stage2"], chosen


def test_an_nn_transformer_is_an_encoder_and_a_decoder():
    model = nn.Transformer(
        d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=32, batch_first=True
    )
    chosen = choose_default_layers(model)
    assert chosen.family == "encoder-decoder", chosen
    assert chosen.names == [
        "encoder.layers.0",
        "encoder.layers.1",
        "decoder.layers.0",
        "decoder.layers.1",
        "decoder.layers.2",
    ]


class _HeadFirstClassifier(nn.Module):
    """A classifier registered before the encoder it reads (as XLM-RoBERTa's ``classifier`` before ``roberta``)."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x)[:, 0])


def test_a_head_registered_before_the_encoder_is_still_the_head():
    from lightning.pytorch import LightningModule

    from lightning_infomem.introspection.layers import output_head
    from lightning_infomem.introspection.logits import logits_candidates

    model = _HeadFirstClassifier()
    assert output_head(model) == "classifier.2"  # not the encoder's last linear layer, registered last
    chosen = choose_default_layers(model)
    assert chosen.family == "blocks" and chosen.names == ["encoder.layers.0", "encoder.layers.1"], chosen

    class Module(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = _HeadFirstClassifier()

    assert logits_candidates(Module(), None, "TrainingDynamics")[0][0] == "model.classifier.2"
    # a bare stack has no head: its last layer is a block's, not a classifier
    assert output_head(nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32), 2)) is None


def test_defaults_on_mlps_are_the_hidden_linear_layers():
    mlp = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)
    )
    chosen = choose_default_layers(mlp)
    assert chosen.family == "mlp" and chosen.names == ["0", "2", "4"]
    # an MLP made of repeated Linear blocks inside a Sequential is still an MLP: pre-activation linears
    blocks = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(3)], nn.Linear(8, 2))
    assert choose_default_layers(blocks).names == ["0.0", "1.0", "2.0"]


def test_patterns_have_path_semantics_on_real_trees():
    distilbert = hf_model("distilbert", layers=6)
    # "*" no longer crosses dots: the items of the block list, not their 22 submodules
    assert resolve_layers(distilbert, "distilbert.transformer.layer.*") == [
        f"distilbert.transformer.layer.{i}" for i in range(6)
    ]
    bert = hf_model("bert", layers=3)
    # the block outputs (BertOutput), not attention.output (BertSelfOutput)
    assert resolve_layers(bert, "**.layer.*.output") == [f"bert.encoder.layer.{i}.output" for i in range(3)]
    assert resolve_layers(bert, "bert.encoder.layer.*.output") == [f"bert.encoder.layer.{i}.output" for i in range(3)]
    with pytest.raises(ValueError, match=r"'\*\*.encoder.layer.\*' matches 3: bert.encoder.layer.0"):
        resolve_layers(bert, "encoder.layer.*")  # names are full paths; the message says how to match anywhere
    vit = VisionTransformer(depth=12)
    with pytest.warns(
        UserWarning,
        match=r"'blocks.\?' selects 10 of the 12 Block items of 'blocks'.*blocks.10.*"
        r"'blocks.\*' selects them all",
    ):
        assert len(resolve_layers(vit, "blocks.?")) == 10
    assert resolve_layers(vit, "blocks.*.mlp.fc1")[-1] == "blocks.11.mlp.fc1"


def test_compiled_submodules_keep_their_names():
    model = DigitsMLP()
    model.net = torch.compile(model.net, backend="eager")
    names = [name for name, _ in named_layers(model)]
    assert "net.0" in names and not any("_orig_mod" in name for name in names)
    assert dict(named_layers(model))["net.0"] is model.net._orig_mod[0]
    assert resolve_layers(model, None) == ["net.0", "net.2"]
    assert resolve_layers(model, "net.*") == ["net.0", "net.1", "net.2", "net.3", "net.4"]


def test_the_recipes_patterns_select_every_block():
    assert len(resolve_layers(hf_model("bert", layers=12), "**.encoder.layer.*")) == 12
    assert len(resolve_layers(hf_model("distilbert", layers=6), "**.transformer.layer.*")) == 6
    assert resolve_layers(hf_model("gpt2", layers=4), "**.transformer.h.*") == [f"transformer.h.{i}" for i in range(4)]
    assert resolve_layers(VisionTransformer(depth=12), "**.blocks.*") == [f"blocks.{i}" for i in range(12)]


@pytest.mark.parametrize("reduction", ["first", "mean", "last"])
def test_nested_tensor_outputs_of_a_padded_transformer_encoder(tmp_path, reduction):
    """nn.TransformerEncoder with a padding mask returns nested tensors in eval (enable_nested_tensor=True):
    measured over each sample's own tokens, padding excluded."""
    from lightning.pytorch import LightningModule

    from lightning_infomem import InformationMeasures, MeasurementSettings
    from lightning_infomem.introspection.readings import to_neuron_activations
    from tests.lightning_helpers import fast_trainer

    torch.manual_seed(0)
    tokens = torch.randn(96, 6, 16)
    lengths = torch.randint(2, 7, (96,), generator=torch.Generator().manual_seed(1))
    padding = torch.arange(6)[None, :] >= lengths[:, None]

    class Encoder(LightningModule):
        def __init__(self):
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)

        def validation_step(self, batch, batch_idx):
            x, mask = batch
            return self.encoder(x, src_key_padding_mask=mask)

    model = Encoder().eval()
    outputs = []
    handle = model.encoder.layers[0].register_forward_hook(lambda m, a, out: outputs.append(out))
    with torch.no_grad():
        model.encoder(tokens[:4], src_key_padding_mask=padding[:4])
    handle.remove()
    assert outputs[0].is_nested  # the case to handle
    reduced = to_neuron_activations(outputs[0], sequence_reduction=reduction)
    for i, part in enumerate(outputs[0].unbind()):
        assert part.shape[0] == int(lengths[i])  # only the real tokens
        expected = {"first": part[0], "mean": part.mean(0), "last": part[-1]}[reduction]
        torch.testing.assert_close(reduced[i], expected)
    callback = InformationMeasures(
        layers=["encoder.layers.0"], sequence_reduction=reduction, settings=MeasurementSettings(calibration_samples=32)
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens, padding), batch_size=32)
    fast_trainer(tmp_path, callbacks=[callback]).validate(model, loader, verbose=False)
    assert math.isfinite(callback.history[-1]["infomem/encoder.layers.0/entropy"])


class _SwinLikeBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class _ConvNeXtLikeBlock(nn.Module):
    """A depthwise convolution, then a channels-last MLP, permuted back: channels first out."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels))

    def forward(self, x):
        return x + self.mlp(self.norm(self.conv(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


def test_channels_first_or_last_from_the_layers_that_ran_not_from_a_width_that_matches():
    """Swin-like stages give [B, H, W, C] (only linear layers and norms ran in them): channels last. A block with a
    convolution is channels first even where its channels equal the feature map's height and width (16 x 16 x 16),
    where a rule from widths cannot tell the axes apart."""
    swin = nn.Sequential(_SwinLikeBlock(96), _SwinLikeBlock(96)).eval()
    x = torch.randn(3, 7, 7, 96)
    reading = observed_readings(swin, ["1"], x)["1"]
    assert reading.layout == "channels_last"
    torch.testing.assert_close(to_neuron_activations(swin(x), reading), swin(x).mean(dim=(1, 2)))
    convnext = nn.Sequential(_ConvNeXtLikeBlock(16), _ConvNeXtLikeBlock(16)).eval()
    x = torch.randn(3, 16, 16, 16)
    reading = observed_readings(convnext, ["1"], x)["1"]
    assert reading.layout == "channels_first"
    torch.testing.assert_close(to_neuron_activations(convnext(x), reading), convnext(x).mean(dim=(2, 3)))
    # an activation module is read as the layer that ran before it: a convolution's channels
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU()).eval()
    assert observed_readings(cnn, ["1"], torch.randn(3, 3, 18, 18))["1"].layout == "channels_first"
