"""Per-sample curvature of the loss with respect to the input (Garg, Ravikumar & Roy, ICML 2024).

Finite-difference Hutchinson estimator with Rademacher probes. For a sample ``x`` with label ``y``,
per-sample loss ``L(x) = loss_fn(model(x), y)`` and probes ``v_1 .. v_n`` (entries +-1, shape of
``x``), with step ``h``:

* ``g_i = grad_x L(x + h v_i) - grad_x L(x)``, which is ``h H v_i + O(h^2)`` with ``H`` the input
  Hessian of ``L``;
* ``norm = mean_i ||g_i||_2``: the authors' code (github.com/purdue-nrl/Memorization-Curvature);
* ``squared_norm = mean_i ||g_i||_2^2``: the paper's formula; since ``E[v v^T] = I`` it converges to
  ``h^2 ||H||_F^2`` (not divided by ``h``, as in the authors' code);
* ``trace = mean_i (v_i . g_i) / h``: Hutchinson's estimate of ``tr(H)`` (this one *is* divided by
  ``h`` once, so it estimates the trace itself).

Every probe costs one forward and one backward pass of the batch, plus one of each for the clean
gradient: ``num_probes + 1`` forward-backward passes in all.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn

from lightning_infomem.checks import check_float, check_int, check_optional_int

__all__ = ["CurvatureEstimates", "input_loss_curvature", "input_loss_curvature_estimates", "rademacher_probes"]

LossFn = Callable[[Tensor, Tensor], Tensor]


class CurvatureEstimates(NamedTuple):
    """The three per-sample estimates of one pass, each ``[S]`` float.

    Attributes:
        norm: ``mean_i ||g_i||`` (authors' code; about ``h E||H v||``).
        squared_norm: ``mean_i ||g_i||^2`` (paper's formula; about ``h^2 ||H||_F^2``).
        trace: ``mean_i v_i . g_i / h`` (about ``tr(H)``).
    """

    norm: Tensor
    squared_norm: Tensor
    trace: Tensor


def rademacher_probes(
    shape: tuple[int, ...],
    num_probes: int,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
) -> Tensor:
    """``[num_probes, *shape]`` tensor of independent +-1 entries, drawn on the CPU from ``generator``.

    Drawn on the CPU so that the same generator gives the same probes on every device.

    Example:
        >>> import torch
        >>> probes = rademacher_probes((2, 3), 4, generator=torch.Generator().manual_seed(0))
        >>> probes.shape, sorted(probes.unique().tolist())
        (torch.Size([4, 2, 3]), [-1.0, 1.0])
    """
    bits = torch.randint(0, 2, (num_probes, *shape), generator=generator, dtype=torch.int8)
    return (bits.to(dtype) * 2 - 1).to(device)


def _default_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    return nn.functional.cross_entropy(outputs, targets, reduction="none")


def _per_sample_loss(model: Callable[[Tensor], Tensor], loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
    losses = loss_fn(model(x), y)
    if not isinstance(losses, Tensor) or losses.ndim == 0 or losses.shape[0] != x.shape[0]:
        shape = list(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(
            "loss_fn must return one loss per sample, shape [S] or [S, ...] (reduction='none'), for "
            f"{x.shape[0]} samples; received {shape}. A reduced (mean) loss would make the score depend "
            "on the batch size"
        )
    return losses.reshape(losses.shape[0], -1).sum(dim=1)


def _input_gradient(model: Callable[[Tensor], Tensor], loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    # The sum over the batch of per-sample losses: samples are independent in eval mode, so row s of
    # the gradient is the gradient of sample s's own loss.
    total = _per_sample_loss(model, loss_fn, x, y).sum()
    (grad,) = torch.autograd.grad(total, x)
    return grad


def _check_args(
    inputs: Tensor, targets: Tensor, num_probes: int, step: float, chunk_size: Optional[int]
) -> tuple[int, float, Optional[int]]:
    if not isinstance(inputs, Tensor) or inputs.ndim < 1:
        raise ValueError(f"inputs must be a tensor [S, ...], received {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise ValueError(f"inputs must be floating point (the loss is differentiated w.r.t. them), got {inputs.dtype}")
    if isinstance(targets, Tensor) and targets.ndim >= 1 and targets.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"inputs and targets must have the same number of samples, received {inputs.shape[0]} and "
            f"{targets.shape[0]}"
        )
    return (
        check_int(num_probes, "num_probes", minimum=1),
        check_float(step, "step", minimum=0.0, exclusive_minimum=True),
        check_optional_int(chunk_size, "chunk_size", minimum=1),
    )


def input_loss_curvature_estimates(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    num_probes: int = 10,
    step: float = 1e-3,
    loss_fn: Optional[LossFn] = None,
    *,
    generator: Optional[torch.Generator] = None,
    probes: Optional[Tensor] = None,
    chunk_size: Optional[int] = None,
) -> CurvatureEstimates:
    """All three curvature estimates of every sample in one pass: see `CurvatureEstimates`.

    Same arguments as `input_loss_curvature`, which returns one of them.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> estimates = input_loss_curvature_estimates(
        ...     model, torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]), generator=torch.Generator().manual_seed(0))
        >>> estimates.norm.shape, estimates.squared_norm.shape, estimates.trace.shape
        (torch.Size([5]), torch.Size([5]), torch.Size([5]))
    """
    num_probes, step, chunk_size = _check_args(inputs, targets, num_probes, step, chunk_size)
    loss_fn = _default_loss if loss_fn is None else loss_fn
    num_samples = inputs.shape[0]
    if probes is None:
        probes = rademacher_probes(tuple(inputs.shape), num_probes, generator, inputs.dtype, inputs.device)
    elif tuple(probes.shape) != (num_probes, *inputs.shape):
        raise ValueError(
            f"probes must have shape [num_probes, *inputs.shape] = {[num_probes, *inputs.shape]}, "
            f"received {list(probes.shape)}"
        )
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    was_training = [module.training for module in modules]
    for module in modules:
        module.train(False)
    if num_samples == 0:  # nothing to score: no forward pass (a model may not accept an empty batch)
        empty = inputs.new_zeros(0)
        return CurvatureEstimates(empty, empty.clone(), empty.clone())
    chunk = num_samples if chunk_size is None else chunk_size
    norm, squared, trace = [], [], []
    try:
        # Lightning runs validation/prediction under inference mode; the input gradient needs autograd,
        # and inference tensors must be cloned out of it before they can be saved for backward.
        with torch.inference_mode(False), torch.enable_grad():
            for start in range(0, num_samples, chunk):
                x = inputs[start : start + chunk].clone()
                y = targets[start : start + chunk].clone() if isinstance(targets, Tensor) else targets
                v = probes[:, start : start + chunk].clone().to(device=x.device, dtype=x.dtype)
                clean = _input_gradient(model, loss_fn, x, y)
                n = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
                s = torch.zeros_like(n)
                t = torch.zeros_like(n)
                for i in range(num_probes):
                    moved = x + step * v[i]
                    if i == 0 and not bool(torch.isfinite(moved).all()) and bool(torch.isfinite(x).all()):
                        raise ValueError(
                            f"step={step} moves the inputs out of the range of {x.dtype} (x + step * probe is not "
                            "finite), so every score would be NaN; the finite difference needs a small step, of the "
                            "order of 1e-3 times the inputs' scale (the paper: 1e-3)"
                        )
                    diff = (_input_gradient(model, loss_fn, moved, y) - clean).reshape(x.shape[0], -1)
                    sq = diff.square().sum(dim=1)
                    n += sq.sqrt()
                    s += sq
                    t += (v[i].reshape(x.shape[0], -1) * diff).sum(dim=1) / step
                norm.append(n / num_probes)
                squared.append(s / num_probes)
                trace.append(t / num_probes)
    finally:
        for module, mode in zip(modules, was_training, strict=True):
            module.train(mode)
    return CurvatureEstimates(torch.cat(norm), torch.cat(squared), torch.cat(trace))


def input_loss_curvature(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    num_probes: int = 10,
    step: float = 1e-3,
    squared: bool = False,
    loss_fn: Optional[LossFn] = None,
    *,
    generator: Optional[torch.Generator] = None,
    probes: Optional[Tensor] = None,
    chunk_size: Optional[int] = None,
) -> Tensor:
    """Curvature of each sample's loss with respect to its input: ``[S]`` float, higher is more curved.

    Finite-difference Hutchinson estimate (Garg, Ravikumar & Roy, ICML 2024): with Rademacher probes
    ``v_i`` and ``g_i = grad_x L(x + step v_i) - grad_x L(x)``, the score is ``mean_i ||g_i||``
    (``squared=False``, the authors' code) or ``mean_i ||g_i||^2`` (``squared=True``, the paper's
    formula). As in the authors' code the score is **not** divided by ``step``: with ``squared=True``
    and many probes it converges to ``step**2 * ||H||_F^2``, ``H`` the input Hessian of the sample's
    loss. The Hutchinson trace estimate ``mean_i v_i . g_i / step`` (divided by ``step`` once, so it
    estimates ``tr(H)``) comes from `input_loss_curvature_estimates`.

    The loss of each sample is its own (``reduction="none"``, summed over any non-batch dimensions), so a
    score does not depend on the batch size or on the other samples of the batch. ``model`` is put in
    eval mode while scoring (dropout off, BatchNorm on running statistics: samples independent) and every
    submodule's mode is restored afterwards. Gradients are taken with respect to the inputs only; no
    ``.grad`` is left on parameters. Works inside ``torch.inference_mode()`` (Lightning's validation and
    prediction loops).

    Args:
        model: a module or callable mapping ``inputs`` to outputs (logits).
        inputs: ``[S, ...]`` floating-point inputs, without augmentation.
        targets: ``[S, ...]`` targets (the labels as trained on), passed to ``loss_fn``.
        num_probes: Rademacher probes per sample (the paper: 10; 5 to 20 give the same rankings).
        step: finite-difference step ``h`` (the paper: 1e-3; robust in 1e-3 .. 1e-1). Use float64 inputs
            and model for very small steps.
        squared: average the squared norm instead of the norm.
        loss_fn: ``(outputs, targets) -> [S]`` per-sample loss; default cross-entropy with
            ``reduction="none"``.
        generator: random generator of the probes (reproducible scores); ``None``: the global one.
        probes: ``[num_probes, *inputs.shape]`` probes to use instead of drawing them.
        chunk_size: score at most this many samples per forward pass (bounds memory); the probes are drawn
            for all samples first, so the result does not depend on it.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> scores = input_loss_curvature(model, x, y, generator=torch.Generator().manual_seed(0))
        >>> scores.shape, bool((scores >= 0).all())
        (torch.Size([6]), True)
    """
    estimates = input_loss_curvature_estimates(
        model,
        inputs,
        targets,
        num_probes,
        step,
        loss_fn,
        generator=generator,
        probes=probes,
        chunk_size=chunk_size,
    )
    return estimates.squared_norm if squared else estimates.norm
