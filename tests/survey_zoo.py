"""The models of the layer survey (``benchmarks/architecture_survey.py``) beyond the table of ``architecture_zoo``:
further torchvision, timm and Hugging Face architectures (small configurations where the library takes one), and
models users write by hand (LSTM and GRU classifiers, U-Nets, Siamese and multi-head networks, gated blocks).

Each entry says what it eats and how a correct reading reads it (``reading``): ``"space"`` (channels, averaged over
space), ``"first"`` / ``"last"`` / ``"mean"`` (a sequence's first token, last real token, mean over real tokens),
``"mean+last"`` (an encoder-decoder: encoder averaged, decoder at its last real token), ``"flat"`` (``[batch,
neurons]`` as given); ``"space|mean"`` where a hybrid's token stages are sequences without a class token. These
labels are the survey's oracle, written from what each model is, not from the rules.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from architecture_zoo import SMALL_TEXT, VOCAB, Architecture, hf_builder, timm_builder, torchvision_builder
from torch import Tensor, nn


def survey(name: str, library: str, build: Callable[[], nn.Module], inputs: str, reading: str) -> Architecture:
    """An entry: the layers and family are whatever the defaults pick (the survey checks the readings)."""
    return Architecture(name, library, build, inputs, "", [], reading, channels_last=reading == "space-last")


# ------------------------------------------------------------------------------------- models users write
class LSTMClassifier(nn.Module):
    """Token ids -> embedding -> an LSTM over [tokens, batch, features] (batch_first=False) -> a linear head."""

    def __init__(self, recurrent: type = nn.LSTM, bidirectional: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.lstm = recurrent(16, 24, bidirectional=bidirectional)
        self.head = nn.Linear(48 if bidirectional else 24, 4)

    def forward(self, ids: Tensor) -> Tensor:
        out, _ = self.lstm(self.embed(ids).transpose(0, 1))
        return self.head(out.mean(0) if self.lstm.bidirectional else out[-1])


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class UNet(nn.Module):
    """A U-Net whose encoder and decoder stages are ModuleLists called in a loop (no forward of their own), the
    decoder's upsampling transposed convolutions in the same list as its stages."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.ModuleList([DoubleConv(3, 8), DoubleConv(8, 16), DoubleConv(16, 32)])
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(32, 32)
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(32, 32, 2, 2), DoubleConv(48, 16), nn.ConvTranspose2d(16, 16, 2, 2), DoubleConv(24, 8)]
        )
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, stage in enumerate(self.down):
            x = stage(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        x = self.bottleneck(x)
        for upsample, stage in zip(self.up[::2], self.up[1::2], strict=True):
            x = stage(torch.cat([upsample(x), skips.pop()], dim=1))
        return self.head(x).mean(dim=(2, 3))


class GatedBlock(nn.Module):
    """Returns ``(gate, x)``: an inner stream of another width first, the main stream the next block reads second."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gate = nn.Linear(width, 3 * width)
        self.mix = nn.Linear(3 * width, width)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        gate = torch.sigmoid(self.gate(x))
        return gate, x + self.mix(gate)


class GatedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3 * 16 * 16, 12)
        self.blocks = nn.ModuleList([GatedBlock(12) for _ in range(3)])
        self.head = nn.Linear(12, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x.flatten(1))
        for block in self.blocks:
            _, x = block(x)
        return self.head(x)


class ConcatBlock(nn.Module):
    """Two convolution branches of 8 channels, concatenated: 16 channels (8 is also the map's width at 8 x 8)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.left = nn.Conv2d(cin, 8, 3, padding=1)
        self.right = nn.Conv2d(cin, 8, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(torch.cat([self.left(x), self.right(x)], dim=1))


class ConcatCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(ConcatBlock(4), ConcatBlock(16), ConcatBlock(16))
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class SiameseNet(nn.Module):
    """One convolutional encoder applied to both halves of a pair (channels 0-2 and 3-5): the head compares them."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            DoubleConv(3, 8), nn.MaxPool2d(2), DoubleConv(8, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(16, 4)

    def forward(self, pair: Tensor) -> Tensor:
        return self.head((self.encoder(pair[:, :3]) - self.encoder(pair[:, 3:])).abs())


class MultiHeadNet(nn.Module):
    """A shared MLP trunk with two task heads."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(3 * 16 * 16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.task_a = nn.Linear(32, 4)
        self.task_b = nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        features = self.trunk(x.flatten(1))
        return self.task_a(features) + self.task_b(features).mean(dim=1, keepdim=True)


class Conv1dAudioNet(nn.Module):
    """Raw waveforms -> 1-d convolution blocks ([batch, channels, time]) -> a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                nn.Sequential(nn.Conv1d(cin, 16, 5, stride=2), nn.BatchNorm1d(16), nn.ReLU(), nn.Conv1d(16, 16, 3))
                for cin in (1, 16, 16)
            )
        )
        self.head = nn.Linear(16, 4)

    def forward(self, wave: Tensor) -> Tensor:
        return self.head(self.blocks(wave.unsqueeze(1)).mean(dim=2))


class TokenTransformer(nn.Module):
    """Token ids -> embeddings (a learned class token first) -> nn.TransformerEncoder -> the class token's head;
    ``causal=True`` masks attention to later tokens (no ``is_causal`` attribute anywhere) and reads the last token."""

    def __init__(self, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.embed = nn.Embedding(VOCAB, 32)
        if not causal:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 32))
        layer = nn.TransformerEncoderLayer(32, 2, 64, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
        self.head = nn.Linear(32, 4)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embed(ids)
        if self.causal:
            mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
            return self.head(self.encoder(x, mask=mask)[:, -1])
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        return self.head(self.encoder(x)[:, 0])


HAND_WRITTEN = [
    survey("LSTM classifier", "hand", LSTMClassifier, "ids", "last"),
    survey("GRU classifier", "hand", lambda: LSTMClassifier(nn.GRU), "ids", "last"),
    survey("bidirectional LSTM", "hand", lambda: LSTMClassifier(bidirectional=True), "ids", "mean"),
    survey("U-Net", "hand", UNet, "image:16", "space"),
    survey("gated blocks (inner, main)", "hand", GatedNet, "image:16", "flat"),
    survey("concatenating CNN", "hand", ConcatCNN, "image:8", "space"),
    survey("Siamese network", "hand", SiameseNet, "pair:16", "space|flat"),
    survey("multi-head network", "hand", MultiHeadNet, "image:16", "flat"),
    survey("1-d convolution audio", "hand", Conv1dAudioNet, "wave", "space"),
    survey("nn.TransformerEncoder with a class token", "hand", TokenTransformer, "ids", "first"),
    survey("nn.TransformerEncoder, causal mask", "hand", lambda: TokenTransformer(causal=True), "ids", "last"),
]

# ------------------------------------------------------------------------------------- real libraries
_CONV_STAGES = dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])
_SMALL_VISION = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64
)
_SMALL_AUDIO = dict(
    **SMALL_TEXT,
    conv_dim=(16, 16),
    conv_stride=(5, 2),
    conv_kernel=(10, 3),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
SMALL_SEQ2SEQ = dict(
    vocab_size=VOCAB,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    decoder_start_token_id=0,
    max_position_embeddings=64,
)


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


def _kv(**extra: Any) -> dict[str, Any]:
    return {**SMALL_TEXT, "num_key_value_heads": 2, **extra}


TORCHVISION = [
    survey(f"torchvision {name}", "torchvision", torchvision_builder(name), "image:64", reading)
    for name, reading in (
        ("resnet50", "space"),
        ("wide_resnet50_2", "space"),
        ("resnext50_32x4d", "space"),
        ("squeezenet1_0", "space"),
        ("mnasnet0_5", "space"),
        ("mobilenet_v2", "space"),
        ("efficientnet_v2_s", "space"),
        ("regnet_x_400mf", "space"),
        ("swin_v2_t", "space-last"),
        ("alexnet", "space"),
        ("resnet34", "space"),
        ("vgg11", "space"),
        ("shufflenet_v2_x0_5", "space"),
        ("squeezenet1_1", "space"),
        ("mobilenet_v3_large", "space"),
        ("regnet_y_800mf", "space"),
    )
]

TIMM = [
    survey(f"timm {name}", "timm", timm_builder(name, **kwargs), f"image:{size}", reading)
    for name, size, reading, kwargs in (
        ("resnet18d", 64, "space", {}),
        ("vit_tiny_patch16_224", 32, "first", {"img_size": 32, "patch_size": 8}),
        ("beit_base_patch16_224", 32, "first", {"img_size": 32, "patch_size": 8, "depth": 4}),
        ("eva02_tiny_patch14_224", 28, "first", {"img_size": 28}),
        ("xcit_nano_12_p16_224", 32, "first", {"img_size": 32, "depth": 4}),
        ("efficientformer_l1", 224, "space|mean", {}),
        ("fastvit_t8", 64, "space", {}),
        ("pvt_v2_b0", 64, "space", {}),
        ("nfnet_l0", 64, "space", {}),
        ("repvgg_a0", 64, "space", {}),
        ("ghostnet_100", 64, "space", {}),
        ("mixnet_s", 64, "space", {}),
        ("densenet121", 64, "space", {}),
        ("inception_v4", 96, "space", {}),
        ("vgg11", 64, "space", {}),
        ("dla34", 64, "space", {}),
        ("hrnet_w18_small", 64, "space", {}),
        ("coat_tiny", 64, "first|space", {"img_size": 64}),
        ("cspresnet50", 64, "space", {}),
        ("rexnet_100", 64, "space", {}),
        ("mobilevitv2_050", 64, "space", {}),
        ("convmixer_768_32", 32, "space", {}),
        ("resmlp_12_224", 32, "mean", {"img_size": 32}),
        ("pit_ti_224", 64, "space|first", {"img_size": 64}),
        ("twins_pcpvt_small", 64, "space|mean", {}),
        ("tnt_s_patch16_224", 32, "first|mean", {"img_size": 32}),
    )
]

HUGGING_FACE = [
    survey(
        "hf ELECTRA",
        "transformers",
        hf_builder("ElectraForSequenceClassification", "ElectraConfig", **SMALL_TEXT, embedding_size=16),
        "tokens",
        "first",
    ),
    survey(
        "hf XLM-RoBERTa (12 layers)",
        "transformers",
        hf_builder(
            "XLMRobertaForSequenceClassification", "XLMRobertaConfig", **{**SMALL_TEXT, "num_hidden_layers": 12}
        ),
        "tokens",
        "first",
    ),
    survey(
        "hf BERT masked LM",
        "transformers",
        hf_builder("BertForMaskedLM", "BertConfig", **SMALL_TEXT),
        "tokens",
        "first",
    ),
    survey(
        "hf BERT token classification",
        "transformers",
        hf_builder("BertForTokenClassification", "BertConfig", **SMALL_TEXT),
        "tokens",
        "first",
    ),
    survey(
        "hf MPNet",
        "transformers",
        hf_builder("MPNetForSequenceClassification", "MPNetConfig", **SMALL_TEXT),
        "tokens",
        "first",
    ),
    survey(
        "hf ConvBERT",
        "transformers",
        hf_builder("ConvBertForSequenceClassification", "ConvBertConfig", **SMALL_TEXT, embedding_size=32),
        "tokens",
        "first",
    ),
    survey(
        "hf RoFormer",
        "transformers",
        hf_builder("RoFormerForSequenceClassification", "RoFormerConfig", **SMALL_TEXT, embedding_size=32),
        "tokens",
        "first",
    ),
    survey(
        "hf ERNIE",
        "transformers",
        hf_builder("ErnieForSequenceClassification", "ErnieConfig", **SMALL_TEXT),
        "tokens",
        "first",
    ),
    survey(
        "hf Data2VecText",
        "transformers",
        hf_builder("Data2VecTextForSequenceClassification", "Data2VecTextConfig", **SMALL_TEXT),
        "tokens",
        "first",
    ),
    survey(
        "hf CamemBERT",
        "transformers",
        hf_builder("CamembertForSequenceClassification", "CamembertConfig", **SMALL_TEXT),
        "tokens",
        "first",
    ),
    survey(
        "hf BigBird (full attention)",
        "transformers",
        hf_builder("BigBirdForSequenceClassification", "BigBirdConfig", **SMALL_TEXT, attention_type="original_full"),
        "tokens",
        "first",
    ),
    survey(
        "hf Longformer",
        "transformers",
        hf_builder("LongformerForSequenceClassification", "LongformerConfig", **SMALL_TEXT, attention_window=4),
        "tokens",
        "first",
    ),
    survey(
        "hf SqueezeBERT",
        "transformers",
        hf_builder("SqueezeBertForSequenceClassification", "SqueezeBertConfig", **SMALL_TEXT, embedding_size=32),
        "tokens",
        "first",
    ),
    survey(
        "hf XLNet",
        "transformers",
        hf_builder(
            "XLNetForSequenceClassification",
            "XLNetConfig",
            vocab_size=VOCAB,
            d_model=32,
            n_layer=4,
            n_head=2,
            d_inner=64,
        ),
        "tokens",
        "first",
    ),
    survey(
        "hf OPT",
        "transformers",
        hf_builder("OPTForSequenceClassification", "OPTConfig", **SMALL_TEXT, ffn_dim=64, word_embed_proj_dim=32),
        "tokens",
        "last",
    ),
    survey(
        "hf GPT-NeoX",
        "transformers",
        hf_builder("GPTNeoXForSequenceClassification", "GPTNeoXConfig", **SMALL_TEXT),
        "tokens",
        "last",
    ),
    survey(
        "hf Mistral",
        "transformers",
        hf_builder("MistralForSequenceClassification", "MistralConfig", **_kv()),
        "tokens",
        "last",
    ),
    survey(
        "hf Phi",
        "transformers",
        hf_builder("PhiForSequenceClassification", "PhiConfig", **SMALL_TEXT),
        "tokens",
        "last",
    ),
    survey(
        "hf Qwen2",
        "transformers",
        hf_builder("Qwen2ForSequenceClassification", "Qwen2Config", **_kv()),
        "tokens",
        "last",
    ),
    survey(
        "hf Qwen3",
        "transformers",
        hf_builder("Qwen3ForSequenceClassification", "Qwen3Config", **_kv(head_dim=16)),
        "tokens",
        "last",
    ),
    survey(
        "hf Gemma",
        "transformers",
        hf_builder("GemmaForSequenceClassification", "GemmaConfig", **_kv(head_dim=16)),
        "tokens",
        "last",
    ),
    survey(
        "hf StableLM",
        "transformers",
        hf_builder("StableLmForSequenceClassification", "StableLmConfig", **_kv()),
        "tokens",
        "last",
    ),
    survey(
        "hf Falcon",
        "transformers",
        hf_builder("FalconForSequenceClassification", "FalconConfig", **SMALL_TEXT),
        "tokens",
        "last",
    ),
    survey(
        "hf BLOOM",
        "transformers",
        hf_builder(
            "BloomForSequenceClassification", "BloomConfig", vocab_size=VOCAB, hidden_size=32, n_layer=4, n_head=2
        ),
        "tokens",
        "last",
    ),
    survey(
        "hf GPT-J",
        "transformers",
        hf_builder(
            "GPTJForSequenceClassification",
            "GPTJConfig",
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=4,
            n_head=2,
            rotary_dim=8,
        ),
        "tokens",
        "last",
    ),
    survey(
        "hf GPT-Neo",
        "transformers",
        hf_builder(
            "GPTNeoForSequenceClassification",
            "GPTNeoConfig",
            vocab_size=VOCAB,
            hidden_size=32,
            num_layers=4,
            num_heads=2,
            attention_types=[[["global", "local"], 2]],
            window_size=4,
        ),
        "tokens",
        "last",
    ),
    survey(
        "hf BioGPT",
        "transformers",
        hf_builder("BioGptForSequenceClassification", "BioGptConfig", **SMALL_TEXT),
        "tokens",
        "last",
    ),
    survey(
        "hf GPT-2 LM head",
        "transformers",
        hf_builder(
            "GPT2LMHeadModel",
            "GPT2Config",
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=4,
            n_head=2,
            bos_token_id=0,
            eos_token_id=0,
        ),
        "tokens",
        "last",
    ),
    survey(
        "hf Mamba",
        "transformers",
        hf_builder(
            "MambaForCausalLM", "MambaConfig", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, state_size=4
        ),
        "ids",
        "last",
    ),
    survey(
        "hf RWKV",
        "transformers",
        hf_builder(
            "RwkvForCausalLM",
            "RwkvConfig",
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=4,
            attention_hidden_size=32,
            intermediate_size=64,
            context_length=64,
        ),
        "ids",
        "last",
    ),
    survey(
        "hf mT5",
        "transformers",
        hf_builder(
            "MT5ForSequenceClassification",
            "MT5Config",
            vocab_size=VOCAB,
            d_model=32,
            d_kv=16,
            d_ff=64,
            num_layers=3,
            num_heads=2,
            decoder_start_token_id=0,
        ),
        "tokens+eos",
        "mean+last",
    ),
    survey(
        "hf mBART",
        "transformers",
        hf_builder("MBartForSequenceClassification", "MBartConfig", **SMALL_SEQ2SEQ, eos_token_id=1),
        "tokens+eos",
        "mean+last",
    ),
    survey(
        "hf Pegasus",
        "transformers",
        hf_builder("PegasusForConditionalGeneration", "PegasusConfig", **SMALL_SEQ2SEQ),
        "tokens+labels",
        "mean+last",
    ),
    survey(
        "hf MarianMT (shorter targets)",
        "transformers",
        hf_builder("MarianMTModel", "MarianConfig", **SMALL_SEQ2SEQ),
        "tokens+labels",
        "mean+last",
    ),
    survey(
        "hf wav2vec2",
        "transformers",
        hf_builder("Wav2Vec2ForSequenceClassification", "Wav2Vec2Config", **_SMALL_AUDIO),
        "wave:800",
        "mean",
    ),
    survey(
        "hf HuBERT",
        "transformers",
        hf_builder("HubertForSequenceClassification", "HubertConfig", **_SMALL_AUDIO),
        "wave:800",
        "mean",
    ),
    survey(
        "hf WavLM",
        "transformers",
        hf_builder(
            "WavLMForSequenceClassification", "WavLMConfig", **_SMALL_AUDIO, num_buckets=16, max_bucket_distance=32
        ),
        "wave:800",
        "mean",
    ),
    survey(
        "hf Data2VecAudio",
        "transformers",
        hf_builder("Data2VecAudioForSequenceClassification", "Data2VecAudioConfig", **_SMALL_AUDIO),
        "wave:800",
        "mean",
    ),
    survey(
        "hf AST (audio spectrogram)",
        "transformers",
        hf_builder(
            "ASTForAudioClassification",
            "ASTConfig",
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            num_mel_bins=16,
            max_length=32,
            patch_size=8,
            frequency_stride=8,
            time_stride=8,
        ),
        "spectrogram",
        "first",
    ),
    survey(
        "hf CLIP vision",
        "transformers",
        hf_builder(
            "CLIPVisionModel",
            "CLIPVisionConfig",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        "pixels:32",
        "first",
    ),
    survey(
        "hf DeiT",
        "transformers",
        hf_builder("DeiTForImageClassification", "DeiTConfig", **_SMALL_VISION),
        "pixels:32",
        "first",
    ),
    survey(
        "hf BEiT",
        "transformers",
        hf_builder("BeitForImageClassification", "BeitConfig", **_SMALL_VISION),
        "pixels:32",
        "first",
    ),
    survey(
        "hf DINOv2",
        "transformers",
        hf_builder("Dinov2ForImageClassification", "Dinov2Config", **_SMALL_VISION),
        "pixels:32",
        "first",
    ),
    survey(
        "hf Data2VecVision",
        "transformers",
        hf_builder("Data2VecVisionForImageClassification", "Data2VecVisionConfig", **_SMALL_VISION),
        "pixels:32",
        "first",
    ),
    survey(
        "hf ViT-MSN",
        "transformers",
        hf_builder("ViTMSNForImageClassification", "ViTMSNConfig", **_SMALL_VISION),
        "pixels:32",
        "first",
    ),
    survey("hf Swin (stages of one block)", "transformers", _hf_swin([1, 1]), "pixels:32", "mean"),
    survey("hf Swin (two stages of two blocks)", "transformers", _hf_swin([2, 2]), "pixels:32", "mean"),
    survey(
        "hf FocalNet",
        "transformers",
        hf_builder(
            "FocalNetForImageClassification",
            "FocalNetConfig",
            image_size=32,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1],
            focal_levels=[2, 2],
            focal_windows=[3, 3],
        ),
        "pixels:32",
        "mean",
    ),
    survey(
        "hf ConvNeXt",
        "transformers",
        hf_builder(
            "ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 2, 1]
        ),
        "pixels:32",
        "space",
    ),
    survey(
        "hf ResNet",
        "transformers",
        hf_builder("ResNetForImageClassification", "ResNetConfig", embedding_size=8, **_CONV_STAGES),
        "pixels:32",
        "space",
    ),
    survey(
        "hf RegNet",
        "transformers",
        hf_builder(
            "RegNetForImageClassification",
            "RegNetConfig",
            embedding_size=8,
            hidden_sizes=[8, 16, 32, 64],
            depths=[1, 1, 1, 1],
            groups_width=8,
        ),
        "pixels:32",
        "space",
    ),
    survey(
        "hf MobileNetV2",
        "transformers",
        hf_builder("MobileNetV2ForImageClassification", "MobileNetV2Config", image_size=32, depth_multiplier=0.35),
        "pixels:32",
        "space",
    ),
    survey(
        "hf PoolFormer",
        "transformers",
        hf_builder(
            "PoolFormerForImageClassification", "PoolFormerConfig", hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]
        ),
        "pixels:32",
        "space",
    ),
    survey(
        "hf SegFormer",
        "transformers",
        hf_builder("SegformerForImageClassification", "SegformerConfig", decoder_hidden_size=32, **_CONV_STAGES),
        "pixels:32",
        "space|mean",
    ),
]

SURVEY: list[Architecture] = [*HAND_WRITTEN, *TORCHVISION, *TIMM, *HUGGING_FACE]
