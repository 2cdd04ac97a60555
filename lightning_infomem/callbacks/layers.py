"""Choosing the monitored modules and turning their outputs into ``[batch, neurons]`` activations.

Module names are the dotted names of ``model.named_modules()`` with the ``_orig_mod`` parts that
``torch.compile`` inserts left out, so a layer has the same name whether or not (and however) the
model was compiled.

Patterns have path semantics: a name is a dotted path of parts, ``*`` matches within one part (no
dot), ``**`` as a whole part matches any number of parts (none included), ``?`` one character and
``[...]`` one of a set, all within a part. ``"blocks.*"`` selects the items of ``blocks`` and
nothing below them; ``"**.output"`` selects every module named ``output`` at any depth.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Literal, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from lightning_infomem.checks import check_int

__all__ = [
    "channel_width",
    "is_causal_block",
    "resolved_sequence_reduction",
    "check_layer_spec",
    "DEFAULT_MAX_LAYERS",
    "DefaultLayers",
    "LayerSpec",
    "OutputTransform",
    "choose_default_layers",
    "default_layers",
    "first_tensor",
    "match_layer_pattern",
    "module_output_width",
    "named_layers",
    "resolve_layers",
    "to_neuron_activations",
]

LayerSpec = Union[str, type, Sequence[Union[str, type]], None]
OutputTransform = Callable[[Any], Tensor]
SequenceReduction = Literal["first", "mean", "last"]
SequenceReductionChoice = Literal["auto", "first", "mean", "last"]

DEFAULT_MAX_LAYERS = 6
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CHANNELS_FIRST_1D = (nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.InstanceNorm1d, nn.MaxPool1d, nn.AvgPool1d)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_COMPILED_PART = "_orig_mod"


# ------------------------------------------------------------------------------------------ names
def named_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every submodule, in registration order, named as if nothing were compiled.

    ``torch.compile(module)`` wraps a module in an ``OptimizedModule`` whose child ``_orig_mod`` is the
    module itself; both get the module's own name here, and the name maps to the real module (the
    one that runs, and whose forward hooks the compiled graph includes). The root is left out.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 3))
        >>> model[0] = torch.compile(model[0])
        >>> sorted(dict(named_layers(model)))
        ['0']
    """
    layers: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        clean = ".".join(part for part in name.split(".") if part != _COMPILED_PART) if name else ""
        if clean:
            layers[clean] = module  # a later _orig_mod replaces its wrapper: the real module
    return list(layers.items())


def match_layer_pattern(pattern: str, name: str) -> bool:
    """Whether the dotted ``name`` matches ``pattern`` with path semantics (see the module docs).

    Example:
        >>> match_layer_pattern("blocks.*", "blocks.11"), match_layer_pattern("blocks.*", "blocks.11.mlp")
        (True, False)
        >>> match_layer_pattern("**.output", "encoder.layer.0.output"), match_layer_pattern("**.output", "output")
        (True, True)
    """
    return _match_parts(pattern.split("."), name.split("."))


def _match_parts(pattern: Sequence[str], name: Sequence[str]) -> bool:
    if not pattern:
        return not name
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match_parts(rest, name[i:]) for i in range(len(name) + 1))
    return bool(name) and fnmatch.fnmatchcase(name[0], head) and _match_parts(rest, name[1:])


def _is_pattern(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


# ------------------------------------------------------------------------------- default layers
class DefaultLayers(NamedTuple):
    """The default choice of layers: ``names``, the architecture ``family`` it was recognised as, and a
    one-line ``description`` of what was picked (printed when the callback starts)."""

    names: list[str]
    family: Literal["transformer", "cnn", "mlp", "none"]
    description: str


class _BlockList(NamedTuple):
    name: str
    module: nn.Module
    items: list[tuple[str, nn.Module]]


def _block_lists(layers: list[tuple[str, nn.Module]]) -> list[_BlockList]:
    """Containers whose items (two or more) are all composite blocks of one class: repeated blocks."""
    found = []
    for name, module in layers:
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        items = [(f"{name}.{child}", block) for child, block in module.named_children()]
        if len(items) < 2:
            continue
        block_type = type(_unwrap(items[0][1]))
        if block_type in _CONTAINERS or isinstance(_unwrap(items[0][1]), _CONTAINERS):
            continue
        if not all(type(_unwrap(block)) is block_type for _, block in items):
            continue
        if not any(True for _ in _unwrap(items[0][1]).children()) or not any(True for _ in module.parameters()):
            continue  # bare layers (a list of Linear) are not blocks
        found.append(_BlockList(name, module, items))
    return found


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, _COMPILED_PART, module)


def _signature(module: nn.Module) -> tuple:
    return tuple(tuple(p.shape) for p in _unwrap(module).parameters())


def _evenly_spaced(names: list[str], max_layers: int) -> list[str]:
    """At most ``max_layers`` of ``names``, evenly spaced, always including the first and the deepest."""
    if len(names) <= max_layers:
        return list(names)
    if max_layers == 1:
        return names[-1:]
    last = len(names) - 1
    picks = sorted({round(last - k * last / (max_layers - 1)) for k in range(max_layers)})
    return [names[i] for i in picks]


def choose_default_layers(model: nn.Module, max_layers: int = DEFAULT_MAX_LAYERS) -> DefaultLayers:
    """The layers monitored when none are named, found from the module tree (no list of model names).

    What the paper measures, by architecture family:

    - **transformer / ViT**: a container (``ModuleList`` or ``Sequential``) of two or more blocks of one
      class with identical parameter shapes (HF ``encoder.layer``, ``transformer.h``, timm ``blocks``):
      each block's output, the hidden state whose first token (or mean, see ``sequence_reduction``)
      is taken;
    - **CNN**: several such containers whose blocks have the same class but different widths (the
      stages ``layer1`` .. ``layer4`` of a ResNet): each stage's output, averaged over space;
    - **MLP** (anything else): every ``nn.Linear`` (or, without any, convolution) but the last (the
      output head, whose neurons are the logits): the pre-activation outputs.

    Where the family has more than ``max_layers`` candidates, that many evenly spaced ones, always
    including the first and the deepest. Where several block containers qualify, the one with the
    most parameters wins.

    Example:
        >>> from torch import nn
        >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> choose_default_layers(mlp).names
        ['0', '2']
    """
    max_layers = check_int(max_layers, "max_layers", minimum=1)
    layers = named_layers(model)
    lists = _block_lists(layers)
    if lists:
        groups: dict[tuple, list[_BlockList]] = {}
        for block_list in lists:
            groups.setdefault((type(_unwrap(block_list.items[0][1])),), []).append(block_list)
        group = max(groups.values(), key=lambda g: sum(p.numel() for b in g for p in b.module.parameters()))
        signatures = {_signature(block_list.items[0][1]) for block_list in group}
        block_type = type(_unwrap(group[0].items[0][1])).__name__
        if len(group) >= 2 and len(signatures) > 1:  # stages of different widths: a CNN
            stages = [b.name if not isinstance(b.module, nn.ModuleList) else b.items[-1][0] for b in group]
            names = _evenly_spaced(stages, max_layers)
            description = (
                f"CNN stages ({len(group)} containers of {block_type} blocks of different widths): "
                f"{len(names)} stage outputs, averaged over space"
            )
            return DefaultLayers(names, "cnn", description)
        blocks = [name for block_list in group for name, _ in block_list.items]
        names = _evenly_spaced(blocks, max_layers)
        where = ", ".join(repr(b.name) for b in group)
        description = (
            f"transformer blocks ({len(blocks)} {block_type} blocks in {where}): "
            f"{len(names)} block outputs, one token per sample (sequence_reduction)"
        )
        return DefaultLayers(names, "transformer", description)
    linear = [name for name, module in layers if isinstance(_unwrap(module), nn.Linear)]
    conv = [name for name, module in layers if isinstance(_unwrap(module), _CONV_TYPES)]
    candidates = [name for name, module in layers if isinstance(_unwrap(module), (nn.Linear, *_CONV_TYPES))]
    if not candidates:
        return DefaultLayers([], "none", "no nn.Linear, convolution or repeated block to monitor")
    hidden = candidates[:-1] if len(candidates) > 1 else candidates
    names = _evenly_spaced(hidden, max_layers)
    kinds = "linear" if not conv else ("convolution" if not linear else "linear and convolution")
    description = (
        f"MLP-style: {len(names)} of {len(hidden)} hidden {kinds} layers (pre-activation outputs; "
        "the last one, the output head, is left out)"
    )
    return DefaultLayers(names, "mlp", description)


def default_layers(model: nn.Module, max_layers: int = DEFAULT_MAX_LAYERS) -> list[str]:
    """The names of `choose_default_layers`.

    Example:
        >>> from torch import nn
        >>> default_layers(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)))
        ['0', '2']
    """
    return choose_default_layers(model, max_layers).names


def module_output_width(module: nn.Module) -> Optional[int]:
    """The number of neurons a module's output has once made ``[batch, neurons]``, where the module says it.

    ``nn.Linear`` (``out_features``), convolutions (``out_channels``), batch / instance / group / layer
    norms and embeddings; ``None`` for any other module (its width is known at its first output).

    Example:
        >>> from torch import nn
        >>> module_output_width(nn.Conv2d(3, 16, 3)), module_output_width(nn.ReLU())
        (16, None)
    """
    module = _unwrap(module)
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    if isinstance(module, _CONV_TYPES):
        return int(module.out_channels)
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
        return int(module.num_features if hasattr(module, "num_features") else module.num_channels)
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return int(module.normalized_shape[0])
    if isinstance(module, nn.Embedding):
        return int(module.embedding_dim)
    return None


# ------------------------------------------------------------------------------- named layers
def check_layer_spec(layers: Any) -> LayerSpec:
    """``layers`` if it is a layer specification (``None``, a name or pattern, a module type, or a list of
    these), else a ``ValueError`` naming what was given.

    Example:
        >>> check_layer_spec(["net.0", "encoder.layer.*"])
        ['net.0', 'encoder.layer.*']
        >>> check_layer_spec(5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: layers must be None, a module name or path pattern (...), or a list of these; received 5 (int)
    """

    def one(item: Any) -> bool:
        return isinstance(item, str) or (isinstance(item, type) and issubclass(item, nn.Module))

    if layers is None or one(layers):
        return layers
    if isinstance(layers, Sequence) and not isinstance(layers, (str, bytes)) and all(one(i) for i in layers):
        return layers
    raise ValueError(
        'layers must be None, a module name or path pattern ("net.0", "encoder.layer.*"), a module type '
        f"(nn.Linear), or a list of these; received {layers!r} ({type(layers).__name__})"
    )


def resolve_layers(model: nn.Module, layers: LayerSpec) -> list[str]:
    """Module names selected by exact names, path patterns or module types, in registration order.

    Names are those of `named_layers` (no ``_orig_mod``); patterns have path semantics (module docs).
    A module type can also be given as its dotted class path (``"torch.nn.Linear"``), the form a
    ``LightningCLI`` config file passes; a module name takes precedence over a class path. ``None``
    gives `default_layers`.

    A pattern that selects some but not all same-class items of a container (``"blocks.?"`` on 12
    blocks) warns, naming the ones left out and a pattern that takes them all.

    Raises:
        ValueError: a name or pattern that matches no module (the message lists the valid names, and a
            ``**.``-prefixed pattern that would match), a type with no instance in the model, or an
            empty selection.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 2)))
        >>> resolve_layers(model, ["0", nn.ReLU])
        ['0', '1']
        >>> resolve_layers(model, "*")
        ['0', '1', '2']
        >>> resolve_layers(model, "**")
        ['0', '1', '2', '2.0']
        >>> resolve_layers(model, "torch.nn.Linear")
        ['0', '2.0']
    """
    named = named_layers(model)
    if layers is None:
        chosen = default_layers(model)
        if not chosen:
            raise ValueError(
                f"{type(model).__name__} has no nn.Linear, convolution or repeated block to monitor by default; "
                f"name the layers to monitor with layers=[...]. Valid names: {_name_list(named)}"
            )
        return chosen
    specs = [layers] if isinstance(layers, (str, type)) else list(layers)
    if not specs:
        raise ValueError("layers is empty; pass module names, glob patterns or module types, or None for the default")
    selected: set[str] = set()
    for spec in specs:
        if isinstance(spec, type):
            matches = {name for name, module in named if isinstance(_unwrap(module), spec)}
            if not matches:
                raise ValueError(f"{type(model).__name__} has no module of type {spec.__name__}")
        elif isinstance(spec, str):
            if _is_pattern(spec):
                matches = {name for name, _ in named if match_layer_pattern(spec, name)}
                _warn_about_partial_selection(spec, matches, named)
            else:
                matches = {name for name, _ in named if name == spec}
                module_type = None if matches else _import_module_type(spec)
                if module_type is not None:  # a dotted class path, as config files give types
                    matches = {name for name, module in named if isinstance(_unwrap(module), module_type)}
            if not matches:
                raise ValueError(_no_match_message(model, spec, named))
        else:
            raise TypeError(f"layers entries must be module names, glob patterns or module types, received {spec!r}")
        selected |= matches
    return [name for name, _ in named if name in selected]


def _no_match_message(model: nn.Module, spec: str, named: list[tuple[str, nn.Module]]) -> str:
    message = f"no module of {type(model).__name__} matches {spec!r}"
    if not spec.startswith("**"):
        anywhere = f"**.{spec}"
        found = [name for name, _ in named if match_layer_pattern(anywhere, name)]
        if found:
            shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            message += f" (names are full dotted paths: {anywhere!r} matches {len(found)}: {shown})"
    return f"{message}. Valid names: {_name_list(named)}"


def _warn_about_partial_selection(spec: str, matches: set[str], named: list[tuple[str, nn.Module]]) -> None:
    modules = dict(named)
    parents: dict[str, list[str]] = {}
    for name in matches:
        parent, _, _ = name.rpartition(".")
        if isinstance(modules.get(parent), (nn.Sequential, nn.ModuleList)):
            parents.setdefault(parent, []).append(name)
    for parent, chosen in parents.items():
        block_type = type(_unwrap(modules[chosen[0]]))
        siblings = [
            f"{parent}.{child}"
            for child, module in modules[parent].named_children()
            if type(_unwrap(module)) is block_type
        ]
        left_out = [name for name in siblings if name not in matches]
        if left_out and len(siblings) > 2:
            tail = spec[len(parent) + 1 :] if spec.startswith(parent + ".") else None
            better = f"{parent}.*" + ("" if tail is None or "." not in tail else tail[tail.index(".") :])
            warnings.warn(
                f"layer pattern {spec!r} selects {len(siblings) - len(left_out)} of the {len(siblings)} "
                f"{block_type.__name__} items of {parent!r}, leaving out {', '.join(left_out[:6])}"
                f"{', ...' if len(left_out) > 6 else ''}; {better!r} selects them all",
                UserWarning,
                stacklevel=3,
            )


def _import_module_type(path: str) -> Optional[type]:
    """The ``nn.Module`` subclass a dotted path such as ``"torch.nn.Linear"`` names, or ``None``."""
    module_path, _, attribute = path.rpartition(".")
    if not module_path or not attribute.isidentifier():
        return None
    try:
        candidate = getattr(importlib.import_module(module_path), attribute, None)
    except ImportError:
        return None
    return candidate if isinstance(candidate, type) and issubclass(candidate, nn.Module) else None


def _name_list(named: Sequence[tuple[str, nn.Module]], limit: int = 60) -> str:
    items = [f"{name} ({type(module).__name__})" for name, module in named]
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def first_tensor(output: Any) -> Optional[Tensor]:
    """The first tensor of a module output: the output itself, or the first one found (depth first) in a
    tuple, list, dict or dict-like model output; ``None`` if there is none.

    Example:
        >>> import torch
        >>> first_tensor((None, {"hidden": torch.ones(2)})).tolist()
        [1.0, 1.0]
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        values: Sequence[Any] = list(output.values())
    elif isinstance(output, (tuple, list)):
        values = output
    else:
        return None
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


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


def to_neuron_activations(
    output: Any,
    module: Optional[nn.Module] = None,
    output_transform: Optional[OutputTransform] = None,
    sequence_reduction: SequenceReduction = "first",
    channels: Union[int, None, Literal["auto"]] = "auto",
    attention_mask: Optional[Tensor] = None,
) -> Tensor:
    """A module's output as ``[batch, neurons]`` activations.

    - ``output_transform`` (if given) is applied first and must return a tensor.
    - Tuples, lists, dicts and dict-like model outputs: the first tensor found.
    - ``[B]`` becomes ``[B, 1]``; ``[B, N]`` is used as is.
    - ``[B, C, *spatial]`` with 4 or more dimensions, or 3 dimensions from a 1-d convolution,
      normalisation or pooling module: channels are neurons, spatial positions are averaged. The
      channel axis is the one of the module's width (`channel_width`): ``[B, *spatial, C]``
      (channels last: Swin, timm ConvNeXt stages) is averaged over its spatial axes the same way.
    - Other ``[B, T, H]`` outputs are sequences: ``sequence_reduction="first"`` takes the first
      token (as for a [CLS] vector), ``"mean"`` averages over tokens, ``"last"`` takes the last one
      (a causal model's summary of the sequence).
    - ``attention_mask`` (``[B, T]``, 1 = a real token), when given and of the output's ``[B, T]``: the
      reductions use the real tokens only (the first or last real token, the mean over them).
    - ``channels``: the module's channel width for that choice; ``"auto"`` reads it from the module tree
      (`channel_width`), ``None`` when it is not known (dimension 1 is taken, with a warning).
    - Nested tensors (padded sequences packed by ``nn.TransformerEncoder`` with a padding mask): the
      same reductions over each sample's own tokens, padding excluded.

    Example:
        >>> import torch
        >>> to_neuron_activations(torch.ones(8, 16, 5, 5)).shape
        torch.Size([8, 16])
        >>> to_neuron_activations((torch.ones(8, 10, 32), None), sequence_reduction="mean").shape
        torch.Size([8, 32])
    """
    value = output_transform(output) if output_transform is not None else first_tensor(output)
    if not isinstance(value, Tensor):
        if output_transform is not None:
            raise TypeError(
                f"output_transform returned {type(value).__name__}, not a tensor; it must return the activation "
                "tensor of the module's output"
            )
        what, fix = _describe_output(output)
        raise TypeError(f"the module returned {what}, which holds no tensor the callback can find; {fix}")

    if value.is_nested:  # padded sequences packed as a nested tensor (nn.TransformerEncoder with a padding mask)
        return _reduce_nested(value, module, sequence_reduction)
    if value.ndim == 0:
        raise ValueError("a module output of shape [] has no batch dimension; use output_transform to pick a tensor")
    if value.ndim == 1:
        return value.unsqueeze(1)
    if value.ndim == 2:
        return value
    if value.ndim >= 4:
        width = (channel_width(module) if module is not None else None) if channels == "auto" else channels
        return _average_over_space(value, module, width)
    if isinstance(module, _CHANNELS_FIRST_1D):
        return value.flatten(2).mean(dim=2)
    if attention_mask is not None and tuple(attention_mask.shape) == tuple(value.shape[:2]):
        return _masked_reduction(value, attention_mask, sequence_reduction)
    if sequence_reduction == "first":
        return value[:, 0]
    if sequence_reduction == "mean":
        return value.mean(dim=1)
    if sequence_reduction == "last":
        return value[:, -1]
    raise ValueError(f"sequence_reduction must be 'first', 'mean' or 'last', received {sequence_reduction!r}")


def _masked_reduction(value: Tensor, mask: Tensor, sequence_reduction: SequenceReduction) -> Tensor:
    """``[B, T, H]`` -> ``[B, H]`` over the tokens where ``mask`` (``[B, T]``, 1 = a real token) is set: the first
    or last real token (left or right padding alike), or their mean."""
    real = mask.to(device=value.device) != 0
    if sequence_reduction == "mean":
        weights = real.to(value.dtype).unsqueeze(-1)
        return (value * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
    positions = torch.arange(value.shape[1], device=value.device)
    if sequence_reduction == "first":
        index = torch.where(real, positions, value.shape[1]).amin(dim=1).clamp_max(value.shape[1] - 1)
    elif sequence_reduction == "last":
        index = torch.where(real, positions, -1).amax(dim=1).clamp_min(0)
    else:
        raise ValueError(f"sequence_reduction must be 'first', 'mean' or 'last', received {sequence_reduction!r}")
    return value[torch.arange(value.shape[0], device=value.device), index]


def is_causal_block(module: nn.Module) -> bool:
    """Whether a block attends causally (each token to the earlier ones only), from the module tree: a submodule
    with ``is_causal`` set, as Hugging Face's decoder attention (GPT-2, Llama, ...) has.

    Example:
        >>> from torch import nn
        >>> is_causal_block(nn.Linear(2, 2))
        False
    """
    return any(getattr(sub, "is_causal", False) is True for sub in module.modules())


def resolved_sequence_reduction(choice: SequenceReductionChoice, module: nn.Module) -> SequenceReduction:
    """``"auto"``: ``"last"`` for a causal block (its last token has seen the whole sequence; the first only
    itself), ``"first"`` otherwise (a [CLS] token); any other choice as given."""
    if choice != "auto":
        return choice
    return "last" if is_causal_block(module) else "first"


_WIDTHS: weakref.WeakKeyDictionary[nn.Module, Optional[int]] = weakref.WeakKeyDictionary()
_UNKNOWN_LAYOUT_WARNED: set[int] = set()


def channel_width(module: nn.Module) -> Optional[int]:
    """The channels of a module's output where the module tree says it: its own width (`module_output_width`),
    or, for a container (a ResNet stage, a Swin block), that of its last submodule of known width. Cached.

    Example:
        >>> from torch import nn
        >>> channel_width(nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU()))
        16
    """
    if module in _WIDTHS:
        return _WIDTHS[module]
    width = module_output_width(module)
    if width is None:
        for sub in reversed(list(_unwrap(module).modules())):
            width = module_output_width(sub) if sub is not module else None
            if width is not None:
                break
    _WIDTHS[module] = width
    return width


def _average_over_space(value: Tensor, module: Optional[nn.Module], width: Optional[int]) -> Tensor:
    """``[B, C, *spatial]`` (channels first, as convolutions give) or ``[B, *spatial, C]`` (channels last, as Swin
    and ConvNeXt stages give) averaged over space to ``[B, C]``; the channel axis is the one of the module's width."""
    if width is not None and value.shape[1] != width and value.shape[-1] == width:
        return value.flatten(1, -2).mean(dim=1)  # channels last
    if width is not None and value.shape[1] != width:
        raise ValueError(
            f"a module output of shape {list(value.shape)} has no axis of the module's {width} channels (neither "
            "dimension 1 nor the last); pass output_transform=... that returns [batch, neurons]"
        )
    if width is None and module is not None and id(module) not in _UNKNOWN_LAYOUT_WARNED:
        _UNKNOWN_LAYOUT_WARNED.add(id(module))
        warnings.warn(
            f"{type(module).__name__} gives {list(value.shape)} outputs and its width is not known from the module "
            "tree: dimension 1 is read as the channels (channels first). If its outputs are channels last "
            "([batch, ..., channels]), pass output_transform=lambda out: out.movedim(-1, 1)",
            UserWarning,
            stacklevel=3,
        )
    return value.flatten(2).mean(dim=2)


def _reduce_nested(value: Tensor, module: Optional[nn.Module], sequence_reduction: SequenceReduction) -> Tensor:
    """``[batch, neurons]`` from a nested tensor of ``[T_i, ...]`` sequences: each sample's own tokens only, so
    the reduction never sees padding (the first, mean or last real token)."""
    parts = value.unbind()
    if not parts or parts[0].ndim != 2:
        raise ValueError(
            f"a nested-tensor output of {len(parts)} samples whose parts are not [tokens, features]; pass an "
            "output_transform that returns a [batch, neurons] tensor"
        )
    if sequence_reduction == "first":
        return torch.stack([part[0] for part in parts])
    if sequence_reduction == "mean":
        return torch.stack([part.mean(dim=0) for part in parts])
    if sequence_reduction == "last":
        return torch.stack([part[-1] for part in parts])
    raise ValueError(f"sequence_reduction must be 'first', 'mean' or 'last', received {sequence_reduction!r}")
