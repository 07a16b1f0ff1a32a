"""Which handler serves a model folder: the family the folder names in ``llmhost.json``
(``{"family": "<name>"}``), else by model id pattern, then by ``config.json`` model type and the
tokenizer's marker tokens, then the generic handler that uses the tokenizer's own chat template.

Entries are lazy ``module:Class`` strings, so adding a family is one line here plus its file, and
nothing is imported until a worker needs it.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.contract.errors import JobError

if TYPE_CHECKING:
    from .base import Handler


@dataclass(frozen=True)
class Family:
    name: str
    target: str  # "module:Class"
    id_patterns: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()  # empty: any model_type, if the marker tokens are there
    marker_tokens: tuple[str, ...] = ()  # one of these must be in the tokenizer for a config match


# In the order they are tried: the first match wins (the DeepSeek-R1 distills are Qwen and Llama
# models, so they come before both).
FAMILIES: tuple[Family, ...] = (
    Family("embedding", "handlers.embedding:EmbeddingHandler",
           (r"^sentence-transformers/", r"minilm", r"(^|/)(bge|gte|e5)-"),
           ("bert", "roberta", "xlm-roberta", "mpnet", "distilbert")),
    Family("deepseek-r1", "handlers.deepseek_r1:DeepSeekR1Handler", (r"deepseek-r1",), (), ("<｜Assistant｜>",)),
    Family("llama3", "handlers.llama3:Llama3Handler", (r"llama-?3",), ("llama",), ("<|eot_id|>",)),
    Family("mistral", "handlers.mistral:MistralHandler", (r"mistral", r"mixtral"), ("mistral", "mixtral"), ("[INST]",)),
    Family("gemma", "handlers.gemma:GemmaHandler", (r"gemma",), ("gemma", "gemma2", "gemma3", "gemma3_text"),
           ("<start_of_turn>",)),
    Family("phi4", "handlers.phi:Phi4Handler", (r"phi-?4",), ("phi3",), ("<|tool_call|>",)),
    Family("phi3", "handlers.phi:Phi3Handler", (r"phi-?3",), ("phi3",), ("<|end|>",)),
    Family("qwen3", "handlers.qwen3:Qwen3Handler", (r"qwen-?3",), ("qwen3", "qwen3_moe"), ("<|im_start|>",)),
    Family("qwen2.5", "handlers.qwen25:Qwen25Handler", (r"qwen-?2\.5",), ("qwen2",), ("<tool_call>",)),
    Family("chatml", "handlers.chatml:ChatMLHandler", (r"smollm", r"qwen"), (), ("<|im_start|>",)),
)
OVERRIDE_FILE = "llmhost.json"
AUTO = Family("auto", "handlers.base:ChatHandler")


def known_families() -> list[str]:
    return [f.name for f in FAMILIES] + [AUTO.name]


class UnknownFamily(JobError):
    """A family name that is not registered (a worker cannot load the model); the message lists
    the known ones."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=500, type="server_error", code="unknown_family")


def family_by_name(name: str) -> Family:
    for f in (*FAMILIES, AUTO):
        if f.name == name:
            return f
    raise UnknownFamily(f"unknown model family {name!r}; known: {', '.join(known_families())}")


def named_family(folder: Path) -> Family | None:
    """The family ``llmhost.json`` names (None when the folder has no such file). A file that
    cannot be read, or names no known family, raises :class:`UnknownFamily`."""
    path = folder / OVERRIDE_FILE
    if not path.is_file():
        return None
    try:
        name = json.loads(path.read_text()).get("family")
    except (OSError, ValueError, AttributeError) as e:
        raise UnknownFamily(f"{path} is not a JSON object with a `family` ({e})") from None
    if not isinstance(name, str):
        raise UnknownFamily(f"{path} must name a family as a string: {{\"family\": \"<name>\"}}; "
                            f"known: {', '.join(known_families())}")
    try:
        return family_by_name(name)
    except UnknownFamily as e:
        raise UnknownFamily(f"{path}: {e}") from None


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def special_tokens(folder: Path) -> set[str]:
    """Added/special tokens named by the folder's tokenizer files (no tokenizer is loaded)."""
    found: set[str] = set()
    for entry in _json(folder / "tokenizer_config.json").get("added_tokens_decoder", {}).values():
        found.add(entry.get("content", ""))
    for entry in _json(folder / "tokenizer.json").get("added_tokens", []):
        found.add(entry.get("content", ""))
    return found


def detect_family(model_id: str, folder: Path) -> Family:
    """Raises :class:`UnknownFamily` for an ``llmhost.json`` that names no known family."""
    if (named := named_family(folder)) is not None:
        return named
    lowered = model_id.lower()
    for fam in FAMILIES:
        if any(re.search(p, lowered) for p in fam.id_patterns):
            return fam
    model_type = _json(folder / "config.json").get("model_type", "")
    tokens = special_tokens(folder)
    for fam in FAMILIES:
        type_ok = not fam.model_types or model_type in fam.model_types
        marker_ok = not fam.marker_tokens or any(t in tokens for t in fam.marker_tokens)
        if model_type and type_ok and marker_ok:
            return fam
    return AUTO


def handler_class(family: Family) -> "type[Handler]":
    module, _, cls = family.target.partition(":")
    return getattr(importlib.import_module(module), cls)
