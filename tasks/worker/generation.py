"""One generation job on the worker, in three steps: prepare (template, tokenize, budgets, the
grammar of structured output or of a forced tool call), start (every sequence joins the engine's
batch) and wait for them, collect (the result, tool calls parsed by the request's tool plan).

A reasoning model's thought is split off the answer by the request's
:class:`handlers.reasoning.ReasoningPlan` (streams: its splitter, before the tool-call filter), and
a grammar then applies from the thought's end on. Tool calls have one home on the worker: the request's :class:`handlers.tools.ToolPlan` renders the
tools, prefills and constrains a forced call, filters call markup out of a stream and parses the
calls at the end. The front only translates the parsed calls into its wire format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from handlers.base import ChatHandler
from handlers.reasoning import ChatStreamFilter, ReasoningPlan
from handlers.tools import ToolPlan
from tasks.contract.errors import JobError, server_error
from tasks.contract.payloads import GenerateJob, GenerateResult, Output, SamplingParams
from tasks.contract.records import CLASSES
from tasks.worker.engine_loop import EngineLoop, JobEnd, SeqWaiter


@dataclass
class Prepared:
    handler: ChatHandler
    prompts: list[list[int]]  # token ids, one per prompt
    texts: list[str | None]  # the raw prompt texts (echo), None for a chat
    budgets: list[int]  # max new tokens per prompt
    sampling: SamplingParams  # the job's, with a forced call's grammar when there is one
    grammar: Any
    tools: ToolPlan | None
    reasoning: ReasoningPlan | None = None  # a reasoning model's: where its thought is

    def stream_filter(self) -> ChatStreamFilter | None:
        """What a stream shows of each choice: the thought apart, call markup kept out."""
        if self.tools is None and self.reasoning is None:
            return None
        return ChatStreamFilter(self.reasoning.splitter() if self.reasoning else None,
                                self.tools.filter() if self.tools else None)


def prepare(handler: ChatHandler, job: GenerateJob) -> Prepared:
    """Raises JobError for a prompt the model cannot take (too long, bad schema, bad tools)."""
    tools = handler.tool_plan(job.tools, job.tool_choice, job.parallel_tool_calls) if job.messages else None
    texts: list[str | None]
    if job.messages is not None:
        texts = [None]
        prompts = [handler.encode_chat(job.messages, tools.tools if tools else None, tools.prefill if tools else "",
                                       job.chat_template_kwargs)]
    else:
        texts = list(job.prompts or [])
        prompts = [handler.encode_prompt(p) for p in job.prompts or []]
    sampling = job.sampling
    if tools is not None and tools.constraint is not None:  # a forced call: its grammar
        sampling = sampling.model_copy(update={"constraint": tools.constraint})
    budgets = [handler.resolve_max_tokens(ids, sampling.max_tokens) for ids in prompts]
    reasoning = handler.reasoning_plan(prompts[0]) if job.messages is not None else None
    # Compiled here, in a pool thread: a slow schema never stalls the batch on the engine thread.
    try:
        grammar = handler.compile_constraint(sampling.constraint, reasoning)  # after the thought, if any
    except JobError as e:
        if tools is not None and tools.constraint is not None:
            e.param = "tools"
        raise
    return Prepared(handler, prompts, texts, budgets, sampling, grammar, tools, reasoning)


def choice_params(sampling: SamplingParams, choice: int) -> SamplingParams:
    """Each of the ``n`` choices draws from its own seed, so seeded choices differ but repeat."""
    if choice == 0 or sampling.seed is None:
        return sampling
    return sampling.model_copy(update={"seed": sampling.seed + choice})


def start(loop: EngineLoop, job: GenerateJob, plan: Prepared, attempt: int = 0,
          end: JobEnd | None = None) -> list[SeqWaiter]:
    """Every sequence of the job joins the batch at once. ``attempt`` tags the events a job keeps
    (``events_ttl``); ``end``, when given, is the job's final record, made by the engine thread."""
    reply_to = job.reply_to if job.stream else None
    keep = (job.events_ttl, attempt) if job.events_ttl else (0, 0)
    priority = CLASSES.index(job.klass)
    waiters = []
    for p, (ids, budget) in enumerate(zip(plan.prompts, plan.budgets)):
        for choice in range(job.n):
            waiters.append(loop.submit(job.job_id, p * job.n + choice, ids, choice_params(plan.sampling, choice),
                                       budget, reply_to, job.deadline, plan.grammar, handler=plan.handler,
                                       filter=plan.stream_filter() if reply_to or keep[0] else None,
                                       priority=priority, keep=keep, end=end))
    return waiters


def sequences(plan: Prepared, job: GenerateJob) -> int:
    """How many sequences ``start`` submits for the job."""
    return len(plan.prompts) * job.n


def wait(loop: EngineLoop, waiters: list[SeqWaiter]) -> list[SeqWaiter]:
    """Until every sequence has ended (an error raised if the engine thread died meanwhile)."""
    for w in waiters:
        while not w.done.wait(timeout=1.0):
            if not loop.is_alive():
                raise server_error("The worker's engine thread stopped.")
    return waiters


def engine_seconds(waiters: list[SeqWaiter]) -> float | None:
    """From the engine taking the job's first sequence to the end of the step that finished its
    last one; None when a sequence never ran or did not finish in a step (an error, a reload)."""
    if not waiters or any(not (w.added_at and w.ended_at) for w in waiters):
        return None
    return max(w.ended_at for w in waiters) - min(w.added_at for w in waiters)


def collect(job: GenerateJob, plan: Prepared, waiters: list[SeqWaiter]) -> GenerateResult | None:
    """The job's result; None when it was cancelled (or stopped by its deadline)."""
    if (err := next((w.error for w in waiters if w.error), None)) is not None:
        raise err
    if any(w.seq is None or w.seq.finish_reason == "cancelled" for w in waiters):
        return None
    outputs = []
    for w in waiters:
        seq, prompt_text = w.seq, plan.texts[w.index // job.n]
        assert seq is not None
        echo = job.echo and prompt_text is not None
        reasoning, answer = plan.reasoning.split(seq.text) if plan.reasoning else (None, seq.text)
        text, calls = plan.tools.finish(answer) if plan.tools else (answer, [])
        finish = "tool_calls" if calls else seq.finish_reason or "length"
        outputs.append(Output(
            index=w.index, text=(prompt_text or "") + text if echo else text,
            finish_reason=finish,
            tool_calls=calls or None, prompt_tokens=len(seq.prompt_ids), completion_tokens=len(seq.token_ids),
            logprobs=seq.logprobs, prompt_logprobs=seq.prompt_logprobs if echo else None,
            stop_sequence=seq.stop_sequence, reasoning=reasoning,
            reasoning_tokens=plan.reasoning.count_tokens(seq.token_ids, plan.handler.decode)
            if plan.reasoning and reasoning is not None else 0))
    return GenerateResult(outputs=outputs, n=job.n)
