"""Structured output after a thought: the reasoning runs free, the grammar applies from its end on.

The engine only calls ``grammar.matcher()`` and, per token, the matcher's ``mask_logits`` (or
``constraints.mask_batch``, which reads ``_fill`` and ``bans_controls``) and ``accept``, so a
wrapper around the compiled grammar is all it takes; the engine does not know about reasoning.

One sequence goes through these phases:

* **open** (the prompt did not open the thought): the first token is the start tag, or a token
  the next phase allows;
* **thinking**: any token but a stop token (a constrained answer must follow), until the text
  holds the end tag; tokens that would carry text past the end tag are refused, so the answer
  starts exactly after it;
* **lead**: forced tokens that open the answer, e.g. ``<tool_call>\\n`` of a forced call; with
  several alternatives (``tool_choice: required`` where the function name precedes its JSON),
  any alternative that fits what was generated so far;
* **grammar**: the chosen alternative's JSON grammar (``constraints.Matcher``), as without thought.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch

from .constraints import Grammar, GrammarCompiler, Matcher

_ALL = -1  # an int32 bitmask word with every bit set


@dataclass(frozen=True)
class Branch:
    """One way the answer may go: forced ``lead`` token ids, then ``grammar``."""

    lead: tuple[int, ...]
    grammar: Grammar


class ReasoningGrammar:
    """The grammar of one request whose output may hold a thought; immutable, cheap to make."""

    def __init__(self, compiler: GrammarCompiler, branches: Sequence[Branch], *, thinking: bool,
                 start_id: int | None, end_tag: str) -> None:
        """``thinking``: the output starts inside the thought (else it may open it with the
        single token ``start_id``, None when the start tag is no single token)."""
        if not branches:
            raise ValueError("a reasoning grammar needs at least one branch")
        self.compiler = compiler
        self.branches = tuple(branches)
        self.thinking = thinking
        self.start_id = start_id
        self.end_tag = end_tag.encode()
        self.vocab, self.straddling = _vocab_info(compiler, self.end_tag)

    def matcher(self) -> "ReasoningMatcher":
        return ReasoningMatcher(self)


@functools.lru_cache(maxsize=8)
def _vocab_info(compiler: GrammarCompiler, tag: bytes) -> tuple[list[bytes], torch.Tensor]:
    """Each token's bytes, and the ids whose text holds the end tag followed by more text (once
    per model and tag: a scan of the vocabulary)."""
    vocab = compiler.token_bytes()
    straddling = [i for i, raw in enumerate(vocab) if tag in raw and not raw.endswith(tag)]
    return vocab, torch.tensor(straddling, dtype=torch.long)


class ReasoningMatcher:
    """One sequence's place in a :class:`ReasoningGrammar`. Not thread-safe (the engine thread)."""

    def __init__(self, grammar: ReasoningGrammar) -> None:
        self.g = grammar
        self.phase = "thinking" if grammar.thinking else "open"
        self._tail = b""  # the last bytes of the thought, to find an end tag split over tokens
        self._led = 0  # lead tokens generated so far
        self._live = list(grammar.branches)  # the alternatives that fit the lead so far
        self._inner: Matcher | None = None
        self._owner = grammar.compiler  # what constraints.mask_batch reads
        if self.phase == "open" and grammar.start_id is None:
            self._after_thought()

    # --- what the engine calls --------------------------------------------------------------------

    def mask_logits(self, logits: torch.Tensor) -> None:
        """Set the logits of the tokens not allowed next to ``-inf``, in place (a 1-D row)."""
        if self.phase == "grammar":
            assert self._inner is not None
            self._inner.mask_logits(logits)
            return
        if self.phase == "thinking":
            logits[sorted(self.g.compiler.stop_ids)] = float("-inf")
            if len(self.g.straddling):
                logits[self.g.straddling.to(logits.device)] = float("-inf")
            return
        allowed = self._lead_ids()
        if self.phase == "open" and self.g.start_id is not None:
            allowed.add(self.g.start_id)
        keep = torch.tensor(sorted(allowed), dtype=torch.long, device=logits.device)
        kept = logits[keep].clone()
        logits.fill_(float("-inf"))
        logits[keep] = kept

    def accept(self, token_id: int) -> None:
        """Advance by one sampled token; ``ValueError`` if it is not allowed here."""
        token_id = int(token_id)
        if self.phase == "open":
            if token_id == self.g.start_id:
                self.phase = "thinking"
                return
            self._after_thought()
        if self.phase == "thinking":
            self._think(token_id)
        elif self.phase == "lead":
            self._lead(token_id)
        else:
            assert self._inner is not None
            self._inner.accept(token_id)

    @property
    def done(self) -> bool:
        return self.phase == "grammar" and self._inner is not None and self._inner.done

    @property
    def bans_controls(self) -> bool:
        """A thought and a forced opener may hold newlines; the JSON after them may not."""
        return self.phase == "grammar"

    def _fill(self, bitmask: torch.Tensor, row: int) -> None:
        """This row of a batch bitmask (``constraints.mask_batch``)."""
        if self.phase == "grammar":
            assert self._inner is not None
            self._inner._fill(bitmask, row)
            return
        if self.phase == "thinking":
            bitmask[row].fill_(_ALL)
            for i in (*self.g.compiler.stop_ids, *self.g.straddling.tolist()):
                _set_bit(bitmask[row], i, False)
            return
        allowed = self._lead_ids() | ({self.g.start_id} if self.phase == "open" and self.g.start_id is not None else set())
        bitmask[row].zero_()
        for i in allowed:
            _set_bit(bitmask[row], i, True)

    # --- phases -----------------------------------------------------------------------------------

    def _think(self, token_id: int) -> None:
        tag = self.g.end_tag
        self._tail = (self._tail + self.g.vocab[token_id])[-(len(tag) + 64):]
        if tag in self._tail:
            self._after_thought()

    def _after_thought(self) -> None:
        self.phase, self._tail = "lead", b""
        self._maybe_enter_grammar()

    def _lead_ids(self) -> set[int]:
        """Tokens allowed next while leading in (open or lead phase)."""
        if self.phase == "open" and len(self._live) == 1 and not self._live[0].lead:
            return self._grammar_ids(self._live[0])
        return {b.lead[self._led] for b in self._live if len(b.lead) > self._led}

    def _grammar_ids(self, branch: Branch) -> set[int]:
        probe = branch.grammar.matcher()
        row = torch.zeros(self.g.compiler.vocab_size, dtype=torch.float32)
        probe.mask_logits(row)
        return set(torch.isfinite(row).nonzero().flatten().tolist())

    def _lead(self, token_id: int) -> None:
        live = [b for b in self._live if len(b.lead) > self._led and b.lead[self._led] == token_id]
        if not live:
            raise ValueError(f"token {token_id} is not allowed by the grammar at this point")
        self._live, self._led = live, self._led + 1
        self._maybe_enter_grammar()

    def _maybe_enter_grammar(self) -> None:
        complete = [b for b in self._live if len(b.lead) == self._led]
        if complete:  # leads are prefix-free: a complete one is the only one left
            self.phase, self._inner = "grammar", complete[0].grammar.matcher()


def _set_bit(words: torch.Tensor, i: int, on: bool) -> None:
    word, bit = divmod(int(i), 32)
    mask = -(1 << 31) if bit == 31 else 1 << bit
    if on:
        words[word] |= mask
    else:
        words[word] &= ~mask
