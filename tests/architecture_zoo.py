"""Real architectures from torchvision, timm, Hugging Face transformers and peft, small enough to fit on a CPU in
seconds, with the layers the default choice picks for each.

``python tests/architecture_zoo.py`` (in a virtualenv with the real libraries) prints the table of
docs/recipes.md; ``tests/test_architectures.py`` checks every row against the real libraries.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import torch
from torch import Tensor, nn

NUM_CLASSES = 4
VOCAB = 100


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One real architecture: how to build it, what it eats, and what the defaults pick."""

    name: str
    library: str
    build: Callable[[], nn.Module]
    inputs: str  # "image:<size>", "tokens", "tokens+eos", "audio"
    family: str
    layers: list[str]
    reading: str  # how outputs become [batch, neurons]: "space", "first", "last", "mean", "mean+last"
    channels_last: bool = False  # outputs with spatial axes put the channels last ([B, H, W, C])


def torchvision_builder(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(num_classes=NUM_CLASSES, **kwargs)

    return build


def timm_builder(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)

    return build


SMALL_TEXT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)


def hf_builder(model_class: str, config_class: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        settings = {"num_labels": NUM_CLASSES, "pad_token_id": 0, **config}
        return getattr(transformers, model_class)(getattr(transformers, config_class)(**settings))

    return build


def _lora_bert() -> nn.Module:
    import peft

    model = hf_builder("BertForSequenceClassification", "BertConfig", **SMALL_TEXT)()
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
    return peft.get_peft_model(model, config)


def _blocks(prefix: str, indices: Any) -> list[str]:
    return [f"{prefix}.{i}" for i in indices]


_ENC_DEC = dict(d_model=32, encoder_layers=3, decoder_layers=3, encoder_attention_heads=2, decoder_attention_heads=2)
_ENC_DEC_FFN = dict(encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=VOCAB, eos_token_id=1, bos_token_id=2)

ARCHITECTURES: list[Architecture] = [
    # ------------------------------------------------------------------ torchvision
    Architecture(
        "ResNet-18",
        "torchvision",
        torchvision_builder("resnet18"),
        "image:64",
        "stages",
        ["layer1", "layer2", "layer3", "layer4"],
        "space",
    ),
    Architecture(
        "MobileNetV3-Small",
        "torchvision",
        torchvision_builder("mobilenet_v3_small"),
        "image:64",
        "blocks",
        _blocks("features", (1, 3, 5, 7, 9, 11)),
        "space",
    ),
    Architecture(
        "EfficientNet-B0",
        "torchvision",
        torchvision_builder("efficientnet_b0"),
        "image:64",
        "stages",
        _blocks("features", (1, 2, 3, 5, 6, 7)),
        "space",
    ),
    Architecture(
        "GoogLeNet",
        "torchvision",
        torchvision_builder("googlenet", aux_logits=False, init_weights=False),
        "image:64",
        "blocks",
        ["inception3a", "inception4a", "inception4b", "inception4d", "inception4e", "inception5b"],
        "space",
    ),
    Architecture(
        "Inception-v3",
        "torchvision",
        torchvision_builder("inception_v3", aux_logits=True, init_weights=False),
        "image:299",
        "blocks",
        ["Mixed_5b", "Mixed_5d", "Mixed_6b", "Mixed_6d", "Mixed_7a", "Mixed_7c"],
        "space",
    ),
    Architecture(
        "DenseNet-121",
        "torchvision",
        torchvision_builder("densenet121"),
        "image:64",
        "stages",
        [f"features.denseblock{i}" for i in range(1, 5)],
        "space",
    ),
    Architecture(
        "VGG-11-BN",
        "torchvision",
        torchvision_builder("vgg11_bn"),
        "image:64",
        "conv",
        _blocks("features", (2, 6, 13, 17, 24, 27)),
        "space",
    ),
    Architecture(
        "RegNetY-400MF",
        "torchvision",
        torchvision_builder("regnet_y_400mf"),
        "image:64",
        "stages",
        [f"trunk_output.block{i}" for i in range(1, 5)],
        "space",
    ),
    Architecture(
        "ShuffleNetV2",
        "torchvision",
        torchvision_builder("shufflenet_v2_x0_5"),
        "image:64",
        "stages",
        ["stage2", "stage3", "stage4"],
        "space",
    ),
    Architecture(
        "ConvNeXt-T",
        "torchvision",
        torchvision_builder("convnext_tiny"),
        "image:64",
        "stages",
        _blocks("features", (1, 3, 5, 7)),
        "space",
    ),
    Architecture(
        "Swin-T",
        "torchvision",
        torchvision_builder("swin_t"),
        "image:64",
        "stages",
        _blocks("features", (1, 3, 5, 7)),
        "space",
        channels_last=True,
    ),
    Architecture(
        "ViT-B/16",
        "torchvision",
        torchvision_builder("vit_b_16", image_size=32),
        "image:32",
        "blocks",
        [f"encoder.layers.encoder_layer_{i}" for i in (0, 2, 4, 7, 9, 11)],
        "first",
    ),
    Architecture(
        "MaxViT-T",
        "torchvision",
        torchvision_builder("maxvit_t"),
        "image:224",
        "stages",
        _blocks("blocks", range(4)),
        "space",
    ),
    # ------------------------------------------------------------------ timm
    Architecture(
        "EfficientNet-B0",
        "timm",
        timm_builder("efficientnet_b0"),
        "image:64",
        "stages",
        _blocks("blocks", (0, 1, 2, 4, 5, 6)),
        "space",
    ),
    Architecture(
        "MobileNetV3-Small",
        "timm",
        timm_builder("mobilenetv3_small_050"),
        "image:64",
        "stages",
        _blocks("blocks", range(5)),
        "space",
    ),
    Architecture(
        "RegNetX-002", "timm", timm_builder("regnetx_002"), "image:64", "stages", ["s1", "s2", "s3", "s4"], "space"
    ),
    Architecture(
        "ConvNeXt-Atto",
        "timm",
        timm_builder("convnext_atto"),
        "image:64",
        "stages",
        _blocks("stages", range(4)),
        "space",
    ),
    Architecture(
        "MaxViT-Nano",
        "timm",
        timm_builder("maxvit_nano_rw_256", img_size=64),
        "image:64",
        "stages",
        _blocks("stages", range(4)),
        "space",
    ),
    Architecture(
        "Swin-T",
        "timm",
        timm_builder("swin_tiny_patch4_window7_224"),
        "image:224",
        "stages",
        _blocks("layers", range(4)),
        "space",
        channels_last=True,
    ),
    Architecture(
        "DeiT-Ti distilled",
        "timm",
        timm_builder("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8),
        "image:32",
        "blocks",
        _blocks("blocks", (0, 2, 4, 7, 9, 11)),
        "first",
    ),
    Architecture(
        "CaiT-XXS24",
        "timm",
        timm_builder("cait_xxs24_224", img_size=32, patch_size=8),
        "image:32",
        "blocks",
        _blocks("blocks", (0, 5, 9, 14, 18, 23)),
        "mean",
    ),
    Architecture(
        "MLP-Mixer-S/32",
        "timm",
        timm_builder("mixer_s32_224", img_size=64),
        "image:64",
        "blocks",
        _blocks("blocks", (0, 1, 3, 4, 6, 7)),
        "mean",
    ),
    Architecture(
        "ResMLP-12",
        "timm",
        timm_builder("resmlp_12_224", img_size=64),
        "image:64",
        "blocks",
        _blocks("blocks", (0, 2, 4, 7, 9, 11)),
        "mean",
    ),
    Architecture(
        "LeViT-128S",
        "timm",
        timm_builder("levit_128s", img_size=64),
        "image:64",
        "stages",
        _blocks("stages", range(3)),
        "mean",
    ),
    Architecture(
        "MobileViT-XXS",
        "timm",
        timm_builder("mobilevit_xxs"),
        "image:64",
        "stages",
        _blocks("stages", range(5)),
        "space",
    ),
    Architecture(
        "PoolFormer-S12",
        "timm",
        timm_builder("poolformer_s12"),
        "image:64",
        "stages",
        _blocks("stages", range(4)),
        "space",
    ),
    # ------------------------------------------------------------------ Hugging Face
    Architecture(
        "BERT",
        "transformers",
        hf_builder("BertForSequenceClassification", "BertConfig", **SMALL_TEXT),
        "tokens",
        "blocks",
        _blocks("bert.encoder.layer", range(4)),
        "first",
    ),
    Architecture(
        "RoBERTa",
        "transformers",
        hf_builder("RobertaForSequenceClassification", "RobertaConfig", **SMALL_TEXT),
        "tokens",
        "blocks",
        _blocks("roberta.encoder.layer", range(4)),
        "first",
    ),
    Architecture(  # its classifier is registered before the encoder: the head is found all the same
        "XLM-RoBERTa",
        "transformers",
        hf_builder("XLMRobertaForSequenceClassification", "XLMRobertaConfig", **SMALL_TEXT),
        "tokens",
        "blocks",
        _blocks("roberta.encoder.layer", range(4)),
        "first",
    ),
    Architecture(
        "DistilBERT",
        "transformers",
        hf_builder(
            "DistilBertForSequenceClassification",
            "DistilBertConfig",
            vocab_size=VOCAB,
            dim=32,
            n_layers=4,
            n_heads=2,
            hidden_dim=64,
        ),
        "tokens",
        "blocks",
        _blocks("distilbert.transformer.layer", range(4)),
        "first",
    ),
    Architecture(
        "ALBERT",
        "transformers",
        hf_builder("AlbertForSequenceClassification", "AlbertConfig", embedding_size=16, **SMALL_TEXT),
        "tokens",
        "shared",
        ["albert.encoder.albert_layer_groups.0.albert_layers.0"],
        "first",
    ),
    Architecture(
        "DeBERTa-v2",
        "transformers",
        hf_builder("DebertaV2ForSequenceClassification", "DebertaV2Config", **SMALL_TEXT),
        "tokens",
        "blocks",
        _blocks("deberta.encoder.layer", range(4)),
        "first",
    ),
    Architecture(
        "GPT-2",
        "transformers",
        hf_builder("GPT2ForSequenceClassification", "GPT2Config", vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=2),
        "tokens",
        "blocks",
        _blocks("transformer.h", range(4)),
        "last",
    ),
    Architecture(
        "Llama",
        "transformers",
        hf_builder(
            "LlamaForSequenceClassification", "LlamaConfig", num_key_value_heads=2, bos_token_id=1, **SMALL_TEXT
        ),
        "tokens",
        "blocks",
        _blocks("model.layers", range(4)),
        "last",
    ),
    Architecture(
        "T5",
        "transformers",
        hf_builder(
            "T5ForSequenceClassification",
            "T5Config",
            d_model=32,
            d_ff=64,
            num_layers=3,
            num_heads=2,
            d_kv=16,
            vocab_size=VOCAB,
            eos_token_id=1,
            decoder_start_token_id=0,
        ),
        "tokens+eos",
        "encoder-decoder",
        [*_blocks("transformer.encoder.block", range(3)), *_blocks("transformer.decoder.block", range(3))],
        "mean+last",
    ),
    Architecture(
        "BART",
        "transformers",
        hf_builder("BartForSequenceClassification", "BartConfig", **_ENC_DEC, **_ENC_DEC_FFN),
        "tokens+eos",
        "encoder-decoder",
        [*_blocks("model.encoder.layers", range(3)), *_blocks("model.decoder.layers", range(3))],
        "mean+last",
    ),
    Architecture(
        "ViT",
        "transformers",
        hf_builder(
            "ViTForImageClassification",
            "ViTConfig",
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        ),
        "image:32",
        "blocks",
        _blocks("vit.layers", range(4)),
        "first",
    ),
    Architecture(
        "Whisper (audio classification)",
        "transformers",
        hf_builder(
            "WhisperForAudioClassification",
            "WhisperConfig",
            d_model=32,
            encoder_layers=3,
            decoder_layers=3,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            vocab_size=VOCAB,
            num_mel_bins=16,
            max_source_positions=16,
        ),
        "audio",
        "blocks",
        _blocks("encoder.layers", range(3)),
        "mean",
    ),
    Architecture(
        "BERT + LoRA",
        "peft",
        _lora_bert,
        "tokens",
        "blocks",
        _blocks("base_model.model.bert.encoder.layer", range(4)),
        "first",
    ),
]


def make_inputs(architecture: Architecture, num: int, seed: int = 0) -> Tensor:
    """A batch of ``num`` inputs the architecture takes."""
    generator = torch.Generator().manual_seed(seed)
    if architecture.inputs.startswith("image:"):
        size = int(architecture.inputs.split(":")[1])
        return torch.randn(num, 3, size, size, generator=generator)
    if architecture.inputs == "audio":
        return torch.randn(num, 16, 32, generator=generator)
    ids = torch.randint(3, VOCAB, (num, 12), generator=generator)
    if architecture.inputs == "tokens+eos":
        ids[:, -1] = 1  # the end-of-sequence token T5 and BART classify at
    return ids


def run(model: nn.Module, inputs: Tensor) -> Tensor:
    """The model's logits on ``inputs``, whatever its call convention."""
    if inputs.is_floating_point() and inputs.ndim == 3:
        output = model(input_features=inputs)
    elif inputs.is_floating_point():
        output = model(inputs)
    else:
        output = model(input_ids=inputs)
    logits = getattr(output, "logits", output)
    if isinstance(logits, tuple):  # torchvision's Inception-v3 and GoogLeNet in training: (logits, aux)
        logits = logits[0]
    return logits


def build(architecture: Architecture) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return architecture.build()


def markdown_table() -> str:
    """The table of docs/recipes.md, from the default choice on each real architecture."""
    from lightning_infomem.introspection.layers import choose_default_layers

    readings = {
        "space": "averaged over space",
        "first": "first token",
        "last": "last non-pad token",
        "mean": "mean over tokens",
        "mean+last": "encoder: mean over tokens; decoder: last non-pad token",
    }
    lines = [
        "| Architecture | Library | Found as | Layers the defaults pick | Outputs read as |",
        "|---|---|---|---|---|",
    ]
    for architecture in ARCHITECTURES:
        chosen = choose_default_layers(build(architecture))
        shown = ", ".join(f"`{name}`" for name in chosen.names)
        lines.append(
            f"| {architecture.name} | {architecture.library} | {chosen.family} | {shown} | "
            f"{readings[architecture.reading]} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
