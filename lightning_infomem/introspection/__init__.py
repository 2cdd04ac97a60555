"""Model introspection: which modules to monitor (`layers`), how their outputs are read (`readings`, observed on the
first measured batch by `probe`), and where the logits are (`logits`). Below the callbacks, above nothing but
torch."""

from lightning_infomem.introspection.layers import (
    DEFAULT_MAX_LAYERS,
    DefaultLayers,
    LayerSpec,
    check_layer_spec,
    choose_default_layers,
    default_layers,
    match_layer_pattern,
    module_output_width,
    named_layers,
    output_head,
    resolve_layers,
)
from lightning_infomem.introspection.probe import ProbeResult, ReadingProbe, class_tokens, layout_of
from lightning_infomem.introspection.readings import (
    Reading,
    align_mask,
    batch_masks,
    first_tensor,
    output_leaves,
    read,
    to_neuron_activations,
)

__all__ = [
    "DEFAULT_MAX_LAYERS",
    "DefaultLayers",
    "LayerSpec",
    "ProbeResult",
    "Reading",
    "ReadingProbe",
    "align_mask",
    "batch_masks",
    "check_layer_spec",
    "choose_default_layers",
    "class_tokens",
    "default_layers",
    "first_tensor",
    "layout_of",
    "match_layer_pattern",
    "module_output_width",
    "named_layers",
    "output_head",
    "output_leaves",
    "read",
    "resolve_layers",
    "to_neuron_activations",
]
