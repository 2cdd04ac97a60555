"""Reading what the model does: each cause of a silent wrong reading, on models users write and on real Hugging Face
models, checked against the raw outputs of the monitored modules (the values logged equal the functional core's on
the activations taken by hand)."""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule
from lightning_helpers import expected_row, fast_trainer
from survey_zoo import SMALL_SEQ2SEQ, ConcatCNN, GatedNet, LSTMClassifier, SiameseNet, UNet
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_infomem import InformationMeasures
from lightning_infomem.introspection import choose_default_layers, named_layers


class _Validated(LightningModule):
    """``validation_step`` runs ``self.model`` on the batch (a tensor, or a dict of keyword arguments)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if isinstance(batch, dict):
            self.model(**batch)
        else:
            self.model(batch[0])


def _raw_outputs(module: nn.Module, names: list[str], batches: list[Any]) -> dict[str, list[Any]]:
    """Each named module's outputs on the batches (eval, no gradient), as the model gave them."""
    modules, outputs = dict(named_layers(module)), {name: [] for name in names}
    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: outputs[n].append(o)) for n in names]
    module.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                module.model(**batch) if isinstance(batch, dict) else module.model(batch[0])
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _measure(module: LightningModule, loader: DataLoader, tmp_path: Any, **options: Any) -> InformationMeasures:
    callback = InformationMeasures(log_histograms=False, heatmap_every_n_measurements=0, **options)
    fast_trainer(tmp_path, callbacks=[callback]).validate(module, loader, verbose=False)
    return callback


def _assert_measures(callback: InformationMeasures, acts: dict[str, Tensor]) -> None:
    row = callback.history[-1]
    for key, value in expected_row(acts).items():
        assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def _main(output: Any) -> Tensor:
    """A Hugging Face layer's hidden states: the output, or its first item (the layers of some versions give tuples)."""
    return output[0] if isinstance(output, tuple) else output


def _at(values: Tensor, positions: Tensor) -> Tensor:
    """``values[b, positions[b]]`` for ``[batch, tokens, hidden]``."""
    return values[torch.arange(values.shape[0]), positions]


# ------------------------------------------------------------------------------------ models users write
def test_an_lstm_classifier_is_read_at_its_recurrent_layer_and_last_token(tmp_path):
    """nn.LSTM owns weight_ih_l0, not weight: it is the hidden layer (not the head), its output is a tuple whose
    first tensor is [tokens, batch, hidden], and it is causal: read at the last token of each sequence."""
    torch.manual_seed(0)
    module = _Validated(LSTMClassifier())
    assert choose_default_layers(module).names == ["model.lstm"]
    ids = torch.randint(0, 50, (96, 9), generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(ids), batch_size=32)
    callback = _measure(module, loader, tmp_path)
    reading = callback.readings["model.lstm"]
    assert (reading.path, reading.batch_axis, reading.token, reading.causal) == ((0,), 1, "last", True)
    outputs = _raw_outputs(module, ["model.lstm"], list(loader))["model.lstm"]
    _assert_measures(callback, {"model.lstm": torch.cat([out[0][-1] for out in outputs])})


def test_a_unet_gives_every_stage_of_its_module_lists(tmp_path):
    """Not the last item of each list: the three encoder stages, the bottleneck and the two decoder stages (no raw
    transposed convolution), each read on its channels."""
    module = _Validated(UNet())
    chosen = choose_default_layers(module)
    stages = ["model.down.0", "model.down.1", "model.down.2", "model.bottleneck", "model.up.1", "model.up.3"]
    assert chosen.names == stages, chosen.description
    images = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(images), batch_size=32)
    callback = _measure(module, loader, tmp_path)
    outputs = _raw_outputs(module, stages, list(loader))
    _assert_measures(callback, {name: torch.cat([o.mean(dim=(2, 3)) for o in outs]) for name, outs in outputs.items()})


class _Bypassing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block.forward(x))  # forward called directly: the block's hooks never fire


def test_a_module_whose_forward_is_called_directly_is_reported_as_bypassed(tmp_path):
    module = _Validated(_Bypassing())
    loader = DataLoader(TensorDataset(torch.randn(64, 8)), batch_size=32)
    with pytest.warns(UserWarning, match=r"\['model.block'\] never fire.*module.forward\(x\) instead of module\(x\)"):
        _measure(module, loader, tmp_path, layers=["model.block"])


def test_a_block_returning_an_inner_stream_first_is_read_on_the_stream_the_next_block_consumes(tmp_path):
    module = _Validated(GatedNet())
    images = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(images), batch_size=32)
    callback = _measure(module, loader, tmp_path)
    names = [f"model.blocks.{i}" for i in range(3)]
    assert callback.layer_names == names
    assert {name: callback.layer_widths[name] for name in names} == dict.fromkeys(names, 12)  # not the gate's 36
    assert all(callback.readings[name].path == (1,) for name in names)
    outputs = _raw_outputs(module, names, list(loader))
    _assert_measures(callback, {name: torch.cat([o[1] for o in outs]) for name, outs in outputs.items()})


def test_a_width_that_coincides_with_the_map_size_does_not_make_a_cnn_channels_last(tmp_path):
    module = _Validated(ConcatCNN())
    images = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(images), batch_size=32)
    callback = _measure(module, loader, tmp_path)
    names = callback.layer_names
    assert names == ["model.blocks.0", "model.blocks.1", "model.blocks.2"]
    assert all(callback.layer_widths[name] == 16 for name in names)  # the channels, not 8 image columns
    outputs = _raw_outputs(module, names, list(loader))
    _assert_measures(callback, {name: torch.cat([o.mean(dim=(2, 3)) for o in outs]) for name, outs in outputs.items()})


def test_a_module_applied_twice_per_call_is_measured_once_per_application(tmp_path):
    """A Siamese network's encoder runs on both images of a pair in one call of the model: like ALBERT's shared
    layer, each application is its own series (not one histogram of two inputs), and the start line says so."""
    module = _Validated(SiameseNet())
    pairs = torch.randn(64, 6, 16, 16, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(pairs), batch_size=32)
    callback = _measure(module, loader, tmp_path)
    layers = callback.layer_names
    assert callback.series_names == [f"{layer}.application_{k}" for layer in layers for k in range(2)]
    outputs = _raw_outputs(module, layers, list(loader))  # per batch: the first image's output, then the second's
    acts = {
        f"{layer}.application_{k}": torch.cat([o.mean(dim=(2, 3)) for o in outputs[layer][k::2]])
        for layer in layers
        for k in range(2)
    }
    row = callback.history[-1]
    for key, value in expected_row(acts).items():
        assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


class _Chunked(_Validated):
    """Runs each validation batch in two chunks: two calls of the model, each applying every layer once."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        for chunk in batch[0].split(16):
            self.model(chunk)


def test_a_batch_run_in_chunks_gives_more_samples_not_more_applications(tmp_path):
    module = _Chunked(ConcatCNN())
    images = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    callback = _measure(module, DataLoader(TensorDataset(images), batch_size=32), tmp_path)
    assert callback.series_names == callback.layer_names  # no .application_k
    assert all(callback.readings[name].layout == "channels_first" for name in callback.layer_names)


# ----------------------------------------------------------------------------------- real Hugging Face models
def _transformers() -> Any:
    transformers = pytest.importorskip("transformers")
    warnings.filterwarnings("ignore", module="transformers")
    return transformers


def _padded_ids(num: int, length: int, seed: int, vocab: int = 100) -> tuple[Tensor, Tensor]:
    """Right-padded token ids (pad id 0) of lengths 3 to ``length``, and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (num, length), generator=generator)
    lengths = torch.randint(3, length + 1, (num,), generator=generator)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


def _dict_loader(**tensors: Tensor) -> DataLoader:
    items = [{key: value[i] for key, value in tensors.items()} for i in range(len(next(iter(tensors.values()))))]
    return DataLoader(items, batch_size=32)


@pytest.mark.parametrize("name", ["bloom", "mamba"])
def test_causal_models_without_causal_attributes_are_read_at_the_last_real_token(tmp_path, name):
    """BLOOM's attention has no is_causal / is_decoder; Mamba has no attention at all. Both are causal, observed:
    read at each sequence's last real token (right padding), which has seen the whole sequence."""
    transformers = _transformers()
    torch.manual_seed(0)
    if name == "bloom":
        config = transformers.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=2, pad_token_id=0)
        model, layers = transformers.BloomModel(config), ["model.h.0", "model.h.1"]
    else:
        config = transformers.MambaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, state_size=4)
        model, layers = transformers.MambaModel(config), ["model.layers.0", "model.layers.1"]
    module = _Validated(model)
    ids, mask = _padded_ids(64, 10, seed=1)
    batch = {"input_ids": ids, "attention_mask": mask} if name == "bloom" else {"input_ids": ids}
    loader = _dict_loader(**batch)
    callback = _measure(module, loader, tmp_path)
    assert callback.layer_names == layers
    assert all(callback.readings[layer].causal and callback.readings[layer].token == "last" for layer in layers)
    outputs = _raw_outputs(module, layers, list(loader))
    last = [m.sum(dim=1) - 1 for (m,) in DataLoader(TensorDataset(mask), batch_size=32)]
    acts = {
        layer: torch.cat([_at(_main(o), p) for o, p in zip(outs, last, strict=True)]) for layer, outs in outputs.items()
    }
    if name == "mamba":  # no attention mask: the real tokens are not known; read at the last position
        acts = {layer: torch.cat([_main(o)[:, -1] for o in outs]) for layer, outs in outputs.items()}
    _assert_measures(callback, acts)


def test_a_model_whose_layers_give_tokens_batch_hidden_is_read_per_sequence(tmp_path):
    """XLNet's layers output [tokens, batch, hidden]: the batch axis is observed (a smaller batch changes axis 1), so
    each sequence is one sample, not each position of one sequence."""
    transformers = _transformers()
    torch.manual_seed(0)
    config = transformers.XLNetConfig(vocab_size=100, d_model=32, n_layer=2, n_head=2, d_inner=64)
    module = _Validated(transformers.XLNetModel(config))
    ids = torch.randint(3, 100, (64, 12), generator=torch.Generator().manual_seed(1))
    loader = _dict_loader(input_ids=ids)
    callback = _measure(module, loader, tmp_path)
    layers = ["model.layer.0", "model.layer.1"]
    assert callback.layer_names == layers
    assert all(callback.readings[layer].batch_axis == 1 for layer in layers)
    outputs = _raw_outputs(module, layers, list(loader))
    token = callback.readings[layers[0]].token
    pick = {"first": lambda v: v[:, 0], "mean": lambda v: v.mean(dim=1)}[token]
    acts = {layer: torch.cat([pick(_main(o).transpose(0, 1)) for o in outs]) for layer, outs in outputs.items()}
    assert all(a.shape == (64, 32) for a in acts.values())
    _assert_measures(callback, acts)


def test_a_translation_models_decoder_is_read_at_its_own_last_real_token(tmp_path):
    """MarianMT with targets shorter than the sources: the decoder (observed causal) is read with the labels' padding
    at its last real target token, the encoder with the source's attention mask at the mean over real tokens."""
    transformers = _transformers()
    torch.manual_seed(0)
    config = transformers.MarianConfig(**SMALL_SEQ2SEQ, pad_token_id=0)
    module = _Validated(transformers.MarianMTModel(config))
    ids, mask = _padded_ids(64, 12, seed=1)
    targets, target_mask = _padded_ids(64, 5, seed=2)
    labels = targets.masked_fill(target_mask == 0, -100)
    loader = _dict_loader(input_ids=ids, attention_mask=mask, labels=labels)
    callback = _measure(module, loader, tmp_path)
    encoder = ["model.model.encoder.layers.0", "model.model.encoder.layers.1"]
    decoder = ["model.model.decoder.layers.0", "model.model.decoder.layers.1"]
    assert callback.layer_names == encoder + decoder
    assert all(callback.readings[layer].token == "last" and callback.readings[layer].causal for layer in decoder)
    assert all(callback.readings[layer].masks == ("labels",) for layer in decoder)
    assert all(callback.readings[layer].token == "mean" for layer in encoder)
    outputs = _raw_outputs(module, encoder + decoder, list(loader))
    batches = list(DataLoader(TensorDataset(mask, target_mask), batch_size=32))
    acts = {}
    for layer in encoder:
        acts[layer] = torch.cat(
            [
                (_main(o) * m[..., None]).sum(1) / m.sum(1, keepdim=True)
                for o, (m, _) in zip(outputs[layer], batches, strict=True)
            ]
        )
    for layer in decoder:
        acts[layer] = torch.cat(
            [_at(_main(o), t.sum(1) - 1) for o, (_, t) in zip(outputs[layer], batches, strict=True)]
        )
    _assert_measures(callback, acts)


class _Noisy(nn.Module):
    """Draws from torch's random generator at every call, even in eval mode."""

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.01 * torch.randn_like(x)


def test_the_probe_leaves_no_trace():
    """The probe's extra forward passes run without the user's own hooks, draw nothing from the random state the
    run goes on with, and leave buffers (BatchNorm statistics) as they were."""
    from lightning_infomem.introspection import ReadingProbe

    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), _Noisy(), nn.Linear(8, 2)).eval()
    calls = []
    model[0].register_forward_hook(lambda m, a, o: calls.append(1))
    probe = ReadingProbe(model, {"0": model[0], "2": model[2]})
    with torch.no_grad():
        probe.start()
        model(torch.randn(16, 4))
        probe.stop()
        buffers = {k: v.clone() for k, v in model.state_dict().items()}
        state = torch.random.get_rng_state()
        result = probe.observe(batch_size=16, masks={})
    assert set(result.readings) == {"0", "2"}
    assert len(calls) == 1  # the recorded call itself, not the probe's reruns
    assert torch.equal(torch.random.get_rng_state(), state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, buffers[key]), key


def test_a_hugging_face_model_that_bypasses_its_layers_hooks_is_said_and_its_recipe_reads_channels(tmp_path):
    """SqueezeBERT calls each encoder layer's forward directly (the layers' hooks never fire): the callback names
    them; docs/recipes.md's recipe monitors each layer's `output` instead, [batch, channels, tokens] feature maps
    whose layer norm permutes inside: read on the 32 channels, not on the 12 tokens."""
    transformers = _transformers()
    torch.manual_seed(0)
    config = transformers.SqueezeBertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        embedding_size=32,
    )
    module = _Validated(transformers.SqueezeBertModel(config))
    ids, mask = _padded_ids(48, 12, seed=1)
    loader = _dict_loader(input_ids=ids, attention_mask=mask)
    with pytest.warns(UserWarning, match=r"'model.encoder.layers.0', 'model.encoder.layers.1'\] never fire"):
        _measure(module, loader, tmp_path)
    callback = _measure(module, loader, tmp_path, layers="**.encoder.layers.*.output")
    assert all(reading.layout == "channels_first" for reading in callback.readings.values())
    assert set(callback.layer_widths.values()) == {32}


class _MaskedGPT2(LightningModule):
    """A GPT-2 classifier fed the batch's ids with a [batch, tokens] mask built from whatever mask the batch has."""

    def __init__(self) -> None:
        super().__init__()
        from lightning_helpers import tiny_gpt2_classifier

        self.model = tiny_gpt2_classifier(num_labels=2)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.model(input_ids=batch["input_ids"], attention_mask=batch["real"])


def test_masks_with_empty_rows_or_hugging_faces_shape_are_read_and_others_are_named(tmp_path):
    """Samples whose mask has no real token are left out (not read at a pad token, not a zero vector), with one
    warning; Hugging Face's expanded [batch, 1, 1, tokens] masks (0/1 or additive) read as [batch, tokens]; a mask of
    another shape ([batch]) is named, not dropped silently."""
    _transformers()
    torch.manual_seed(0)
    module = _MaskedGPT2()
    ids, mask = _padded_ids(64, 10, seed=1, vocab=50)
    empty = torch.zeros(64, dtype=torch.bool)
    empty[[3, 17, 40]] = True
    plain = mask.masked_fill(empty[:, None], 0)
    real = mask.masked_fill(empty[:, None], 1)  # the model itself sees some tokens in every row

    def measured(attention_mask: Tensor) -> InformationMeasures:
        return _measure(module, _dict_loader(input_ids=ids, real=real, attention_mask=attention_mask), tmp_path)

    with pytest.warns(UserWarning, match=r"sample\(s\) of this evaluation have no real token in their mask"):
        callback = measured(plain)
    layers = callback.layer_names
    assert layers == ["model.transformer.h.0", "model.transformer.h.1"]  # two blocks, not an encoder and a decoder
    outputs = _raw_outputs(module, layers, [{"input_ids": ids, "attention_mask": real}])
    keep = ~empty
    acts = {layer: _at(_main(outputs[layer][0]), mask.sum(1).clamp_min(1) - 1)[keep] for layer in layers}
    _assert_measures(callback, acts)
    expanded = measured(plain[:, None, None, :].float().sub(1).mul(1e9))  # additive, as Hugging Face builds it
    assert expanded.history[-1] == pytest.approx(callback.history[-1], rel=1e-12, nan_ok=True)
    with pytest.warns(UserWarning, match=r"attention_mask has shape \[32\], not \[batch, tokens\]"):
        measured(mask.sum(1))


# ------------------------------------------------------------------------ masks of another number of tokens
class _Prompted(nn.Module):
    """Token embeddings with ``k`` learned tokens the model adds ``where`` ("before": a prompt or a class token,
    "after": register tokens) and extends the mask with, then transformer layers (causal or not)."""

    def __init__(self, k: int, where: str, causal: bool, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, hidden)
        self.added = nn.Parameter(torch.randn(k, hidden))
        self.where, self.causal = where, causal
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(hidden, 4, 64, dropout=0.0, batch_first=True) for _ in range(2)
        )

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        x, added = self.embed(input_ids), self.added.expand(input_ids.shape[0], -1, -1)
        ones = attention_mask.new_ones(input_ids.shape[0], added.shape[1])
        parts = [(added, ones), (x, attention_mask)] if self.where == "before" else [(x, attention_mask), (added, ones)]
        x, mask = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
        tokens = x.shape[1]
        causal = torch.triu(torch.full((tokens, tokens), float("-inf")), 1) if self.causal else None
        for layer in self.layers:
            x = layer(x, src_mask=causal, src_key_padding_mask=mask == 0)
        return x


@pytest.mark.parametrize(
    ("k", "where", "causal"), [(2, "before", True), (1, "before", False), (3, "after", False)], ids=str
)
def test_a_model_that_adds_tokens_to_its_mask_is_read_where_its_real_tokens_are(tmp_path, k, where, causal):
    """The batch's mask has T tokens, the layers' outputs T + k (the model adds a prompt, a class token or registers
    and extends its own mask): where the mask's tokens sit is observed, not assumed, and the added tokens count as
    real. A causal stack is read at each sample's last real token (right padding: at position length - 1 + k when
    the tokens come before, not at a pad token), a mean over real tokens covers the added ones."""
    torch.manual_seed(0)
    module = _Validated(_Prompted(k, where, causal))
    ids, mask = _padded_ids(64, 10, seed=1)
    loader = _dict_loader(input_ids=ids, attention_mask=mask)
    layers = ["model.layers.0", "model.layers.1"]
    reduction = {} if causal else {"sequence_reduction": "mean"}
    callback = _measure(module, loader, tmp_path, layers=layers, **reduction)
    padding = (k, 0) if where == "before" else (0, k)
    for layer in layers:
        reading = callback.readings[layer]
        assert (reading.masks, reading.mask_padding, reading.causal) == (("attention_mask",), padding, causal)
        assert f"{k} token(s) added {where} them by the model: observed" in reading.describe()
    outputs = _raw_outputs(module, layers, list(loader))
    acts = {}
    for layer, outs in outputs.items():
        values, real = torch.cat(outs), torch.cat([torch.ones(64, k, dtype=torch.long), mask], 1)
        if where == "after":
            real = torch.cat([mask, torch.ones(64, k, dtype=torch.long)], 1)
        if causal:
            acts[layer] = _at(values, mask.sum(1) - 1 + k)
        else:
            acts[layer] = (values * real[..., None]).sum(1) / real.sum(1, keepdim=True)
    _assert_measures(callback, acts)


class _LateClassToken(nn.Module):
    """The batch's mask counts a class token the model prepends only after its first layer: that layer's output
    has one token fewer than the mask."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, hidden)
        self.cls = nn.Parameter(torch.randn(1, 1, hidden))
        self.first = nn.TransformerEncoderLayer(hidden, 4, 64, dropout=0.0, batch_first=True)
        self.second = nn.TransformerEncoderLayer(hidden, 4, 64, dropout=0.0, batch_first=True)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        x = self.first(self.embed(input_ids), src_key_padding_mask=attention_mask[:, 1:] == 0)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        return self.second(x, src_key_padding_mask=attention_mask == 0)


def test_a_mask_that_counts_a_token_the_model_adds_later_is_cut_to_the_layers_tokens(tmp_path):
    """A [B, T + 1] mask against a [B, T] output (the token the mask counts is added after this layer): observed by
    changing the layer's output and watching the later tensors of T + 1 tokens; the layer is read over its own real
    tokens (the mask without its first column), the later layer over the whole mask."""
    torch.manual_seed(0)
    module = _Validated(_LateClassToken())
    ids, mask = _padded_ids(64, 10, seed=1)
    full = torch.cat([torch.ones(64, 1, dtype=torch.long), mask], 1)
    loader = _dict_loader(input_ids=ids, attention_mask=full)
    callback = _measure(module, loader, tmp_path, layers=["model.first", "model.second"], sequence_reduction="mean")
    assert callback.readings["model.first"].mask_padding == (-1, 0)
    assert callback.readings["model.second"].mask_padding == (0, 0)
    outputs = _raw_outputs(module, ["model.first", "model.second"], list(loader))
    first, second = torch.cat(outputs["model.first"]), torch.cat(outputs["model.second"])
    acts = {
        "model.first": (first * mask[..., None]).sum(1) / mask.sum(1, keepdim=True),
        "model.second": (second * full[..., None]).sum(1) / full.sum(1, keepdim=True),
    }
    _assert_measures(callback, acts)


def test_a_mask_whose_tokens_no_tensor_has_is_named_and_a_later_batch_that_does_not_fit_is_warned(tmp_path):
    """A mask of T + 5 tokens for a model whose tensors have T: where its tokens sit cannot be observed, so the layer
    is read without it, said once with the fix. A mask that fitted the first batch and not a later one (a collate
    that pads another way) is said too, not dropped silently."""
    torch.manual_seed(0)
    module = _Validated(_Prompted(1, "before", causal=True))
    ids, mask = _padded_ids(64, 10, seed=1)

    class _Step(_Validated):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.model(batch["input_ids"], batch["attention_mask"][:, : batch["input_ids"].shape[1]])

    stepped = _Step(module.model)
    wide, layers = torch.cat([mask, torch.zeros(64, 5, dtype=torch.long)], 1), ["model.layers.1"]
    with pytest.warns(UserWarning, match=r"could not be observed \(no tensor the model computes has the mask's 15"):
        callback = _measure(
            stepped, _dict_loader(input_ids=ids, attention_mask=wide), tmp_path, layers=["model.layers.1"]
        )
    assert callback.readings["model.layers.1"].masks == ()

    batches = [
        {"input_ids": ids[:32], "attention_mask": mask[:32]},
        {"input_ids": ids[32:], "attention_mask": wide[32:]},
    ]
    with pytest.warns(UserWarning, match=r"model.layers.1: the batch's attention_mask \[\[32, 15\]\] do not fit"):
        callback = _measure(stepped, DataLoader(batches, batch_size=None), tmp_path, layers=layers)
    assert callback.readings["model.layers.1"].mask_padding == (1, 0)


def test_a_prompt_tuned_hugging_face_model_is_read_at_its_last_real_token(tmp_path):
    """peft's prompt tuning prepends virtual tokens inside the model: GPT-2's blocks give T + 3 tokens for the batch's
    [B, T] mask. Read at each sample's last real token, 3 positions on, where the model's own sequence ends."""
    _transformers()
    peft = pytest.importorskip("peft")
    from lightning_helpers import tiny_gpt2_classifier

    torch.manual_seed(0)
    config = peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3)
    module = _Validated(peft.get_peft_model(tiny_gpt2_classifier(num_labels=2), config))
    ids, mask = _padded_ids(64, 10, seed=1, vocab=50)
    loader = _dict_loader(input_ids=ids, attention_mask=mask)
    layers = [name for name, _ in named_layers(module) if re.fullmatch(r".*transformer\.h\.\d", name)]
    callback = _measure(module, loader, tmp_path, layers=layers)
    assert all(callback.readings[layer].mask_padding == (3, 0) for layer in layers)
    assert all(callback.readings[layer].token == "last" for layer in layers)
    outputs = _raw_outputs(module, layers, list(loader))
    acts = {layer: _at(torch.cat([_main(o) for o in outs]), mask.sum(1) - 1 + 3) for layer, outs in outputs.items()}
    _assert_measures(callback, acts)


def test_a_source_mask_of_the_decoders_length_is_not_taken_for_the_decoders(tmp_path):
    """A collate that pads sources and targets to one length: the source's attention_mask has the decoder's 10
    tokens, but changing a source token moves every decoder position at once, so it is not the decoder's mask.
    The decoder is read with the labels' padding alone (before: the source mask and the labels' combined, a
    sample read where its source ended), the encoder with the source mask."""
    transformers = _transformers()
    torch.manual_seed(0)
    module = _Validated(transformers.MarianMTModel(transformers.MarianConfig(**SMALL_SEQ2SEQ, pad_token_id=0)))
    ids, mask = _padded_ids(64, 10, seed=1)
    targets, target_mask = _padded_ids(64, 10, seed=2)
    labels = targets.masked_fill(target_mask == 0, -100)
    loader = _dict_loader(input_ids=ids, attention_mask=mask, labels=labels)
    with pytest.warns(UserWarning, match=r"decoder.layers.0: the batch.s attention_mask has its 10 tokens but"):
        callback = _measure(module, loader, tmp_path)
    encoder, decoder = callback.layer_names[:2], callback.layer_names[2:]
    assert all(callback.readings[layer].masks == ("labels",) for layer in decoder)
    assert all(callback.readings[layer].masks == ("attention_mask",) for layer in encoder)
    outputs = _raw_outputs(module, decoder, list(loader))
    acts = {layer: _at(torch.cat([_main(o) for o in outs]), target_mask.sum(1) - 1) for layer, outs in outputs.items()}
    _assert_measures(callback, {**acts, **_encoder_means(module, encoder, loader, mask)})


def _encoder_means(module: nn.Module, layers: list[str], loader: DataLoader, mask: Tensor) -> dict[str, Tensor]:
    outputs = _raw_outputs(module, layers, list(loader))
    return {
        layer: (torch.cat([_main(o) for o in outs]) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        for layer, outs in outputs.items()
    }


def test_a_source_mask_is_never_laid_over_a_decoder_of_other_length(tmp_path):
    """MarianMT fed decoder ids and no target mask: the source's attention_mask (12 tokens) says nothing about the
    decoder's 5 positions. Changing a source token moves every decoder position, at no one offset: the decoder is
    read without a mask, and that is said."""
    transformers = _transformers()
    torch.manual_seed(0)
    module = _Validated(transformers.MarianMTModel(transformers.MarianConfig(**SMALL_SEQ2SEQ, pad_token_id=0)))
    ids, mask = _padded_ids(64, 12, seed=1)
    targets, _ = _padded_ids(64, 5, seed=2)
    loader = _dict_loader(input_ids=ids, attention_mask=mask, decoder_input_ids=targets)
    with pytest.warns(UserWarning, match=r"layers.1: the batch.s attention_mask \[\d+, 12\] do not match its 5"):
        callback = _measure(module, loader, tmp_path)
    decoder = ["model.model.decoder.layers.0", "model.model.decoder.layers.1"]
    assert all(callback.readings[layer].masks == () for layer in decoder)
    assert all(callback.readings[layer].masks == ("attention_mask",) for layer in callback.layer_names[:2])
