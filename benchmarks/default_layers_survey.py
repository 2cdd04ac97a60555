"""What the default layer choice picks on real architectures beyond the tested table of docs/recipes.md.

The table (``tests/architecture_zoo.py``) is what the rules were checked on while they were written; this
survey prints the choice on other torchvision, timm and Hugging Face models, small configurations where
the library takes one, to check the rules on models they were not written from. It only builds models
(nothing is trained or downloaded) and needs the real libraries (torchvision, timm, transformers):

    python benchmarks/default_layers_survey.py            # every model, about a minute on 2 cores
    python benchmarks/default_layers_survey.py swin hf    # the models whose name contains a word given

Each line: the model, the family found, the layers and the sequence reading, and the start line's
description. A model the rules do not fit is named in docs/recipes.md under "Where the rules fall short".
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any, Callable

from torch import nn

from lightning_infomem.callbacks.layers import choose_default_layers, resolved_sequence_reduction

NUM_CLASSES = 4
_TEXT = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=NUM_CLASSES,
    pad_token_id=0,
)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(num_classes=NUM_CLASSES)

    return build


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)

    return build


def _hf(model_class: str, config_class: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        return getattr(transformers, model_class)(getattr(transformers, config_class)(**{**_TEXT, **config}))

    return build


def _hf_vision(model_class: str, config_class: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        return getattr(transformers, model_class)(getattr(transformers, config_class)(**config))

    return build


MODELS: dict[str, Callable[[], nn.Module]] = {
    **{
        f"torchvision {name}": _torchvision(name)
        for name in (
            "resnet50",
            "wide_resnet50_2",
            "resnext50_32x4d",
            "squeezenet1_0",
            "mnasnet0_5",
            "mobilenet_v2",
            "efficientnet_v2_s",
            "regnet_x_400mf",
            "swin_v2_t",
            "alexnet",
        )
    },
    **{
        f"timm {name}": _timm(name)
        for name in (
            "resnet18d",
            "vit_tiny_patch16_224",
            "beit_base_patch16_224",
            "eva02_tiny_patch14_224",
            "xcit_nano_12_p16_224",
            "efficientformer_l1",
            "fastvit_t8",
            "pvt_v2_b0",
            "nfnet_l0",
            "repvgg_a0",
            "ghostnet_100",
            "mixnet_s",
            "densenet121",
            "inception_v4",
            "vgg11",
            "dla34",
            "hrnet_w18_small",
            "coat_tiny",
        )
    },
    "hf ELECTRA": _hf("ElectraForSequenceClassification", "ElectraConfig", embedding_size=16),
    "hf XLM-RoBERTa (12 layers)": _hf("XLMRobertaForSequenceClassification", "XLMRobertaConfig", num_hidden_layers=12),
    "hf BERT masked LM": _hf("BertForMaskedLM", "BertConfig"),
    "hf BERT token classification": _hf("BertForTokenClassification", "BertConfig"),
    "hf OPT": _hf("OPTForSequenceClassification", "OPTConfig", ffn_dim=64, word_embed_proj_dim=32),
    "hf GPT-NeoX": _hf("GPTNeoXForSequenceClassification", "GPTNeoXConfig"),
    "hf Mistral": _hf("MistralForSequenceClassification", "MistralConfig", num_key_value_heads=2),
    "hf Phi": _hf("PhiForSequenceClassification", "PhiConfig"),
    "hf Qwen2": _hf("Qwen2ForSequenceClassification", "Qwen2Config", num_key_value_heads=2),
    "hf GPT-2 LM head": _hf_vision(
        "GPT2LMHeadModel", "GPT2Config", vocab_size=100, n_embd=32, n_layer=4, n_head=2, bos_token_id=0, eos_token_id=0
    ),
    "hf mT5": _hf_vision(
        "MT5ForSequenceClassification",
        "MT5Config",
        vocab_size=100,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=3,
        num_heads=2,
        num_labels=NUM_CLASSES,
        pad_token_id=0,
        decoder_start_token_id=0,
    ),
    "hf Pegasus": _hf_vision(
        "PegasusForConditionalGeneration",
        "PegasusConfig",
        vocab_size=100,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
    ),
    "hf wav2vec2": _hf(
        "Wav2Vec2ForSequenceClassification",
        "Wav2Vec2Config",
        conv_dim=(16, 16),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    ),
    "hf CLIP vision": _hf_vision(
        "CLIPVisionModel",
        "CLIPVisionConfig",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    ),
    "hf Swin (stages of one block)": _hf_vision(
        "SwinForImageClassification",
        "SwinConfig",
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=4,
        num_labels=NUM_CLASSES,
    ),
    "hf Swin (two stages of two blocks)": _hf_vision(
        "SwinForImageClassification",
        "SwinConfig",
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=4,
        num_labels=NUM_CLASSES,
    ),
    "hf ConvNeXt": _hf_vision(
        "ConvNextForImageClassification",
        "ConvNextConfig",
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 2, 1],
        num_labels=NUM_CLASSES,
    ),
    "hf ResNet": _hf_vision(
        "ResNetForImageClassification",
        "ResNetConfig",
        embedding_size=8,
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        num_labels=NUM_CLASSES,
    ),
    "hf SegFormer": _hf_vision(
        "SegformerForImageClassification",
        "SegformerConfig",
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        decoder_hidden_size=32,
        num_labels=NUM_CLASSES,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("words", nargs="*", help="only the models whose name contains one of these (any case)")
    words = [word.lower() for word in parser.parse_args().words]
    warnings.filterwarnings("ignore")
    for name, build in MODELS.items():
        if words and not any(word in name.lower() for word in words):
            continue
        try:
            model = build()
        except Exception as error:  # a model this library version does not have: say so, go on
            print(f"{name}: not built ({type(error).__name__}: {str(error)[:120]})")
            continue
        chosen = choose_default_layers(model)
        modules = dict(model.named_modules())
        readings = sorted({resolved_sequence_reduction("auto", modules[layer], model) for layer in chosen.names})
        reading = "/".join(readings)
        print(f"{name}: {chosen.family} {chosen.names} (a sequence output read: {reading})\n    {chosen.description}")


if __name__ == "__main__":
    main()
