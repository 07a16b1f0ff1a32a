"""The generic model side: a handler loads one model folder and runs requests against it.

:class:`ChatHandler` is complete for any causal LM whose tokenizer carries a chat template; a model
family (``handlers/chatml.py``, ``llama3.py``, …) subclasses it only for what differs: a built-in
template for folders that lack one, extra stop tokens, message rules. The worker talks to handlers
in token ids and native types; JSON and HTTP stay in the front.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from tasks.contract.errors import JobError, invalid_request
from tasks.contract.payloads import LoadOptions, Message, ToolCall

from .loading import load_causal_lm
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

    model: Any
    tokenizer: Any

    def load(self) -> None:
        self.model, self.tokenizer, placement = load_causal_lm(self.folder, self.options)
        self.device, self.dtype = placement.device, placement.dtype
        self.max_context = self._context_length()
        self.stop_ids = self._stop_ids()
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

    def builtin_template(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None) -> str | None:
        """The family's own prompt format, used when the model folder carries no chat template, or
        one that knows nothing of tools while the request has tools, tool calls or tool results."""
        return None

    def render_chat(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None) -> str:
        self.validate_messages(messages)
        template = getattr(self.tokenizer, "chat_template", None)
        with_tools = uses_tools(messages, tools)
        if template and (not with_tools or "tools" in str(template)):
            try:
                return self.tokenizer.apply_chat_template(
                    [hf_message(m) for m in messages], tokenize=False, add_generation_prompt=True,
                    **({"tools": hf_tools(tools)} if tools else {}))
            except Exception as e:  # noqa: BLE001 - template raise_exception() and friends
                raise invalid_request(f"The model's chat template refused these messages: {e}", param="messages") from None
        text = self.builtin_template(messages, tools) if with_tools else self.builtin_template(messages)
        if text is None:
            if with_tools:
                raise invalid_request(f"The model `{self.model_id}` has no tool-calling format (its chat template "
                                      "takes no tools).", param="tools" if tools else "messages")
            raise invalid_request(
                f"The model `{self.model_id}` has no chat template; use /v1/completions with a raw prompt.",
                param="messages")
        return text

    def encode_chat(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                    prefill: str = "") -> list[int]:
        # The rendered text already holds any BOS the template wants: adding special tokens here
        # again is the classic doubled-BOS bug. ``prefill`` starts the assistant's answer (a forced call).
        return self.tokenizer.encode(self.render_chat(messages, tools) + prefill, add_special_tokens=False)

    # --- tool calling ------------------------------------------------------------------------------

    def new_tool_call_id(self) -> str:
        return openai_call_id()

    def tool_prefill(self) -> str:
        """What the assistant's answer starts with when a call is forced (the family's call opener)."""
        return "<tool_call>\n"

    def forced_call_schema(self, tools: Sequence[dict[str, Any]], choice: str | dict[str, Any]) -> dict[str, Any]:
        """The JSON schema of what follows :meth:`tool_prefill` in a forced call."""
        return forced_schema(tools, choice, self.tool_args_key)

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
        if forced(choice):
            plan.prefill = self.tool_prefill()
            plan.constraint = {"type": "json_schema", "schema": self.forced_call_schema(tools, choice)}
        return plan

    def compile_constraint(self, constraint: dict[str, Any] | None) -> Any:
        """The compiled grammar of a structured-output request (cached per schema), or None."""
        if constraint is None:
            return None
        try:
            from .constraints import GrammarCompiler, UnsupportedSchema
        except ImportError:
            raise invalid_request("Structured output is not available on this worker.", param="response_format") from None
        try:
            with self._grammar_lock:
                if self._grammars is None:
                    self._grammars = GrammarCompiler(self.tokenizer, int(self.model.config.vocab_size), self.stop_ids)
                if constraint.get("type") == "json_object":
                    return self._grammars.json_object()
                return self._grammars.json_schema(constraint.get("schema") or {})
        except UnsupportedSchema as e:
            raise invalid_request(f"The JSON schema uses a feature that cannot be enforced: {e}",
                                  param="response_format") from None

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
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def describe_token(self, token_id: int) -> tuple[str, list[int]]:
        """A token's text and its exact bytes. A token holding part of a UTF-8 character decodes
        to U+FFFD; its true bytes come from the vocabulary piece (byte-level BPE or <0xNN>)."""
        text = self.tokenizer.decode([token_id])
        if "\ufffd" not in text:
            return text, list(text.encode("utf-8"))
        piece = self.tokenizer.convert_ids_to_tokens(token_id) or ""
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            return text, [int(piece[3:5], 16)]
        table = _byte_decoder()
        if piece and all(ch in table for ch in piece):
            return text, [table[ch] for ch in piece]
        return text, list(text.encode("utf-8"))

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


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte → printable-character table used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}

