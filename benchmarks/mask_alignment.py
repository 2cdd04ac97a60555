"""Does the probe find where a batch's mask tokens sit when a layer has another number of tokens?

A model that adds tokens inside (a prompt, a class token, registers) gives its layers ``T + k`` tokens for the
batch's ``[B, T]`` mask; a mask that counts a token the model adds later is ``[B, T + 1]`` against an earlier
layer's ``[B, T]``. `ReadingProbe` observes the offset (it changes one token and watches which position moves) and
otherwise reads without the mask, with a note. For each model this prints whether the observed offset is the
true one (``right``), none was found (``unobserved``: read without the mask, said), or a wrong one was taken
(``wrong``: the only silent failure). A translation model's decoder beside a source mask has no offset: there,
``unobserved`` is the right answer and any offset is wrong.

Families (random sizes, added tokens, lengths and padding per seed):

- ``transformer``, ``causal``, ``banded``, ``conv``, ``lstm``: models written with torch, tokens added before
  or after (the thresholds were set on seeds 0-79 of these);
- ``late``: a class token added after the first layer, the mask counting it;
- ``translation``: MarianMT, BART, T5 from their configs, fed decoder ids and only the source mask;
- ``peft``: prompt tuning (peft) on Hugging Face BERT and GPT-2 (seen while building), and RoBERTa, OPT, Llama and
  ELECTRA (not seen), from their configs::

    python benchmarks/mask_alignment.py                  # seeds 100-139
    python benchmarks/mask_alignment.py --seeds 0 1 --families transformer peft
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import Counter
from typing import Any, Callable, Optional

FAMILIES = ("transformer", "causal", "banded", "conv", "lstm", "late", "translation", "peft")
PEFT_MODELS = {  # name: (model class, config class, config, seen while the probe was built)
    "BERT": ("BertForSequenceClassification", "BertConfig", {"num_attention_heads": 4}, True),
    "GPT-2": ("GPT2ForSequenceClassification", "GPT2Config", {"n_head": 4}, True),
    "RoBERTa": ("RobertaForSequenceClassification", "RobertaConfig", {"num_attention_heads": 4}, False),
    "OPT": ("OPTForSequenceClassification", "OPTConfig", {"num_attention_heads": 4, "ffn_dim": 64}, False),
    "Llama": ("LlamaForSequenceClassification", "LlamaConfig", {"num_attention_heads": 4}, False),
    "ELECTRA": (
        "ElectraForSequenceClassification",
        "ElectraConfig",
        {"num_attention_heads": 4, "embedding_size": 32},
        False,
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(100, 140)))
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--json", help="also write the per-model outcomes to this file")
    return parser


def _torch_models() -> dict[str, Callable[..., Any]]:
    import torch
    from torch import nn

    class Conv(nn.Module):
        def __init__(self, hidden: int) -> None:
            super().__init__()
            self.conv, self.norm = nn.Conv1d(hidden, hidden, 3, padding=1), nn.LayerNorm(hidden)

        def forward(self, x: Any) -> Any:
            return self.norm(x + torch.relu(self.conv(x.transpose(1, 2)).transpose(1, 2)))

    class Added(nn.Module):
        """Embeddings, ``k`` learned tokens added ``where``, then ``depth`` layers of ``kind``."""

        def __init__(self, kind: str, k: int, where: str, depth: int, norm_first: bool, hidden: int = 32) -> None:
            super().__init__()
            self.kind, self.where = kind, where
            self.embed, self.added = nn.Embedding(100, hidden), nn.Parameter(torch.randn(k, hidden))
            if kind == "lstm":
                layers: list[nn.Module] = [nn.LSTM(hidden, hidden, batch_first=True) for _ in range(depth)]
            elif kind == "conv":
                layers = [Conv(hidden) for _ in range(depth)]
            else:
                layers = [
                    nn.TransformerEncoderLayer(hidden, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first)
                    for _ in range(depth)
                ]
            self.layers = nn.ModuleList(layers)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            x, added = self.embed(input_ids), self.added.expand(input_ids.shape[0], -1, -1)
            ones = attention_mask.new_ones(input_ids.shape[0], added.shape[1])
            first, second = (
                ((added, ones), (x, attention_mask)) if self.where == "before" else ((x, attention_mask), (added, ones))
            )
            x, mask = torch.cat([first[0], second[0]], 1), torch.cat([first[1], second[1]], 1)
            tokens = x.shape[1]
            square = torch.zeros(tokens, tokens)
            if self.kind == "causal":
                square = torch.triu(torch.full((tokens, tokens), float("-inf")), 1)
            elif self.kind == "banded":
                band = (torch.arange(tokens)[None] - torch.arange(tokens)[:, None]).abs() > 2
                square = square.masked_fill(band, -1e9)  # finite: a padded row whose window holds only pads is not NaN
            for layer in self.layers:
                if self.kind == "lstm":
                    x = layer(x)[0]
                elif self.kind == "conv":
                    x = layer(x)
                else:
                    x = layer(x, src_mask=square, src_key_padding_mask=(mask == 0).float() * -1e9)
            return x

    class Late(nn.Module):
        """The mask counts ``k`` class tokens added after the first layer."""

        def __init__(self, k: int, hidden: int = 32) -> None:
            super().__init__()
            self.k, self.embed, self.cls = k, nn.Embedding(100, hidden), nn.Parameter(torch.randn(k, hidden))
            self.first = nn.TransformerEncoderLayer(hidden, 4, 64, dropout=0.0, batch_first=True)
            self.second = nn.TransformerEncoderLayer(hidden, 4, 64, dropout=0.0, batch_first=True)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            padding = (attention_mask == 0).float() * -1e9
            x = self.first(self.embed(input_ids), src_key_padding_mask=padding[:, self.k :])
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
            return self.second(x, src_key_padding_mask=padding)

    return {"added": Added, "late": Late}


def _padded(generator: Any, num: int, length: int) -> tuple[Any, Any]:
    import torch

    ids = torch.randint(3, 100, (num, length), generator=generator)
    lengths = torch.randint(2, length + 1, (num,), generator=generator)
    lengths[0] = length
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return ids * mask, mask


def _observe(model: Any, layers: list[str], inputs: dict[str, Any], masks: dict[str, Any]) -> dict[str, Any]:
    import torch

    from lightning_infomem.introspection import ReadingProbe, batch_masks

    modules = dict(model.named_modules())
    probe = ReadingProbe(model, {name: modules[name] for name in layers})
    model.eval()
    with torch.no_grad():
        probe.start()
        model(**inputs)
        probe.stop()
        size = next(iter(inputs.values())).shape[0]
        return probe.observe(size, batch_masks(masks)).readings


def _outcome(reading: Any, truth: Optional[tuple[int, int]]) -> str:
    found = reading.mask_padding if reading.masks else None
    if found == truth:
        return "right"
    return "unobserved" if found is None else "wrong"


def _cases(family: str, seed: int) -> list[tuple[str, str, Optional[tuple[int, int]]]]:
    """(model, outcome, true padding) for one family and seed."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    length = int(torch.randint(4, 33, (1,), generator=generator))
    ids, mask = _padded(generator, 8, length)
    k = int(torch.randint(1, 4, (1,), generator=generator))
    if family in ("transformer", "causal", "banded", "conv", "lstm"):
        where = ("before", "after")[seed % 2]
        depth = int(torch.randint(1, 7, (1,), generator=generator))
        model = _torch_models()["added"](family, k, where, depth, norm_first=bool(seed % 4 < 2))
        reading = _observe(
            model, [f"layers.{depth - 1}"], {"input_ids": ids, "attention_mask": mask}, {"attention_mask": mask}
        )
        truth = (k, 0) if where == "before" else (0, k)
        return [(f"{family} {where} k={k} depth={depth}", _outcome(reading[f"layers.{depth - 1}"], truth), truth)]
    if family == "late":
        full = torch.cat([torch.ones(8, k, dtype=torch.long), mask], 1)
        reading = _observe(
            _torch_models()["late"](k), ["first"], {"input_ids": ids, "attention_mask": full}, {"attention_mask": full}
        )
        return [(f"late k={k}", _outcome(reading["first"], (-k, 0)), (-k, 0))]
    import transformers

    if family == "translation":
        rows = []
        decoder_ids, _ = _padded(generator, 8, int(torch.randint(3, 17, (1,), generator=generator)))
        small = {"vocab_size": 100, "pad_token_id": 0, "decoder_start_token_id": 0}
        bart = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2}
        bart |= {
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "max_position_embeddings": 64,
        }
        t5 = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4}
        for name, model_class, config_class, config, layer in (
            ("MarianMT", "MarianMTModel", "MarianConfig", bart, "model.decoder.layers.1"),
            ("BART", "BartForConditionalGeneration", "BartConfig", bart, "model.decoder.layers.1"),
            ("T5", "T5ForConditionalGeneration", "T5Config", t5, "decoder.block.1"),
        ):
            model = getattr(transformers, model_class)(getattr(transformers, config_class)(**small, **config))
            inputs = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids}
            reading = _observe(model, [layer], inputs, {"attention_mask": mask})[layer]
            rows.append((f"{name} decoder", "right" if not reading.masks else "wrong", None))
        return rows
    import peft

    rows = []
    for name, (model_class, config_class, config, seen) in PEFT_MODELS.items():
        settings = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64}
        if config_class == "GPT2Config":
            settings = {"vocab_size": 100, "n_embd": 32, "n_layer": 2}
        if config_class == "OPTConfig":
            settings |= {"word_embed_proj_dim": 32}
        model = getattr(transformers, model_class)(
            getattr(transformers, config_class)(**settings, **config, pad_token_id=0, num_labels=2)
        )
        model = peft.get_peft_model(model, peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=k))
        layers = [n for n, _ in model.named_modules() if n.endswith((".layer.1", ".h.1", ".layers.1"))][:1]
        reading = _observe(model, layers, {"input_ids": ids, "attention_mask": mask}, {"attention_mask": mask})
        label = f"{name} prompt tuning k={k} ({'seen' if seen else 'not seen'})"
        rows.append((label, _outcome(reading[layers[0]], (k, 0)), (k, 0)))
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    args = _parser().parse_args(argv)
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    start = time.perf_counter()
    tally: dict[str, Counter] = {}
    records = []
    for family in args.families:
        if family in ("translation", "peft"):
            try:
                import transformers  # noqa: F401

                if family == "peft":
                    import peft  # noqa: F401
            except ImportError as error:
                print(f"{family}: skipped ({error.name} is not installed)")
                continue
        for seed in args.seeds:
            for model, outcome, truth in _cases(family, seed):
                group = model.split(" k=")[0] if family == "peft" else family
                tally.setdefault(group, Counter())[outcome] += 1
                records.append({"family": family, "seed": seed, "model": model, "outcome": outcome, "truth": truth})
    print(f"seeds {args.seeds[0]}-{args.seeds[-1]} ({len(args.seeds)}), torch {torch.__version__}, 1 thread")
    print(f"{'models':<38} {'right':>6} {'unobserved':>11} {'wrong':>6}")
    for group, counts in tally.items():
        print(f"{group:<38} {counts['right']:>6} {counts['unobserved']:>11} {counts['wrong']:>6}")
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"seeds": args.seeds, "records": records}, handle, indent=1)


if __name__ == "__main__":
    sys.exit(main())
