"""Continuous batching on one model: sequences join the running batch at the next step and leave it
when they finish, each with its own sampling parameters, stop conditions and text stream.

A small state machine (after nano-vllm's ``step() = schedule → run → postprocess``):

* schedule: the :class:`~handlers.scheduler.Scheduler` admits waiting sequences that fit (batch
  size, KV token budget, prefill chunk, priority classes), or none: then the step is a decode;
* run: where the model has a fast path (:mod:`handlers.fast_decode`, over the slot cache), one pass
  advances every running sequence by one token and prefills the admitted prompts, which join the
  batch in the same pass (a prefill never stalls the running streams); otherwise a prefill runs
  the admitted prompts as one left-padded forward and merges their KV rows into the batch
  (:class:`~handlers.batch_cache.BatchCache`), and a decode advances every running sequence by one
  token in one forward; the :class:`~handlers.sampler.Sampler` picks each row's token;
* postprocess: each :class:`~handlers.sequence.Sequence` takes its token, and the rows of the
  sequences that ended (stop, length, cancelled) leave the batch at once.

Why transformers' ordinary cache, left-padded, rather than its paged continuous-batching manager:
on CPU one forward over a padded batch was several times faster (16 SmolLM2 streams, bf16, 2 cores:
transformers' ``generate_batch`` 43 tok/s, this engine 228 tok/s with requests joining and leaving).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tasks.contract.payloads import SamplingParams

from . import cpu_kernels, fast_decode
from .batch_cache import BatchCache
from .chunked_prefill import ChunkedPrefill
from .prefix_cache import PrefixCache
from .sampler import Sampler
from .sampling import prompt_logprobs
from .scheduler import Scheduler
from .sequence import INTERACTIVE, SeqStatus, Sequence, StepOutput
from .slot_cache import SlotCache

if TYPE_CHECKING:
    from .base import ChatHandler

__all__ = ["Engine", "Sequence", "SeqStatus", "StepOutput", "run_to_completion"]


class Engine:
    def __init__(self, handler: "ChatHandler", max_batch: int = 32, max_batch_tokens: int = 32768,
                 max_prefill_tokens: int = 2048, prefix_cache_tokens: int = 4096, reserved_slots: int = 0, slot_cache: bool = True,
                 fast: bool = True) -> None:
        """``reserved_slots``: rows bulk work leaves to interactive work, and the other way round while
        bulk work waits (handlers/scheduler.py);
        ``slot_cache``: keep the batch's KV in place (handlers/slot_cache.py) where the model allows;
        ``fast``: and decode without the model's forward (handlers/fast_decode.py) where it allows."""
        self.handler = handler
        self.model = handler.model
        self.device = handler.device
        self.scheduler = Scheduler(max_batch, max_batch_tokens, max_prefill_tokens, reserved_slots)
        prefixes = PrefixCache(max_tokens=prefix_cache_tokens) if prefix_cache_tokens else None
        # CPU only for now: measured and tested here; the slot buffers are also what a CUDA-graph
        # decode would need, but no GPU has run them yet.
        slots = slot_cache and self.device.type == "cpu" and SlotCache.supports(self.model.config)
        self.kv = (SlotCache if slots else BatchCache)(self.device, handler.pad_id, self.model.config, prefixes)
        # Decode steps straight from the model's modules where its architecture allows (handlers/fast_decode.py).
        # Its elementwise work in fused C kernels (handlers/cpu_kernels.py) unless LLMHOST_CPU_KERNELS=false.
        kernels = cpu_kernels.load() if slots and fast and handler.options.cpu_kernels else None
        self.fast = fast_decode.build(self.model, kernels) if slots and fast else None
        self.sampler = Sampler(self.device, handler.describe_token)
        self.last_batch = 0  # rows in the most recent decode forward
        # A prompt over the prefill budget is prefilled a budget per step (handlers/chunked_prefill.py).
        self.chunks = SlotCache.supports(self.model.config)
        self.chunked: ChunkedPrefill | None = None
        self._chunk_due = False  # the batch had its step since the last chunk: the next is the chunk's

    # --- requests ---------------------------------------------------------------------------

    def add(self, seq_id: str, prompt_ids: list[int], params: SamplingParams, max_tokens: int,
            grammar: Any = None, priority: int = INTERACTIVE) -> Sequence:
        """Queue a sequence. ``priority``: 0 interactive, 1 background, 2 batch; lower is admitted first."""
        if priority < 0:
            raise ValueError(f"priority must be 0 or more, got {priority}")
        seq = Sequence(seq_id, prompt_ids, params, max_tokens, decode=self.handler.decode, device=self.device,
                       matcher=grammar.matcher() if grammar is not None else None, priority=priority)
        self.scheduler.add(seq)
        return seq

    def abort(self, seq_id: str) -> None:
        for seq in (*self.scheduler.waiting, *self.scheduler.running, *self._held()):
            if seq.id == seq_id:
                seq.cancel()

    def release(self) -> None:
        """Drop the model, the KV state and the prefix cache (the engine is idle): a reload must not
        hold the old weights while the new ones load."""
        self.model = self.fast = self.chunked = None
        self.handler = None  # type: ignore[assignment]
        self.kv.clear()
        self.kv.prefix_cache = None

    def has_work(self) -> bool:
        return self.scheduler.has_work() or self.chunked is not None

    def _held(self) -> list[Sequence]:
        """The sequence whose prompt is being prefilled in chunks: in no row yet, but counted."""
        return [self.chunked.seq] if self.chunked is not None else []

    @property
    def waiting(self) -> list[Sequence]:
        return self.scheduler.waiting

    @property
    def running(self) -> list[Sequence]:
        return self.scheduler.running

    @property
    def prefix_cache(self) -> PrefixCache | None:
        return self.kv.prefix_cache

    @property
    def kv_tokens(self) -> int:
        return self.kv.tokens

    # --- the step ---------------------------------------------------------------------------

    def step(self) -> list[StepOutput]:
        with torch.inference_mode():  # the KV buffers are inference tensors, changed in place
            outputs = self._drop_cancelled()
            if self.chunked is not None and (self._chunk_due or not (self.running or self.scheduler.waiting)):
                self._chunk_due = False  # a chunk, then the batch's step (decode, mixed or prefill)
                if self.fast is None:
                    # Without a mixed pass a prefill stalls the running rows: after a chunk they
                    # decode, so that they get a token every other step (arrivals wait for the end).
                    self.scheduler.after_prefill()
                return outputs + self._prefill_chunk()
            self._chunk_due = self.chunked is not None
            held = self._held()
            admitted = self.scheduler.schedule(self.kv.tokens + sum(len(seq.prompt_ids) for seq in held),
                                               mixed=self.fast is not None, held=held)
            if len(admitted) == 1 and self.chunked is None and self._chunkable(admitted[0]):
                self.chunked = ChunkedPrefill(admitted[0], self.kv.prefill_inputs([admitted[0].prompt_ids]),
                                              self.scheduler.max_prefill_tokens)
                outputs += self._prefill_chunk()
            elif admitted and self.fast is not None and admitted[0].params.prompt_logprobs is None:
                outputs += self._mixed(admitted)
            elif admitted:
                outputs += self._prefill(admitted)
            elif self.running:
                outputs += self._decode()
        return outputs

    def _prefill(self, group: list[Sequence]) -> list[StepOutput]:
        """One forward for the group's prompts (from their cached prefixes where there are some);
        their first tokens go out at once, and the rows that go on join the batch."""
        echo = group[0].params.prompt_logprobs is not None  # then the group is that one sequence
        prompts = [seq.prompt_ids for seq in group]
        inputs = self.kv.prefill_inputs(prompts, use_prefixes=not echo)
        out = self.model(**inputs, use_cache=True, logits_to_keep=0 if echo else 1)
        if echo:
            seq = group[0]
            seq.prompt_logprobs = prompt_logprobs(out.logits[0], seq.prompt_ids, seq.params.prompt_logprobs or 0,
                                                  self.handler.describe_token)
        return self._prefilled(group, out.cache, inputs["attention_mask"], out.logits[:, -1])

    def _prefilled(self, group: list[Sequence], cache: Any, mask: torch.Tensor, logits: torch.Tensor) -> list[StepOutput]:
        """After a prefill's forward (``cache``, its ``mask``, the logits at each row's last
        position): the prompts' prefixes are kept, their first tokens go out at once, and the rows
        that go on join the batch."""
        self.kv.remember_prefixes([seq.prompt_ids for seq in group], cache, mask)
        tokens = self.sampler.sample(group, logits)
        outputs, keep = self._postprocess(group, tokens)
        if keep:
            self.kv.join(cache, mask, tokens, keep)
            self.scheduler.join([group[i] for i in keep])
        return outputs

    def _chunkable(self, seq: Sequence) -> bool:
        """What is left to prefill after the prompt's cached prefix is over the budget (a long chat
        whose earlier turns are cached is prefilled at once, in the batch's own pass)."""
        if not self.chunks or seq.params.prompt_logprobs is not None:
            return False
        budget = self.scheduler.max_prefill_tokens
        if len(seq.prompt_ids) <= budget:
            return False
        prefixes = self.kv.prefix_cache
        cached = prefixes.lookup(seq.prompt_ids, count=False)[0] if prefixes is not None else 0
        return len(seq.prompt_ids) - cached > budget

    def _prefill_chunk(self) -> list[StepOutput]:
        """The next chunk of the prompt being prefilled in chunks; after its last, its first token."""
        chunked = self.chunked
        assert chunked is not None
        logits = chunked.step(self.model)
        if logits is None:
            return []
        self.chunked = None
        return self._prefilled([chunked.seq], chunked.cache, chunked.mask, logits)

    def _mixed(self, group: list[Sequence]) -> list[StepOutput]:
        """The running rows' decode and the group's prefill in one pass (handlers/fast_decode.py):
        the group's rows join the slot cache first, starting from their cached prefixes; every row's
        token goes out, and the rows that ended leave."""
        assert isinstance(self.kv, SlotCache) and self.fast is not None
        kv, running = self.kv, self.running
        hits = kv.prefix_hits([seq.prompt_ids for seq in group])
        places = kv.admit([len(seq.prompt_ids) for seq in group], [prefix for _, prefix in hits], self.fast.kv_shapes)
        mask = kv.decode_inputs()["attention_mask"]  # opens this step's column for every row
        logits = self.fast(kv, [fast_decode.Joining(row, first, cached, seq.prompt_ids[cached:])
                                for seq, (cached, _), (row, first) in zip(group, hits, places)])
        kv.remember_joined([seq.prompt_ids for seq in group], places)
        rows = running + group
        self.last_batch = len(rows)
        tokens = self.sampler.sample(rows, logits)
        kv.advance(None, mask, tokens)
        self.scheduler.join(group)
        outputs, keep = self._postprocess(rows, tokens)
        if len(keep) < len(rows):
            self._keep_rows(keep)
        return outputs

    def _decode(self) -> list[StepOutput]:
        running = self.running
        self.last_batch = len(running)
        inputs = self.kv.decode_inputs()
        if self.fast is not None:
            assert isinstance(self.kv, SlotCache)
            logits, cache = self.fast(self.kv), None
        else:
            out = self.model(**inputs, use_cache=True)
            logits, cache = out.logits[:, -1], out.cache
        tokens = self.sampler.sample(running, logits)
        self.kv.advance(cache, inputs["attention_mask"], tokens)
        outputs, keep = self._postprocess(running, tokens)
        if len(keep) < len(running):
            self._keep_rows(keep)
        return outputs

    def _postprocess(self, seqs: list[Sequence], tokens: torch.Tensor) -> tuple[list[StepOutput], list[int]]:
        """Feed each sampled token to its sequence; return outputs and the rows that go on."""
        outputs, keep = [], []
        for i, (seq, token) in enumerate(zip(seqs, tokens.tolist())):
            delta = seq.accept(token, self.handler.stop_ids)
            if seq.finished:
                outputs.append(StepOutput(seq, delta, True, seq.take_logprobs()))
            else:
                keep.append(i)
                if delta:
                    outputs.append(StepOutput(seq, delta, False, seq.take_logprobs()))
        return outputs, keep

    def _drop_cancelled(self) -> list[StepOutput]:
        gone = self.scheduler.drop_cancelled()
        if self.chunked is not None and self.chunked.seq.cancelling:
            gone.append(self.chunked.seq)
            self.chunked = None
        keep = [i for i, seq in enumerate(self.running) if not seq.cancelling]
        if len(keep) < len(self.running):
            gone += [seq for seq in self.running if seq.cancelling]
            self._keep_rows(keep)
        for seq in gone:
            seq.finish("cancelled")
        return [StepOutput(seq, "", True) for seq in gone]

    def _keep_rows(self, keep: list[int]) -> None:
        self.scheduler.keep(self.kv.filter(keep))


def run_to_completion(engine: Engine) -> list[StepOutput]:
    """Step until nothing is left (in-process use: tests, benchmarks)."""
    outputs: list[StepOutput] = []
    while engine.has_work():
        outputs += engine.step()
    return outputs
