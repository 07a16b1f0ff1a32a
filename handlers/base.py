"""The generic model side: a handler loads one model folder and runs requests against it.

:class:`ChatHandler` is complete for any causal LM whose tokenizer carries a chat template; a model
family (``handlers/chatml.py``, ``llama3.py``, …) subclasses it only for what differs: a built-in
template for folders that lack one, extra stop tokens, message rules, its tool-call format, how it
marks a thought (``reasoning_tags``; see ``reasoning.py``). The worker talks to handlers in token ids
and native types; JSON and HTTP stay in the front.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch

from tasks.contract.errors import JobError, invalid_request
from tasks.contract.payloads import LoadOptions, Message, ToolCall

from .loading import load_causal_lm
from .reasoning import ReasoningPlan, ThinkTags, plan_reasoning
from .text import token_text_and_bytes
from .tools import ToolPlan, forced, forced_schema, hf_message, hf_tools, openai_call_id, parse_hermes, uses_tools

log = logging.getLogger(__name__)


class Handler:
    """What every handler offers the worker."""

    kind: ClassVar[str] = "chat"
    family: ClassVar[str] = "base"

    def __init__(self, model_id: str, folder: Path, options: LoadOptions) -> None:
        self.model_id = model_id
        self.folder = folder
        self.options = options
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def load(self) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, str]:
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."), "kind": self.kind}


class ChatHandler(Handler):
    kind = "chat"
    family = "auto"
    # Special tokens that end an assistant turn in this family, besides the tokenizer's EOS.
    stop_tokens: ClassVar[tuple[str, ...]] = ()
    # Tool calling (see handlers/tools.py). The defaults are the Hermes format most tool-aware
    # chat templates use; a family overrides them together with its built-in tool prompt.
    tool_markers: ClassVar[tuple[str, ...]] = ("<tool_call>",)  # a call starts here, anywhere in the text
    tool_start_markers: ClassVar[tuple[str, ...]] = ()  # … or here, at the start of the output only
    tool_args_key: ClassVar[str] = "arguments"  # the key of a call's arguments in the family's JSON
    # How the family marks its reasoning (handlers/reasoning.py); None: it does not reason.
    reasoning_tags: ClassVar[ThinkTags | None] = None
    # Markup the parsers must see even where a tokenizer marks it special (decoding drops specials).
    kept_tokens: ClassVar[tuple[str, ...]] = ()

    model: Any
    tokenizer: Any

    def load(self) -> None:
        self.model, self.tokenizer, placement = load_causal_lm(self.folder, self.options)
        self.device, self.dtype = placement.device, placement.dtype
        self.max_context = self._context_length()
        self.stop_ids = self._stop_ids()
        self._hidden = self._hidden_ids()
        # Filler for left padding in batches; masked out, so any id the embedding table has will do.
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.stop_ids, default=0)
        self._grammars: Any = None  # structured-output compiler, made on first use
        self._grammar_lock = threading.Lock()  # pool threads compile concurrently
        log.info("loaded %s (%s) on %s as %s, context %d, stop ids %s",
                 self.model_id, self.family, self.device, self.dtype, self.max_context, sorted(self.stop_ids))

    # --- prompts ---------------------------------------------------------------------------

    def validate_messages(self, messages: Sequence[Message]) -> None:
        """Family rules on the conversation; raise a 400 :class:`JobError` to refuse it."""
        if not messages:
            raise invalid_request("`messages` must contain at least one message.", param="messages")

    def builtin_template(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                         options: Mapping[str, Any] | None = None) -> str | None:
        """The family's own prompt format, used when the model folder carries no chat template, or
        one that cannot render the request's tools, tool calls or tool results. ``options``: the
        request's template variables (:meth:`template_options`)."""
        return None

    def template_options(self, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
        """The request's ``chat_template_kwargs`` (``reasoning_effort`` among them) as this
        family's template reads them."""
        return dict(kwargs or {})

    def template_fits(self, template: str, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None) -> bool:
        """Whether the folder's own template can render this request."""
        return not uses_tools(messages, tools) or "tools" in template

    def template_inputs(self, messages: Sequence[Message],
                        tools: Sequence[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The messages and extra variables the folder's own template is rendered with."""
        return [hf_message(m) for m in messages], ({"tools": hf_tools(tools)} if tools else {})

    def render_chat(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                    template_kwargs: Mapping[str, Any] | None = None) -> str:
        self.validate_messages(messages)
        options = self.template_options(template_kwargs)
        template = getattr(self.tokenizer, "chat_template", None)
        with_tools = uses_tools(messages, tools)
        if template and self.template_fits(str(template), messages, tools):
            hf_messages, extra = self.template_inputs(messages, tools)
            try:
                return self.tokenizer.apply_chat_template(hf_messages, tokenize=False, add_generation_prompt=True,
                                                          **extra, **options)
            except Exception as e:  # noqa: BLE001 - template raise_exception() and friends
                raise invalid_request(f"The model's chat template refused these messages: {e}", param="messages") from None
        text = self.builtin_template(messages, tools if with_tools else None, options)
        if text is None:
            if with_tools:
                raise invalid_request(f"The model `{self.model_id}` has no tool-calling format (its chat template "
                                      "takes no tools).", param="tools" if tools else "messages")
            raise invalid_request(
                f"The model `{self.model_id}` has no chat template; use /v1/completions with a raw prompt.",
                param="messages")
        return text

    def encode_chat(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                    prefill: str = "", template_kwargs: Mapping[str, Any] | None = None) -> list[int]:
        # The rendered text already holds any BOS the template wants: adding special tokens here
        # again is the classic doubled-BOS bug. ``prefill`` starts the assistant's answer (a forced call).
        text = self.render_chat(messages, tools, template_kwargs)
        return self.tokenizer.encode(text + prefill, add_special_tokens=False)

    def reasoning_plan(self, prompt_ids: Sequence[int]) -> ReasoningPlan | None:
        """How this prompt's output holds its thought (the prompt's last tokens tell whether the
        template opened it); None for a family that does not reason."""
        if self.reasoning_tags is None:
            return None
        tail = self.tokenizer.decode(list(prompt_ids[-16:]), skip_special_tokens=False)
        return plan_reasoning(self.reasoning_tags, tail)

    # --- tool calling ------------------------------------------------------------------------------

    def new_tool_call_id(self) -> str:
        return openai_call_id()

    def tool_prefill(self) -> str:
        """What the assistant's answer starts with when a call is forced (the family's call opener)."""
        return "<tool_call>\n"

    def forced_call_schema(self, tools: Sequence[dict[str, Any]], choice: str | dict[str, Any]) -> dict[str, Any]:
        """The JSON schema of what follows :meth:`tool_prefill` in a forced call."""
        return forced_schema(tools, choice, self.tool_args_key)

    def forced_call_branches(self, tools: Sequence[dict[str, Any]],
                             choice: str | dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """A forced call after a thought: (opener, JSON schema) alternatives, the opener forced
        once the thought has ended (it cannot be prefilled: the thought comes first)."""
        return [(self.tool_prefill(), self.forced_call_schema(tools, choice))]

    def parse_tool_calls(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, calls) of a generated answer; no calls → (``text``, [])."""
        return parse_hermes(text, self.new_tool_call_id)

    def tool_plan(self, tools: Sequence[dict[str, Any]] | None, choice: str | dict[str, Any],
                  parallel: bool = True) -> ToolPlan | None:
        """How a request uses its tools; None when it has none or ``tool_choice`` is ``none``."""
        if not tools or choice == "none":
            return None
        plan = ToolPlan(list(tools), self.parse_tool_calls, parallel=parallel, markers=self.tool_markers,
                        start_markers=self.tool_start_markers)
        if forced(choice) and self.reasoning_tags is None:
            plan.prefill = self.tool_prefill()
            plan.constraint = {"type": "json_schema", "schema": self.forced_call_schema(tools, choice)}
        elif forced(choice):
            plan.constraint = {"type": "tool_call", "branches": [
                {"lead": lead, "schema": schema} for lead, schema in self.forced_call_branches(tools, choice)]}
        return plan

    def compile_constraint(self, constraint: dict[str, Any] | None, reasoning: ReasoningPlan | None = None) -> Any:
        """The compiled grammar of a structured-output request (cached per schema), or None. With
        a thought (``reasoning``) or a forced opener, the grammar applies from the thought's end on."""
        if constraint is None:
            return None
        try:
            from .constraints import GrammarCompiler, UnsupportedSchema
            from .reasoning_grammar import Branch, ReasoningGrammar
        except ImportError:
            raise invalid_request("Structured output is not available on this worker.", param="response_format") from None
        try:
            with self._grammar_lock:
                if self._grammars is None:
                    self._grammars = GrammarCompiler(self.tokenizer, int(self.model.config.vocab_size), self.stop_ids)
            compiler = self._grammars
            if constraint.get("type") == "tool_call":
                branches = [Branch(tuple(self.tokenizer.encode(b["lead"], add_special_tokens=False)),
                                   compiler.json_schema(b["schema"])) for b in constraint["branches"]]
            elif constraint.get("type") == "json_object":
                branches = [Branch((), compiler.json_object())]
            else:
                branches = [Branch((), compiler.json_schema(constraint.get("schema") or {}))]
        except UnsupportedSchema as e:
            raise invalid_request(f"The JSON schema uses a feature that cannot be enforced: {e}",
                                  param="response_format") from None
        if reasoning is None and len(branches) == 1 and not branches[0].lead:
            return branches[0].grammar
        tags = reasoning.tags if reasoning is not None else None
        return ReasoningGrammar(compiler, branches, thinking=bool(reasoning and reasoning.inside),
                                start_id=self._single_token(tags.start) if tags else None,
                                end_tag=tags.end if tags else "")

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt, add_special_tokens=True)

    def resolve_max_tokens(self, prompt_ids: Sequence[int], max_tokens: int | None) -> int:
        """Room left in the context; a 400 ``context_length_exceeded`` when the request cannot fit."""
        n = len(prompt_ids)
        room = self.max_context - n
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            asked = f" plus {max_tokens} output tokens" if max_tokens is not None else ""
            raise JobError(
                f"This model's maximum context length is {self.max_context} tokens; the prompt has {n} tokens{asked}. "
                "Shorten the prompt or lower max_tokens.",
                status_code=400, type="invalid_request_error", code="context_length_exceeded",
                param="max_tokens" if room > 0 else "messages")
        return max_tokens if max_tokens is not None else room

    # --- token text --------------------------------------------------------------------------

    def decode(self, ids: Sequence[int]) -> str:
        if self._hidden is None:
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode([i for i in ids if i not in self._hidden], skip_special_tokens=False)

    def describe_token(self, token_id: int) -> tuple[str, list[int]]:
        return token_text_and_bytes(self.tokenizer, token_id)

    # --- internals ---------------------------------------------------------------------------

    def _context_length(self) -> int:
        if self.options.max_context:
            return self.options.max_context
        cfg = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            if isinstance(getattr(cfg, attr, None), int):
                return getattr(cfg, attr)
        tok_max = getattr(self.tokenizer, "model_max_length", 0)
        return tok_max if 0 < tok_max < 1_000_000 else 2048

    def _stop_ids(self) -> set[int]:
        ids: set[int] = set()
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in (gen_eos, self.tokenizer.eos_token_id, self.model.config.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(v for v in value if isinstance(v, int))
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[t] for t in self.stop_tokens if t in vocab)
        return ids

    def _hidden_ids(self) -> set[int] | None:
        """The special tokens decoding drops, when some of the family's markup is special in this
        tokenizer (it must stay in the text); None: the tokenizer's own skipping is right."""
        kept = set(self.kept_tokens) | ({self.reasoning_tags.start, self.reasoning_tags.end} if self.reasoning_tags else set())
        special = {i: t.content for i, t in self.tokenizer.added_tokens_decoder.items() if t.special}
        special.update({i: self.tokenizer.convert_ids_to_tokens(i) for i in self.tokenizer.all_special_ids})
        if not kept & set(special.values()):
            return None
        return {i for i, content in special.items() if content not in kept}

    def _single_token(self, text: str) -> int | None:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None
