"""Anthropic content blocks, tools and ``tool_choice`` checked and turned into the job's terms.

A conversation becomes the job's messages: ``system`` (a string or text blocks) the system message;
a turn's text blocks joined with newlines; an assistant turn's ``tool_use`` blocks its ``tool_calls``
(``input`` as a JSON string); each ``tool_result`` block of a user turn a ``tool`` message, in the
order the blocks come. ``thinking`` blocks in the history are dropped (the families drop earlier thoughts too).
Anything else (images, documents, server tools) is a 400 that names the block.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict

from tasks.contract.errors import invalid_request
from tasks.contract.payloads import Message, ToolCall

from .tools import TOOL_NAME, FunctionSpec, NamedChoice, ToolChoice

IGNORED_BLOCKS = frozenset({"thinking", "redacted_thinking"})


class Block(BaseModel):
    """One content block, loosely typed: what it must hold depends on its ``type`` (checked below,
    so that the error names the block rather than a pydantic union branch)."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: Optional[str] = None
    id: Optional[str] = None
    name: Optional[str] = None
    input: Optional[Any] = None
    tool_use_id: Optional[str] = None
    content: Optional[Union[str, list[Any]]] = None
    is_error: Optional[bool] = None


class Turn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant"]
    content: Union[str, list[Block]]


def _unsupported(block_type: str, param: str, where: str = "") -> Exception:
    return invalid_request(f"`{block_type}` content blocks are not supported{where}; {param} is one "
                           "(this server takes text, tool_use and tool_result blocks).", param=param)


def _text(block: Block, param: str) -> str:
    if block.text is None:
        raise invalid_request(f"{param} is a text block without `text`.", param=f"{param}.text")
    return block.text


def join_text(blocks: list[Any], param: str) -> str:
    """Text blocks (parsed, or plain dicts as in a tool_result) joined with newlines; any other
    block is a 400 naming it."""
    texts = []
    for j, raw in enumerate(blocks):
        where = f"{param}[{j}]"
        if isinstance(raw, dict) and isinstance(raw.get("type"), str):
            raw = Block(type=raw["type"], text=raw["text"] if isinstance(raw.get("text"), str) else None)
        if not isinstance(raw, Block):
            raise invalid_request(f"{where} must be a content block with a `type`.", param=where)
        if raw.type != "text":
            raise _unsupported(raw.type, where, " here")
        texts.append(_text(raw, where))
    return "\n".join(texts)


def system_message(system: Union[str, list[Block], None]) -> list[Message]:
    text = system if isinstance(system, str) or system is None else join_text(list(system), "system")
    return [Message(role="system", content=text)] if text else []


def _tool_result(block: Block, param: str) -> Message:
    if not block.tool_use_id:
        raise invalid_request(f"{param} is a tool_result block without `tool_use_id`.", param=f"{param}.tool_use_id")
    content = block.content
    text = content if isinstance(content, str) else join_text(content, f"{param}.content") if content else ""
    if block.is_error:  # the job's tool messages have no error flag: the model reads it in the text
        text = f"Error: {text}"
    return Message(role="tool", content=text, tool_call_id=block.tool_use_id)


def _user_turn(blocks: list[Block], param: str) -> list[Message]:
    out: list[Message] = []
    texts: list[str] = []
    for j, block in enumerate(blocks):
        where = f"{param}.content[{j}]"
        if block.type == "text":
            texts.append(_text(block, where))
            continue
        if block.type != "tool_result":
            raise _unsupported(block.type, where, " in user turns" if block.type == "tool_use" else "")
        if texts:
            out.append(Message(role="user", content="\n".join(texts)))
            texts = []
        out.append(_tool_result(block, where))
    if texts or not out:
        out.append(Message(role="user", content="\n".join(texts)))
    return out


def _tool_use(block: Block, param: str) -> ToolCall:
    if not block.id or not block.name or not isinstance(block.input, dict):
        raise invalid_request(f"{param} is a tool_use block: it needs `id`, `name` and an object `input`.",
                              param=param)
    return ToolCall(id=block.id, name=block.name, arguments=json.dumps(block.input, ensure_ascii=False))


def _assistant_turn(blocks: list[Block], param: str) -> Message:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(blocks):
        where = f"{param}.content[{j}]"
        if block.type == "text":
            texts.append(_text(block, where))
        elif block.type == "tool_use":
            calls.append(_tool_use(block, where))
        elif block.type not in IGNORED_BLOCKS:
            raise _unsupported(block.type, where, " in assistant turns" if block.type == "tool_result" else "")
    return Message(role="assistant", content="\n".join(texts), tool_calls=calls or None)


def conversation(system: Union[str, list[Block], None], turns: list[Turn]) -> list[Message]:
    """The job's messages for a request's ``system`` and ``messages``."""
    if turns and turns[-1].role == "assistant":
        last = f"messages[{len(turns) - 1}]"
        raise invalid_request(f"{last} is a final `assistant` turn (a prefill for the answer to continue), which is "
                              "not supported; end `messages` with a `user` turn.", param=last)
    out = system_message(system)
    for i, turn in enumerate(turns):
        param = f"messages[{i}]"
        if isinstance(turn.content, str):
            out.append(Message(role=turn.role, content=turn.content))
        elif turn.role == "user":
            out.extend(_user_turn(turn.content, param))
        else:
            out.append(_assistant_turn(turn.content, param))
    return out


def parse_tools(tools: Optional[list[Any]]) -> Optional[list[FunctionSpec]]:
    """Client tools (``name``, ``description``, ``input_schema``) as the job's function specs."""
    if not tools:
        return None
    specs: list[FunctionSpec] = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid_request(f"`{param}` must be an object.", param=param)
        if tool.get("type") not in (None, "custom"):
            raise invalid_request(f"`{param}.type` is `{tool.get('type')}`, a server tool, which this server does "
                                  "not run; declare client tools with `name`, `description` and `input_schema`.",
                                  param=f"{param}.type")
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise invalid_request(f"`{param}.name` must match ^[A-Za-z0-9_-]{{1,64}}$; got {name!r}.",
                                  param=f"{param}.name")
        if any(s.name == name for s in specs):
            raise invalid_request(f"`{param}.name` {name!r} is declared twice.", param=f"{param}.name")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise invalid_request(f"`{param}.input_schema` must be a JSON schema object.", param=f"{param}.input_schema")
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise invalid_request(f"`{param}.description` must be a string.", param=f"{param}.description")
        specs.append(FunctionSpec(name=name, description=description or None, parameters=schema))
    return specs


CHOICES: dict[str, ToolChoice] = {"auto": "auto", "any": "required", "none": "none"}


def parse_tool_choice(choice: Optional[Any], specs: Optional[list[FunctionSpec]]) -> tuple[ToolChoice, bool]:
    """(the job's ``tool_choice``, whether parallel calls are allowed): ``any`` is forced as
    ``required`` is, ``tool`` as a named function is."""
    if choice is None:
        return ("auto" if specs else "none"), True
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in (*CHOICES, "tool"):
        raise invalid_request('`tool_choice.type` must be "auto", "any", "tool" or "none".', param="tool_choice.type")
    assert isinstance(choice, dict)
    disable = choice.get("disable_parallel_tool_use", False)
    if not isinstance(disable, bool):
        raise invalid_request("`tool_choice.disable_parallel_tool_use` must be a boolean.",
                              param="tool_choice.disable_parallel_tool_use")
    if kind in ("any", "tool") and not specs:
        raise invalid_request(f'`tool_choice: {{"type": "{kind}"}}` needs `tools`.', param="tool_choice")
    if kind != "tool":
        return CHOICES[kind], not disable
    name = choice.get("name")
    if not isinstance(name, str) or not any(s.name == name for s in specs or ()):
        raise invalid_request(f"`tool_choice.name` must name one of `tools`; got {name!r}.", param="tool_choice.name")
    return NamedChoice(name=name), not disable
