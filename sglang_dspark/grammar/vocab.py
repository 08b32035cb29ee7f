"""The bytes each token id stands for, from a Hugging Face tokenizer.

Grammars match bytes, so every backend needs token id -> bytes. Special tokens (``<|im_end|>`` and
the like) map to ``b""``: they never match grammar text (their surface string would otherwise be
allowed inside a JSON string, and then vanish from the decoded output).
"""

from __future__ import annotations

import json
import re

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2 byte-level BPE alphabet: printable bytes stand for themselves, the other bytes for
    code points 256, 257, ... in byte order. Returns char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def special_token_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    for tid, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if added.special:
            ids.add(tid)
    return ids


def token_bytes(tokenizer, vocab_size: int) -> list[bytes]:
    """``vocab_size`` entries (ids past the tokenizer's vocabulary, e.g. padding rows, are ``b""``)."""
    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    byte_level = "ByteLevel" in json.dumps(decoder)
    alphabet = _byte_level_alphabet()
    specials = special_token_ids(tokenizer)
    out = [b""] * vocab_size
    for tok, tid in tokenizer.get_vocab().items():
        if tid >= vocab_size or tid in specials:
            continue
        if byte_level:
            if all(c in alphabet for c in tok):
                out[tid] = bytes(alphabet[c] for c in tok)
            else:  # an added (non-special) token stored as plain text
                out[tid] = tok.encode()
        elif m := _BYTE_FALLBACK.fullmatch(tok):
            out[tid] = bytes([int(m.group(1), 16)])
        else:  # SentencePiece: "▁" is a space
            out[tid] = tok.replace("\u2581", " ").encode()
    return out
