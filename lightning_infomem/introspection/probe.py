"""Observing how to read each monitored module, on the first measured batch.

Names and attributes do not say which axis of an output is the batch (XLNet's layers give
``[tokens, batch, hidden]``), which tensor of a tuple is the stream the next block consumes, whether a stack
is causal (BLOOM's attention has no ``is_causal``; Mamba has no attention at all) or whether a module's forward
hooks ever fire (a model that calls ``block.forward(x)``). The model can tell: `ReadingProbe` records the
call that ran the monitored modules during one batch and then runs it again, without gradients and with the
random state restored:

- as recorded, with a hook on every module: which modules ran (a monitored module whose submodules ran but
  whose own hooks did not was bypassed), which output tensors a later module consumed, and which layer types
  produced the output (convolutions and channel norms put channels first, linear layers and layer norms last);
- with one sample fewer: the axis whose size follows the batch is the batch axis;
- for each sequence output, with the module's input changed at each sample's last real token: when no earlier
  position changes, the module is causal and is read at its last real token.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from lightning_infomem.introspection.readings import (
    MASK_KEYS,
    OutputTransform,
    Reading,
    align_mask,
    is_patch_grid,
    output_leaves,
    select,
)

__all__ = ["ProbeResult", "ReadingProbe", "class_tokens", "layout_of"]

_CLASS_TOKEN_NAMES = ("cls_token", "class_token", "dist_token", "class_embedding")
_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)
_HOOK_FIELDS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)
# Relative to the output's scale: a causal stack leaves earlier positions as they were up to rounding (_QUIET),
# and a changed token moves what follows it clearly (more than _CLEAR); blocks whose token mixing is scaled to almost
# nothing (CaiT's and ResMLP's layer scales of 1e-5 after two steps) fall in between and are said to be unobserved.
_QUIET = 1e-6  # float32 rounding of a fused kernel moves earlier positions of a causal stack by an ulp or two
_CLEAR = 1e-4
# A token changed by this share of its tensor's largest value, to find where it sits among a module's tokens: small
# enough not to draw every token's attention to it (then all positions move alike), large against half precision.
_SMALL = 0.02


def class_tokens(model: nn.Module) -> int:
    """How many class tokens a model prepends to its sequences: its parameters whose name starts with ``cls_token``,
    ``class_token`` or ``dist_token`` (timm, torchvision and Hugging Face ViTs, DeiT's distillation token, CoaT's
    ``cls_token1``), or CLIP's ``class_embedding``.

    Example:
        >>> from torch import nn
        >>> class_tokens(nn.Linear(2, 2))
        0
    """
    return sum(1 for name, _ in model.named_parameters() if name.rpartition(".")[2].startswith(_CLASS_TOKEN_NAMES))


def layout_of(module: nn.Module, shape: Sequence[int] = ()) -> Optional[str]:
    """Where a layer type puts its features: ``"first"`` (convolutions, batch / instance / group norms, pooling:
    ``[batch, channels, ...]``), ``"last"`` (a layer with a weight matrix of two axes, as ``nn.Linear`` or Hugging
    Face's ``Conv1D``; recurrent layers; attention: ``[..., features]``), ``None`` otherwise. A layer or RMS norm
    goes by the axis of its ``shape`` (its output's) that has its width: channels-first norms that permute inside
    (SqueezeBERT's, timm's ``LayerNorm2d``) are ``"first"``.

    Example:
        >>> from torch import nn
        >>> layout_of(nn.Conv2d(3, 8, 3)), layout_of(nn.Linear(3, 8)), layout_of(nn.ReLU())
        ('first', 'last', None)
        >>> layout_of(nn.LayerNorm(8), (2, 8, 5)), layout_of(nn.LayerNorm(8), (2, 5, 8))
        ('first', 'last')
    """
    if isinstance(module, _CHANNELS_FIRST):
        return "first"
    if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
        weight = module._parameters.get("weight")
        width = int(weight.shape[-1]) if weight is not None and weight.ndim == 1 else None
        if width is not None and len(shape) >= 3 and shape[-1] != width and shape[1] == width:
            return "first"
        return "last"
    if isinstance(module, (nn.RNNBase, nn.MultiheadAttention)):
        return "last"
    weight = module._parameters.get("weight")
    if weight is not None and weight.ndim == 2 and not isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "last"
    return None


@dataclasses.dataclass
class ProbeResult:
    """What the probe saw: a `Reading` per monitored module it could observe, the modules that were bypassed (their
    submodules ran, their own forward hooks never fired), the first batch's outputs of each monitored module, one
    per call, as the model gave them (to be read with the readings), and how many times each module is applied in
    one call of the model (a shared layer, a Siamese network's encoder: more than once)."""

    readings: dict[str, Reading]
    bypassed: list[str]
    outputs: dict[str, list[Any]]
    applications: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Call:
    module: nn.Module
    args: tuple
    kwargs: dict


class ReadingProbe:
    """Records the calls that run the monitored modules during one batch (`start`, `stop`), then observes how to
    read each (`observe`).

    Args:
        model: the model (a ``LightningModule``) whose modules are monitored.
        modules: the monitored modules by name.
        output_transform: applied to each output before it is observed (as the callback reads it).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> lstm = nn.LSTM(4, 8)  # [tokens, batch, features]
        >>> model = nn.Sequential()
        >>> model.add_module("rnn", lstm)
        >>> probe = ReadingProbe(model, {"rnn": lstm})
        >>> probe.start()
        >>> _ = model(torch.randn(7, 5, 4))
        >>> probe.stop()
        >>> reading = probe.observe(batch_size=5, masks={}).readings["rnn"]
        >>> reading.path, reading.batch_axis, reading.token, reading.causal
        ((0,), 1, 'last', True)
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Mapping[str, nn.Module],
        output_transform: Optional[OutputTransform] = None,
    ) -> None:
        self.model = model
        self.modules = dict(modules)
        self.output_transform = output_transform
        self.calls: list[_Call] = []
        self.failures: list[str] = []  # why a recorded call could not be run again (its modules read by convention)
        self._handles: list[Any] = []
        self._depth = 0
        self._stack: list[bool] = []
        self._seen: dict[str, list[Any]] = {}

    # ---------------------------------------------------------------------------------- recording
    def start(self) -> None:
        """Record, from now on, the outermost calls of the model's modules that hold a monitored module."""
        self.stop()
        self.calls, self._depth, self._seen, self._stack = [], 0, {}, []
        targets = set(map(id, self.modules.values()))
        compiled = _compiled_region(self.model)  # a hook added there would make torch.compile trace it again
        for module in self.model.modules():
            inner = getattr(module, "_orig_mod", module)
            if id(module) in compiled:
                continue
            if id(inner) in targets or any(id(sub) in targets for sub in inner.modules()):
                self._handles.append(module.register_forward_pre_hook(self._enter, with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._leave, always_call=True))
        for name, module in self.modules.items():
            if id(module) not in compiled:
                self._handles.append(
                    module.register_forward_hook(
                        lambda m, a, out, name=name: self._seen.setdefault(name, []).append(out)
                    )
                )

    def _enter(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # a module whose forward is replaced on the instance (Lightning redirects a LightningModule's forward to
        # validation_step under DDP) is not a call of the model: the calls inside it are
        transparent = "forward" in vars(module)
        self._stack.append(not transparent)
        if transparent:
            return
        if self._depth == 0 and len(self.calls) < 8:
            self.calls.append(_Call(module, args, dict(kwargs)))
        self._depth += 1

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack and self._stack.pop():
            self._depth = max(0, self._depth - 1)

    def stop(self) -> None:
        """Stop recording (the recorded calls are kept)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -------------------------------------------------------------------------------- observing
    def observe(self, batch_size: int, masks: Mapping[str, Tensor]) -> ProbeResult:
        """Observe each monitored module on the recorded calls; ``batch_size`` is the batch's number of samples
        (its first axis as the dataloader collates it), ``masks`` the batch's masks (`batch_masks`)."""
        readings: dict[str, Reading] = {}
        bypassed: list[str] = []
        applications: dict[str, int] = {}
        outputs: dict[str, list[Any]] = {name: list(seen) for name, seen in self._seen.items()}
        state = torch.random.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        try:
            with torch.no_grad():
                for call in self.calls:
                    size = _call_batch_size(call, batch_size)
                    call_masks = masks if size == batch_size else {}
                    try:
                        found, skipped, calls = self._observe_call(call, size, call_masks)
                    except Exception as error:  # noqa: BLE001 - a probe must not end the user's run: said instead
                        self.failures.append(f"{type(error).__name__}: {str(error)[:160]}")
                        continue
                    for name, reading in found.items():
                        readings.setdefault(name, reading)
                    for name, count in calls.items():
                        applications[name] = max(applications.get(name, 0), count)
                    bypassed += [name for name in skipped if name not in bypassed]
        finally:
            torch.random.set_rng_state(state)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
        bypassed = [name for name in bypassed if name not in readings and name not in outputs]
        causal = any(reading.causal for reading in readings.values())
        if causal:  # an encoder beside a causal decoder has no summary token: its mean
            readings = {
                name: dataclasses.replace(reading, token="mean")
                if reading.layout == "sequence" and reading.causal is False and reading.token == "first"
                else reading
                for name, reading in readings.items()
            }
        return ProbeResult(readings, bypassed, outputs, applications)

    def _run(self, call: _Call, args: tuple, kwargs: dict, hooks: Sequence[tuple[nn.Module, str, Callable]]) -> None:
        """Run a recorded call again, eagerly, with only the probe's ``hooks``: every other forward hook of the
        modules (the user's, other callbacks', the measurement's) is set aside, so the probe leaves no trace."""
        root = getattr(call.module, "_orig_mod", call.module)  # eager: no compilation for a probe
        modules = list(dict.fromkeys([call.module, *root.modules()]))
        saved = [(m, {field: getattr(m, field) for field in _HOOK_FIELDS if hasattr(m, field)}) for m in modules]
        handles = []
        try:
            for module, fields in saved:
                for field, value in fields.items():
                    setattr(module, field, type(value)())
            for module, kind, hook in hooks:
                if kind == "pre":
                    handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
                else:
                    handles.append(module.register_forward_hook(hook))
            with _eager():
                root._call_impl(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
            for module, fields in saved:
                for field, value in fields.items():
                    setattr(module, field, value)

    def _observe_call(
        self, call: _Call, batch_size: int, masks: Mapping[str, Tensor]
    ) -> tuple[dict[str, Reading], list[str], dict[str, int]]:
        inside = {id(m) for m in getattr(call.module, "_orig_mod", call.module).modules()}
        names = [name for name, module in self.modules.items() if id(module) in inside]
        if not names:
            return {}, [], {}
        by_module = {id(self.modules[name]): name for name in names}

        # 1. as recorded: every module's completion (its layout), inputs (what is consumed), the monitored outputs
        order: list[tuple[int, nn.Module, tuple]] = []  # completed modules and their output shapes, in order
        consumed: list[tuple[int, nn.Module, set[int]]] = []  # (step, module, storages of its inputs)
        completed: dict[str, int] = {}
        full: dict[str, list[Any]] = {}
        ran: set[int] = set()
        step = [0]

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            step[0] += 1
            ran.add(id(module))
            seen = {_identity(t) for _, t in output_leaves((args, kwargs))}
            consumed.append((step[0], module, seen))

        def post(module: nn.Module, args: Any, output: Any) -> None:
            step[0] += 1
            leaves = output_leaves(output)
            order.append((step[0], module, tuple(leaves[0][1].shape) if leaves and not leaves[0][1].is_nested else ()))
            name = by_module.get(id(module))
            if name is not None:
                completed.setdefault(name, step[0])
                full.setdefault(name, []).append(output)

        every = [(m, "pre", pre) for m in call.module.modules()] + [(m, "post", post) for m in call.module.modules()]
        self._run(call, call.args, call.kwargs, every)
        bypassed = [
            name
            for name in names
            if name not in full
            and any(id(sub) in ran for sub in self.modules[name].modules() if sub is not self.modules[name])
        ]

        # 2. one sample fewer: the batch axis
        smaller = batch_size - 1 if batch_size >= 2 else None
        sliced: dict[str, list[Any]] = {}
        sliced_args: Optional[tuple[tuple, dict]] = None
        if smaller is not None:
            sliced_args = _slice_batch((call.args, call.kwargs), batch_size, smaller)
            if sliced_args is not None:
                try:
                    self._run(call, *sliced_args, [(self.modules[n], "post", _collect(sliced, n)) for n in full])
                except Exception:  # noqa: BLE001 - a model that cannot take a smaller batch: assumed, and said
                    sliced, sliced_args = {}, None

        readings: dict[str, Reading] = {}
        for name, outs in full.items():
            readings[name] = self._reading(
                name, outs[0], (sliced.get(name) or [None])[0], batch_size, smaller, completed[name], order, consumed
            )

        # 3. causality: each sequence module's input changed at the last real token
        sliced_masks = {k: v[:smaller] for k, v in masks.items()} if sliced_args is not None else dict(masks)
        runs = (sliced_args, smaller) if sliced_args is not None else ((call.args, call.kwargs), batch_size)
        reference = sliced if sliced_args is not None else full
        for name, reading in list(readings.items()):
            if reading.layout != "sequence":
                continue
            readings[name] = self._with_token(call, name, reading, runs, reference, sliced_masks)

        # 4. an attention_mask of a causal module's length is that module's only if its tokens follow it
        checked = [
            n for n, r in readings.items() if r.causal and "attention_mask" in r.masks and r.mask_padding == (0, 0)
        ]
        if checked:
            follow = self._follow_the_mask(call, runs, reference, checked, readings, sliced_masks["attention_mask"])
            for name in checked:
                if name not in follow:
                    reading = readings[name]
                    tokens = int(sliced_masks["attention_mask"].shape[1])
                    note = (
                        f"{name}: the batch's attention_mask has its {tokens} tokens but "
                        "does not follow them (changing one of the mask's tokens moved every position of this "
                        "module, as a decoder's from its source): read without it"
                    )
                    readings[name] = dataclasses.replace(
                        reading,
                        masks=tuple(k for k in reading.masks if k != "attention_mask"),
                        notes=(*reading.notes, note),
                    )
        return readings, bypassed, {name: len(outs) for name, outs in full.items()}

    def _follow_the_mask(
        self,
        call: _Call,
        runs: tuple[tuple[tuple, dict], int],
        reference: dict[str, list[Any]],
        names: list[str],
        readings: dict[str, Reading],
        mask: Tensor,
    ) -> set[str]:
        """The causal modules among ``names`` whose tokens follow the mask's: the first module output of the mask's
        ``[batch, tokens]`` (the token embeddings of the ids it masks) is changed at a real token of each sample
        (twice: the middle one and one between it and the last), and the first position of the module that moves
        is that token's in every sample. A decoder beside the mask's source moves everywhere at once."""
        (args, kwargs), size = runs
        mask = mask.cpu()
        length = int(mask.shape[1])
        positions = torch.arange(length)
        first = torch.where(mask, positions, length).amin(dim=1).clamp_max(length - 1)
        last = torch.where(mask, positions, -1).amax(dim=1).clamp_min(0)
        root = getattr(call.module, "_orig_mod", call.module)
        watched = {id(self.modules[name]): name for name in names}
        follow = set(names)
        for where in ((first + last) // 2, (first + 3 * last) // 4):
            where = torch.maximum(where, (first + 1).minimum(last))
            voters = mask.any(dim=1) & (where > 0)
            if not bool(voters.any()):
                return follow  # nothing to tell by (every sample has one real token at most): the masks stay
            moved: dict[str, Tensor] = {}
            state = {"changed": False}

            def post(
                m: nn.Module, a: Any, out: Any, where: Tensor = where, moved: dict = moved, state: dict = state
            ) -> Any:
                name = watched.get(id(m))
                if name is not None and name not in moved:
                    moved[name] = self._tokens_of(out, readings[name])
                elif name is None and not state["changed"] and not moved:
                    changed, state["changed"] = _perturb_token(((out,), {}), size, length, where, _SMALL)
                    return changed[0][0] if state["changed"] else None
                return None

            try:
                self._run(call, args, kwargs, [(m, "post", post) for m in root.modules()])
            except Exception:  # noqa: BLE001 - nothing observed: the masks stay as they matched
                return follow
            for name in list(follow):
                before = self._tokens_of(reference[name][0], readings[name]) if reference.get(name) else None
                now = moved.get(name)
                if before is None or now is None or before.shape != now.shape or not state["changed"]:
                    continue  # not observed (the changed tensor comes after it): the mask stays
                delta = (now.float() - before.float()).flatten(2).norm(dim=-1).cpu().nan_to_num(nan=0.0)
                rows = voters & (delta.amax(dim=1) > 0)
                if bool(rows.any()) and not bool((_moved_positions(delta)[0] == where)[rows].all()):
                    follow.discard(name)
        return follow

    def _reading(
        self,
        name: str,
        output: Any,
        smaller_output: Any,
        batch_size: int,
        smaller: Optional[int],
        completed: int,
        order: list[tuple[int, nn.Module, tuple]],
        consumed: list[tuple[int, nn.Module, set[int]]],
    ) -> Reading:
        module = self.modules[name]
        notes: list[str] = []
        if self.output_transform is not None:
            leaves = [((), self.output_transform(output))]
            small = [((), self.output_transform(smaller_output))] if smaller_output is not None else []
        else:
            leaves = [(p, t) for p, t in output_leaves(output) if t.is_floating_point() and t.ndim >= 1]
            small = output_leaves(smaller_output) if smaller_output is not None else []
        small_shapes = {path: tuple(t.shape) for path, t in small if isinstance(t, Tensor) and not t.is_nested}
        candidates: list[tuple[Any, Tensor, int]] = []
        for path, tensor in leaves:
            if not isinstance(tensor, Tensor) or tensor.ndim == 0:
                continue
            if tensor.is_nested:  # one sample per component: padded sequences packed by nn.TransformerEncoder
                candidates.append((path, tensor, 0))
                continue
            axes = [a for a, size in enumerate(tensor.shape) if size == batch_size]
            if smaller is not None and path in small_shapes and len(small_shapes[path]) == tensor.ndim:
                axes = [a for a in axes if small_shapes[path][a] == smaller]
            elif len(axes) > 1:
                notes.append(
                    f"{name}: axes {axes} of {list(tensor.shape)} both have the batch's size and the model could not "
                    f"run a smaller batch; axis {axes[0]} is assumed to be the batch"
                )
            if axes:
                candidates.append((path, tensor, axes[0]))
        if not candidates:
            shapes = [f"{list(t.shape)} {t.dtype}" for _, t in output_leaves(output) if isinstance(t, Tensor)]
            notes.append(
                f"{name}: no floating-point output tensor has an axis of the batch's {batch_size} samples (outputs: "
                f"{', '.join(shapes) or 'none'}); read as given; pass output_transform=... returning [batch, neurons]"
            )
            return Reading(notes=tuple(notes))
        path, tensor, batch_axis = candidates[0]
        if len(candidates) > 1:
            later = [(s, m, seen) for s, m, seen in consumed if s > completed and m not in set(module.modules())]
            used = [c for c in candidates if any(_identity(c[1]) in seen for _, _, seen in later)]
            same_type = [
                c for c in used if any(type(m) is type(module) and _identity(c[1]) in seen for _, m, seen in later)
            ]
            if same_type or used:
                path, tensor, batch_axis = (same_type or used)[0]
            else:
                notes.append(
                    f"{name}: {len(candidates)} output tensors have a batch axis and no later module consumes one; "
                    f"output{''.join(f'[{p!r}]' for p in path)} is read (pass output_transform=... to choose another)"
                )
        ndim = tensor.ndim
        if ndim <= 2:
            layout = "flat"
        else:
            inside = set(module.modules())
            ran = [(layout_of(m, shape), shape) for s, m, shape in order if s <= completed and m in inside]
            known = [kind for kind, _ in ran if kind is not None]
            if not known:  # an activation, a pooling-free container: the layer type that ran just before it
                ran = [(layout_of(m, shape), shape) for s, m, shape in order if s <= completed and layout_of(m)][-1:]
                known = [kind for kind, _ in ran if kind is not None]
            own = () if tensor.is_nested else tuple(tensor.shape)
            same = [kind for kind, shape in ran if kind is not None and own and shape == own]
            if ndim >= 4:
                # convolutions give channels first; a module that ran none (Swin's linear blocks) keeps channels last,
                # unless the linear layers' features are on axis 1 (tokens reshaped back to a map: PiT's stages)
                layout = "channels_first" if "first" in known or not known else "channels_last"
                widths = [shape[-1] for kind, shape in ran if kind == "last" and shape]
                if layout == "channels_last" and widths and tensor.shape[-1] != widths[-1] == tensor.shape[1]:
                    layout = "channels_first"
                if not known:
                    notes.append(f"{name}: no convolution, norm or linear layer ran in it; channels assumed first")
            else:  # [batch, channels, length] from a 1-d convolution or norm of that shape, else a sequence
                layout = "channels_first" if same and same[-1] == "first" else "sequence"
        return Reading(path=path, batch_axis=batch_axis, layout=layout, notes=tuple(notes))

    def _with_token(
        self,
        call: _Call,
        name: str,
        reading: Reading,
        runs: tuple[tuple[tuple, dict], int],
        reference: dict[str, list[Any]],
        masks: Mapping[str, Tensor],
    ) -> Reading:
        (args, kwargs), size = runs
        module = self.modules[name]
        before = [self._tokens_of(out, reading) for out in reference.get(name, [])]
        if not before or before[0].is_nested:  # nested sequences: each sample's own tokens, no position to change
            return reading
        tokens = before[0].shape[1]
        notes = list(reading.notes)
        padding = (0, 0)
        if masks and not any(m.shape[1] == tokens for m in masks.values()):
            padding, note = self._mask_padding(call, name, reading, runs, before[0], masks)
            notes += [note] if note else []
        masks = {k: a for k, m in masks.items() if (a := align_mask(m, padding, tokens)) is not None}
        real = _real_tokens(masks, tokens, size)
        last = torch.where(real, torch.arange(tokens), -1).amax(dim=1) if real is not None else None
        last = last if last is not None else torch.full((size,), tokens - 1)
        middle = (last // 2).clamp_min(1).minimum(last.clamp_min(0))  # a real token with tokens before and after

        perturbed = [False]

        def perturb(m: nn.Module, a: tuple, kw: dict) -> Optional[tuple[tuple, dict]]:
            changed, done = _perturb_token((a, kw), size, tokens, middle)
            perturbed[0] = perturbed[0] or done
            return changed if done else None

        after: dict[str, list[Any]] = {}
        try:
            self._run(call, args, kwargs, [(module, "pre", perturb), (module, "post", _collect(after, name))])
        except Exception:  # noqa: BLE001 - observed nothing; said below
            after = {}
        causal = None
        if after.get(name):
            new = self._tokens_of(after[name][0], reading)
            if new.shape == before[0].shape:
                causal = _is_causal(before[0], new, middle)
        if causal:
            token, keys = (
                "last",
                ("decoder_attention_mask",) if "decoder_attention_mask" in masks else ("attention_mask", "labels"),
            )
        else:
            reads_ids = any(not t.is_floating_point() for _, t in output_leaves((call.args, call.kwargs))[:1])
            recurrent = isinstance(module, nn.RNNBase)
            token = "first" if (class_tokens(self.model) or reads_ids) and not recurrent else "mean"
            if token == "first" and is_patch_grid(tokens, class_tokens(self.model)):
                token = "mean"  # a block before the class tokens join (CaiT's patch blocks)
            keys = ("attention_mask",) if "attention_mask" in masks else ("decoder_attention_mask", "labels")
            if causal is None and not perturbed[0]:
                notes.append(
                    f"{name}: its input has no axis of its output's {tokens} tokens (a stage that merges or adds "
                    f"tokens), so no token could be changed: read at the {token} token as a module that is not causal; "
                    "pass sequence_reduction=... to read another"
                )
            elif causal is None:
                notes.append(
                    f"{name}: changing one token's input moved the other positions too little to tell whether it is "
                    f"causal (a layer applied to each token on its own, token mixing scaled near zero, or too short a "
                    f"sequence): read at the {token} token as a module that is not causal; pass sequence_reduction=... "
                    "to read another"
                )
        keys = tuple(k for k in keys if k in masks)
        padding = padding if keys else (0, 0)
        return dataclasses.replace(
            reading, token=token, masks=keys, mask_padding=padding, causal=causal, notes=tuple(notes)
        )

    def _mask_padding(
        self,
        call: _Call,
        name: str,
        reading: Reading,
        runs: tuple[tuple[tuple, dict], int],
        reference: Tensor,
        masks: Mapping[str, Tensor],
    ) -> tuple[tuple[int, int], Optional[str]]:
        """Where the batch's mask tokens sit among the ``reference`` output's tokens when their numbers differ (a
        model that prepends a prompt or a class token, or drops one): a tensor with the mask's number of tokens is
        changed at one real token of each sample, twice (the middle one and one between it and the last), and the
        position of the module's output that moves (`_moved_positions`) is that token's; where no such tensor comes
        before the module (the mask counts a token the model adds later), the module's output is changed and the
        first later tensors with the mask's tokens are watched. One offset for every sample and both tokens gives
        the tokens added before and after; otherwise, a note and no mask."""
        (args, kwargs), size = runs
        tokens = int(reference.shape[1])
        key = next(k for k in MASK_KEYS if k in masks)
        mask = masks[key].cpu()
        length = int(mask.shape[1])
        shapes = ", ".join(f"{k} {list(m.shape)}" for k, m in masks.items())
        unobserved = (
            f"{name}: the batch's {shapes} do not match its {tokens} tokens and where the mask's tokens sit among them "
            "could not be observed ({why}); read without a mask: pass sequence_reduction=... or output_transform=... "
            "to read it otherwise"
        )
        has_real = mask.any(dim=1)
        if not bool(has_real.any()):
            return (0, 0), unobserved.format(why="no sample has a real token")
        positions = torch.arange(length)
        first = torch.where(mask, positions, length).amin(dim=1).clamp_max(length - 1)
        last = torch.where(mask, positions, -1).amax(dim=1).clamp_min(0)
        extra = tokens - length
        # per watched tensor, the offsets every sample gave: by the first position that moved, by the most moved
        offsets: dict[int, tuple[set[int], set[int]]] = {}
        unmoved: set[int] = set()  # watched tensors that did not move in some run: they tell nothing
        try:
            for where in ((first + last) // 2, (first + 3 * last) // 4):  # away from the ends, where tokens are dropped
                where = torch.maximum(where, (first + 1).minimum(last))  # a token with one before it, where there is
                # a causal module's changed token is the first that moves: at position 0, nothing before it stays put
                voters = has_real & (where > 0) if bool((has_real & (where > 0)).any()) else has_real
                moved = self._moved(call, args, kwargs, size, name, reading, length, where, reference=reference)
                at, sign = where, 1
                if not any(delta is not None for delta in moved):
                    # the mask's tokens exist only after the module: its output changed, later tensors watched
                    at, sign = (where + max(extra, 0)).clamp_max(tokens - 1), -1
                    moved = self._moved(call, args, kwargs, size, name, reading, tokens, at, after=length)
                if not any(delta is not None for delta in moved):
                    return (0, 0), unobserved.format(why=f"no tensor the model computes has the mask's {length} tokens")
                for index, delta in enumerate(moved):
                    found = offsets.setdefault(index, (set(), set()))
                    if delta is None:
                        unmoved.add(index)
                        continue
                    moved_rows = voters & (delta.amax(dim=1) > 0)  # a sample whose outputs are NaN says nothing
                    for kept, position in zip(found, _moved_positions(delta), strict=True):
                        kept |= set((sign * (position - at))[moved_rows].tolist())
        except Exception as error:  # noqa: BLE001 - observed nothing; said in the note
            return (0, 0), unobserved.format(why=f"{type(error).__name__} when run again")
        lowest, highest = (0, extra) if extra > 0 else (extra, 0)
        for index in sorted(set(offsets) - unmoved):
            agreed = {next(iter(f)) for f in offsets[index] if len(f) == 1 and lowest <= next(iter(f)) <= highest}
            if len(agreed) == 1:  # one offset for every sample and both changed tokens, by one reading or both alike
                offset = agreed.pop()
                return (offset, extra - offset), None
        apart = sorted(set().union(*offsets[0])) if offsets else []
        return (0, 0), unobserved.format(why=f"a changed token moved positions {apart} apart")

    def _moved(
        self,
        call: _Call,
        args: tuple,
        kwargs: dict,
        size: int,
        name: str,
        reading: Reading,
        source_tokens: int,
        where: Tensor,
        after: Optional[int] = None,
        reference: Optional[Tensor] = None,
    ) -> list[Optional[Tensor]]:
        """How much each position moved (``[batch, tokens]``, relative to the watched tensor's scale) when a tensor
        of ``source_tokens`` tokens is changed at each sample's token ``where``. Without ``after``: the first module
        output of ``source_tokens`` tokens is changed and the monitored module's output watched (``[None]`` when it
        did not move: the changed tensor comes after it). With ``after``: the module's own output is changed and
        the first later module outputs of ``after`` tokens watched (up to 8; ``None`` for one where no sample moved).
        ``reference``: the module's output unchanged, where it is known (one run less)."""
        module = self.modules[name]
        root = getattr(call.module, "_orig_mod", call.module)
        runs: list[tuple[bool, list[Tensor]]] = []
        for change in (False, True) if after is not None or reference is None else (True,):
            watched: list[Tensor] = []
            state = {"changed": False, "past": False}

            def post(
                m: nn.Module, a: Any, out: Any, change: bool = change, watched: list = watched, state: dict = state
            ) -> Any:
                if after is None:
                    if m is module and not watched:
                        watched.append(self._tokens_of(out, reading))
                    elif change and not state["changed"] and not watched:
                        changed, state["changed"] = _perturb_token(((out,), {}), size, source_tokens, where, _SMALL)
                        return changed[0][0] if state["changed"] else None
                    return None
                if m is module and not state["past"]:
                    state["past"] = True
                    if change:
                        changed, state["changed"] = _perturb_token(((out,), {}), size, source_tokens, where, _SMALL)
                        return changed[0][0] if state["changed"] else None
                elif state["past"] and len(watched) < 8:
                    view = _token_view(out, size, after)
                    if view is not None:
                        watched.append(view)
                return None

            self._run(call, args, kwargs, [(m, "post", post) for m in dict.fromkeys([*root.modules(), module])])
            runs.append((state["changed"], watched))
        unchanged = runs[0][1] if len(runs) == 2 else [reference]
        changed, moved = runs[-1]
        if not changed or len(unchanged) != len(moved):
            return [None]
        deltas: list[Optional[Tensor]] = []
        for before, now in zip(unchanged, moved, strict=True):
            if before.shape != now.shape:
                deltas.append(None)
                continue
            delta = (now.float() - before.float()).flatten(2).norm(dim=-1).cpu()  # [batch, tokens]
            delta = delta.nan_to_num(nan=0.0, posinf=0.0)  # a position that is NaN either way tells nothing
            scale = 1.0 + float(before.float().flatten(2).norm(dim=-1).nan_to_num(nan=0.0, posinf=0.0).amax())
            deltas.append(delta / scale if bool((delta.amax(dim=1) > 0).any()) else None)
        return deltas or [None]

    def _tokens_of(self, output: Any, reading: Reading) -> Tensor:
        value = self.output_transform(output) if self.output_transform is not None else select(output, reading.path)
        value = value.movedim(reading.batch_axis, 0) if reading.batch_axis else value
        return value.flatten(1, -2) if value.ndim > 3 else value


def _call_batch_size(call: _Call, batch_size: int) -> int:
    """The samples of one recorded call: the batch's, where an input has an axis of that size; otherwise the first
    axis of the call's first tensor (a batch run in chunks: each call sees a chunk)."""
    leaves = [t for _, t in output_leaves((call.args, call.kwargs)) if t.ndim and not t.is_nested]
    if not leaves or any(batch_size in t.shape for t in leaves):
        return batch_size
    return int(leaves[0].shape[0])


def _compiled_region(model: nn.Module) -> set[int]:
    """The ids of the modules that run inside torch.compile's graphs: those compiled in place
    (``module.compile()``) and everything inside them or inside an ``OptimizedModule`` (whose own hooks run
    eagerly, outside its graph)."""
    region: set[int] = set()
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            region.update(map(id, module.modules()))
        inner = getattr(module, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            region.update(map(id, inner.modules()))
    return region


def _eager() -> Any:
    """A context in which compiled modules run eagerly, without compiling anything (``torch.compiler.set_stance``)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def _collect(into: dict[str, list[Any]], name: str) -> Callable[..., None]:
    return lambda module, args, output: into.setdefault(name, []).append(output)


def _identity(tensor: Tensor) -> int:
    """A tensor's storage: the same for a tensor passed on unchanged or as a view (an LSTM's ``out[-1]``)."""
    if tensor.is_nested or tensor.layout != torch.strided:
        return id(tensor)
    return tensor.untyped_storage().data_ptr()


def _slice_batch(value: Any, size: int, smaller: int) -> Any:
    """``value`` with every tensor's first axis of ``size`` cut to ``smaller`` (tuples, lists, dicts); ``None``
    when no tensor has such an axis."""
    found = [False]

    def cut(item: Any) -> Any:
        if isinstance(item, Tensor):
            axes = [a for a, s in enumerate(item.shape) if s == size]
            if axes:
                found[0] = True
                return item.narrow(axes[0], 0, smaller)
            return item
        if isinstance(item, tuple) and not hasattr(item, "_fields"):
            return tuple(cut(i) for i in item)
        if isinstance(item, list):
            return [cut(i) for i in item]
        if isinstance(item, dict):
            return {k: cut(v) for k, v in item.items()}
        return item

    result = cut(value)
    return result if found[0] else None


def _moved_positions(delta: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample, two readings of where the changed token is from how far each position moved (``[batch,
    tokens]``): the first position that moved after some that stayed put (a causal module: an LSTM moves later
    positions more than the changed one), and the one that moved most (a module that mixes all tokens, or a window
    of them). Stayed put: moved less than a thousandth of the most (an ulp of a fused kernel, not a token's
    influence)."""
    tokens = delta.shape[1]
    most = delta.argmax(dim=1)
    first = torch.where(delta > delta.amax(dim=1, keepdim=True) * 1e-3, torch.arange(tokens), tokens).amin(dim=1)
    return torch.where(first > 0, first.clamp_max(tokens - 1), most), most


def _token_axes(tensor: Tensor, size: int, tokens: int) -> Optional[tuple[int, int]]:
    """The batch axis (of ``size``) and the token axis (of ``tokens``) of a floating ``[..., features]`` tensor."""
    if not tensor.is_floating_point() or tensor.ndim < 3 or tensor.is_nested:
        return None
    batch_axes = [a for a in range(tensor.ndim - 1) if tensor.shape[a] == size]
    token_axes = [a for a in range(tensor.ndim - 1) if tensor.shape[a] == tokens and a not in batch_axes[:1]]
    return (batch_axes[0], token_axes[0]) if batch_axes and token_axes else None


def _token_view(output: Any, size: int, tokens: int) -> Optional[Tensor]:
    """The first floating tensor of ``output`` with a batch axis of ``size`` and a token axis of ``tokens``, as
    ``[batch, tokens, ...]`` (``None`` if there is none)."""
    for _, tensor in output_leaves(output):
        axes = _token_axes(tensor, size, tokens)
        if axes is not None:
            return tensor.movedim(axes, (0, 1))
    return None


def _perturb_token(
    value: tuple[tuple, dict], size: int, tokens: int, where: Tensor, strength: float = 1.0
) -> tuple[tuple[tuple, dict], bool]:
    """The module's input with its first floating ``[..., tokens, ..., features]`` tensor (a batch axis of
    ``size`` and a token axis of ``tokens``) changed at each sample's token ``where``, by ``strength`` times the
    tensor's largest value (1: a change no later layer can hide; small: a change that does not capture every
    token's attention)."""
    args, kwargs = value
    leaves = output_leaves((args, kwargs))
    for path, tensor in leaves:
        axes = _token_axes(tensor, size, tokens)
        if axes is None:
            continue
        batch_axis, token_axis = axes
        moved = tensor.movedim((batch_axis, token_axis), (0, 1)).clone()
        rows = torch.arange(size, device=moved.device)
        scale = strength * (float(moved.abs().amax()) + 1.0)
        # a +-1 pattern over the features, not a constant (a layer norm would remove a shift of every feature)
        pattern = torch.randint(0, 2, moved.shape[2:], generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
        moved[rows, where.clamp(0, tokens - 1).to(moved.device)] += scale * pattern.to(moved.device, moved.dtype)
        changed = moved.movedim((0, 1), (batch_axis, token_axis))
        return _replace(value, path, changed), True
    return value, False


def _replace(value: Any, path: tuple, new: Tensor) -> Any:
    if not path:
        return new
    key, rest = path[0], path[1:]
    if isinstance(value, tuple):
        return tuple(_replace(v, rest, new) if i == key else v for i, v in enumerate(value))
    if isinstance(value, list):
        return [_replace(v, rest, new) if i == key else v for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: (_replace(v, rest, new) if k == key else v) for k, v in value.items()}
    return value


def _real_tokens(masks: Mapping[str, Tensor], tokens: int, size: int) -> Optional[Tensor]:
    for key in MASK_KEYS:
        mask = masks.get(key)
        if mask is not None and tuple(mask.shape) == (size, tokens):
            return mask.cpu()
    return None


def _is_causal(before: Tensor, after: Tensor, where: Tensor) -> Optional[bool]:
    """From a change at each sample's token ``where``: causal (``True``) when no earlier position moved and later
    ones clearly did, not causal (``False``) when an earlier one clearly moved; ``None`` otherwise (a layer applied
    to each token on its own, token mixing too weak to tell, or nothing moved)."""
    delta = (after.float() - before.float()).abs().amax(dim=-1).cpu()  # [batch, tokens]
    scale = 1.0 + float(before.float().abs().amax())
    positions = torch.arange(delta.shape[1]).unsqueeze(0)
    earlier = delta[positions < where.unsqueeze(1)]
    later = delta[positions > where.unsqueeze(1)]
    earlier_moved = float(earlier.max()) if earlier.numel() else 0.0
    later_moved = float(later.max()) if later.numel() else 0.0
    if earlier_moved > _CLEAR * scale:
        return False
    if earlier_moved <= _QUIET * scale and later_moved > _CLEAR * scale:
        return True
    return None
