"""The default layers, neuron axis and token on real torchvision, timm, Hugging Face and peft architectures
(run where those libraries import: the second CI step)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from architecture_zoo import ARCHITECTURES, Architecture, build, make_inputs, markdown_table, run
from lightning.pytorch import LightningModule
from lightning_helpers import fast_trainer, observed_readings
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_infomem import InformationMeasures, MeasurementSettings
from lightning_infomem.introspection import Reading, choose_default_layers, first_tensor, named_layers, read

LIBRARIES = {"torchvision": "torchvision.models", "timm": "timm", "transformers": "transformers", "peft": "peft"}


def _needs(architecture: Architecture) -> None:
    pytest.importorskip(LIBRARIES[architecture.library])
    if architecture.library == "peft":
        pytest.importorskip("transformers")


class Wrapped(LightningModule):
    """A LightningModule around a real architecture: cross-entropy on random labels, AdamW."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor) -> Tensor:
        return run(self.model, inputs)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs, labels = batch
        return nn.functional.cross_entropy(self(inputs), labels)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        inputs, labels = batch
        self.log("val_loss", nn.functional.cross_entropy(self(inputs), labels))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _loader(architecture: Architecture, num: int, seed: int, batch_size: int) -> DataLoader:
    inputs = make_inputs(architecture, num, seed)
    labels = torch.randint(0, 4, (num,), generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(inputs, labels), batch_size=batch_size)


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=[f"{a.library}-{a.name}" for a in ARCHITECTURES])
def test_defaults_on_real_architectures(tmp_path, architecture):
    """The layers and family the defaults pick; after a short fit, every monitored layer measured on its own
    neurons (channels for outputs with spatial axes, the hidden size for sequences), with spread."""
    _needs(architecture)
    model = build(architecture)
    chosen = choose_default_layers(model)
    assert (chosen.family, chosen.names) == (architecture.family, architecture.layers), chosen.description

    module = Wrapped(model)
    for norm in module.modules():  # two training steps set the running statistics (momentum 0.01 would not:
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):  # MobileNetV3's deep blocks stay constant in eval)
            norm.momentum = None
    callback = InformationMeasures(
        log_histograms=False, heatmap_every_n_measurements=0, settings=MeasurementSettings(calibration_samples=16)
    )
    trainer = fast_trainer(tmp_path, callbacks=[callback], max_epochs=1, limit_train_batches=2)
    trainer.fit(module, _loader(architecture, 16, 0, 8), _loader(architecture, 48, 1, 16))
    assert callback.layer_names == [f"model.{name}" for name in architecture.layers]
    shapes = _output_shapes(module, callback.layer_names, make_inputs(architecture, 4, 2))
    row = callback.history[-1]
    for series in callback.series_names:
        entropy, mutual_info = row[f"infomem/{series}/entropy"], row[f"infomem/{series}/mutual_info"]
        assert math.isfinite(entropy) and math.isfinite(mutual_info), series
        assert entropy > 0 or mutual_info > 0, (series, entropy, mutual_info)  # spread on some range
        assert row[f"infomem/{series}/effective_rank"] > 1.0, series
        name = series.partition(".application_")[0]
        shape = shapes[name]
        width = callback.layer_widths[series]
        if len(shape) >= 4:  # the neurons are the channels: the last axis where the model puts them last (Swin)
            assert width == (shape[-1] if architecture.channels_last else shape[1]), (series, shape, width)
        else:  # a sequence [batch, tokens, hidden]: the hidden size
            assert width == shape[-1], (series, shape, width)
        reading = callback.readings[name]
        if len(shape) >= 4:
            assert reading.layout == ("channels_last" if architecture.channels_last else "channels_first"), series
        else:
            assert reading.layout == "sequence" and reading.token == _promised(architecture, reading, shape), (
                series,
                reading,
            )


def _output_shapes(model: nn.Module, names: list[str], inputs: Tensor) -> dict[str, tuple[int, ...]]:
    """The raw output shape of each named module on ``inputs`` (eval mode)."""
    modules, shapes = dict(named_layers(model)), {}
    handles = [
        modules[name].register_forward_hook(
            lambda m, a, out, name=name: shapes.setdefault(name, tuple(first_tensor(out).shape)) and None
        )
        for name in names
    ]
    model.eval()
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _promised(architecture: Architecture, reading: Reading, shape: tuple) -> str:
    """The token the table promises for a sequence output: an encoder-decoder's decoder (observed causal) at its last
    real token; a block before the class token joins (CaiT's patch blocks, a square grid of tokens) averaged."""
    if architecture.reading == "mean+last":
        return "last" if reading.causal else "mean"
    if architecture.reading == "first" and math.isqrt(shape[1]) ** 2 == shape[1] and reading.token == "mean":
        return "mean"
    return architecture.reading


def test_a_shared_layer_is_measured_once_per_application(tmp_path):
    """ALBERT applies one layer N times in a forward pass: each application is its own series of keys."""
    pytest.importorskip("transformers")
    albert = next(a for a in ARCHITECTURES if a.name == "ALBERT")
    module = Wrapped(build(albert))
    callback = InformationMeasures(
        log_histograms=False, heatmap_every_n_measurements=0, settings=MeasurementSettings(calibration_samples=16)
    )
    fast_trainer(tmp_path, callbacks=[callback]).validate(module, _loader(albert, 48, 1, 16), verbose=False)
    layer = "model.albert.encoder.albert_layer_groups.0.albert_layers.0"
    assert callback.series_names == [f"{layer}.application_{k}" for k in range(4)]  # num_hidden_layers=4
    row = callback.history[-1]
    entropies = [row[f"infomem/{layer}.application_{k}/entropy"] for k in range(4)]
    assert len(set(entropies)) == 4  # four depths, four values


def test_the_recipes_table_is_what_the_defaults_pick():
    """docs/recipes.md's table of real architectures is the table the defaults give today."""
    for library in ("torchvision.models", "timm", "transformers", "peft"):
        pytest.importorskip(library)
    text = Path(__file__).resolve().parents[1].joinpath("docs", "recipes.md").read_text()
    documented = re.search(r"\| Architecture \| Library .*?(?=\n\n)", text, re.S)
    assert documented is not None, "docs/recipes.md has no table of real architectures"
    assert documented.group(0).strip() == markdown_table().strip()


@pytest.mark.parametrize("name", ["GPT-2", "Llama"])
def test_decoder_only_models_are_read_where_the_whole_sequence_is_seen(name):
    """A causal model's first token sees only itself: the defaults read the last one, which changes when an earlier
    token changes (with a BOS token first, the first token's state would be one vector for every sample)."""
    pytest.importorskip("transformers")
    architecture = next(a for a in ARCHITECTURES if a.name == name)
    module = Wrapped(build(architecture)).eval()
    modules = dict(named_layers(module))
    ids = make_inputs(architecture, 8, 0)
    ids[:, 0] = 1  # a BOS token
    later = ids.clone()
    later[:, 5] = (later[:, 5] + 7) % 90 + 3  # a token in the middle

    layers = [f"model.{n}" for n in architecture.layers]
    readings = observed_readings(module, layers, ids)
    assert all(readings[layer].causal and readings[layer].token == "last" for layer in layers)

    def activations(token_ids: Tensor) -> dict[str, Tensor]:
        out = {}
        for layer in layers:
            handle = modules[layer].register_forward_hook(
                lambda m, a, o, layer=layer: out.__setitem__(layer, read(o, readings[layer]))
            )
            with torch.no_grad():
                module(token_ids)
            handle.remove()
        return out

    before, after = activations(ids), activations(later)
    for layer, values in before.items():
        assert values.shape == (8, 32)
        assert not torch.allclose(values, after[layer]), layer  # the middle token reaches the measured state
        assert values.std(dim=0).max() > 0, layer  # samples differ


def _survey() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "architecture_survey.py"
    spec = importlib.util.spec_from_file_location("architecture_survey", path)
    assert spec is not None and spec.loader is not None
    survey = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(survey)
    return survey


# The survey's models whose reading is known to fall short, each named in docs/recipes.md with the fix.
KNOWN_SHORT: dict[str, str] = {}


@pytest.mark.slow
def test_the_survey_reads_every_model_right_or_says_what_it_assumed():
    """benchmarks/architecture_survey.py on every model of the table and of tests/survey_zoo.py (the real libraries
    and models users write): each fitted two steps, each monitored layer's rows checked against the raw outputs, the
    channel axis against a second image size, the token against what the model is. None is wrong or crashes, beyond
    the documented fall-shorts; every one is built."""
    for library in ("torchvision.models", "timm", "transformers"):
        pytest.importorskip(library)
    survey = _survey()
    rows = [survey.survey_one(architecture) for architecture in survey.models([])]
    assert len(rows) >= 120
    text = Path(__file__).resolve().parents[1].joinpath("docs", "recipes.md").read_text()
    documented = text.split("<!-- survey table: generated by python benchmarks/architecture_survey.py --table -->")[1]
    assert documented.split("<!-- end of survey table -->")[0].strip() == survey.markdown(rows).strip()
    bad = {
        row["name"]: row["why"]
        for row in rows
        if row["verdict"] not in ("right", "said") and row["name"] not in KNOWN_SHORT
    }
    assert not bad, bad


def test_the_survey_checks_what_it_says_it_checks():
    """On three models: a causal recurrent classifier, a U-Net and a Siamese network are right; a model whose label
    calls for another token than the one read is wrong, with the reason."""
    import dataclasses

    survey = _survey()
    chosen = {a.name: a for a in survey.models(["lstm classifier", "u-net", "siamese"])}
    assert {survey.survey_one(a)["verdict"] for a in chosen.values()} == {"right"}
    mislabelled = dataclasses.replace(chosen["LSTM classifier"], reading="first")
    row = survey.survey_one(mislabelled)
    assert row["verdict"] == "wrong" and "where the model calls for first" in row["why"][0]
