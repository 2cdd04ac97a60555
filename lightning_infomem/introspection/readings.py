"""Turning a module's output into ``[batch, neurons]`` activations, as a `Reading` says.

A `Reading` is what `observe_readings` (`lightning_infomem.introspection.probe`) saw a module do on the first
measured batch: which tensor of its output is the main stream, which axis is the batch, where the neurons are,
and, for sequences, which token stands for the sequence and which mask says what is real. `read` applies it.
Without a reading, `to_neuron_activations` uses the usual conventions (the first tensor, batch first, channels
first for outputs with two or more spatial axes, a sequence otherwise).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Literal, Optional, Union

import torch
from torch import Tensor

__all__ = [
    "MASK_KEYS",
    "Layout",
    "OutputTransform",
    "Reading",
    "SequenceReduction",
    "batch_masks",
    "empty_rows",
    "mask_problems",
    "align_mask",
    "first_tensor",
    "output_leaves",
    "read",
    "select",
    "to_neuron_activations",
]

OutputTransform = Callable[[Any], Tensor]
SequenceReduction = Literal["first", "mean", "last"]
Layout = Literal["flat", "channels_first", "channels_last", "sequence"]
Path = tuple[Union[int, str], ...]

MASK_KEYS = ("attention_mask", "decoder_attention_mask", "labels")
"""The keys of a batch mapping whose ``[batch, tokens]`` tensors say which tokens are real (``labels``: those that
are not -100, Hugging Face's ignored label)."""


@dataclasses.dataclass(frozen=True)
class Reading:
    """How one module's output becomes ``[batch, neurons]``.

    Attributes:
        path: where the main stream is in the output (indices of tuples, keys of mappings, dataclass fields);
            ``()`` for the output itself, or for the first tensor found when the output is a container.
        batch_axis: the output's axis of samples (moved first before reading).
        layout: ``"flat"`` (``[batch]`` or ``[batch, neurons]``), ``"channels_first"`` / ``"channels_last"``
            (neurons are the channels; the other axes are averaged), or ``"sequence"``
            (``[batch, tokens, neurons]``); ``None``: by the number of axes (4 or more: channels first, 3: a
            sequence).
        token: for a sequence, the token read: ``"first"``, ``"last"`` (the last real token) or ``"mean"`` (the
            mean over real tokens).
        masks: the batch's mask keys (`MASK_KEYS`) whose real tokens are used; several are combined (a token is
            real where every one says so). Masks whose shape is not the output's ``[batch, tokens]`` (after
            ``mask_padding``) are not used.
        mask_padding: the tokens the model adds before and after the mask's tokens, as observed (``(1, 0)``: it
            prepends one, as a prompt or class token; negative: it drops that many). Added tokens count as real in
            samples that have a real token.
        causal: whether a changed last token left the earlier positions unchanged (``None``: not observed).
        notes: what had to be assumed, said once at the start of the run.

    Example:
        >>> import torch
        >>> reading = Reading(batch_axis=1, layout="sequence", token="last")
        >>> read(torch.arange(24.0).reshape(3, 2, 4), reading).shape  # [tokens, batch, hidden]
        torch.Size([2, 4])
    """

    path: Path = ()
    batch_axis: int = 0
    layout: Optional[Layout] = None
    token: SequenceReduction = "first"
    masks: tuple[str, ...] = ()
    mask_padding: tuple[int, int] = (0, 0)
    causal: Optional[bool] = None
    notes: tuple[str, ...] = ()

    def describe(self, shape: Optional[Sequence[int]] = None) -> str:
        """One phrase: the tensor, its batch axis, the neurons and the token (for the start line)."""
        parts = []
        if self.path:
            parts.append("output" + "".join(f"[{p!r}]" for p in self.path))
        if self.batch_axis:
            parts.append(f"batch on axis {self.batch_axis}")
        if self.layout == "channels_first":
            parts.append("channels first, averaged over space")
        elif self.layout == "channels_last":
            parts.append("channels last, averaged over space")
        elif self.layout == "sequence":
            token = {"first": "the first token", "last": "the last real token", "mean": "the mean over tokens"}
            causal = {True: " (causal: observed)", False: " (not causal: observed)", None: ""}[self.causal]
            mask = f", real tokens from {'+'.join(self.masks)}" if self.masks else ""
            before, after = self.mask_padding
            if self.masks and (before or after):
                added = [
                    f"{abs(n)} token(s) {'added' if n > 0 else 'dropped'} {where}"
                    for n, where in ((before, "before"), (after, "after"))
                    if n
                ]
                mask += f" ({' and '.join(added)} them by the model: observed)"
            parts.append(f"{token[self.token]}{causal}{mask}")
        return ", ".join(parts) or "as is"


def batch_masks(batch: Any) -> dict[str, Tensor]:
    """The ``[batch, tokens]`` masks a batch mapping carries (`MASK_KEYS`), as booleans (True = a real token).

    ``attention_mask`` and ``decoder_attention_mask`` as a tokenizer gives them (``[B, T]``, 1 = real) or expanded
    as a Hugging Face model builds them (``[B, 1, 1, T]`` or ``[B, 1, T, T]``'s last row; 1 = real, or additive:
    0 = real, a large negative number = padding); ``labels`` real where not -100. Other shapes are left out here
    (`mask_problems` names them).

    Example:
        >>> import torch
        >>> masks = batch_masks({"attention_mask": torch.tensor([[1, 0]]), "labels": torch.tensor([[5, -100]])})
        >>> {key: value.tolist() for key, value in masks.items()}
        {'attention_mask': [[True, False]], 'labels': [[True, False]]}
        >>> batch_masks({"attention_mask": torch.tensor([[[[0.0, -1e9]]]])})["attention_mask"].tolist()
        [[True, False]]
    """
    if not isinstance(batch, Mapping):
        return {}
    masks = {}
    for key in MASK_KEYS:
        value = batch.get(key)
        if not isinstance(value, Tensor):
            continue
        if key == "labels":
            if value.ndim == 2 and not value.is_floating_point():
                masks[key] = value != -100
            continue
        if value.ndim == 4 and value.shape[1] == 1:
            value = value[:, 0, -1, :]  # [B, 1, 1, T] or a causal [B, 1, T, T]: the last query sees every real key
        if value.ndim != 2:
            continue
        if value.is_floating_point() and bool((value < 0).any()):
            masks[key] = value == 0  # additive: 0 where attended, a large negative number where masked
        else:
            masks[key] = value != 0
    return masks


def mask_problems(batch: Any, masks: Mapping[str, Tensor]) -> list[str]:
    """What is wrong with a batch's masks for reading sequences: a mask `batch_masks` (``masks``) could not read as
    ``[batch, tokens]``, its shape named. Shapes only: no host round trip (samples without any real token are
    counted by `empty_rows`)."""
    if not isinstance(batch, Mapping):
        return []
    problems: list[str] = []
    for key in ("attention_mask", "decoder_attention_mask"):
        value = batch.get(key)
        if isinstance(value, Tensor) and key not in masks:
            problems.append(
                f"the batch's {key} has shape {list(value.shape)}, not [batch, tokens] (nor Hugging Face's "
                "[batch, 1, 1, tokens]): sequences are read without it; pass sequence_reduction=... or a batch with a "
                "[batch, tokens] mask"
            )
    return problems


def empty_rows(masks: Mapping[str, Tensor]) -> Optional[Tensor]:
    """How many samples have no real token in some mask, as a 0-d tensor on the masks' device (``None`` without
    masks), to be summed over an evaluation and read once."""
    counts = [(~mask.any(dim=1)).sum() for mask in masks.values()]
    return torch.stack(counts).amax() if counts else None


def align_mask(mask: Tensor, padding: tuple[int, int], tokens: int) -> Optional[Tensor]:
    """A ``[batch, length]`` mask laid over an output of ``tokens`` tokens to which the model added ``padding``
    tokens (before, after; negative: dropped): the added tokens are real in every sample that has a real token
    (a sample without one stays empty); ``None`` when ``length`` plus the padding is not ``tokens``.

    Example:
        >>> import torch
        >>> align_mask(torch.tensor([[True, True, False], [False, False, False]]), (1, 0), 4).tolist()
        [[True, True, True, False], [False, False, False, False]]
        >>> align_mask(torch.tensor([[True, True, False]]), (-1, 0), 2).tolist()
        [[True, False]]
    """
    before, after = padding
    if mask.ndim != 2 or mask.shape[1] + before + after != tokens or tokens <= 0:
        return None
    if before == after == 0:
        return mask
    kept = mask[:, max(0, -before) : mask.shape[1] - max(0, -after)]
    any_real = mask.any(dim=1, keepdim=True)
    parts = [any_real.expand(-1, before)] if before > 0 else []
    parts += [kept] + ([any_real.expand(-1, after)] if after > 0 else [])
    return torch.cat(parts, dim=1)


def output_leaves(output: Any, path: Path = ()) -> list[tuple[Path, Tensor]]:
    """Every tensor of a module output with its path, depth first: tuples and lists by index, mappings (Hugging
    Face model outputs included) by key, other dataclasses by field.

    Example:
        >>> import torch
        >>> paths = [path for path, _ in output_leaves((torch.ones(1), {"h": torch.ones(1)}))]
        >>> paths == [(0,), (1, "h")]
        True
    """
    if isinstance(output, Tensor):
        return [(path, output)]
    if isinstance(output, Mapping):
        items: Sequence[tuple[Any, Any]] = list(output.items())
    elif isinstance(output, (tuple, list)):
        items = list(enumerate(output))
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        items = [(field.name, getattr(output, field.name, None)) for field in dataclasses.fields(output)]
    else:
        return []
    found = []
    for key, value in items:
        found += output_leaves(value, (*path, key))
    return found


def select(output: Any, path: Path) -> Any:
    """The part of ``output`` at ``path`` (see `output_leaves`)."""
    for key in path:
        if isinstance(output, (Mapping, tuple, list)):
            output = output[key]
        else:
            output = getattr(output, str(key))
    return output


def first_tensor(output: Any) -> Optional[Tensor]:
    """The first tensor of a module output (`output_leaves`), ``None`` if there is none.

    Example:
        >>> import torch
        >>> first_tensor((None, {"hidden": torch.ones(2)})).tolist()
        [1.0, 1.0]
    """
    leaves = output_leaves(output)
    return leaves[0][1] if leaves else None


def read(
    output: Any,
    reading: Optional[Reading] = None,
    masks: Optional[Mapping[str, Tensor]] = None,
    output_transform: Optional[OutputTransform] = None,
    unmatched: Optional[Callable[[str], None]] = None,
) -> Tensor:
    """``output`` as ``[batch, neurons]`` activations, read as ``reading`` says (the conventions without one).

    ``masks`` are the batch's masks (`batch_masks`); those named by the reading that fit the output's
    ``[batch, tokens]`` (after the reading's ``mask_padding``) decide which tokens are real; ``unmatched`` is
    told, in one sentence, when none of them fits. ``output_transform`` is applied first and must return a tensor.
    """
    reading = reading or Reading()
    if output_transform is not None:
        value = output_transform(output)
        if not isinstance(value, Tensor):
            raise TypeError(
                f"output_transform returned {type(value).__name__}, not a tensor; it must return the activation "
                "tensor of the module's output"
            )
    else:
        value = select(output, reading.path) if reading.path else first_tensor(output)
        if not isinstance(value, Tensor):
            what, fix = _describe_output(output)
            raise TypeError(f"the module returned {what}, which holds no tensor the callback can find; {fix}")
    if value.is_nested:  # padded sequences packed as a nested tensor (nn.TransformerEncoder with a padding mask)
        return _reduce_nested(value, reading.token)
    if value.ndim == 0:
        raise ValueError("a module output of shape [] has no batch dimension; use output_transform to pick a tensor")
    if reading.batch_axis and value.ndim > reading.batch_axis:
        value = value.movedim(reading.batch_axis, 0)
    if not value.is_floating_point() and value.ndim >= 3:
        raise TypeError(
            f"a module output of {value.dtype} with shape {list(value.shape)} cannot be averaged into activations "
            "(an index or a mask, not a layer's activations); monitor a layer with floating-point outputs, or pass "
            "output_transform=lambda out: out.float() to measure it as numbers"
        )
    if value.ndim == 1:
        return value.unsqueeze(1)
    layout = reading.layout or ("flat" if value.ndim == 2 else "channels_first" if value.ndim >= 4 else "sequence")
    if value.ndim == 2 or layout == "flat":
        return value.flatten(1)
    if layout == "channels_first":
        return value.flatten(2).mean(dim=2)
    if layout == "channels_last":
        return value.flatten(1, -2).mean(dim=1)
    if value.ndim > 3:  # [batch, *positions, features]: positions in order
        value = value.flatten(1, -2)
    mask = _combined_mask(masks, reading.masks, value.shape[:2], reading.mask_padding)
    if mask is None and unmatched is not None and reading.masks and masks:
        shapes = {key: list(masks[key].shape) for key in reading.masks if key in masks}
        if shapes:
            unmatched(
                f"the batch's {', '.join(shapes)} {list(shapes.values())} do not fit the {value.shape[1]} tokens of "
                f"an output of {list(value.shape)}"
                + (f" (with the {reading.mask_padding} tokens the model added)" if any(reading.mask_padding) else "")
                + ": read without a mask; pass sequence_reduction=... or output_transform=..."
            )
    if mask is not None:
        return _masked_reduction(value, mask, reading.token)
    if reading.token == "first":
        return value[:, 0]
    if reading.token == "mean":
        return value.mean(dim=1)
    if reading.token == "last":
        return value[:, -1]
    raise ValueError(f"sequence_reduction must be 'first', 'mean' or 'last', received {reading.token!r}")


def to_neuron_activations(
    output: Any,
    reading: Optional[Reading] = None,
    *,
    output_transform: Optional[OutputTransform] = None,
    sequence_reduction: Optional[SequenceReduction] = None,
    attention_mask: Optional[Tensor] = None,
) -> Tensor:
    """A module's output as ``[batch, neurons]`` activations: `read` with a `Reading` (by default the conventions:
    the first tensor of a tuple, list, dict or model output; ``[B]`` as ``[B, 1]``; ``[B, C, *spatial]`` with two
    or more spatial axes averaged over space; ``[B, T, H]`` read at ``sequence_reduction`` (default ``"first"``),
    over the tokens that ``attention_mask`` (``[B, T]``, 1 = real) marks real).

    Example:
        >>> import torch
        >>> to_neuron_activations(torch.ones(8, 16, 5, 5)).shape
        torch.Size([8, 16])
        >>> to_neuron_activations((torch.ones(8, 10, 32), None), sequence_reduction="mean").shape
        torch.Size([8, 32])
    """
    reading = reading or Reading()
    if sequence_reduction is not None:
        if sequence_reduction not in ("first", "mean", "last"):
            raise ValueError(f"sequence_reduction must be 'first', 'mean' or 'last', received {sequence_reduction!r}")
        reading = dataclasses.replace(reading, token=sequence_reduction)
    masks = None
    if attention_mask is not None:
        masks = {"attention_mask": attention_mask != 0}
        reading = dataclasses.replace(reading, masks=("attention_mask",))
    return read(output, reading, masks, output_transform)


def _combined_mask(
    masks: Optional[Mapping[str, Tensor]],
    keys: Sequence[str],
    shape: Sequence[int],
    padding: tuple[int, int] = (0, 0),
) -> Optional[Tensor]:
    """The tokens every named mask marks real, laid over ``shape`` (``[batch, tokens]``) with the tokens the model
    added (`align_mask`); ``None`` where no named mask fits."""
    batch, tokens = int(shape[0]), int(shape[1])
    aligned = [
        align_mask(masks[key], padding, tokens) if masks[key].shape[0] == batch else None
        for key in keys
        if masks and key in masks
    ]
    found = [mask for mask in aligned if mask is not None]
    if not found:
        return None
    combined = found[0]
    for mask in found[1:]:
        combined = combined & mask.to(combined.device)
    return combined


def _masked_reduction(value: Tensor, mask: Tensor, token: SequenceReduction) -> Tensor:
    """``[B, T, H]`` -> ``[B, H]`` over the real tokens of ``mask``: the first or last real token (left or right
    padding alike), or their mean."""
    real = mask.to(device=value.device) != 0
    empty = ~real.any(dim=1, keepdim=True)  # a sample with no real token has nothing to read: NaN, left out
    return torch.where(empty, torch.nan, _reduce_real(value, real | empty, token))  # no host round trip


def _reduce_real(value: Tensor, real: Tensor, token: SequenceReduction) -> Tensor:
    if token == "mean":
        weights = real.to(value.dtype).unsqueeze(-1)
        return (value * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
    positions = torch.arange(value.shape[1], device=value.device)
    if token == "first":
        index = torch.where(real, positions, value.shape[1]).amin(dim=1).clamp_max(value.shape[1] - 1)
    elif token == "last":
        index = torch.where(real, positions, -1).amax(dim=1).clamp_min(0)
    else:
        raise ValueError(f"sequence_reduction must be 'first', 'mean' or 'last', received {token!r}")
    return value[torch.arange(value.shape[0], device=value.device), index]


def _reduce_nested(value: Tensor, token: SequenceReduction) -> Tensor:
    """``[batch, neurons]`` from a nested tensor of ``[T_i, ...]`` sequences: each sample's own tokens only."""
    parts = value.unbind()
    if not parts or parts[0].ndim != 2:
        raise ValueError(
            f"a nested-tensor output of {len(parts)} samples whose parts are not [tokens, features]; pass an "
            "output_transform that returns a [batch, neurons] tensor"
        )
    if token == "first":
        return torch.stack([part[0] for part in parts])
    if token == "mean":
        return torch.stack([part.mean(dim=0) for part in parts])
    if token == "last":
        return torch.stack([part[-1] for part in parts])
    raise ValueError(f"sequence_reduction must be 'first', 'mean' or 'last', received {token!r}")


def is_patch_grid(tokens: int, class_tokens: int) -> bool:
    """Whether ``tokens`` is a square grid of patches and ``tokens - class_tokens`` is not (a block before the
    class tokens join, as CaiT's patch blocks)."""
    return math.isqrt(tokens) ** 2 == tokens and math.isqrt(tokens - class_tokens) ** 2 != tokens - class_tokens


def _describe_output(output: Any) -> tuple[str, str]:
    """What a module output is, and the fix: the ``output_transform`` that would pick a tensor out of it."""
    name = type(output).__name__
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        fields = [f.name for f in dataclasses.fields(output) if isinstance(getattr(output, f.name, None), Tensor)]
        if fields:
            return (
                f"a {name} (a dataclass with the tensor fields {fields})",
                f"pass output_transform=lambda out: out.{fields[0]} (or the field you want to measure)",
            )
    tensors = [k for k, v in vars(output).items() if isinstance(v, Tensor)] if hasattr(output, "__dict__") else []
    if tensors:
        return f"a {name} with the tensor attributes {tensors}", f"pass output_transform=lambda out: out.{tensors[0]}"
    what = f"a {name} ({str(output)[:60]!r})" if isinstance(output, (str, bytes)) else f"a {name}"
    return what, "monitor a module whose output is a tensor, or pass output_transform=... that returns one"
