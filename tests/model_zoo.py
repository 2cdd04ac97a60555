"""Real module trees for the tests, randomly initialised, nothing downloaded.

``ResNet18`` and ``VisionTransformer`` rebuild torchvision's ``resnet18`` and timm's
``vit_tiny_patch16_224`` with the same module names and output shapes (their packages from the
registry do not import beside the CPU torch used here; `real_torchvision_resnet18` and
`real_timm_vit` return the real ones where they do). The Hugging Face models are built from
small configs of the real classes, fed token ids, no tokenizer.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn


# --------------------------------------------------------------------------------- torchvision ResNet
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision.models.resnet18's module tree (conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc)."""

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(width, 2)
        self.layer2 = self._make_layer(2 * width, 2, stride=2)
        self.layer3 = self._make_layer(4 * width, 2, stride=2)
        self.layer4 = self._make_layer(8 * width, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ------------------------------------------------------------------------------------------ timm ViT
class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        self.norm = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = nn.functional.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj_drop(self.proj(self.norm(x.transpose(1, 2).reshape(batch, tokens, dim))))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = nn.Identity()
        self.drop_path1 = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = nn.Identity()
        self.drop_path2 = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """timm's vit_tiny_patch16_224 module tree (patch_embed, cls_token, pos_embed, blocks.{i}, norm, head)."""

    def __init__(
        self, img_size: int = 32, patch_size: int = 8, embed_dim: int = 64, depth: int = 12, num_heads: int = 2
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, embed_dim) * 0.02)
        self.pos_drop = nn.Dropout(0.0)
        self.patch_drop = nn.Identity()
        self.norm_pre = nn.Identity()
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.fc_norm = nn.Identity()
        self.head_drop = nn.Dropout(0.0)
        self.head = nn.Linear(embed_dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(self.norm_pre(self.patch_drop(self.pos_drop(x)))))
        return self.head(self.head_drop(self.fc_norm(x[:, 0])))


def real_torchvision_resnet18() -> Optional[nn.Module]:
    """torchvision's own resnet18 where torchvision imports beside this torch, else ``None``."""
    try:
        import torchvision
    except Exception:  # noqa: BLE001 - ImportError, or RuntimeError when its compiled operators do not match
        return None
    return torchvision.models.resnet18(num_classes=10)


def real_timm_vit() -> Optional[nn.Module]:
    """timm's own vit_tiny where timm imports beside this torch, else ``None``."""
    try:
        import timm
    except Exception:  # noqa: BLE001 - as above
        return None
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8)


# ------------------------------------------------------------------------------------- Hugging Face
def hf_model(kind: str, layers: int = 6, width: int = 32) -> nn.Module:
    """A small randomly initialised DistilBERT, BERT or GPT-2 sequence classifier (real transformers classes)."""
    import transformers

    if kind == "distilbert":
        config = transformers.DistilBertConfig(
            vocab_size=200, dim=width, n_layers=layers, n_heads=2, hidden_dim=2 * width, max_position_embeddings=64
        )
        return transformers.DistilBertForSequenceClassification(config)
    if kind == "bert":
        config = transformers.BertConfig(
            vocab_size=200,
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * width,
            max_position_embeddings=64,
        )
        return transformers.BertForSequenceClassification(config)
    if kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=200,
            n_embd=width,
            n_layer=layers,
            n_head=2,
            n_positions=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
        )
        return transformers.GPT2ForSequenceClassification(config)
    raise ValueError(kind)


class TokenClassifier(LightningModule):
    """A LightningModule around a Hugging Face sequence classifier fed ``(input_ids, labels)`` batches."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids).logits

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        input_ids, labels = batch
        return nn.functional.cross_entropy(self(input_ids), labels)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        input_ids, labels = batch
        self.log("val_loss", nn.functional.cross_entropy(self(input_ids), labels), add_dataloader_idx=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class ImageClassifier(TokenClassifier):
    """The same around an image model fed ``(images, labels)``."""

    def forward(self, images: Tensor) -> Tensor:  # type: ignore[override]
        return self.model(images)


def token_batches(num: int = 64, length: int = 12, seed: int = 0) -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 200, (num, length), generator=generator)
    return torch.utils.data.TensorDataset(ids, torch.randint(0, 2, (num,), generator=generator))


def image_batches(num: int = 64, size: int = 32, seed: int = 0) -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num, 3, size, size, generator=generator)
    return torch.utils.data.TensorDataset(images, torch.randint(0, 10, (num,), generator=generator))
