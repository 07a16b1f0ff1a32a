"""Text made at the boundary, incrementally: token ids in, safe text deltas out.

Two small pieces, both pure Python so they are unit-tested without a model:

* :class:`IncrementalDecoder` turns one token at a time into text without ever emitting half a
  character (byte-level BPE splits UTF-8 sequences over tokens), using prefix/read offsets so each
  step decodes a short window, not the whole sequence.
* :class:`StopMatcher` finds stop strings across token boundaries and holds back only the tail that
  could still become one, so a stream never shows text that the final answer does not contain.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

Decode = Callable[[Sequence[int]], str]


class IncrementalDecoder:
    def __init__(self, decode: Decode, prompt_tail: Sequence[int] = ()) -> None:
        # A few prompt tokens give the first generated token its left context (leading spaces of
        # sentencepiece-style tokenizers depend on it); they are never emitted.
        self._decode = decode
        self.ids: list[int] = list(prompt_tail)
        self._prefix = 0
        self._read = len(self.ids)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix:self._read])
        full_text = self._decode(self.ids[self._prefix:])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return full_text[len(prefix_text):]
        return ""  # an incomplete character: wait for the next token


def partial_prefix_tail(text: str, candidates: Sequence[str], longest: int) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of one of ``candidates``
    (``longest``: the longest candidate): the text a stream must hold back until it knows."""
    for n in range(min(longest - 1, len(text)), 0, -1):
        tail = text[-n:]
        if any(c.startswith(tail) for c in candidates):
            return n
    return 0


class StopMatcher:
    """Accumulates text; reports what is safe to emit and whether a stop string was hit."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.emitted = 0
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text (the Anthropic API reports it)
        self._longest = max((len(s) for s in self.stops), default=0)

    def feed(self, delta: str) -> str:
        """Add ``delta``; return the text that can be shown now (possibly empty)."""
        if self.stopped:
            return ""
        self.text += delta
        if self.stops:
            start = max(0, self.emitted - self._longest + 1)
            # The earliest hit; at one place, the shortest (it is complete first, reading on).
            hits = [(i, len(s), s) for s, i in ((s, self.text.find(s, start)) for s in self.stops) if i >= 0]
            if hits:
                at, _, self.matched = min(hits)
                self.text = self.text[:at]
                self.stopped = True
                return self._release(len(self.text))
        return self._release(len(self.text) - self._held_back())

    def flush(self) -> str:
        """At the end of generation: everything not yet shown."""
        return self._release(len(self.text))

    def _held_back(self) -> int:
        return partial_prefix_tail(self.text, self.stops, self._longest)

    def _release(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        out = self.text[self.emitted:upto]
        self.emitted = upto
        return out


def token_text_and_bytes(tokenizer: Any, token_id: int) -> tuple[str, list[int]]:
    """A token's text and its exact bytes. A token holding part of a UTF-8 character decodes to
    U+FFFD; its true bytes come from the vocabulary piece (byte-level BPE or <0xNN>)."""
    text = tokenizer.decode([token_id])
    if "\ufffd" not in text:
        return text, list(text.encode("utf-8"))
    piece = tokenizer.convert_ids_to_tokens(token_id) or ""
    if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
        return text, [int(piece[3:5], 16)]
    table = byte_decoder()
    if piece and all(ch in table for ch in piece):
        return text, [table[ch] for ch in piece]
    return text, list(text.encode("utf-8"))


@functools.lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte → printable-character table used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}
