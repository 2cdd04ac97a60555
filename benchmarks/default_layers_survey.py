"""What the default layer choice picks on real architectures beyond the tested table of docs/recipes.md.

The table (``tests/architecture_zoo.py``) is what the rules were checked on while they were written; this
survey prints the choice on other torchvision, timm and Hugging Face models, small configurations where
the library takes one, to check the rules on models they were not written from. It only builds models
(nothing is trained or downloaded) and needs the real libraries (torchvision, timm, transformers):

    python benchmarks/default_layers_survey.py            # every model, about 20 s on 2 cores
    python benchmarks/default_layers_survey.py swin hf    # the models whose name contains a word given

Each line: the model, the family found, the layers, and the start line's description (how each layer is
read is observed when the model runs: `lightning_infomem.introspection.probe`). A model the rules do not fit
is named in docs/recipes.md under "Where the rules fall short".
The models are built by ``tests/architecture_zoo.py``'s builders, so run it from the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Callable

from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from architecture_zoo import SMALL_TEXT, hf_builder, timm_builder, torchvision_builder  # noqa: E402

from lightning_infomem.introspection.layers import choose_default_layers  # noqa: E402


def _hf_swin(depths: list[int]) -> Callable[[], nn.Module]:
    return hf_builder(
        "SwinForImageClassification",
        "SwinConfig",
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=depths,
        num_heads=[2] * len(depths),
        window_size=4,
    )


_CONV_STAGES = dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])

MODELS: dict[str, Callable[[], nn.Module]] = {
    **{
        f"torchvision {name}": torchvision_builder(name)
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
        f"timm {name}": timm_builder(name)
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
    "hf ELECTRA": hf_builder("ElectraForSequenceClassification", "ElectraConfig", **SMALL_TEXT, embedding_size=16),
    "hf XLM-RoBERTa (12 layers)": hf_builder(
        "XLMRobertaForSequenceClassification", "XLMRobertaConfig", **{**SMALL_TEXT, "num_hidden_layers": 12}
    ),
    "hf BERT masked LM": hf_builder("BertForMaskedLM", "BertConfig", **SMALL_TEXT),
    "hf BERT token classification": hf_builder("BertForTokenClassification", "BertConfig", **SMALL_TEXT),
    "hf OPT": hf_builder("OPTForSequenceClassification", "OPTConfig", **SMALL_TEXT, ffn_dim=64, word_embed_proj_dim=32),
    "hf GPT-NeoX": hf_builder("GPTNeoXForSequenceClassification", "GPTNeoXConfig", **SMALL_TEXT),
    "hf Mistral": hf_builder("MistralForSequenceClassification", "MistralConfig", **SMALL_TEXT, num_key_value_heads=2),
    "hf Phi": hf_builder("PhiForSequenceClassification", "PhiConfig", **SMALL_TEXT),
    "hf Qwen2": hf_builder("Qwen2ForSequenceClassification", "Qwen2Config", **SMALL_TEXT, num_key_value_heads=2),
    "hf GPT-2 LM head": hf_builder(
        "GPT2LMHeadModel", "GPT2Config", vocab_size=100, n_embd=32, n_layer=4, n_head=2, bos_token_id=0, eos_token_id=0
    ),
    "hf mT5": hf_builder(
        "MT5ForSequenceClassification",
        "MT5Config",
        vocab_size=100,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=3,
        num_heads=2,
        decoder_start_token_id=0,
    ),
    "hf Pegasus": hf_builder(
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
    "hf wav2vec2": hf_builder(
        "Wav2Vec2ForSequenceClassification",
        "Wav2Vec2Config",
        **SMALL_TEXT,
        conv_dim=(16, 16),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    ),
    "hf CLIP vision": hf_builder(
        "CLIPVisionModel",
        "CLIPVisionConfig",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    ),
    "hf Swin (stages of one block)": _hf_swin([1, 1]),
    "hf Swin (two stages of two blocks)": _hf_swin([2, 2]),
    "hf ConvNeXt": hf_builder(
        "ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 2, 1]
    ),
    "hf ResNet": hf_builder("ResNetForImageClassification", "ResNetConfig", embedding_size=8, **_CONV_STAGES),
    "hf SegFormer": hf_builder(
        "SegformerForImageClassification", "SegformerConfig", decoder_hidden_size=32, **_CONV_STAGES
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
        print(f"{name}: {chosen.family} {chosen.names}\n    {chosen.description}")


if __name__ == "__main__":
    main()
