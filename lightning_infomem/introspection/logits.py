"""Finding a model's logits from its module tree, for the callbacks that read them (`TrainingDynamics` in
training, `PredictionPeers` in validation)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

from torch import Tensor, nn

from lightning_infomem.introspection.layers import named_layers, output_head
from lightning_infomem.introspection.readings import first_tensor

__all__ = ["choose_logits_module", "logits_candidates", "logits_of"]


def logits_candidates(pl_module: nn.Module, logits_module: Optional[str], who: str) -> list[tuple[str, nn.Module]]:
    """The module(s) whose output may be the logits, the likeliest first.

    ``logits_module`` given: that one (``""``: the ``LightningModule`` itself). ``None``: the head, the last
    ``nn.Linear`` outside repeated blocks (`output_head`; the last ``nn.Linear`` where none is outside them; of
    two heads of the same shape side by side, as a distilled ViT's ``head`` and ``head_dist``, the first),
    then each module that contains it, up to the ``LightningModule``: a head applied to every token (a Hugging
    Face ``score`` giving ``[batch, tokens, classes]``) is passed over for the model around it, whose output
    holds the logits pooled by the model's own rule. `choose_logits_module` decides on the first batch.
    """
    layers = dict(named_layers(pl_module))
    if logits_module == "":
        return [("", pl_module)]
    if logits_module is not None:
        if logits_module not in layers:
            shown = ", ".join(list(layers)[-12:])
            raise ValueError(
                f"{who}: no module named {logits_module!r} in {type(pl_module).__name__}; name the module whose "
                f"output is the logits (the last ones: {shown}), or '' for the LightningModule itself"
            )
        return [(logits_module, layers[logits_module])]
    linear = {
        name: getattr(module, "_orig_mod", module)
        for name, module in layers.items()
        if isinstance(getattr(module, "_orig_mod", module), nn.Linear)
    }
    if not linear:
        raise ValueError(
            f"{who}: {type(pl_module).__name__} has no nn.Linear to take the logits from; pass "
            "logits_module='<name>' (the module whose output is the logits) or '' for the LightningModule"
        )
    last = output_head(pl_module, nn.Linear) or list(linear)[-1]
    parent = last.rpartition(".")[0]
    shape = (linear[last].in_features, linear[last].out_features)
    twins = [
        name
        for name, module in linear.items()
        if name.rpartition(".")[0] == parent and (module.in_features, module.out_features) == shape
    ]
    head = twins[0]  # of two heads of one shape side by side, the first (a distillation head comes second)
    modules = dict(pl_module.named_modules())
    chain = [head]
    while chain[-1]:
        chain.append(chain[-1].rpartition(".")[0])
    return [(name, layers.get(name) or modules.get(name) or pl_module) for name in chain]


def logits_of(output: Any, output_transform: Optional[Callable[[Any], Tensor]] = None) -> Any:
    """The logits in a module output: ``output_transform(output)``, its ``logits``, or its first tensor."""
    if output_transform is not None:
        return output_transform(output)
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(getattr(output, "logits", None), Tensor):
        return output.logits
    return first_tensor(output)


def choose_logits_module(
    candidates: list[tuple[str, nn.Module]],
    captured: list[tuple[nn.Module, Any]],
    batch_size: int,
    who: str,
    output_transform: Optional[Callable[[Any], Tensor]] = None,
) -> tuple[str, nn.Module]:
    """Of the candidates (the head first, then each module around it), the one whose output in the first batch
    (``captured``: ``(module, output)`` pairs) holds the logits the model returns: the outermost ``[batch, classes]``
    output with the head's number of classes (a distilled model that averages two heads is scored on the average,
    a ``LightningModule`` returning the logits on what it returns); where the head's own output is not
    ``[batch, classes]`` (a head applied to every token), the innermost ``[batch, classes]`` output. A
    ``ValueError`` listing every candidate's output shape where none is."""
    shapes, found = [], []
    for name, module in candidates:
        values = [logits_of(output, output_transform) for seen, output in captured if seen is module]
        value = next((v for v in values if isinstance(v, Tensor)), None)
        shapes.append(f"{name or 'the LightningModule'!r} {list(value.shape) if value is not None else 'none'}")
        if value is not None and value.ndim == 2 and value.shape[0] == batch_size:
            found.append((name, module, int(value.shape[1])))
    if found:
        head = found[0] if found[0][0] == candidates[0][0] else None
        if head is not None:
            same = [(name, module) for name, module, classes in found if classes == head[2]]
            return same[-1]
        return found[0][0], found[0][1]
    raise ValueError(
        f"{who}: no module gave [batch, classes] logits in the first batch (outputs: {', '.join(shapes)}); pass "
        "logits_module=... naming the module whose output is the logits, or output_transform=... that returns them"
    )
