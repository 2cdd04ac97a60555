"""Spurious memorization in a few neurons: a critical-neuron probe and masked consistency training.

After You et al., "The Silent Majority: Demystifying Memorization Effect in the Presence of
Spurious Correlations" (2025). See ``docs/spurious.md``.

* `critical_units` scores the output units of every ``nn.Linear`` (rows) and ``nn.Conv1d/2d/3d``
  (output channels) by the L2 norm of the loss gradient on a group's lowest-confidence training
  samples (``method="gradient"``), or by weight norm (``method="weight"``); `top_weights` picks the
  top x % of single weights by magnitude.
* `modify_copy` zeroes, re-initialises (``N(0, sigma^2)``) or rewinds those units or weights on a
  deep copy; the model passed in is never changed. `probe_critical_neurons` runs the whole probe
  and returns per-group accuracy before and after each modification (`ProbeResult`, as a markdown
  table or JSON).
* `masked_consistency_loss`, the `MaskedConsistency` callback and the `MaskedConsistencyModule`
  wrapper train a network with a magnitude-pruned masked view pulled towards the full view by a
  symmetric NT-Xent loss plus a weighted cross-entropy.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.func import functional_call

from lightning_infomem.checks import check_int
from lightning_infomem.groups import group_accuracy_counts

__all__ = [
    "MaskedConsistency",
    "MaskedConsistencyModule",
    "ProbeResult",
    "Unit",
    "critical_units",
    "lowest_confidence",
    "magnitude_mask",
    "masked_consistency_loss",
    "masked_forward",
    "modify_copy",
    "nt_xent",
    "probe_critical_neurons",
    "random_units",
    "supported_layers",
    "top_weights",
]

SUPPORTED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
MODIFICATIONS = ("zero", "reinit", "rewind")
WeightMasks = dict[str, Tensor]


@dataclass(frozen=True)
class Unit:
    """One output unit: row ``index`` of a linear layer's weight or output channel ``index`` of a conv."""

    layer: str
    index: int
    score: float = float("nan")


def supported_layers(model: nn.Module, layers: Optional[Iterable[str]] = None) -> dict[str, nn.Module]:
    """The linear and conv layers of ``model`` by qualified name (all of them, or the ``layers`` named).

    Raises:
        ValueError: a named layer does not exist or is not ``nn.Linear`` / ``nn.Conv1d/2d/3d``, or
            the model has no such layer.

    Example:
        >>> from torch import nn
        >>> list(supported_layers(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))))
        ['0', '2']
    """
    modules = dict(model.named_modules())
    if layers is None:
        found = {name: m for name, m in modules.items() if isinstance(m, SUPPORTED_TYPES)}
        if not found:
            raise ValueError(
                f"{type(model).__name__} has no nn.Linear or nn.Conv1d/2d/3d layer; the probe and the masks "
                "only handle those (wrap other weights in one of them)"
            )
        return found
    result = {}
    for name in layers:
        if name not in modules:
            raise ValueError(f"layer {name!r} is not a submodule of {type(model).__name__}; names: {list(modules)[1:]}")
        module = modules[name]
        if not isinstance(module, SUPPORTED_TYPES):
            raise ValueError(
                f"layer {name!r} is a {type(module).__name__}, which is not supported: only nn.Linear and "
                "nn.Conv1d/2d/3d have output units to score; leave it out of `layers`"
            )
        result[name] = module
    if not result:
        raise ValueError("layers is empty; pass None for every linear and conv layer")
    return result


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def lowest_confidence(model: nn.Module, x: Tensor, y: Tensor, num_samples: int = 200) -> Tensor:
    """Indices of the ``num_samples`` samples with the lowest softmax probability of their true class.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> lowest_confidence(nn.Linear(4, 3), torch.randn(10, 4), torch.zeros(10, dtype=torch.long), 3).shape
        torch.Size([3])
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, received {num_samples}")
    prob = _predict(model, x).softmax(dim=1).gather(1, y.long()[:, None]).squeeze(1)
    return prob.argsort()[: min(num_samples, len(prob))]


def critical_units(
    model: nn.Module,
    x: Optional[Tensor] = None,
    y: Optional[Tensor] = None,
    k: int = 3,
    method: str = "gradient",
    layers: Optional[Iterable[str]] = None,
    num_samples: int = 200,
) -> list[Unit]:
    """The global top ``k`` output units (linear rows / conv output channels) of ``model``.

    ``method="gradient"``: the score of a unit is the L2 norm of its slice of the cross-entropy
    gradient (weight and bias) on the ``num_samples`` samples of ``(x, y)`` with the lowest
    true-class probability (pass one group's training samples). ``method="weight"``: the L2 norm of
    the unit's weights (``x`` and ``y`` are not used). Gradients are taken in eval mode and do not
    touch the model's ``.grad``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> units = critical_units(model, torch.randn(20, 4), torch.randint(0, 3, (20,)), k=2)
        >>> len(units), units[0].score >= units[1].score
        (2, True)
    """
    k = check_int(k, "k", minimum=1)
    found = supported_layers(model, layers)
    scores: list[Unit] = []
    if method == "weight":
        for name, module in found.items():
            norms = module.weight.detach().flatten(1).norm(dim=1)
            scores += [Unit(name, i, float(v)) for i, v in enumerate(norms)]
    elif method == "gradient":
        if x is None or y is None:
            raise ValueError('method="gradient" needs the samples x and labels y (one group\'s training samples)')
        idx = lowest_confidence(model, x, y, num_samples)
        params = []
        for module in found.values():
            params.append(module.weight)
            if module.bias is not None:
                params.append(module.bias)
        was_training = model.training
        model.eval()
        try:
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx].long())
            grads = iter(torch.autograd.grad(loss, params, allow_unused=True))
        finally:
            model.train(was_training)
        for name, module in found.items():
            gw = next(grads)
            sq = torch.zeros(module.weight.shape[0]) if gw is None else gw.detach().flatten(1).pow(2).sum(1).cpu()
            if module.bias is not None:
                gb = next(grads)
                if gb is not None:
                    sq = sq + gb.detach().pow(2).cpu()
            scores += [Unit(name, i, float(v)) for i, v in enumerate(sq.sqrt())]
    else:
        raise ValueError(f'method must be "gradient" or "weight", received {method!r}')
    scores.sort(key=lambda u: -u.score)
    return scores[:k]


def random_units(
    model: nn.Module, k: int, generator: Optional[torch.Generator] = None, layers: Optional[Iterable[str]] = None
) -> list[Unit]:
    """``k`` output units drawn uniformly without replacement from all units of the supported layers.

    Example:
        >>> from torch import nn
        >>> import torch
        >>> len(random_units(nn.Linear(4, 8), 3, torch.Generator().manual_seed(0)))
        3
    """
    found = supported_layers(model, layers)
    everything = [Unit(name, i) for name, m in found.items() for i in range(m.weight.shape[0])]
    if not 1 <= k <= len(everything):
        raise ValueError(f"k must be between 1 and the number of units ({len(everything)}), received {k}")
    order = torch.randperm(len(everything), generator=generator)[:k]
    return [everything[int(i)] for i in order]


def top_weights(model: nn.Module, fraction: float, layers: Optional[Iterable[str]] = None) -> WeightMasks:
    """Boolean masks (``True`` = chosen) of the top ``fraction`` of single weights by magnitude, globally.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> masks = top_weights(nn.Linear(10, 10), 0.05)
        >>> int(masks[""].sum())
        5
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], received {fraction}")
    found = supported_layers(model, layers)
    flat = torch.cat([m.weight.detach().abs().flatten().cpu() for m in found.values()])
    count = max(1, round(fraction * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[flat.topk(count).indices] = True
    masks, start = {}, 0
    for name, module in found.items():
        n = module.weight.numel()
        masks[name] = chosen[start : start + n].reshape(module.weight.shape).to(module.weight.device)
        start += n
    return masks


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
    correct, total = group_accuracy_counts(_predict(model, x), y, groups, num_groups)
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


@torch.no_grad()
def magnitude_mask(
    model: nn.Module, fraction: float = 0.01, layers: Optional[Iterable[str]] = None, prune: str = "smallest"
) -> WeightMasks:
    """Keep-masks (``True`` = kept) that prune ``fraction`` of the weights of the linear / conv layers.

    Global magnitude pruning: the ``fraction`` of weights with the smallest magnitude
    (``prune="smallest"``) or the largest (``prune="largest"``) are masked out. Biases are kept.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> masks = magnitude_mask(nn.Linear(10, 10), fraction=0.1)
        >>> int((~masks[""]).sum())
        10
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), received {fraction}")
    if prune not in ("smallest", "largest"):
        raise ValueError(f'prune must be "smallest" or "largest", received {prune!r}')
    found = supported_layers(model, layers)
    if fraction == 0.0:
        return {name: torch.ones_like(m.weight, dtype=torch.bool) for name, m in found.items()}
    chosen = top_weights(model, fraction, list(found)) if prune == "largest" else None
    if chosen is None:
        flat = torch.cat([m.weight.detach().abs().flatten().cpu() for m in found.values()])
        count = max(1, round(fraction * flat.numel()))
        pruned = torch.zeros(flat.numel(), dtype=torch.bool)
        pruned[flat.topk(count, largest=False).indices] = True
        chosen, start = {}, 0
        for name, module in found.items():
            n = module.weight.numel()
            chosen[name] = pruned[start : start + n].reshape(module.weight.shape).to(module.weight.device)
            start += n
    return {name: ~mask for name, mask in chosen.items()}


def masked_forward(model: nn.Module, masks: WeightMasks, *args: Any, **kwargs: Any) -> Any:
    """``model(*args, **kwargs)`` with each masked layer's weight replaced by ``weight * mask``.

    Gradients flow to the original weights (through the mask); the model's parameters are not changed.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(3, 2)
        >>> out = masked_forward(layer, {"": torch.zeros(2, 3, dtype=torch.bool)}, torch.ones(1, 3))
        >>> torch.allclose(out, layer.bias)
        True
    """
    found = supported_layers(model, list(masks))
    replaced = {}
    for name, module in found.items():
        mask = masks[name]
        if mask.shape != module.weight.shape:
            raise ValueError(
                f"mask of {name!r} has shape {tuple(mask.shape)}, the weight {tuple(module.weight.shape)}; "
                "recompute the masks with magnitude_mask(model)"
            )
        key = f"{name}.weight" if name else "weight"
        replaced[key] = module.weight * mask.to(module.weight.device, module.weight.dtype)
    return functional_call(model, replaced, args, kwargs, strict=False)


def nt_xent(anchor: Tensor, positive: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent of ``anchor`` against ``positive``: row ``i`` of one is the positive of row ``i`` of the other.

    Rows are L2-normalised; the negatives of an anchor are every other row of both views
    (the SimCLR form, with ``2B - 1`` candidates per anchor). Returns the mean over ``2B`` anchors.

    Example:
        >>> import torch
        >>> z = torch.eye(4)
        >>> bool(nt_xent(z, z) < nt_xent(z, z.roll(1, 0)))
        True
    """
    if anchor.shape != positive.shape or anchor.ndim != 2:
        raise ValueError(
            f"anchor and positive must both be [B, D], received {tuple(anchor.shape)} and {tuple(positive.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, received {temperature}")
    b = anchor.shape[0]
    z = nn.functional.normalize(torch.cat([anchor, positive]), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=sim.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(sim.device)
    return nn.functional.cross_entropy(sim, target)


def masked_consistency_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    masks: WeightMasks,
    temperature: float = 0.5,
    ce_weight: float = 0.2,
    feature_layer: Optional[str] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Symmetric NT-Xent between the full and the masked view plus ``ce_weight`` x cross-entropy.

    ``loss = (nt_xent(full, masked.detach()) + nt_xent(masked, full.detach())) / 2 + ce_weight * CE(full, y)``.
    ``full`` and ``masked`` are the model's outputs (logits), or the (flattened) outputs of the
    submodule named ``feature_layer`` in each view. Returns ``(loss, parts)`` with ``parts`` holding
    ``consistency`` and ``cross_entropy`` (detached).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(4, 3)
        >>> masks = magnitude_mask(model, 0.25)
        >>> loss, parts = masked_consistency_loss(model, torch.randn(8, 4), torch.randint(0, 3, (8,)), masks)
        >>> loss.requires_grad, sorted(parts)
        (True, ['consistency', 'cross_entropy'])
    """
    if ce_weight < 0:
        raise ValueError(f"ce_weight must be non-negative, received {ce_weight}")
    captured: list[Tensor] = []
    handle = None
    if feature_layer is not None:
        modules = dict(model.named_modules())
        if feature_layer not in modules:
            raise ValueError(f"feature_layer {feature_layer!r} is not a submodule of {type(model).__name__}")

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                raise ValueError(f"feature_layer {feature_layer!r} must return a tensor, got {type(output).__name__}")
            captured.append(output.flatten(1))

        handle = modules[feature_layer].register_forward_hook(hook)
    try:
        logits = model(x)
        masked_logits = masked_forward(model, masks, x)
    finally:
        if handle is not None:
            handle.remove()
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise ValueError("the model must return logits [B, C] for masked consistency training")
    full, masked = (captured[0], captured[-1]) if feature_layer is not None else (logits, masked_logits)
    consistency = 0.5 * (nt_xent(full, masked.detach(), temperature) + nt_xent(masked, full.detach(), temperature))
    cross_entropy = nn.functional.cross_entropy(logits, y.long())
    loss = consistency + ce_weight * cross_entropy
    return loss, {"consistency": consistency.detach(), "cross_entropy": cross_entropy.detach()}


class MaskedConsistency(Callback):
    """Recomputes the magnitude mask of ``pl_module`` at the start of every training epoch.

    Use ``callback.loss(pl_module, x, y)`` in your ``training_step`` in place of the cross-entropy
    (or wrap the module in `MaskedConsistencyModule`, which does this for you).

    Args:
        fraction: fraction of the weights pruned in the masked view (1 % by default).
        temperature: NT-Xent temperature.
        ce_weight: weight of the cross-entropy term.
        layers: linear / conv layers to mask (qualified names in ``pl_module``; default all).
        prune: ``"smallest"`` (magnitude pruning) or ``"largest"`` magnitudes are masked.
        feature_layer: submodule whose output the NT-Xent compares (default: the logits).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> callback = MaskedConsistency(fraction=0.1)
        >>> model = nn.Linear(4, 3)
        >>> callback.update_masks(model)
        >>> loss, parts = callback.loss(model, torch.randn(8, 4), torch.randint(0, 3, (8,)))
        >>> int((~callback.masks[""]).sum())
        1
    """

    def __init__(
        self,
        fraction: float = 0.01,
        temperature: float = 0.5,
        ce_weight: float = 0.2,
        layers: Optional[Iterable[str]] = None,
        prune: str = "smallest",
        feature_layer: Optional[str] = None,
    ) -> None:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction must be in [0, 1), received {fraction}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, received {temperature}")
        if ce_weight < 0:
            raise ValueError(f"ce_weight must be non-negative, received {ce_weight}")
        if prune not in ("smallest", "largest"):
            raise ValueError(f'prune must be "smallest" or "largest", received {prune!r}')
        self.fraction = fraction
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.layers = None if layers is None else list(layers)
        self.prune = prune
        self.feature_layer = feature_layer
        self.masks: Optional[WeightMasks] = None
        self.mask_updates = 0

    def update_masks(self, model: nn.Module) -> None:
        """Recompute the masks from the current weights of ``model``."""
        self.masks = magnitude_mask(model, self.fraction, self.layers, self.prune)
        self.mask_updates += 1

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.update_masks(pl_module)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The masked consistency loss of a batch (computes the masks first if there are none)."""
        if self.masks is None:
            self.update_masks(model)
        assert self.masks is not None
        return masked_consistency_loss(model, x, y, self.masks, self.temperature, self.ce_weight, self.feature_layer)


class MaskedConsistencyModule(LightningModule):
    """Wraps an existing classifier ``LightningModule`` to train it with masked consistency.

    ``training_step`` computes the masked consistency loss of ``module`` on ``batch_to_xy(batch)``
    (default: ``batch`` is ``(x, y, ...)``), logging ``train_loss``, ``train_consistency`` and
    ``train_cross_entropy``; the masks are recomputed at the start of every epoch. The arguments
    are those of `MaskedConsistency`. Validation, test,
    prediction and optimizers are the wrapped module's. ``forward`` is the wrapped module's.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Net(LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Linear(4, 3)
        ...     def forward(self, x):
        ...         return self.net(x)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> wrapped = MaskedConsistencyModule(Net(), fraction=0.1)
        >>> wrapped(torch.randn(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        module: LightningModule,
        fraction: float = 0.01,
        temperature: float = 0.5,
        ce_weight: float = 0.2,
        layers: Optional[Iterable[str]] = None,
        prune: str = "smallest",
        batch_to_xy: Optional[Callable[[Any], tuple[Tensor, Tensor]]] = None,
        feature_layer: Optional[str] = None,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ValueError(f"module must be a LightningModule (or nn.Module), received {type(module).__name__}")
        self.module = module
        self.consistency = MaskedConsistency(fraction, temperature, ce_weight, layers, prune, feature_layer)
        supported_layers(module, self.consistency.layers)
        self.batch_to_xy = batch_to_xy

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def on_train_epoch_start(self) -> None:
        self.consistency.update_masks(self.module)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = self.batch_to_xy(batch) if self.batch_to_xy is not None else (batch[0], batch[1])
        loss, parts = self.consistency.loss(self.module, x, y)
        self.log("train_loss", loss)
        self.log("train_consistency", parts["consistency"])
        self.log("train_cross_entropy", parts["cross_entropy"])
        return loss

    def _delegate(self, step: str, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped module's step with this module's trainer, so that its ``self.log`` calls work."""
        if self._trainer is not None:
            self.module.trainer = self._trainer
            self.module._current_fx_name = self._current_fx_name
        return getattr(self.module, step)(*args, **kwargs)

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._delegate("validation_step", *args, **kwargs)

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._delegate("test_step", *args, **kwargs)

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._delegate("predict_step", *args, **kwargs)

    def configure_optimizers(self) -> Any:
        return self.module.configure_optimizers()
