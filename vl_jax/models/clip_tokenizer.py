"""CLIP tokenisation through transformers, with the original BPE vocabulary shipped in the package.

HF CLIP checkpoints carry their tokenizer files and are loaded with `AutoTokenizer`. OpenCLIP
checkpoints (and models built in place) carry none: for them we build the exact OpenAI CLIP BPE
tokenizer from `assets/bpe_simple_vocab_16e6.txt.gz` (MIT, from OpenAI CLIP via OpenCLIP), with the
same vocabulary order as OpenAI's `SimpleTokenizer`, so ids equal `openai/clip-*` tokenizers.
"""

from __future__ import annotations

import functools
import gzip
import os
from importlib import resources

import numpy as np

BPE_ASSET = "bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@functools.lru_cache(maxsize=1)
def openai_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab {token: id}, merges) of OpenAI CLIP: 256 bytes, 256 bytes + '</w>', 48,894 merges,
    then <|startoftext|> = 49406 and <|endoftext|> = 49407."""
    with resources.files("vl_jax.assets").joinpath(BPE_ASSET).open("rb") as f:
        lines = gzip.decompress(f.read()).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    tokens = list(_bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def openai_clip_tokenizer(model_max_length: int = 77):
    """The OpenAI CLIP tokenizer (`transformers.CLIPTokenizer`) built from the shipped vocabulary."""
    from transformers import CLIPTokenizer

    vocab, merges = openai_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=model_max_length)


def load_tokenizer(path: str, context_length: int = 77):
    """The tokenizer of a checkpoint directory: its own files if it has them (HF checkpoints),
    else the OpenAI CLIP BPE tokenizer (OpenCLIP checkpoints use it)."""
    if any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    return openai_clip_tokenizer(context_length)


def tokenize(tokenizer, texts: list[str], context_length: int = 77, pad_to: int | None = None):
    """texts -> (input_ids [B, L] int32, attention_mask [B, L] int32).

    Truncates to `context_length` keeping the end-of-text token last (as OpenCLIP does), and pads
    to `pad_to` (default: the longest text) so that a few fixed lengths avoid recompilation.
    """
    if isinstance(texts, str):  # list("a cat") would tokenise each character as a text
        raise TypeError("tokenize() takes a list of texts, not a single string")
    texts = list(texts)
    # transformers raises IndexError on an empty batch; an empty batch is a valid [0, L] result.
    enc = tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []
    eos = tokenizer.eos_token_id
    rows = [ids if len(ids) <= context_length else [*ids[: context_length - 1], eos] for ids in enc]
    length = pad_to or max((len(r) for r in rows), default=0)
    if length > context_length or any(len(r) > length for r in rows):
        raise ValueError(
            f"pad_to={length} is shorter than a text or exceeds context {context_length}"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.full((len(rows), length), pad, dtype=np.int32)
    mask = np.zeros((len(rows), length), dtype=np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask
