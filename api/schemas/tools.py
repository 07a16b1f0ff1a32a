"""Tool calling on the wire: ``tools`` and ``tool_choice`` checked and typed once.

The worker reads the job's ``tools`` as function specs and ``tool_choice`` normalised to
``"none" | "auto" | "required" | {"name": fn}``; these types are that, and say so in ``payload()``.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel

from tasks.contract.errors import invalid_request

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class FunctionSpec(BaseModel):
    """One declared function."""

    name: str
    description: Optional[str] = None
    parameters: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class NamedChoice(BaseModel):
    """``tool_choice`` naming one declared function: the model must call it."""

    name: str

    def payload(self) -> dict[str, Any]:
        return {"name": self.name}


ToolChoice = Union[Literal["none", "auto", "required"], NamedChoice]


def forces_a_call(choice: ToolChoice) -> bool:
    return isinstance(choice, NamedChoice) or choice == "required"


def parse_tools(tools: Optional[list[Any]]) -> Optional[list[FunctionSpec]]:
    """``tools`` (OpenAI's ``{"type": "function", "function": {...}}``) as function specs; a 400
    naming the first bad field otherwise."""
    if not tools:
        return None
    specs: list[FunctionSpec] = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise invalid_request(f'`{param}.type` must be "function".', param=f"{param}.type")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise invalid_request(f"`{param}.function` must be an object.", param=f"{param}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise invalid_request(f"`{param}.function.name` must match ^[A-Za-z0-9_-]{{1,64}}$; got {name!r}.",
                                  param=f"{param}.function.name")
        if any(s.name == name for s in specs):
            raise invalid_request(f"`{param}.function.name` {name!r} is declared twice.",
                                  param=f"{param}.function.name")
        parameters = fn.get("parameters", EMPTY_PARAMETERS)
        if not isinstance(parameters, dict):
            raise invalid_request(f"`{param}.function.parameters` must be a JSON schema object.",
                                  param=f"{param}.function.parameters")
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise invalid_request(f"`{param}.function.description` must be a string.",
                                  param=f"{param}.function.description")
        specs.append(FunctionSpec(name=name, description=description or None, parameters=parameters))
    return specs


def parse_tool_choice(choice: Any, specs: Optional[list[FunctionSpec]]) -> ToolChoice:
    """The wire's ``tool_choice`` normalised; a 400 when it is malformed or names no declared tool."""
    if choice is None:
        return "auto" if specs else "none"
    if isinstance(choice, str):
        if choice == "none":
            return "none"
        if choice == "auto":
            return "auto"
        if choice != "required":
            raise invalid_request(f'`tool_choice` must be "none", "auto", "required" or a function; got {choice!r}.',
                                  param="tool_choice")
        if not specs:
            raise invalid_request('`tool_choice: "required"` needs `tools`.', param="tool_choice")
        return "required"
    fn = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise invalid_request('`tool_choice` must be {"type": "function", "function": {"name": ...}}.',
                              param="tool_choice")
    if not any(s.name == fn["name"] for s in specs or ()):
        raise invalid_request(f"`tool_choice` names the function {fn['name']!r}, which is not in `tools`.",
                              param="tool_choice")
    return NamedChoice(name=fn["name"])
