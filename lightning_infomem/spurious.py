"""The critical-neuron probe: do a few units carry a group's predictions?

After You et al., "The Silent Majority: Demystifying Memorization Effect in the Presence of
Spurious Correlations" (2025). See ``docs/spurious.md``. The unit scores and masks are in
`lightning_infomem.functional.spurious`; masked consistency training in
`lightning_infomem.callbacks.masked_consistency`.

`modify_copy` zeroes, re-initialises (``N(0, sigma^2)``) or rewinds chosen units or weights on a
deep copy; the model passed in is never changed. `probe_critical_neurons` runs the whole probe and
returns per-group accuracy before and after each modification (`ProbeResult`, as a markdown table
or JSON).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from lightning_infomem.functional.groups import group_accuracy_counts
from lightning_infomem.functional.spurious import (
    Unit,
    WeightMasks,
    critical_units,
    predict_in_batches,
    random_units,
    supported_layers,
    top_weights,
)

__all__ = ["ProbeResult", "modify_copy", "probe_critical_neurons"]

MODIFICATIONS = ("zero", "reinit", "rewind")


def _rewind_tensor(rewind_state: Any, key: str, like: Tensor) -> Tensor:
    if rewind_state is None:
        raise ValueError('modification "rewind" needs rewind_state: an earlier state_dict or model of the same kind')
    state = rewind_state.state_dict() if isinstance(rewind_state, nn.Module) else rewind_state
    if key not in state:
        raise ValueError(f"rewind_state has no entry {key!r}; pass the state_dict of the same model at an earlier step")
    value = state[key]
    if value.shape != like.shape:
        raise ValueError(f"rewind_state[{key!r}] has shape {tuple(value.shape)}, the model {tuple(like.shape)}")
    return value.to(like.device, like.dtype)


@torch.no_grad()
def modify_copy(
    model: nn.Module,
    units: Union[Sequence[Unit], WeightMasks],
    modification: str = "zero",
    sigma: float = 0.01,
    rewind_state: Optional[Union[Mapping[str, Tensor], nn.Module]] = None,
    generator: Optional[torch.Generator] = None,
) -> nn.Module:
    """A deep copy of ``model`` with ``units`` (or single weights, given as `top_weights` masks) modified.

    ``"zero"``: weights (and the bias of a unit) set to 0. ``"reinit"``: weights drawn from
    ``N(0, sigma^2)``, a unit's bias set to 0. ``"rewind"``: weights and bias taken from
    ``rewind_state`` (a ``state_dict`` or a model of the same architecture at an earlier step).
    ``model`` itself is never changed.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(3, 2)
        >>> copy_ = modify_copy(model, [Unit("", 0)], "zero")
        >>> bool(copy_.weight[0].abs().sum() == 0), bool(model.weight[0].abs().sum() > 0)
        (True, True)
    """
    if modification not in MODIFICATIONS:
        raise ValueError(f"modification must be one of {MODIFICATIONS}, received {modification!r}")
    if modification == "reinit" and sigma < 0:
        raise ValueError(f"sigma must be non-negative, received {sigma}")
    new = copy.deepcopy(model)
    modules = dict(new.named_modules())

    def key(layer: str, what: str) -> str:
        return f"{layer}.{what}" if layer else what

    def replacement(layer: str, what: str, target: Tensor) -> Tensor:
        if modification == "zero":
            return torch.zeros_like(target)
        if modification == "reinit":
            if what == "bias":
                return torch.zeros_like(target)
            noise = torch.randn(target.shape, generator=generator) * sigma
            return noise.to(target.device, target.dtype)
        return _rewind_tensor(rewind_state, key(layer, what), target)

    if isinstance(units, Mapping):
        supported_layers(new, list(units))
        for layer, mask in units.items():
            weight = modules[layer].weight
            if mask.shape != weight.shape or mask.dtype != torch.bool:
                raise ValueError(f"the mask of {layer!r} must be a bool tensor of shape {tuple(weight.shape)}")
            mask = mask.to(weight.device)
            weight.copy_(torch.where(mask, replacement(layer, "weight", weight), weight))
        return new
    supported_layers(new, sorted({u.layer for u in units}))
    for unit in units:
        module = modules[unit.layer]
        if not 0 <= unit.index < module.weight.shape[0]:
            raise ValueError(f"unit {unit.index} is out of range for {unit.layer!r} ({module.weight.shape[0]} units)")
        module.weight[unit.index] = replacement(unit.layer, "weight", module.weight)[unit.index]
        if module.bias is not None:
            module.bias[unit.index] = replacement(unit.layer, "bias", module.bias)[unit.index]
    return new


def _group_accuracy(model: nn.Module, x: Tensor, y: Tensor, groups: Tensor, num_groups: int) -> list[float]:
    correct, total = group_accuracy_counts(predict_in_batches(model, x), y, groups, num_groups)
    acc = correct.double() / total.double().clamp(min=1)
    return [float("nan") if int(t) == 0 else float(a) for a, t in zip(acc, total, strict=True)]


@dataclass
class ProbeResult:
    """Per-group accuracy before and after each modification of the probe.

    ``before``: per-group accuracy of the unmodified model. ``rows``: one dict per (group whose
    units were chosen, selection, modification) with ``units`` (``[layer, index, score]``),
    ``after`` (per-group accuracy, averaged over repeats for ``"reinit"``) and ``change``.
    """

    num_groups: int
    before: list[float]
    rows: list[dict[str, Any]] = field(default_factory=list)
    group_names: Optional[list[str]] = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)

    def to_json(self, path: Optional[str] = None) -> str:
        """The result as JSON text; also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w") as handle:
                handle.write(text)
        return text

    def markdown(self) -> str:
        """A markdown table: one line per row, per-group accuracy after (change in points)."""
        names = self.group_names or [f"g{g}" for g in range(self.num_groups)]
        lines = ["| units of | selection | modification | " + " | ".join(names) + " |"]
        lines.append("|" + " --- |" * (3 + self.num_groups))
        lines.append("| - | - | none | " + " | ".join(f"{a:.3f}" for a in self.before) + " |")
        for row in self.rows:
            cells = [f"{a:.3f} ({100 * c:+.1f})" for a, c in zip(row["after"], row["change"], strict=True)]
            owner = "-" if row["group"] is None else names[row["group"]]
            lines.append(f"| {owner} | {row['selection']} | {row['modification']} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def probe_critical_neurons(
    model: nn.Module,
    train: tuple[Tensor, Tensor, Tensor],
    evaluate: tuple[Tensor, Tensor, Tensor],
    num_groups: int,
    k: int = 3,
    selections: Sequence[str] = ("gradient", "weight", "random"),
    modifications: Sequence[str] = ("zero", "reinit"),
    weight_fraction: Optional[float] = None,
    num_samples: int = 200,
    sigma: float = 0.01,
    repeats: int = 5,
    rewind_state: Optional[Union[Mapping[str, Tensor], nn.Module]] = None,
    layers: Optional[Iterable[str]] = None,
    seed: int = 0,
    group_names: Optional[list[str]] = None,
) -> ProbeResult:
    """Find critical units and measure per-group accuracy before and after modifying them on a copy.

    Args:
        model: a trained classifier returning logits; it is not changed.
        train: ``(x, y, groups)`` training samples; the units of group ``g`` are scored on its samples.
        evaluate: ``(x, y, groups)`` samples the accuracy is measured on (for example a balanced test set).
        num_groups: number of groups.
        k: units per selection.
        selections: any of ``"gradient"`` (per group, as in the paper), ``"weight"`` (largest weight
            norm, one choice for all groups) and ``"random"`` (``k`` random units per group, the control).
        modifications: any of ``"zero"``, ``"reinit"`` and ``"rewind"`` (needs ``rewind_state``).
        weight_fraction: if given, also modify the top ``weight_fraction`` of single weights by magnitude.
        num_samples: lowest-confidence samples per group for the gradient score (200 in the paper).
        sigma: standard deviation of the re-initialisation.
        repeats: re-initialisations averaged for ``"reinit"``.
        rewind_state: an earlier ``state_dict`` or model for ``"rewind"``.
        layers: names of the linear / conv layers to consider (default: all).
        seed: seeds the random units and re-initialisations.
        group_names: labels for the table.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> x, y, g = torch.randn(40, 4), torch.randint(0, 2, (40,)), torch.randint(0, 2, (40,))
        >>> result = probe_critical_neurons(model, (x, y, g), (x, y, g), num_groups=2, k=1, repeats=2)
        >>> len(result.rows)  # 2 groups x (gradient + random) x 2 modifications + weight x 2 modifications
        10
    """
    for name in selections:
        if name not in ("gradient", "weight", "random"):
            raise ValueError(f'selections must be among "gradient", "weight", "random"; received {name!r}')
    for name in modifications:
        if name not in MODIFICATIONS:
            raise ValueError(f"modifications must be among {MODIFICATIONS}; received {name!r}")
    if "rewind" in modifications and rewind_state is None:
        raise ValueError('modification "rewind" needs rewind_state (an earlier state_dict or model)')
    if repeats < 1:
        raise ValueError(f"repeats must be a positive integer, received {repeats}")
    layer_list = None if layers is None else list(layers)
    supported_layers(model, layer_list)
    xt, yt, gt = train
    xe, ye, ge = evaluate
    before = _group_accuracy(model, xe, ye, ge, num_groups)
    result = ProbeResult(num_groups=num_groups, before=before, group_names=group_names)
    generator = torch.Generator().manual_seed(seed)

    choices: list[tuple[Optional[int], str, Union[list[Unit], WeightMasks]]] = []
    for group in range(num_groups):
        in_group = gt == group
        if "gradient" in selections and bool(in_group.any()):
            units = critical_units(model, xt[in_group], yt[in_group], k, "gradient", layer_list, num_samples)
            choices.append((group, "gradient", units))
        if "random" in selections:
            choices.append((group, "random", random_units(model, k, generator, layer_list)))
    if "weight" in selections:
        choices.append((None, "weight", critical_units(model, k=k, method="weight", layers=layer_list)))
    if weight_fraction is not None:
        choices.append((None, f"top {weight_fraction:.2%} weights", top_weights(model, weight_fraction, layer_list)))

    for group, selection, chosen in choices:
        for modification in modifications:
            runs = repeats if modification == "reinit" else 1
            acc = torch.zeros(num_groups, dtype=torch.float64)
            for _ in range(runs):
                modified = modify_copy(model, chosen, modification, sigma, rewind_state, generator)
                acc += torch.tensor(_group_accuracy(modified, xe, ye, ge, num_groups), dtype=torch.float64)
            after = (acc / runs).tolist()
            if isinstance(chosen, Mapping):
                described: Any = {name: int(mask.sum()) for name, mask in chosen.items()}
            else:
                described = [[u.layer, u.index, u.score] for u in chosen]
            result.rows.append(
                {
                    "group": group,
                    "selection": selection,
                    "modification": modification,
                    "units": described,
                    "after": after,
                    "change": [a - b for a, b in zip(after, before, strict=True)],
                }
            )
    return result


# --------------------------------------------------------------------------- masked consistency training
