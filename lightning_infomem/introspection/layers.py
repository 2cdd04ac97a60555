"""Choosing the monitored modules: by name, path pattern or type, or by default from the module tree.

Module names are the dotted names of ``model.named_modules()`` with the ``_orig_mod`` parts that
``torch.compile`` inserts left out, so a layer has the same name whether or not (and however) the
model was compiled.

Patterns have path semantics: a name is a dotted path of parts, ``*`` matches within one part (no
dot), ``**`` as a whole part matches any number of parts (none included), ``?`` one character and
``[...]`` one of a set, all within a part. ``"blocks.*"`` selects the items of ``blocks`` and
nothing below them; ``"**.output"`` selects every module named ``output`` at any depth.

How a chosen module's output is read (its batch axis, main tensor, neurons, token) is observed on the first
measured batch: `lightning_infomem.introspection.probe`.
"""

from __future__ import annotations

import fnmatch
import importlib
import warnings
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, Optional, Union

from torch import nn

from lightning_infomem.checks import check_int

__all__ = [
    "check_layer_spec",
    "DEFAULT_MAX_LAYERS",
    "DefaultLayers",
    "LayerSpec",
    "choose_default_layers",
    "default_layers",
    "match_layer_pattern",
    "module_output_width",
    "named_layers",
    "output_head",
    "resolve_layers",
]

LayerSpec = Union[str, type, Sequence[Union[str, type]], None]

DEFAULT_MAX_LAYERS = 6
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_COMPILED_PART = "_orig_mod"
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


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
    """The default choice of layers: ``names``, the kind of structure they were found in (``family``), and a
    one-line ``description`` of what was picked and why (printed when the callback starts).

    ``family``: ``"blocks"`` (a run of repeated blocks: transformer layers, MobileNet blocks), ``"stages"``
    (containers of blocks: ResNet, Swin, EfficientNet, DenseNet stages), ``"encoder-decoder"`` (the blocks of
    two stacks: T5, BART), ``"shared"`` (one block applied several times: ALBERT), ``"conv"`` (convolutions
    without blocks: VGG, a plain ``nn.Sequential`` CNN), ``"recurrent"`` (an LSTM or GRU classifier), ``"mlp"``, or
    ``"none"``."""

    names: list[str]
    family: Literal["blocks", "stages", "encoder-decoder", "shared", "conv", "recurrent", "mlp", "none"]
    description: str


class _Tree:
    """The module tree, named as `named_layers` names it, with what the default choice needs of each module."""

    def __init__(self, model: nn.Module) -> None:
        self.modules: dict[str, nn.Module] = {"": _unwrap(model)}
        self.children: dict[str, list[str]] = {}
        self._walk("", _unwrap(model), set())
        self.order = list(self.modules)
        self._weights: dict[str, int] = {}
        self._inner: dict[str, int] = {}
        self._blocks: dict[str, list[str]] = {}
        self._repeated: Optional[set[str]] = None
        self.head = self.find_head()

    def find_head(self, layer_type: Optional[type[nn.Module]] = None) -> Optional[str]:
        """The output head: the last layer with a weight matrix (an instance of ``layer_type``, if given) that
        is not inside a repeated block (one of two or more sibling blocks of one class), in registration order;
        ``None`` when every one is inside repeated blocks (a bare encoder or ``nn.Transformer``: no head).

        A classifier registered before the network (XLM-RoBERTa's ``classifier`` before its ``roberta``) is
        still the head, not the encoder's last linear layer.
        """
        owners = [
            name
            for name in self.order
            if name
            and _owns_weights(self.modules[name])
            and (layer_type is None or isinstance(self.modules[name], layer_type))
        ]
        repeated = self.repeated_blocks()
        outside = [
            name
            for name in owners
            if not any(".".join(name.split(".")[:k]) in repeated for k in range(1, name.count(".") + 2))
        ]
        return outside[-1] if outside else None

    def repeated_blocks(self) -> set[str]:
        """Modules that are one of two or more sibling blocks (two or more weight layers each) of one class: the
        layers of a stack, the blocks of a stage. Generic containers (``nn.Sequential``, ``nn.ModuleList``) count
        only with the same parameter shapes, so that a model's ``features`` and ``classifier`` are not a run."""
        if self._repeated is None:
            self._repeated = set()
            for kids in self.children.values():
                groups: dict[Any, list[str]] = {}
                for kid in kids:
                    module = self.modules[kid]
                    if self.weights(kid) < 2:
                        continue
                    key: Any = type(module)
                    if isinstance(module, _CONTAINERS):
                        key = (key, tuple(tuple(p.shape) for p in module.parameters()))
                    groups.setdefault(key, []).append(kid)
                self._repeated.update(kid for group in groups.values() if len(group) >= 2 for kid in group)
        return self._repeated

    def _walk(self, name: str, module: nn.Module, seen: set[int]) -> None:
        seen.add(id(module))
        kids = []
        for child_name, child in module.named_children():
            child = _unwrap(child)
            if id(child) in seen:
                continue  # a module registered twice is visited once, under its first name
            full = f"{name}.{child_name}" if name else child_name
            self.modules[full] = child
            kids.append(full)
            self._walk(full, child, seen)
        self.children[name] = kids

    def weights(self, name: str) -> int:
        """How many modules of the subtree own a weight matrix (linear, convolution; embeddings not counted)."""
        if name not in self._weights:
            if isinstance(getattr(self.modules[name], "base_layer", None), nn.Module):
                self._weights[name] = 1  # an adapter around one layer (peft's LoRA): one layer of the network
                return 1
            own = int(_owns_weights(self.modules[name]))
            self._weights[name] = own + sum(self.weights(child) for child in self.children[name])
        return self._weights[name]

    def contains(self, name: str, other: Optional[str]) -> bool:
        return other is not None and (other == name or not name or other.startswith(name + "."))

    def last_owner(self, name: str) -> Optional[nn.Module]:
        found = [n for n in self.order if self.contains(name, n) and _owns_weights(self.modules[n])]
        return self.modules[found[-1]] if found else None

    def is_head_like(self, name: str, siblings: list[str]) -> bool:
        """The output head, a classifier holding it (no blocks of its own), or a side head (an auxiliary
        classifier): a block of a class its sibling blocks do not share that ends in a linear layer of the head's
        width."""
        if self.contains(name, self.head):
            return not self.block_children(name)  # a classifier, not a model that ends in one
        head, last = self.modules.get(self.head or ""), self.last_owner(name)
        if not isinstance(head, nn.Linear) or not isinstance(last, nn.Linear):
            return False
        if last.out_features != head.out_features:
            return False
        classes = [type(self.modules[s]) for s in siblings]
        return classes.count(type(self.modules[name])) < max(classes.count(c) for c in set(classes))

    def block_children(self, name: str) -> list[str]:
        """The children that are blocks: two or more weight-owning modules inside, and no head."""
        if name in self._blocks:
            return self._blocks[name]
        candidates = [
            child
            for child in self.children[name]
            if self.weights(child) >= 2 and not _is_flat_stack(self.modules[child])
        ]
        self._blocks[name] = [child for child in candidates if not self.is_head_like(child, candidates)]
        return self._blocks[name]

    def inner_blocks(self, name: str) -> int:
        """The innermost blocks of a subtree (blocks with no block inside): how much of the network it holds."""
        if name not in self._inner:
            inside = sum(self.inner_blocks(child) for child in self.block_children(name))
            self._inner[name] = inside if inside else int(self.weights(name) >= 2)
        return self._inner[name]

    def trunk(self, within: str = "") -> Optional[str]:
        """The module whose block children run through the network, found from ``within`` down: a module with
        one block child (a wrapper) or one child holding nearly all its blocks (a stem beside the stages) gives
        way to that child; the first module with two or more block children, none of them dominant, is the trunk.
        """
        name = within
        while True:
            children = self.block_children(name)
            if not children:
                return None
            inner = [self.inner_blocks(child) for child in children]
            largest = max(range(len(children)), key=inner.__getitem__)
            if len(children) >= 2 and inner[largest] <= _DOMINANT_SHARE * sum(inner):
                return name
            name = children[largest]

    def is_stage(self, name: str) -> bool:
        """A module holding repeated blocks (directly, or in the run of blocks inside it): three or more of one
        class, or two of one class with the same parameter shapes (not, say, a Mixer block's two MLPs)."""
        inside = self.trunk(name)
        for holder in {name, inside} - {None}:
            seen: dict[type, list[tuple]] = {}
            for child in self.block_children(holder):
                module = self.modules[child]
                shapes = tuple(tuple(p.shape) for p in module.parameters())
                same = seen.setdefault(type(module), [])
                if len(same) >= 2 or shapes in same:
                    return True
                same.append(shapes)
        return False

    def called(self, name: str) -> list[str]:
        """``[name]``, or, for a list without a forward of its own (a ``ModuleList`` of stages that the model calls
        in a loop, as a U-Net's encoder), the stages in it: its blocks, else its items with weights."""
        if _has_forward(self.modules[name]) or not self.children[name]:
            return [name]
        items = self.block_children(name) or [child for child in self.children[name] if self.weights(child)]
        return [called for item in items for called in self.called(item)] or [name]


_DOMINANT_SHARE = 0.85


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, _COMPILED_PART, module)


def _evenly_spaced(names: list[str], max_layers: int) -> list[str]:
    """At most ``max_layers`` of ``names``, evenly spaced, always including the first and the deepest."""
    if len(names) <= max_layers:
        return list(names)
    if max_layers == 1:
        return names[-1:]
    last = len(names) - 1
    picks = sorted({round(last - k * last / (max_layers - 1)) for k in range(max_layers)})
    return [names[i] for i in picks]


def _owns_weights(module: nn.Module) -> bool:
    """A layer with a weight matrix (linear, convolution, Hugging Face ``Conv1D``) or a recurrent layer
    (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``); embeddings and token or position parameters do not count."""
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return False
    if isinstance(module, nn.RNNBase):
        return True  # weight_ih_l0, weight_hh_l0, ...: one recurrent layer
    weight = module._parameters.get("weight")
    return weight is not None and weight.ndim >= 2


def _is_flat_stack(module: nn.Module) -> bool:
    """An ``nn.Sequential`` of three or more weight layers and nothing composite: a sequence of layers (VGG's
    ``features``, an MLP's ``net``), not a block."""
    children = list(module.children())
    return (
        isinstance(module, nn.Sequential)
        and not any(any(True for _ in child.children()) for child in children)
        and sum(_owns_weights(child) for child in children) >= 3
    )


def _has_forward(module: nn.Module) -> bool:
    return type(module).forward is not nn.Module.forward


_ACTIVATION_MODULE = "torch.nn.modules.activation"
_NOT_ACTIVATIONS = (nn.MultiheadAttention, nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d)


def _is_activation(module: nn.Module) -> bool:
    return type(module).__module__ == _ACTIVATION_MODULE and not isinstance(module, _NOT_ACTIVATIONS)


def _after_activation(tree: _Tree, name: str) -> str:
    """The activation module that follows ``name`` in its parent container (norms between them skipped), or
    ``name`` itself when the activation is not a module of its own."""
    parent = name.rpartition(".")[0]
    siblings = tree.children.get(parent, [])
    if not isinstance(tree.modules[parent], nn.Sequential) or name not in siblings:
        return name
    for sibling in siblings[siblings.index(name) + 1 :]:
        module = tree.modules[sibling]
        if _is_activation(module):
            return sibling
        if _owns_weights(module) or any(True for _ in module.children()):
            break
    return name


def _is_decoder_block(module: nn.Module) -> bool:
    """A decoder's block: causal (a submodule with ``is_causal`` or ``is_decoder`` set: T5, BART) or attending
    twice, to itself and to the encoder (two ``nn.MultiheadAttention``: ``nn.TransformerDecoderLayer``). Two stages
    of a CNN or Swin are not an encoder and a decoder."""
    return _is_causal_block(module) or sum(isinstance(sub, nn.MultiheadAttention) for sub in module.modules()) >= 2


def _is_run_of_blocks(tree: _Tree, stack: list[str]) -> bool:
    """A stack of an encoder or a decoder: two or more blocks, most of one class (not a block's attention and MLP,
    which would make a two-block GPT-2 an encoder and a decoder)."""
    kinds = [type(tree.modules[name]) for name in stack]
    return len(stack) >= 2 and max(kinds.count(kind) for kind in set(kinds)) >= 2


def _stack_of(tree: _Tree, name: str) -> list[str]:
    """The blocks of one stack (an encoder or a decoder): its trunk's block children."""
    trunk = tree.trunk(name)
    return tree.block_children(trunk) if trunk is not None else [name]


def choose_default_layers(model: nn.Module, max_layers: int = DEFAULT_MAX_LAYERS) -> DefaultLayers:
    """The layers monitored when none are named, found from the module tree (no list of model names).

    A *block* is a module with two or more weight-owning modules inside (linear or convolution layers;
    embeddings do not count) that neither is nor holds the output head (`output_head`: the last weight-owning
    module outside repeated blocks) and is not a side head (an auxiliary classifier). The *trunk* is the
    module whose block children hold the most innermost blocks (the deepest such module on a tie, so a
    model's wrapper gives way to its ``encoder.layer`` list). The choice, in this order:

    - **stages** / **blocks**: the trunk's block children; their outputs are what the paper measures. They
      are stages (``layer1`` .. ``layer4`` of a ResNet, the stages of Swin, EfficientNet, DenseNet, RegNet,
      ConvNeXt, MobileViT) where they hold blocks themselves, else blocks (the layers of BERT, GPT-2,
      Llama and ViT, the blocks of MobileNet, GoogLeNet and Inception).
    - **encoder-decoder**: a trunk of two stacks of blocks, the second a decoder (causal blocks, or blocks with
      self- and cross-attention: T5, BART, ``nn.Transformer``): the blocks of both, encoder first.
    - **shared**: no trunk, but a block that is the only item of a list (ALBERT's one layer, applied N
      times in a forward pass): that block; the callback measures each application as its own layer.
    - **conv**: convolutions without blocks (VGG, AlexNet, a plain ``nn.Sequential`` CNN): each convolution's
      output after its activation (the activation module that follows it in its ``nn.Sequential``).
    - **recurrent** / **mlp**: every recurrent layer (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) and ``nn.Linear`` but the
      last (the output head): the recurrent layers' outputs and the linear layers' pre-activation outputs.

    Where there are more than ``max_layers`` candidates, that many evenly spaced ones, always including
    the first and the deepest. How outputs become ``[batch, neurons]`` (spatial average, a token) is
    decided per layer from its output, see `to_neuron_activations` and `resolved_sequence_reduction`.

    Example:
        >>> from torch import nn
        >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> choose_default_layers(mlp).names
        ['0', '2']
        >>> cnn = nn.Sequential(
        ...     nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 2)
        ... )
        >>> choose_default_layers(cnn).names
        ['1', '3']
    """
    max_layers = check_int(max_layers, "max_layers", minimum=1)
    tree = _Tree(model)
    trunk = tree.trunk()
    if trunk is not None:
        children = tree.block_children(trunk)
        where = repr(trunk) if trunk else "the model"
        stacks = [_stack_of(tree, child) for child in children]
        if (
            len(children) == 2
            and all(_is_run_of_blocks(tree, stack) for stack in stacks)
            and any(_is_decoder_block(tree.modules[name]) for name in stacks[1])
        ):
            blocks = [called for name in stacks[0] + stacks[1] for called in tree.called(name)]
            names = _evenly_spaced(blocks, max_layers)
            description = (
                f"encoder-decoder: {len(blocks)} blocks in two stacks ({children[0]!r}: {len(stacks[0])}, "
                f"{children[1]!r}: {len(stacks[1])}): {len(names)} block outputs"
            )
            return DefaultLayers(names, "encoder-decoder", description)
        names = _evenly_spaced([called for child in children for called in tree.called(child)], max_layers)
        kinds = sorted(
            {type(tree.modules[c]).__name__ for c in children},
            key=lambda k: -[type(tree.modules[c]).__name__ for c in children].count(k),
        )
        shown = "/".join(kinds[:3]) + ("/..." if len(kinds) > 3 else "")
        if any(tree.is_stage(child) for child in children):
            description = (
                f"stages: {len(children)} {shown} stages in {where} (holding repeated blocks): {len(names)} stage "
                "outputs"
            )
            return DefaultLayers(names, "stages", description)
        description = f"blocks: {len(children)} {shown} blocks in {where}: {len(names)} block outputs"
        return DefaultLayers(names, "blocks", description)
    shared = [
        (tree.weights(name), name)
        for name in tree.order
        if isinstance(tree.modules[name], (nn.ModuleList, nn.Sequential))
        and len(tree.children[name]) == 1
        and tree.block_children(name)
    ]
    if shared:
        name = tree.block_children(max(shared)[1])[0]
        description = (
            f"shared: one {type(tree.modules[name]).__name__} block, the only item of its list (a layer applied "
            "several times in a forward pass, as ALBERT's; each application is measured as its own layer)"
        )
        return DefaultLayers([name], "shared", description)
    layers = [(name, tree.modules[name]) for name in tree.order if name]
    conv = [name for name, module in layers if isinstance(module, _CONV_TYPES) and name != tree.head]
    if conv:
        outputs = [_after_activation(tree, name) for name in conv]
        names = _evenly_spaced(list(dict.fromkeys(outputs)), max_layers)
        before = sum(1 for name in names if name in conv)
        description = f"conv: no repeated blocks; {len(names)} of {len(conv)} convolutions, read after their activation"
        if before:
            description += (
                f" module, but {before} of them before it (their activation is not a module of its own, in an "
                "nn.Sequential after them)"
            )
        return DefaultLayers(names, "conv", description)
    linear = [name for name, module in layers if isinstance(module, (nn.Linear, nn.RNNBase))]
    if not linear:
        return DefaultLayers([], "none", "no nn.Linear, recurrent layer, convolution or repeated block to monitor")
    hidden = linear[:-1] if len(linear) > 1 else linear
    names = _evenly_spaced(hidden, max_layers)
    if any(isinstance(tree.modules[name], nn.RNNBase) for name in hidden):
        description = (
            f"recurrent: {len(names)} of {len(hidden)} hidden recurrent and linear layers (the last layer, the output "
            "head, is left out)"
        )
        return DefaultLayers(names, "recurrent", description)
    description = (
        f"mlp: {len(names)} of {len(hidden)} hidden linear layers (pre-activation outputs; the last one, the output "
        "head, is left out)"
    )
    return DefaultLayers(names, "mlp", description)


def output_head(model: nn.Module, layer_type: Optional[type[nn.Module]] = None) -> Optional[str]:
    """The name of a model's output head: its last layer with a weight matrix (of ``layer_type``, if given) outside
    repeated blocks, in registration order, so a classifier registered before the network it reads (XLM-RoBERTa)
    is found too; ``None`` where every such layer is inside repeated blocks (a bare encoder: no head).

    Example:
        >>> from torch import nn
        >>> output_head(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
        '2'
    """
    return _Tree(model).find_head(layer_type)


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


def _is_causal_block(module: nn.Module) -> bool:
    """A submodule with ``is_causal`` or ``is_decoder`` set (Hugging Face's decoder attention): used only to tell a
    decoder stack beside an encoder when choosing layers; how a layer is read is observed (`ReadingProbe`)."""
    return any(
        getattr(sub, "is_causal", False) is True or getattr(sub, "is_decoder", False) is True
        for sub in module.modules()
    )
