"""Which handler serves a model folder: by model id pattern, then by ``config.json`` family, then the
generic handler that uses the tokenizer's own chat template.

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

if TYPE_CHECKING:
    from .base import Handler


@dataclass(frozen=True)
class Family:
    name: str
    target: str  # "module:Class"
    id_patterns: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()  # empty: any model_type, if the marker tokens are there
    marker_tokens: tuple[str, ...] = ()  # one of these must be in the tokenizer for a config match


FAMILIES: tuple[Family, ...] = (
    Family("embedding", "handlers.embedding:EmbeddingHandler",
           (r"^sentence-transformers/", r"minilm", r"(^|/)(bge|gte|e5)-"),
           ("bert", "roberta", "xlm-roberta", "mpnet", "distilbert")),
    Family("llama3", "handlers.llama3:Llama3Handler", (r"llama-?3",), ("llama",), ("<|eot_id|>",)),
    Family("mistral", "handlers.mistral:MistralHandler", (r"mistral", r"mixtral"), ("mistral", "mixtral"), ("[INST]",)),
    Family("chatml", "handlers.chatml:ChatMLHandler", (r"smollm", r"qwen"), (), ("<|im_start|>",)),
)
AUTO = Family("auto", "handlers.base:ChatHandler")


def known_families() -> list[str]:
    return [f.name for f in FAMILIES] + [AUTO.name]


def family_by_name(name: str) -> Family:
    for f in (*FAMILIES, AUTO):
        if f.name == name:
            return f
    raise KeyError(f"unknown model family {name!r}; known: {', '.join(known_families())}")


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
