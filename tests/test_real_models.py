"""The callback on real module trees and real Trainer set-ups: transformers, CNN stages, ViTs, torch.compile."""

from __future__ import annotations

import logging
import shutil
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule
from lightning_helpers import (
    _Classifier,
    digits_loaders,
    expected_row,
    fast_trainer,
    observed_readings,
    tiny_gpt2_classifier,
)
from model_zoo import (
    ImageClassifier,
    ResNet18,
    TokenClassifier,
    VisionTransformer,
    hf_model,
    image_batches,
    token_batches,
)
from torch import Tensor, nn
from torch._dynamo.utils import counters
from torch.utils.data import DataLoader

from lightning_infomem import InformationMeasures, MeasurementSettings
from lightning_infomem.introspection.layers import named_layers
from lightning_infomem.introspection.readings import to_neuron_activations


def captured(model: nn.Module, names: list[str], batches: list[Any], reduction: str = "first") -> dict[str, Tensor]:
    """The ``[samples, neurons]`` activations of the named layers on the given batches (eval mode)."""
    store: dict[str, list[Tensor]] = {name: [] for name in names}
    modules = dict(named_layers(model))
    handles = [
        modules[name].register_forward_hook(
            lambda m, a, out, name=name: store[name].append(to_neuron_activations(out, sequence_reduction=reduction))
        )
        for name in names
    ]
    model.eval()
    try:
        with torch.no_grad():
            for inputs in batches:
                model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(values) for name, values in store.items()}


# ------------------------------------------------------------------------------------ transformers
@pytest.mark.parametrize("kind", ["distilbert", "bert", "gpt2"])
def test_hugging_face_defaults_measure_each_blocks_cls_or_last_token(tmp_path, kind):
    """Encoders at their first ([CLS]) token; GPT-2, a causal model, at its last token (sequence_reduction='auto')."""
    model = TokenClassifier(hf_model(kind, layers=3))
    data = token_batches(96)
    callback = InformationMeasures(log_histograms=False, heatmap_every_n_measurements=0)
    trainer = fast_trainer(tmp_path, callbacks=[callback])
    trainer.validate(model, DataLoader(data, batch_size=32), verbose=False)
    blocks = {"distilbert": "distilbert.transformer.layer", "bert": "bert.encoder.layer", "gpt2": "transformer.h"}
    assert callback.layer_names == [f"model.{blocks[kind]}.{i}" for i in range(3)]
    reduction = "last" if kind == "gpt2" else "first"
    acts = captured(model, callback.layer_names, [ids for ids, _ in DataLoader(data, batch_size=32)], reduction)
    row = callback.history[-1]
    for key, value in expected_row(acts).items():
        assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_gpt2_recipe_mean_over_tokens(tmp_path):
    model = TokenClassifier(hf_model("gpt2", layers=2))
    data = token_batches(64)
    callback = InformationMeasures(layers="model.transformer.h.*", sequence_reduction="mean", log_histograms=False)
    fast_trainer(tmp_path, callbacks=[callback]).validate(model, DataLoader(data, batch_size=32), verbose=False)
    acts = captured(model, callback.layer_names, [ids for ids, _ in DataLoader(data, batch_size=32)], "mean")
    for key, value in expected_row(acts).items():
        assert callback.history[-1][key] == pytest.approx(value, rel=1e-9), key


def test_a_layer_without_spread_is_reported_and_left_out_of_the_overall_keys(tmp_path):
    # the [CLS] output of DistilBERT's first attention query projection does not depend on the input
    # beyond the [CLS] token itself: with a constant first token it is constant (H = I = 0)
    model = TokenClassifier(hf_model("distilbert", layers=2))
    ids, labels = token_batches(64).tensors
    ids = ids.clone()
    ids[:, 0] = 3  # every sequence starts with the same token, as with a real [CLS]
    data = torch.utils.data.TensorDataset(ids, labels)
    layers = ["model.distilbert.transformer.layer.0.attention.q_lin", "model.distilbert.transformer.layer.1"]
    callback = InformationMeasures(layers=layers, log_histograms=False)
    trainer = fast_trainer(tmp_path, callbacks=[callback])
    with pytest.warns(
        UserWarning, match=r"layer 'model.distilbert.transformer.layer.0.attention.q_lin' have no spread"
    ):
        trainer.validate(model, DataLoader(data, batch_size=32), verbose=False)
    row = callback.history[-1]
    assert row[f"infomem/{layers[0]}/entropy"] == 0.0 and row[f"infomem/{layers[0]}/mutual_info"] == 0.0
    assert row[f"infomem/{layers[1]}/entropy"] > 0
    assert row["infomem/entropy"] == pytest.approx(row[f"infomem/{layers[1]}/entropy"], rel=1e-12)
    assert row["infomem/mutual_info"] == pytest.approx(row[f"infomem/{layers[1]}/mutual_info"], rel=1e-12)


# ----------------------------------------------------------------------------- CNN stages and ViT
def test_resnet_defaults_are_the_pooled_stage_outputs(tmp_path):
    model = ImageClassifier(ResNet18(width=16))
    data = image_batches(64)
    callback = InformationMeasures(log_histograms=False)
    fast_trainer(tmp_path, callbacks=[callback]).validate(model, DataLoader(data, batch_size=32), verbose=False)
    assert callback.layer_names == ["model.layer1", "model.layer2", "model.layer3", "model.layer4"]
    acts = captured(model, callback.layer_names, [x for x, _ in DataLoader(data, batch_size=32)])
    assert acts["model.layer4"].shape == (64, 128)  # channels, averaged over space
    for key, value in expected_row(acts).items():
        assert callback.history[-1][key] == pytest.approx(value, rel=1e-9), key


def test_vit_defaults_are_the_blocks_cls_token(tmp_path):
    model = ImageClassifier(VisionTransformer(depth=4, embed_dim=32))
    data = image_batches(64)
    callback = InformationMeasures(log_histograms=False)
    fast_trainer(tmp_path, callbacks=[callback]).validate(model, DataLoader(data, batch_size=32), verbose=False)
    assert callback.layer_names == [f"model.blocks.{i}" for i in range(4)]
    acts = captured(model, callback.layer_names, [x for x, _ in DataLoader(data, batch_size=32)])
    for key, value in expected_row(acts).items():
        assert callback.history[-1][key] == pytest.approx(value, rel=1e-9), key


def test_the_chosen_layers_are_printed_once(tmp_path, caplog):
    callback = InformationMeasures()
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        trainer = fast_trainer(tmp_path, callbacks=[callback])
        model = TokenClassifier(hf_model("bert", layers=2))
        loader = DataLoader(token_batches(32), batch_size=32)
        trainer.validate(model, loader, verbose=False)
        trainer.validate(model, loader, verbose=False)
    lines = [r.getMessage() for r in caplog.records if "InformationMeasures: monitoring" in r.getMessage()]
    assert len(lines) == 1
    assert "blocks: " in lines[0] and "model.bert.encoder.layer.0, model.bert.encoder.layer.1" in lines[0]
    read = [r.getMessage() for r in caplog.records if "InformationMeasures: read as observed" in r.getMessage()]
    assert len(read) == 2  # observed again in each validate()
    assert "model.bert.encoder.layer.0, model.bert.encoder.layer.1: the first token (not causal: observed)" in read[0]


# ---------------------------------------------------------------------------------- torch.compile
class Body(nn.Module):
    """An MLP body as its own module (torch.compile traces a plain nn.Sequential only with hooks on it)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 32)
        self.out = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class BodyMLP(_Classifier):
    def __init__(self, compile_in_setup: str = "", backend: str = "eager") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = Body()
        self.compile_in_setup = compile_in_setup
        self.backend = backend

    def setup(self, stage: str) -> None:  # compiled after the callback is attached and set up
        if self.compile_in_setup == "wrap" and not isinstance(self.net, torch._dynamo.eval_frame.OptimizedModule):
            self.net = torch.compile(self.net, backend=self.backend)
        elif self.compile_in_setup == "inplace":
            self.net.compile(backend=self.backend)


def _fit(mode: str, with_callback: bool, sanity: int, tmp_path: Any, backend: str = "eager") -> tuple:
    torch._dynamo.reset()
    counters.clear()
    model = (
        BodyMLP(compile_in_setup=mode.removeprefix("setup-"), backend=backend)
        if mode.startswith("setup-")
        else BodyMLP()
    )
    if mode == "wrap":
        model.net = torch.compile(model.net, backend=backend)
    elif mode == "inplace":
        model.net.compile(backend=backend)
    callback = InformationMeasures(log_histograms=False) if with_callback else None
    trainer = fast_trainer(
        tmp_path, max_epochs=2, num_sanity_val_steps=sanity, callbacks=[callback] if callback else []
    )
    trainer.fit(model, *digits_loaders())
    breaks = sum(counters["graph_break"].values())
    graphs = counters["stats"]["unique_graphs"]
    return (callback.history if callback else None), breaks, graphs


@pytest.fixture(scope="module")
def eager_history(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    history, _, _ = _fit("none", True, 2, tmp_path_factory.mktemp("eager"))
    return history


@pytest.mark.parametrize("mode", ["wrap", "inplace", "setup-wrap", "setup-inplace"])
@pytest.mark.parametrize("sanity", [2, 0])
def test_compiled_models_measure_the_same_values_under_the_same_keys(tmp_path, eager_history, mode, sanity):
    history, breaks, graphs = _fit(mode, True, sanity, tmp_path)
    _, breaks_without, graphs_without = _fit(mode, False, sanity, tmp_path)
    assert [sorted(row) for row in history] == [sorted(row) for row in eager_history]  # no _orig_mod in keys
    for row, reference in zip(history, eager_history, strict=True):
        for key, value in reference.items():
            assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (mode, key)
    # the callback adds no graph break and no compiled graph: its hooks are traced into the model's graphs
    assert breaks == breaks_without == 0
    assert graphs == graphs_without > 0


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C compiler")
def test_inductor_compiled_model_measures_the_same_values(tmp_path, eager_history):
    history, breaks, _ = _fit("wrap", True, 2, tmp_path, backend="inductor")
    assert breaks == 0
    for row, reference in zip(history, eager_history, strict=True):
        for key, value in reference.items():
            # inductor's kernels round differently: binned H and I barely move, the effective rank (all singular
            # values, the small ones too) by up to a few 1e-4
            tolerance = 1e-3 if key.endswith("effective_rank") else 1e-4
            assert row[key] == pytest.approx(value, rel=tolerance, abs=1e-6), key


def test_a_model_traced_before_the_hooks_is_reported(tmp_path):
    torch._dynamo.reset()
    model = BodyMLP()
    model.net = torch.compile(model.net, backend="eager")
    model.eval()
    with torch.inference_mode():  # as Lightning validates, with its batches: that graph is traced without the hooks
        for x, _ in digits_loaders()[1]:
            model(x)
    callback = InformationMeasures(log_histograms=False)
    with pytest.warns(UserWarning, match=r"no activations reached.*torch._dynamo.reset\(\)"):
        fast_trainer(tmp_path, callbacks=[callback]).validate(model, digits_loaders()[1], verbose=False)
    assert not callback.history
    torch._dynamo.reset()  # as the warning says
    fast_trainer(tmp_path, callbacks=[callback]).validate(model, digits_loaders()[1], verbose=False)
    assert callback.history


# -------------------------------------------------------------------------- decoder-only models
class CausalClassifier(LightningModule):
    def __init__(self):
        super().__init__()
        self.model = tiny_gpt2_classifier(num_labels=2)

    def validation_step(self, batch, batch_idx):
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _token_batches(ids: torch.Tensor, mask: torch.Tensor) -> torch.utils.data.DataLoader:
    items = [{"input_ids": ids[i], "attention_mask": mask[i]} for i in range(len(ids))]
    return torch.utils.data.DataLoader(items, batch_size=32)  # batches: dicts, as a tokenizer's


def test_decoder_only_blocks_are_read_at_the_last_real_token(tmp_path):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 50, (128, 10), generator=generator)
    lengths = torch.randint(5, 11, (128,), generator=generator)
    mask = (torch.arange(10)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # right padding with the pad id 0
    model = CausalClassifier().eval()

    def measure(token_ids: torch.Tensor) -> dict:
        callback = InformationMeasures(
            layers="model.transformer.h.*", settings=MeasurementSettings(calibration_samples=64)
        )
        trainer = fast_trainer(tmp_path, callbacks=[callback])
        trainer.validate(model, _token_batches(token_ids, mask), verbose=False)
        assert all(reading.causal and reading.token == "last" for reading in callback.readings.values())
        return callback.history[-1]

    reference = measure(ids)
    later = ids.clone()
    later[:, 3] = torch.randint(2, 50, (128,), generator=generator)  # a real token after the first, before the last
    changed = measure(later)
    assert changed["infomem/model.transformer.h.0/entropy"] != reference["infomem/model.transformer.h.0/entropy"]
    padding = ids.clone()
    padding[mask == 0] = 7  # only the padded positions change: the measurement does not see them
    assert (
        measure(padding)["infomem/model.transformer.h.1/entropy"] == reference["infomem/model.transformer.h.1/entropy"]
    )


def test_swin_stage_outputs_are_read_on_their_channels():
    """torchvision's Swin stages give channels-last [B, H, W, C]: the neurons are the C channels, not image rows."""
    models = pytest.importorskip("torchvision.models")
    from lightning_infomem.introspection.readings import to_neuron_activations

    model = models.swin_t().eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stage = model.features[:2](x)
    assert list(stage.shape) == [2, 56, 56, 96]  # channels last
    reading = observed_readings(model, ["features.1"], x)["features.1"]
    assert reading.layout == "channels_last"  # only linear layers and norms ran in the stage
    activations = to_neuron_activations(stage, reading)
    assert list(activations.shape) == [2, 96]
    torch.testing.assert_close(activations, stage.mean(dim=(1, 2)))
