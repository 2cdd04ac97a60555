"""The layer survey: the default choice and reading of InformationMeasures on real architectures and on models users
write, each fitted briefly and each reading checked against the raw outputs of the monitored modules.

Models: the table of docs/recipes.md (``tests/architecture_zoo.py``) and the survey's own
(``tests/survey_zoo.py``): torchvision, timm and Hugging Face architectures (small configurations where the
library takes one; decoder-only, state-space, encoder, encoder-decoder, vision, audio, vision towers) and
hand-written LSTM / GRU classifiers, U-Nets, Siamese and multi-head networks. Needs the real libraries
(torchvision, timm, transformers); nothing is downloaded:

    python benchmarks/architecture_survey.py                 # every model
    python benchmarks/architecture_survey.py lstm bloom      # the models whose name contains a word given
    python benchmarks/architecture_survey.py --table         # also the markdown table of docs/recipes.md

Each model is fitted two steps (a generic loss on its output) with ``InformationMeasures()`` (no arguments), whose
validation is recorded; then each monitored layer is checked:

- **rows**: one row per validation sample (the batch axis);
- **as said**: the rows equal the reduction the start line names (tensor, batch axis, channels, token, mask),
  computed here from the raw outputs;
- **channels**: for outputs with spatial axes, the axis read as channels keeps its size when the image size changes
  (where the model runs at another size);
- **token**: the token read is the one the model's kind calls for (the label of each entry: a causal model's last
  real token, an encoder's [CLS] or class token, the mean where there is none).

A model is **right** when every layer passes, **ambiguous-and-said** when every layer passes and the callback said
what it assumed, **wrong** otherwise (each failing check named), **crash** when the fit fails with the callback
and not without it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def _batches(architecture: Any, num: int, seed: int, size: int | None = None) -> list[Any]:
    """``num`` inputs the architecture takes, one item each (dicts for token models, with right padding)."""
    import torch
    from architecture_zoo import VOCAB, make_inputs

    generator = torch.Generator().manual_seed(seed)
    kind = architecture.inputs
    if kind.startswith("image:") and size is not None:
        kind = f"image:{size}"
    if kind.startswith("pixels:") and size is not None:
        kind = f"pixels:{size}"
    if kind in ("tokens", "tokens+labels"):
        ids = torch.randint(3, VOCAB, (num, 12), generator=generator)
        lengths = torch.randint(4, 13, (num,), generator=generator)
        mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
        items = {"input_ids": ids * mask, "attention_mask": mask}
        if kind == "tokens+labels":  # targets shorter than the sources, padded with -100
            targets = torch.randint(3, VOCAB, (num, 6), generator=generator)
            target_lengths = torch.randint(2, 7, (num,), generator=generator)
            items["labels"] = targets.masked_fill(torch.arange(6)[None, :] >= target_lengths[:, None], -100)
        return [{key: value[i] for key, value in items.items()} for i in range(num)]
    if kind == "ids":
        return list(torch.randint(3, VOCAB, (num, 12), generator=generator))
    if kind.startswith("pixels:"):
        side = int(kind.split(":")[1])
        return [{"pixel_values": x} for x in torch.randn(num, 3, side, side, generator=generator)]
    if kind.startswith("pair:"):
        side = int(kind.split(":")[1])
        return list(torch.randn(num, 6, side, side, generator=generator))
    if kind.startswith("wave"):
        length = int(kind.split(":")[1]) if ":" in kind else 400
        if architecture.library == "hand":
            return list(torch.randn(num, length, generator=generator))
        return [{"input_values": x} for x in torch.randn(num, length, generator=generator)]
    if kind == "spectrogram":
        return [{"input_values": x} for x in torch.randn(num, 32, 16, generator=generator)]
    if kind.startswith("image:"):
        side = int(kind.split(":")[1])
        return list(torch.randn(num, 3, side, side, generator=generator))
    inputs = make_inputs(architecture, num, seed)  # the table's own kinds: "image:", "tokens", "tokens+eos", "audio"
    return list(inputs)


def _call(model: Any, batch: Any) -> Any:
    """The model on one batch: keyword arguments for a dict, token ids or Whisper's features for a Hugging Face
    model, the tensor itself otherwise."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if hasattr(model, "config") and not batch.is_floating_point():
        return model(input_ids=batch)
    if hasattr(model, "config") and batch.ndim == 3:
        return model(input_features=batch)
    return model(batch)


def _logits(output: Any) -> Any:
    from lightning_infomem.introspection import first_tensor

    value = getattr(output, "logits", None)
    if value is None and isinstance(output, Mapping):
        value = output.get("logits")
    return value if value is not None else first_tensor(output)


def _module(model: Any) -> Any:
    import torch
    from lightning.pytorch import LightningModule

    class Surveyed(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            logits = _logits(_call(self.model, batch))
            return logits.float().square().mean()  # a generic loss: the fit only moves the weights and statistics

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            _call(self.model, batch)

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    return Surveyed()


def _reduce(output: Any, reading: Any, masks: dict) -> Any:
    """The reduction a reading names, computed here from a raw output (the survey's own, not the package's)."""
    import torch

    value = output
    for key in reading.path:
        value = value[key] if isinstance(value, (Mapping, tuple, list)) else getattr(value, str(key))
    if not isinstance(value, torch.Tensor) and hasattr(value, "__getitem__"):
        from lightning_infomem.introspection import first_tensor

        value = first_tensor(value)
    value = value.movedim(reading.batch_axis, 0)
    if value.ndim == 1:
        return value[:, None]
    if reading.layout == "channels_first":
        return value.flatten(2).mean(2)
    if reading.layout == "channels_last":
        return value.flatten(1, -2).mean(1)
    if value.ndim == 2 or reading.layout == "flat":
        return value.flatten(1)
    value = value.flatten(1, -2)
    real = torch.ones(value.shape[:2], dtype=torch.bool)
    for key in reading.masks:
        if key in masks and tuple(masks[key].shape) == tuple(value.shape[:2]):
            real = real & masks[key]
    rows = torch.arange(value.shape[0])
    positions = torch.arange(value.shape[1])
    if reading.token == "mean":
        return (value * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp_min(1)
    if reading.token == "last":
        return value[rows, torch.where(real, positions, -1).amax(1).clamp_min(0)]
    return value[rows, torch.where(real, positions, value.shape[1]).amin(1).clamp_max(value.shape[1] - 1)]


def _token_ok(label: str, reading: Any, shape: tuple) -> bool:
    if reading.layout in ("channels_first", "channels_last"):
        got = "space-last" if reading.layout == "channels_last" else "space"
    elif reading.layout == "sequence":
        got = reading.token
    else:
        got = "flat"
    for option in label.split("|"):
        if option == got:
            return True
        if option == "mean+last" and got == ("last" if reading.causal else "mean"):
            return True
        square = len(shape) == 3 and math.isqrt(shape[1]) ** 2 == shape[1]
        if option == "first" and got == "mean" and square and reading.causal is not True:
            return True  # a block before the class token joins (CaiT's, XCiT's patch blocks)
    return False


def survey_one(architecture: Any) -> dict[str, Any]:
    """Fit, measure, check; a dict with ``verdict`` (right / said / wrong / crash / not built) and the reasons."""
    import torch
    from architecture_zoo import build
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from lightning_infomem import InformationMeasures, MeasurementSettings
    from lightning_infomem.introspection import batch_masks, named_layers

    started = time.perf_counter()
    try:
        model = build(architecture)
    except Exception as error:  # noqa: BLE001 - a model this library version does not have: said, not a verdict
        return {"name": architecture.name, "verdict": "not built", "why": f"{type(error).__name__}: {error}"[:160]}
    module = _module(model)
    for norm in module.modules():
        if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
            norm.momentum = None  # two steps set the running statistics
    recorded: dict[str, list] = {}

    class Recording(InformationMeasures):
        def _observe(self, measurement: Any, name: str, activations: Any) -> None:
            recorded.setdefault(name, []).append(activations.detach().clone())
            super()._observe(measurement, name, activations)

    callback = Recording(
        log_histograms=False, heatmap_every_n_measurements=0, settings=MeasurementSettings(calibration_samples=16)
    )
    num_val = 24
    train, val = _batches(architecture, 16, 0), _batches(architecture, num_val, 1)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(module, DataLoader(train, batch_size=8), DataLoader(val, batch_size=8))
        except Exception as error:  # noqa: BLE001 - a crash with the callback is a verdict, if not without it
            why = f"{type(error).__name__}: {error}"[:200]
            plain = Trainer(
                accelerator="cpu", max_epochs=1, limit_train_batches=2, num_sanity_val_steps=0, logger=False
            )
            try:
                plain.fit(_module(build(architecture)), DataLoader(train, batch_size=8), DataLoader(val, batch_size=8))
            except Exception:  # noqa: BLE001 - the model does not run on these inputs at all
                return {"name": architecture.name, "verdict": "not built", "why": f"does not run: {why}"}
            return {"name": architecture.name, "verdict": "crash", "why": why}
    said = sorted({note for reading in callback.readings.values() for note in reading.notes})
    bypassed = [str(w.message) for w in caught if "never fire" in str(w.message)]
    said += sorted({message[:200] for message in bypassed})

    # the raw outputs of the monitored modules on the validation batches, and at another input size
    modules = dict(named_layers(module))
    raw: dict[str, list] = {name: [] for name in callback.layer_names}
    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: raw[n].append(o)) for n in callback.layer_names]
    module.eval()
    batches = list(DataLoader(val, batch_size=8))
    with torch.no_grad():
        for batch in batches:
            _call(module.model, batch)
        other: dict[str, Any] = {}
        size = architecture.inputs.split(":")[1] if architecture.inputs.startswith(("image:", "pixels:")) else None
        if size is not None:
            for handle in handles:
                handle.remove()
            handles = [
                modules[n].register_forward_hook(lambda m, a, o, n=n: other.setdefault(n, o))
                for n in callback.layer_names
            ]
            try:
                larger = next(iter(DataLoader(_batches(architecture, 2, 2, size=2 * int(size)), batch_size=2)))
                _call(module.model, larger)
            except Exception:  # noqa: BLE001 - a model of one input size: no channel check
                other = {}
    for handle in handles:
        handle.remove()

    problems = []
    for name in callback.layer_names:
        reading = callback.readings.get(name)
        outputs = raw[name]
        applications = len(outputs) // len(batches) if batches else 0
        series = [s for s in callback.series_names if s == name or s.startswith(f"{name}.application_")]
        if any(repr(name) in message for message in bypassed):
            continue  # its hooks never fire (the model calls its forward directly): said, with the fix
        if reading is None or not outputs:
            problems.append(f"{name}: not measured")
            continue
        masks = [batch_masks(batch) for batch in batches]
        reduced = [_reduce(out, reading, masks[i // max(applications, 1)]) for i, out in enumerate(outputs)]
        measured = [torch.cat(recorded.get(s, [torch.zeros(0)])) for s in series]
        rows = sum(len(m) for m in measured)
        if len(series) == 1 and rows != num_val:
            problems.append(f"{name}: {rows} rows for {num_val} samples ({applications} calls per batch, pooled)")
            continue
        expected = torch.cat(reduced) if len(series) == 1 else None
        if expected is not None and (
            expected.shape != measured[0].shape or not torch.allclose(expected.float(), measured[0].float(), 1e-4, 1e-5)
        ):
            problems.append(f"{name}: rows differ from the reduction the start line names ({reading.describe()})")
        first = outputs[0]
        from lightning_infomem.introspection.readings import select

        main = select(first, reading.path) if reading.path else _main_tensor(first)
        shape = tuple(main.movedim(reading.batch_axis, 0).shape) if hasattr(main, "shape") else ()
        label = "space-last" if architecture.channels_last and architecture.reading == "space" else architecture.reading
        if not _token_ok(label, reading, shape):
            problems.append(f"{name}: read as {reading.describe()} where the model calls for {label}")
        if reading.layout in ("channels_first", "channels_last") and name in other:
            bigger = select(other[name], reading.path) if reading.path else _main_tensor(other[name])
            small, large = main.movedim(reading.batch_axis, 0), bigger.movedim(reading.batch_axis, 0)
            axis = 1 if reading.layout == "channels_first" else small.ndim - 1
            if small.shape[axis] != large.shape[axis]:
                problems.append(f"{name}: the axis read as channels changes with the image size ({list(small.shape)})")
    verdict = "wrong" if problems else ("said" if said else "right")
    return {
        "name": architecture.name,
        "library": architecture.library,
        "verdict": verdict,
        "family": _family(module),
        "layers": [n.removeprefix("model.") for n in callback.layer_names],
        "readings": {n.removeprefix("model."): callback.readings[n].describe() for n in callback.readings},
        "why": problems or said,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _main_tensor(output: Any) -> Any:
    from lightning_infomem.introspection import first_tensor

    return first_tensor(output)


def _family(module: Any) -> str:
    from lightning_infomem.introspection import choose_default_layers

    return choose_default_layers(module).family


def models(words: list[str]) -> list[Any]:
    from architecture_zoo import ARCHITECTURES
    from survey_zoo import SURVEY

    everything = [*ARCHITECTURES, *SURVEY]
    return [a for a in everything if not words or any(w in f"{a.library} {a.name}".lower() for w in words)]


def markdown(rows: list[dict[str, Any]]) -> str:
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("right", "said", "wrong", "crash", "not built")}
    lines = [
        f"{len(rows)} models: {counts['right']} right, {counts['said']} ambiguous and said, {counts['wrong']} wrong, "
        f"{counts['crash']} crashes, {counts['not built']} not built.",
        "",
        "| Model | Library | Found as | Verdict | How the layers are read |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        how = "; ".join(sorted(set(row.get("readings", {}).values()))) or "-"
        note = "" if row["verdict"] == "right" else f" ({'; '.join(row['why'])[:160]})"
        family = row.get("family") or "-"
        lines.append(f"| {row['name']} | {row.get('library', '')} | {family} | {row['verdict']}{note} | {how} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("words", nargs="*", help="only the models whose name contains one of these (any case)")
    parser.add_argument("--table", action="store_true", help="print the markdown table of docs/recipes.md at the end")
    options = parser.parse_args()
    words = [word.lower() for word in options.words]
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    rows = []
    for architecture in models(words):
        row = survey_one(architecture)
        rows.append(row)
        why = row.get("why") or ""
        print(
            f"{row['name']} ({row.get('library', '')}): {row['verdict']} {why} [{row.get('seconds', 0)} s]", flush=True
        )
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("right", "said", "wrong", "crash", "not built")}
    print(f"{len(rows)} models: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
    if options.table:
        print(markdown(rows))


if __name__ == "__main__":
    main()
