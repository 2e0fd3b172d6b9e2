"""Search-R1's tags: the action of a turn, and stop strings in text or token streams.

- :func:`parse_action` finds what a turn asked for, exactly as Search-R1 does: the first
  match of ``<(search|answer)>(.*?)</\\1>`` (dot matches newline), content stripped.
- :class:`StopScanner` finds the first stop string in text that arrives in chunks.
- :class:`TokenStopChecker` does the same on token ids for a whole batch of sequences,
  built once from the tokenizer's vocabulary (see :func:`vocab_bytes`).
"""

from __future__ import annotations

from typing import Any

from searchr1._core import Action, StopScanner, TokenStopChecker, parse_action

__all__ = [
    "SEARCH_R1_STOPS",
    "Action",
    "StopScanner",
    "TokenStopChecker",
    "parse_action",
    "stop_checker_for",
    "vocab_bytes",
]

#: The strings that end a turn in Search-R1.
SEARCH_R1_STOPS = ("</search>", "</answer>")


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode table used by byte-level BPE vocabularies."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _is_byte_level(tokenizer: Any) -> bool:
    """Whether the tokenizer's pre-tokenizer or decoder is byte-level (GPT-2, Qwen, Llama 3)."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    for part in ("decoder", "pre_tokenizer"):
        component = getattr(backend, part, None)
        if component is not None and "ByteLevel" in repr(component):
            return True
    return False


def vocab_bytes(tokenizer: Any) -> list[bytes]:
    """The bytes each token id decodes to, indexed by id.

    Works with a ``tokenizers.Tokenizer`` or a transformers tokenizer. Byte-level BPE
    vocabularies (GPT-2, Qwen2, Llama 3) map through the byte-to-unicode table;
    SentencePiece-style vocabularies map ``▁`` to a space and ``<0xNN>`` to that byte.
    Special tokens decode to their text. Ids with no token decode to ``b""``.
    """
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        raise TypeError(f"{type(tokenizer).__name__} has no get_vocab(); pass a tokenizer")
    vocab: dict[str, int] = get_vocab()
    size = max(vocab.values(), default=-1) + 1
    out = [b""] * size
    byte_level = _is_byte_level(tokenizer)
    decoder = _byte_decoder() if byte_level else {}
    for token, token_id in vocab.items():
        if byte_level and all(c in decoder for c in token):
            out[token_id] = bytes(decoder[c] for c in token)
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            out[token_id] = bytes([int(token[3:5], 16)])
        else:
            out[token_id] = token.replace("\u2581", " ").encode("utf-8")
    return out


def stop_checker_for(tokenizer: Any, stops: tuple[str, ...] = SEARCH_R1_STOPS) -> TokenStopChecker:
    """A :class:`TokenStopChecker` for ``tokenizer``'s vocabulary and ``stops``."""
    return TokenStopChecker(vocab_bytes(tokenizer), list(stops))
