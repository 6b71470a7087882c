"""vl_jax.models.clip_tokenizer: the transformers CLIP tokenizer built from the shipped BPE file must
give exactly the ids of OpenAI's original `SimpleTokenizer`.

`_ReferenceBPE` below is an independent re-implementation of that algorithm (byte -> unicode table,
greedy lowest-rank merges with a cache, OpenAI's pre-tokenisation regex, lowercasing, whitespace
cleanup) reading the same vocabulary file; the tokenizer under test is transformers' Rust BPE.

Two steps of OpenAI's `basic_clean` are not reproduced by any transformers CLIP tokenizer (HF's own
`openai/clip-*` tokenizers included) and are left out of the parity captions on purpose:
`ftfy.fix_text` (not installed here; beyond NFC it uncurls quotes, unfolds ligatures and fullwidth
forms) and `html.unescape` ("&amp;" stays three tokens). Plain captions are unaffected.
"""

from __future__ import annotations

import gzip
import html
import unicodedata
from importlib import resources

import numpy as np
import pytest
import regex

from vl_jax.models.clip_tokenizer import (
    BPE_ASSET,
    load_tokenizer,
    openai_clip_tokenizer,
    openai_vocab_and_merges,
    tokenize,
)

BOS_ID, EOS_ID = 49406, 49407

# Printed in the transformers CLIP docs / OpenAI CLIP examples.
GOLDEN = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "a photo of a dog": [49406, 320, 1125, 539, 320, 1929, 49407],
}


class _ReferenceBPE:
    """OpenAI CLIP's BPE tokenizer, written from the algorithm (ftfy replaced by NFC, see top)."""

    _SPECIALS = ("<|startoftext|>", "<|endoftext|>")
    _SPLIT = regex.compile(
        r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        regex.IGNORECASE,
    )

    def __init__(self, gz_bytes: bytes):
        # Bytes that print as themselves keep their character; the other 68 are mapped, in byte
        # order, onto chr(256), chr(257), ... so that no token contains whitespace/control chars.
        keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
        shifted = [b for b in range(256) if b not in keep]
        self.byte_char = {b: chr(b) for b in keep}
        self.byte_char.update({b: chr(256 + k) for k, b in enumerate(shifted)})
        alphabet = [self.byte_char[b] for b in keep + shifted]

        lines = gzip.decompress(gz_bytes).decode("utf-8").split("\n")
        n_merges = 49152 - 256 - 2  # line 0 is a version header
        merges = [tuple(line.split()) for line in lines[1 : 1 + n_merges]]
        assert len(merges) == n_merges and all(len(m) == 2 for m in merges)

        tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
        tokens += list(self._SPECIALS)
        self.token_id = {t: i for i, t in enumerate(tokens)}
        self.merge_rank = {m: r for r, m in enumerate(merges)}
        # Special tokens found by the regex map to themselves, not to their characters.
        self.cache: dict[str, list[str]] = {s: [s] for s in self._SPECIALS}

    def _merge(self, word: str) -> list[str]:
        if word in self.cache:
            return self.cache[word]
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = {(symbols[i], symbols[i + 1]) for i in range(len(symbols) - 1)}
            best = min(pairs, key=lambda p: self.merge_rank.get(p, len(self.merge_rank)))
            if best not in self.merge_rank:
                break
            merged, i = [], 0
            while i < len(symbols):  # left to right, non-overlapping occurrences
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self.cache[word] = symbols
        return symbols

    def encode(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFC", text)  # ftfy.fix_text's normalisation
        text = html.unescape(html.unescape(text)).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = [self.token_id["<|startoftext|>"]]
        for piece in self._SPLIT.findall(text):
            word = "".join(self.byte_char[b] for b in piece.encode("utf-8"))
            ids += [self.token_id[t] for t in self._merge(word)]
        return [*ids, self.token_id["<|endoftext|>"]]


CAPTIONS = [
    "a photo of a cat",
    "A PHOTO OF A DOG.",
    "a photo of a German shepherd",
    "jack-o'-lantern",
    "tiger shark, Galeocerdo cuvieri",
    "Granny Smith",
    "a photo of a hot-dog",
    "it's a dog's life, isn't it? we'll see; they've gone and I'd say you're right, I'm sure",
    "DON'T SHOUT, O'Neill's pub, rock'n'roll",
    "2 cats and 17 dogs in 1999: 3.14159 ratio, 100% sure, $5.99",
    "the 1st, 2nd and 3rd place",
    "£100 or €50 or ¥1000",
    "café crème brûlée, naïve façade, ÉCOLE ÀÉÎÕÜ",
    "cafe\u0301 with a decomposed accent",
    "Ελληνικά και русский текст",
    "東京タワーの写真",
    "日本語とEnglish混在",
    "a dog 🐶 and a cat 🐱 👍🏽",
    "   many    spaces\tand\ttabs\nand newlines  ",
    "non\u00a0breaking\u3000spaces",
    "zero\u200bwidth joiner",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "!!!???...---",
    "'single' \"double\" (paren) [bracket] {brace}",
    "e-mail: someone@example.com, https://example.com/path?q=1",
    "C++ and C# and F#",
    "MiXeD CaSe WoRdS",
    "a painting of the Mona Lisa by Leonardo da Vinci (1503)",
    "<|endoftext|> in the text",
    "x",
    "",
]


@pytest.fixture(scope="module")
def tok():
    return openai_clip_tokenizer()


@pytest.fixture(scope="module")
def reference():
    gz = resources.files("vl_jax.assets").joinpath(BPE_ASSET).read_bytes()
    return _ReferenceBPE(gz)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


@pytest.mark.parametrize("text", list(GOLDEN))
def test_golden_ids(tok, reference, text):
    assert _ids(tok, text) == GOLDEN[text]
    assert reference.encode(text) == GOLDEN[text]


def test_special_ids_and_vocab(tok, reference):
    vocab, merges = openai_vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab == reference.token_id
    assert tok.bos_token_id == BOS_ID and tok.eos_token_id == EOS_ID
    # Single characters: the 256 '</w>' byte tokens follow the 256 bare ones.
    assert _ids(tok, "!") == [BOS_ID, 256, EOS_ID]  # '!' is the first byte character
    assert _ids(tok, "a") == [BOS_ID, 256 + ord("a") - ord("!"), EOS_ID]


@pytest.mark.parametrize("text", CAPTIONS, ids=range(len(CAPTIONS)))
def test_matches_reference_bpe(tok, reference, text):
    assert _ids(tok, text) == reference.encode(text)


def test_reference_exercises_merges(reference):
    # Guard against a vacuous comparison: long words really go through many merges.
    word = "pneumonoultramicroscopicsilicovolcanoconiosis"
    ids = reference.encode(word)[1:-1]
    assert 1 < len(ids) < len(word)


def test_load_tokenizer_roundtrip(tmp_path, tok):
    tok.save_pretrained(str(tmp_path))
    loaded = load_tokenizer(str(tmp_path))
    for text in CAPTIONS:
        assert _ids(loaded, text) == _ids(tok, text)
    assert loaded.pad_token_id == tok.pad_token_id


def test_load_tokenizer_falls_back_to_openai(tmp_path, tok):
    # An OpenCLIP checkpoint carries no tokenizer files.
    (tmp_path / "open_clip_config.json").write_text("{}")
    loaded = load_tokenizer(str(tmp_path), context_length=32)
    assert loaded.model_max_length == 32
    for text in CAPTIONS[:8]:
        assert _ids(loaded, text) == _ids(tok, text)


def test_tokenize_pads_and_masks(tok):
    ids, mask = tokenize(tok, ["a cat", "a photo of a dog"])
    assert ids.shape == mask.shape == (2, 7)
    assert ids.dtype == mask.dtype == np.int32
    np.testing.assert_array_equal(ids[1], GOLDEN["a photo of a dog"])
    np.testing.assert_array_equal(ids[0, :4], [BOS_ID, 320, 2368, EOS_ID])
    np.testing.assert_array_equal(ids[0, 4:], tok.pad_token_id)
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0, 0], [1] * 7])


def test_tokenize_pad_to(tok):
    ids, mask = tokenize(tok, ["a photo of a cat"], pad_to=16)
    assert ids.shape == mask.shape == (1, 16)
    np.testing.assert_array_equal(ids[0, :7], GOLDEN["a photo of a cat"])
    np.testing.assert_array_equal(ids[0, 7:], tok.pad_token_id)
    assert mask.sum() == 7 and mask[0, :7].all()


def test_tokenize_truncates_keeping_eos(tok):
    text = " ".join(f"word{i}" for i in range(60))  # far more than 16 tokens
    full = _ids(tok, text)
    assert len(full) > 16
    ids, mask = tokenize(tok, [text, "a cat"], context_length=16)
    assert ids.shape == (2, 16) and mask[0].all()
    np.testing.assert_array_equal(ids[0, :15], full[:15])
    assert ids[0, -1] == EOS_ID and ids[0, 0] == BOS_ID
    ids77, _ = tokenize(tok, ["word " * 200])
    assert ids77.shape == (1, 77) and ids77[0, -1] == EOS_ID


def test_tokenize_exact_context_not_truncated(tok):
    text = " ".join(["cat"] * 14)  # 14 + BOS + EOS = 16 tokens
    ids, mask = tokenize(tok, [text], context_length=16)
    np.testing.assert_array_equal(ids[0], _ids(tok, text))
    assert mask.all()


@pytest.mark.parametrize("pad_to", [3, 78])
def test_tokenize_bad_pad_to(tok, pad_to):
    with pytest.raises(ValueError, match="pad_to"):
        tokenize(tok, ["a photo of a cat"], context_length=77, pad_to=pad_to)


def test_tokenize_empty_list(tok):
    ids, mask = tokenize(tok, [], pad_to=8)
    assert ids.shape == mask.shape == (0, 8) and ids.dtype == np.int32


def test_tokenize_rejects_single_string(tok):
    with pytest.raises(TypeError, match="list of texts"):
        tokenize(tok, "a photo of a cat")
