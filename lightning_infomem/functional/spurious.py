"""The math of spurious memorization in a few neurons (You et al., 2025): unit scores, weight masks, NT-Xent.

Tensors and modules in, tensors (or unit lists and masks) out; the probe that drives them is
`lightning_infomem.spurious.probe_critical_neurons`, the training callback
`lightning_infomem.callbacks.masked_consistency.MaskedConsistency`. See ``docs/spurious.md``.

* `critical_units` scores the output units of every ``nn.Linear`` (rows) and ``nn.Conv1d/2d/3d``
  (output channels) by the L2 norm of the loss gradient on a group's lowest-confidence training
  samples (``method="gradient"``), or by weight norm (``method="weight"``); `top_weights` picks the
  top x % of single weights by magnitude; `random_units` draws a control set.
* `magnitude_mask`, `masked_forward`, `nt_xent` and `masked_consistency_loss`: the masked view of a
  network and the symmetric NT-Xent loss that pulls it towards the full view.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_infomem.checks import check_int

__all__ = [
    "SUPPORTED_TYPES",
    "Unit",
    "WeightMasks",
    "critical_units",
    "lowest_confidence",
    "magnitude_mask",
    "masked_consistency_loss",
    "masked_forward",
    "nt_xent",
    "random_units",
    "supported_layers",
    "top_weights",
]

SUPPORTED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


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
def predict_in_batches(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
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
    prob = predict_in_batches(model, x).softmax(dim=1).gather(1, y.long()[:, None]).squeeze(1)
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
