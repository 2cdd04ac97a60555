"""Choosing the monitored modules and turning their outputs into ``[batch, neurons]`` activations."""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Literal, Optional, Union

from torch import Tensor, nn

from lightning_infomem.checks import check_int

__all__ = [
    "DEFAULT_MAX_LAYERS",
    "LayerSpec",
    "OutputTransform",
    "default_layers",
    "module_output_width",
    "resolve_layers",
    "to_neuron_activations",
]

LayerSpec = Union[str, type, Sequence[Union[str, type]], None]
OutputTransform = Callable[[Any], Tensor]
SequenceReduction = Literal["first", "mean"]

DEFAULT_MAX_LAYERS = 4
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CHANNELS_FIRST_1D = (nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.InstanceNorm1d, nn.MaxPool1d, nn.AvgPool1d)


def default_layers(model: nn.Module, max_layers: int = DEFAULT_MAX_LAYERS) -> list[str]:
    """The layers monitored when none are named.

    Every ``nn.Linear`` and convolution in registration order, without the last one (the output
    head, whose neurons are the logits); if there are more than ``max_layers``, that many evenly
    spaced ones, always including the deepest. The paper monitors the pre-activation outputs of
    the hidden linear layers, which is what this picks for an MLP.

    Example:
        >>> from torch import nn
        >>> default_layers(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)))
        ['0', '2']
    """
    max_layers = check_int(max_layers, "max_layers", minimum=1)
    names = [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, *_CONV_TYPES))]
    hidden = names[:-1] if len(names) > 1 else names
    if len(hidden) <= max_layers:
        return hidden
    if max_layers == 1:
        return hidden[-1:]
    last = len(hidden) - 1
    picks = sorted({round(last - k * last / (max_layers - 1)) for k in range(max_layers)})
    return [hidden[i] for i in picks]


def module_output_width(module: nn.Module) -> Optional[int]:
    """The number of neurons a module's output has once made ``[batch, neurons]``, where the module says it.

    ``nn.Linear`` (``out_features``), convolutions (``out_channels``), batch / instance / group / layer
    norms and embeddings; ``None`` for any other module (its width is known at its first output).

    Example:
        >>> from torch import nn
        >>> module_output_width(nn.Conv2d(3, 16, 3)), module_output_width(nn.ReLU())
        (16, None)
    """
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


def resolve_layers(model: nn.Module, layers: LayerSpec) -> list[str]:
    """Module names selected by exact names, glob patterns or module types, in registration order.

    A module type can also be given as its dotted class path (``"torch.nn.Linear"``), the form a
    ``LightningCLI`` config file passes; a module name takes precedence over a class path.

    Raises:
        ValueError: a name or pattern that matches no module (the message lists the valid names),
            a type with no instance in the model, or an empty selection.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> resolve_layers(model, ["0", nn.ReLU])
        ['0', '1']
        >>> resolve_layers(model, "*")
        ['0', '1', '2']
        >>> resolve_layers(model, "torch.nn.Linear")
        ['0', '2']
    """
    named = [(name, module) for name, module in model.named_modules() if name]
    if layers is None:
        chosen = default_layers(model)
        if not chosen:
            raise ValueError(
                f"{type(model).__name__} has no nn.Linear or convolution layer to monitor by default; "
                f"name the layers to monitor with layers=[...]. Valid names: {_name_list(named)}"
            )
        return chosen
    specs = [layers] if isinstance(layers, (str, type)) else list(layers)
    if not specs:
        raise ValueError("layers is empty; pass module names, glob patterns or module types, or None for the default")
    selected: set[str] = set()
    for spec in specs:
        if isinstance(spec, type):
            matches = {name for name, module in named if isinstance(module, spec)}
            if not matches:
                raise ValueError(f"{type(model).__name__} has no module of type {spec.__name__}")
        elif isinstance(spec, str):
            if any(ch in spec for ch in "*?["):
                matches = {name for name, _ in named if fnmatch.fnmatchcase(name, spec)}
            else:
                matches = {name for name, _ in named if name == spec}
                module_type = None if matches else _import_module_type(spec)
                if module_type is not None:  # a dotted class path, as config files give types
                    matches = {name for name, module in named if isinstance(module, module_type)}
            if not matches:
                raise ValueError(
                    f"no module of {type(model).__name__} matches {spec!r}. Valid names: {_name_list(named)}"
                )
        else:
            raise TypeError(f"layers entries must be module names, glob patterns or module types, received {spec!r}")
        selected |= matches
    return [name for name, _ in named if name in selected]


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


def _first_tensor(output: Any) -> Optional[Tensor]:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        values: Sequence[Any] = list(output.values())
    elif isinstance(output, (tuple, list)):
        values = output
    else:
        return None
    for value in values:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None


def to_neuron_activations(
    output: Any,
    module: Optional[nn.Module] = None,
    output_transform: Optional[OutputTransform] = None,
    sequence_reduction: SequenceReduction = "first",
) -> Tensor:
    """A module's output as ``[batch, neurons]`` activations.

    - ``output_transform`` (if given) is applied first and must return a tensor.
    - Tuples, lists, dicts and dict-like model outputs: the first tensor found.
    - ``[B]`` becomes ``[B, 1]``; ``[B, N]`` is used as is.
    - ``[B, C, *spatial]`` with 4 or more dimensions, or 3 dimensions from a 1-d convolution,
      normalisation or pooling module: channels are neurons, spatial positions are averaged.
    - Other ``[B, T, H]`` outputs are sequences: ``sequence_reduction="first"`` takes the first
      token (as for a [CLS] vector), ``"mean"`` averages over tokens.

    Example:
        >>> import torch
        >>> to_neuron_activations(torch.ones(8, 16, 5, 5)).shape
        torch.Size([8, 16])
        >>> to_neuron_activations((torch.ones(8, 10, 32), None), sequence_reduction="mean").shape
        torch.Size([8, 32])
    """
    value = output_transform(output) if output_transform is not None else _first_tensor(output)
    if not isinstance(value, Tensor):
        what = "output_transform returned" if output_transform is not None else "the module returned"
        raise TypeError(
            f"{what} {type(value).__name__}, not a tensor; pass output_transform=... that picks the activation "
            "tensor out of the module's output"
        )
    if value.ndim == 0:
        raise ValueError("a module output of shape [] has no batch dimension; use output_transform to pick a tensor")
    if value.ndim == 1:
        return value.unsqueeze(1)
    if value.ndim == 2:
        return value
    if value.ndim >= 4 or isinstance(module, _CHANNELS_FIRST_1D):
        return value.flatten(2).mean(dim=2)
    if sequence_reduction == "first":
        return value[:, 0]
    if sequence_reduction == "mean":
        return value.mean(dim=1)
    raise ValueError(f"sequence_reduction must be 'first' or 'mean', received {sequence_reduction!r}")
