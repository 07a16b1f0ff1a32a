"""Structured output: constrained decoding of JSON (``response_format`` json_object / json_schema,
forced tool calls) with xgrammar.

Why xgrammar (measured with ``python -m bench.constraints``; its docstring has the table and the
noise): the lowest per-token cost of computing the allowed tokens and advancing (6 µs replayed,
~70 µs inside a real generation, against SmolLM2's ~35–40 ms per token) among the libraries with full
JSON Schema support: llguidance 25 µs, lm-format-enforcer ~0.8–1 ms; outlines-core is cheap per
token but needs 53 ms to 10 s to compile a schema. Also: 5 ms to compile a small schema, 0.15 s to
analyse the tokenizer, a single-threaded CPU kernel to apply the mask; the default
structured-output backend of vLLM and SGLang, released regularly. Costs: some keywords
compile but are silently ignored (refused below), and on Linux x86-64 it pulls in triton (~1 GB).

How it is used here:

* One :class:`GrammarCompiler` per loaded model (the tokenizer is analysed once, ~0.1–0.3 s).
  Compiled grammars are cached by ``json.dumps(schema, sort_keys=True)`` in a bounded LRU, so a
  schema is compiled once per worker.
* Compiling releases the GIL (a Python thread kept full speed during one), so compile on the request
  (Celery pool) thread, not the engine thread. Most schemas take milliseconds; string length bounds
  are the expensive part (``maxLength`` 40: ~0.35 s, 400 and more: ~2–3 s, plateauing).
* A :class:`Grammar` is immutable and shareable between threads; :meth:`Grammar.matcher` makes a
  :class:`Matcher` (a few µs) holding one sequence's parse state. A matcher is *not* thread-safe:
  use each one from one thread at a time (the engine thread).
* Stop tokens are part of the grammar: they are allowed exactly when the JSON value is complete, and
  then nothing else is (for an object root), so generation ends with ``finish_reason: "stop"`` right
  after the closing brace.
* Whitespace: JSON is generated in the compact canonical layout (``{"a": 1, "b": [2, 3]}``, the
  layout of ``json.dumps``): no free whitespace anywhere, no leading whitespace, so a model cannot
  loop on spaces or newlines.

JSON Schema coverage. xgrammar enforces ``type`` (also lists), ``properties``, ``required``,
``additionalProperties``, ``enum``, ``const``, ``anyOf``, ``oneOf`` (as ``anyOf``, hence accepted only
when its alternatives are disjoint), local ``$ref``
(``#``, ``#/$defs/...``, ``#/definitions/...``, recursive), ``items``, ``prefixItems``,
``minItems``/``maxItems``, ``minLength``/``maxLength``, ``pattern``, ``minimum``/``maximum`` and the
exclusive forms, ``minProperties``/``maxProperties``, ``propertyNames``, ``patternProperties``,
integer ``multipleOf`` and the string formats in :data:`SUPPORTED_FORMATS`. Probing each keyword with
valid and invalid instances showed that some keywords compile but are *silently ignored*; those are
refused with :class:`UnsupportedSchema` (a ``ValueError`` naming the keyword) instead of producing
output that may not validate: ``not``, ``if``/``then``/``else``, ``dependentSchemas``,
``dependentRequired``, ``dependencies``, ``uniqueItems: true``, ``contains``/``minContains``/
``maxContains``, ``unevaluatedProperties``/``unevaluatedItems``, ``$dynamicRef``/``$recursiveRef``,
non-local ``$ref`` (URLs, ``#anchor``), ``allOf`` with several subschemas, ``multipleOf`` on
non-integers or next to a range, ``format`` values outside :data:`SUPPORTED_FORMATS`, ``pattern`` or
``format`` next to ``minLength``/``maxLength``, regexes with look-around,
``required`` names missing from ``properties``, ``$ref``/``anyOf``/``oneOf``/``allOf`` next to other
validation keywords in the same schema (xgrammar drops one side), ``oneOf`` alternatives that may
overlap (it is enforced as ``anyOf``), and a ``patternProperties`` regex that matches a declared
property. Schemas xgrammar itself rejects (draft-4 boolean ``exclusiveMinimum``, array-form
``items``, empty ``enum``, contradictions) raise :class:`UnsupportedSchema` with its message.

Where the output is deliberately narrower than the schema (always still valid): ``pattern``,
``patternProperties`` and ``propertyNames`` regexes must match the whole string (as if anchored);
an object that declares ``properties`` but says nothing about ``additionalProperties`` gets no extra
keys (as in OpenAI's strict mode, so a small model cannot wander off inventing keys; say
``"additionalProperties": true`` to allow them); ``enum``/``const`` object values are generated in
compact layout only.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any, Iterable

import torch

try:
    import xgrammar as xgr
except ImportError as e:  # pragma: no cover - the worker extra installs it
    raise ImportError("handlers.constraints needs xgrammar (pip install 'llm-host[worker]')") from e

__all__ = ["UnsupportedSchema", "GrammarCompiler", "Grammar", "Matcher", "mask_batch", "SUPPORTED_FORMATS"]

# ``format`` values that xgrammar turns into a grammar (checked by probing invalid instances).
SUPPORTED_FORMATS = frozenset({
    "date-time", "date", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uri", "uri-reference",
    "uuid", "uri-template", "json-pointer", "relative-json-pointer",
})

# Keywords that compile but are not enforced: refused wherever they appear.
_REFUSED = {
    "not": "`not` is not supported",
    "if": "`if`/`then`/`else` is not supported",
    "then": "`if`/`then`/`else` is not supported",
    "else": "`if`/`then`/`else` is not supported",
    "dependentSchemas": "`dependentSchemas` is not supported",
    "dependentRequired": "`dependentRequired` is not supported",
    "dependencies": "`dependencies` is not supported",
    "contains": "`contains` is not supported",
    "minContains": "`minContains` is not supported",
    "maxContains": "`maxContains` is not supported",
    "unevaluatedProperties": "`unevaluatedProperties` is not supported; use `additionalProperties`",
    "unevaluatedItems": "`unevaluatedItems` is not supported; use `items`",
    "$dynamicRef": "`$dynamicRef` is not supported",
    "$recursiveRef": "`$recursiveRef` is not supported",
    "additionalItems": "`additionalItems` is not supported; use `prefixItems` and `items`",
}
# Validation / applicator keywords: anything else in a schema is an annotation or unknown, and
# validators ignore those too.
_CONSTRAINTS = frozenset({
    "type", "enum", "const", "properties", "required", "additionalProperties", "patternProperties",
    "propertyNames", "minProperties", "maxProperties", "items", "prefixItems", "minItems", "maxItems",
    "uniqueItems", "minLength", "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "anyOf", "oneOf", "allOf", "$ref", *_REFUSED,
})
_COMBINATORS = ("$ref", "anyOf", "oneOf", "allOf")
_LOOKAROUND = re.compile(r"\(\?<?[=!]")

# Bounds on what one worker keeps.
_CACHE_SIZE = 256


class UnsupportedSchema(ValueError):
    """The schema uses a feature that cannot be enforced; the message names it."""


# --- compiling ------------------------------------------------------------------------------------


class GrammarCompiler:
    """Compiles JSON grammars for one tokenizer; thread-safe (compile from request threads, so the
    engine thread never waits for a compile)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: set[int], *, max_threads: int = 1,
                 cache_size: int = _CACHE_SIZE) -> None:
        """``vocab_size``: the model's logits width, which may exceed ``len(tokenizer)`` (padded
        embedding tables); ids past the tokenizer are never allowed. ``stop_ids``: the tokens that
        end a turn; they are allowed exactly when the JSON is complete. ``max_threads``: threads a
        compile may use (1 keeps it off the cores the model decodes on)."""
        self.vocab_size = int(vocab_size)
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        if not self.stop_ids:
            raise ValueError("constrained decoding needs at least one stop token id")
        self._info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size,
                                                        stop_token_ids=sorted(self.stop_ids))
        self._compiler = xgr.GrammarCompiler(self._info, max_threads=max_threads, cache_enabled=False)
        self._cache: OrderedDict[str, Grammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        # Our JSON is compact (no free whitespace), so a raw byte below 0x20 is never valid anywhere
        # in it (inside strings it must be escaped), yet xgrammar's string rule lets such bytes
        # through: those tokens are banned outright for constrained rows.
        self.control_ids = torch.tensor(
            [i for i, raw in enumerate(self._info.decoded_vocab)
             if i not in self.stop_ids and any(b < 0x20 for b in raw)], dtype=torch.long)
        # The bitmask that allows only the stop tokens: a matcher whose mask equals it is done.
        only_stop = xgr.allocate_token_bitmask(1, self.vocab_size)
        only_stop.zero_()
        for i in self.stop_ids:
            only_stop[0, i // 32] |= _bit(i % 32)
        self._only_stop = only_stop[0]

    def ban_controls(self, logits: torch.Tensor, rows: list[int] | None = None) -> None:
        """Set the logits of raw control-byte tokens to ``-inf`` in place: in a 1-D row, or in rows
        ``rows`` of [rows, vocab] logits."""
        if not len(self.control_ids):
            return
        ids = self.control_ids.to(logits.device)
        if rows is None:
            logits[..., ids] = float("-inf")
        else:
            logits[torch.tensor(rows, device=logits.device)[:, None], ids[None, :]] = float("-inf")

    def json_object(self) -> "Grammar":
        """Any JSON object (``response_format: {"type": "json_object"}``)."""
        return self._cached("json_object", lambda: {"type": "object"})

    def json_schema(self, schema: dict) -> "Grammar":
        """A JSON value valid for ``schema``; :class:`UnsupportedSchema` if it cannot be enforced."""
        if schema is True or schema == {}:
            schema = {}
        elif not isinstance(schema, dict):
            raise UnsupportedSchema("the schema must be a JSON object" if schema is not False
                                    else "the schema `false` accepts no value")
        try:
            key = json.dumps(schema, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise UnsupportedSchema(f"the schema is not JSON: {e}") from None
        return self._cached(key, lambda: _prepare(schema))

    def token_bytes(self) -> list[bytes]:
        """Each token's exact bytes, by id (added and special tokens as their text)."""
        return list(self._info.decoded_vocab)

    def _cached(self, key: str, prepare) -> "Grammar":
        with self._lock:
            grammar = self._cache.get(key)
            if grammar is not None:
                self._cache.move_to_end(key)
                return grammar
        schema = prepare()  # raises UnsupportedSchema before any compiling
        try:
            compiled = self._compiler.compile_json_schema(
                json.dumps(schema), any_whitespace=False, strict_mode=False)
        except Exception as e:  # noqa: BLE001 - xgrammar reports schema errors as RuntimeError
            raise UnsupportedSchema(f"the schema cannot be enforced: {_xgr_message(e)}") from None
        grammar = Grammar(compiled, self)
        with self._lock:
            self._cache[key] = grammar
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return grammar


def _bit(i: int) -> int:
    """Bit ``i`` of an int32 word, as a Python int that fits int32 (bit 31 is the sign)."""
    return -(1 << 31) if i == 31 else 1 << i


def _xgr_message(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # "[22:33:06] /project/cpp/json_schema_converter.cc:4944: minItems is greater ..." → the reason
    return re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", text)


class Grammar:
    """A compiled grammar: immutable, shared by every sequence that uses the same schema."""

    __slots__ = ("compiled", "_owner")

    def __init__(self, compiled, owner: GrammarCompiler) -> None:
        self.compiled = compiled
        self._owner = owner

    def matcher(self) -> "Matcher":
        return Matcher(xgr.GrammarMatcher(self.compiled), self._owner)


class Matcher:
    """One sequence's position in a grammar. Not thread-safe; cheap to create."""

    __slots__ = ("_m", "_owner", "_bitmask", "_done")
    bans_controls = True  # raw control-byte tokens are never valid in our compact JSON

    def __init__(self, matcher, owner: GrammarCompiler) -> None:
        self._m = matcher
        self._owner = owner
        self._bitmask = xgr.allocate_token_bitmask(1, owner.vocab_size)
        self._done: bool | None = None  # cached for the current state

    def mask_logits(self, logits: torch.Tensor) -> None:
        """Set the logits of the tokens the grammar does not allow next to ``-inf``, in place.
        ``logits``: a 1-D row over the vocabulary, any float dtype, on any device. After a stop token
        was accepted, only stop tokens stay allowed."""
        self._fill(self._bitmask, 0)
        _apply(logits.unsqueeze(0), self._bitmask, self._owner.vocab_size, None)
        self._owner.ban_controls(logits)

    def _fill(self, bitmask: torch.Tensor, row: int) -> None:
        if self._m.is_terminated():  # xgrammar refuses to compute a mask then
            bitmask[row].copy_(self._owner._only_stop)
        else:
            self._m.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> None:
        """Advance by one sampled token; ``ValueError`` if the grammar does not allow it here."""
        if self._m.is_terminated() and int(token_id) in self._owner.stop_ids:
            return  # more stop tokens after the end (a row kept running): nothing to advance
        if not self._m.accept_token(int(token_id)):
            raise ValueError(f"token {token_id} is not allowed by the grammar at this point")
        self._done = None

    @property
    def done(self) -> bool:
        """The JSON value is complete: only a stop token may follow (or one was accepted)."""
        if self._done is None:
            if self._m.is_terminated():
                self._done = True
            elif not self._m.is_completed():
                self._done = False
            else:  # complete, but a number root could still grow: done only if nothing else fits
                self._m.fill_next_token_bitmask(self._bitmask)
                self._done = bool(torch.equal(self._bitmask[0], self._owner._only_stop))
        return self._done


def mask_batch(logits: torch.Tensor, matchers: list[Matcher | None]) -> None:
    """Mask a batch: ``logits`` is [rows, vocab], ``matchers[i]`` constrains row ``i``; rows with
    ``None`` are left untouched. The rows' masks go into one bitmask applied by one kernel call:
    from 8 rows on, cheaper than ``mask_logits`` row by row (measured on 2 busy cores: 8 rows
    1.2 ms vs 1.9 ms, 32 rows 8.7 ms vs 10.2 ms). xgrammar's ``BatchGrammarMatcher`` (mask filling
    on a thread pool) was no faster than this loop on 2 cores, so it is not used."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    owner = matchers[rows[0]]._owner  # type: ignore[union-attr]
    bitmask = xgr.allocate_token_bitmask(len(matchers), owner.vocab_size)
    for i in rows:
        matchers[i]._fill(bitmask, i)  # type: ignore[union-attr]
    _apply(logits, bitmask, owner.vocab_size, rows if len(rows) < len(matchers) else None)
    # As mask_logits does: the same tokens allowed either way (a matcher still before its grammar,
    # reasoning_grammar.py's in a thought, allows them).
    if banned := [i for i in rows if matchers[i].bans_controls]:  # type: ignore[union-attr]
        owner.ban_controls(logits, banned)


def _apply(logits: torch.Tensor, bitmask: torch.Tensor, vocab_size: int, rows: list[int] | None) -> None:
    """Apply a CPU bitmask to [rows, width] logits on their device; ids ≥ ``vocab_size`` (a logits
    row wider than the compiler was told) are masked too."""
    width = logits.shape[-1]
    if width > vocab_size:
        if rows is None:
            logits[:, vocab_size:] = float("-inf")
        else:
            logits[rows, vocab_size:] = float("-inf")
    if logits.device.type != "cpu":
        bitmask = bitmask.to(logits.device, non_blocking=True)
    elif logits.stride(-1) != 1 or logits.dtype not in _CPU_DTYPES:  # the CPU kernel's limits
        work = logits.to(torch.float32, copy=True).contiguous()
        xgr.apply_token_bitmask_inplace(work, bitmask, vocab_size=min(width, vocab_size), indices=rows)
        logits.copy_(work)
        return
    xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=min(width, vocab_size), indices=rows)


_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --- which schemas can be enforced --------------------------------------------------------------------


def _prepare(schema: dict) -> dict:
    """Check ``schema`` for features xgrammar would ignore (raise :class:`UnsupportedSchema`) and
    return the schema to compile: a copy where objects that declare ``properties`` and say nothing
    about extra keys get ``additionalProperties: false``."""
    _Checker(schema).check(schema, "#")
    return _close_objects(schema)


class _Checker:
    def __init__(self, root: dict) -> None:
        self.root = root

    def fail(self, where: str, message: str) -> None:
        raise UnsupportedSchema(message + ("" if where == "#" else f" (at `{where}`)"))

    def check(self, schema: Any, where: str) -> None:
        if isinstance(schema, bool):
            return
        if not isinstance(schema, dict):
            self.fail(where, "a subschema must be an object or a boolean")
        for key in schema:
            if key in _REFUSED:
                self.fail(where, _REFUSED[key])
        if schema.get("uniqueItems") is True:
            self.fail(where, "`uniqueItems` is not supported")
        self._check_ref(schema, where)
        self._check_combinators(schema, where)
        self._check_format(schema, where)
        self._check_numbers(schema, where)
        self._check_objects(schema, where)
        self._check_arrays(schema, where)
        for sub, path in _subschemas(schema, where):
            self.check(sub, path)

    def _check_ref(self, schema: dict, where: str) -> None:
        ref = schema.get("$ref")
        if ref is None:
            return
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            self.fail(where, f"`$ref` to `{ref}` is not supported: only local references such as `#/$defs/Name`")
        self.resolve(ref, where)

    def resolve(self, ref: str, where: str) -> Any:
        node: Any = self.root
        for part in ref[2:].split("/") if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                self.fail(where, f"`$ref` `{ref}` does not resolve")
        return node

    def _check_combinators(self, schema: dict, where: str) -> None:
        present = [k for k in _COMBINATORS if k in schema]
        if not present:
            return
        others = sorted(k for k in schema if k in _CONSTRAINTS and k != present[0])
        if others:
            self.fail(where, f"`{present[0]}` together with `{'`, `'.join(others)}` in the same schema is not "
                             "supported; put those keywords inside each alternative or the referenced schema")
        for k in ("anyOf", "oneOf", "allOf"):
            if k in schema and (not isinstance(schema[k], list) or not schema[k]):
                self.fail(where, f"`{k}` must be a non-empty array")
        if "allOf" in schema and len(schema["allOf"]) > 1:
            self.fail(where, "`allOf` with more than one subschema is not supported; merge them into one schema")
        if "oneOf" in schema and len(schema["oneOf"]) > 1 and not self._disjoint(schema["oneOf"], where):
            self.fail(where, "`oneOf` whose alternatives may overlap is not supported (it would be enforced as "
                             "`anyOf`); use `anyOf`, or make the alternatives differ by type or by a `const` "
                             "discriminator property")

    def _check_format(self, schema: dict, where: str) -> None:
        fmt = schema.get("format")
        if fmt is not None and fmt not in SUPPORTED_FORMATS:
            supported = ", ".join(sorted(SUPPORTED_FORMATS))
            self.fail(where, f"`format: {fmt}` is not supported (supported formats: {supported})")
        lengths = sorted(k for k in ("minLength", "maxLength") if k in schema)
        for k in ("pattern", "format"):
            if k in schema and lengths:
                self.fail(where, f"`{k}` together with `{'`, `'.join(lengths)}` is not supported")
        for pattern, path in ((schema.get("pattern"), "pattern"), *((p, "patternProperties")
                                                                   for p in schema.get("patternProperties") or {})):
            if pattern is None:
                continue
            if not isinstance(pattern, str):
                self.fail(where, f"`{path}` must be a string")
            if _LOOKAROUND.search(pattern):
                self.fail(where, f"look-around in `{path}` regex `{pattern}` is not supported")
            try:
                re.compile(pattern)
            except re.error as e:
                self.fail(where, f"`{path}` regex `{pattern}` is invalid: {e}")

    def _check_numbers(self, schema: dict, where: str) -> None:
        if "multipleOf" in schema:
            m = schema["multipleOf"]
            integral = isinstance(m, int) or (isinstance(m, float) and m.is_integer())
            if schema.get("type") != "integer" or not integral or isinstance(m, bool) or m <= 0:
                self.fail(where, "`multipleOf` is only supported with `type: integer` and a positive integer divisor")
            bounds = sorted(k for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in schema)
            if bounds:
                self.fail(where, f"`multipleOf` together with `{'`, `'.join(bounds)}` is not supported")
        for k in ("exclusiveMinimum", "exclusiveMaximum"):
            if isinstance(schema.get(k), bool):
                self.fail(where, f"boolean `{k}` (draft 4) is not supported; give the bound as a number")

    def _check_objects(self, schema: dict, where: str) -> None:
        props = schema.get("properties") or {}
        if not isinstance(props, dict):
            self.fail(where, "`properties` must be an object")
        for name in schema.get("required") or []:
            if name not in props:
                self.fail(where, f"`required` names `{name}`, which is not declared in `properties`")
        patterns = schema.get("patternProperties") or {}
        for name in props:
            for pattern in patterns:
                if re.search(pattern, name):
                    self.fail(where, f"property `{name}` also matches `patternProperties` regex `{pattern}`: "
                                     "not supported")

    def _check_arrays(self, schema: dict, where: str) -> None:
        if isinstance(schema.get("items"), list):
            self.fail(where, "`items` as an array (draft 7 tuples) is not supported; use `prefixItems`")

    # oneOf is enforced as anyOf: fine when no value can match two alternatives.
    def _disjoint(self, options: list, where: str) -> bool:
        resolved = [self._deref(o, where) for o in options]
        kinds = [_kinds(o) for o in resolved]
        known = [k for k in kinds if k is not None]
        if len(known) == len(kinds) and all(
                not _overlap(known[i], known[j]) for i in range(len(known)) for j in range(i + 1, len(known))):
            return True
        return self._discriminated(resolved, where)

    def _deref(self, schema: Any, where: str, depth: int = 0) -> Any:
        while isinstance(schema, dict) and "$ref" in schema and depth < 32:
            self._check_ref(schema, where)
            schema = self.resolve(schema["$ref"], where)
            depth += 1
        return schema

    def _discriminated(self, options: list, where: str) -> bool:
        """Objects that all require one property whose ``const``/``enum`` values never coincide."""
        if not all(isinstance(o, dict) and o.get("type", "object") == "object" for o in options):
            return False
        common = set.intersection(*(set(o.get("required") or []) for o in options))
        for name in sorted(common):
            seen: set[str] = set()
            ok = True
            for o in options:
                prop = self._deref((o.get("properties") or {}).get(name), where)
                values = _values(prop)
                if values is None or seen & values:
                    ok = False
                    break
                seen |= values
            if ok:
                return True
        return False


def _subschemas(schema: dict, where: str) -> Iterable[tuple[Any, str]]:
    for key in ("properties", "patternProperties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            yield sub, f"{where}/{key}/{name}"
    for key in ("additionalProperties", "propertyNames", "items"):
        if isinstance(schema.get(key), (dict, bool)):
            yield schema[key], f"{where}/{key}"
    for key in ("prefixItems", "anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(key) or []):
            yield sub, f"{where}/{key}/{i}"


_JSON_KINDS = {"string", "number", "integer", "boolean", "null", "array", "object"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _kinds(schema: Any) -> set[str] | None:
    """The JSON types a schema can match, or None when it cannot be told cheaply."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return {_kind(schema["const"])}
    if "enum" in schema and isinstance(schema["enum"], list):
        return {_kind(v) for v in schema["enum"]}
    t = schema.get("type")
    if isinstance(t, str) and t in _JSON_KINDS:
        return {t}
    if isinstance(t, list) and t and all(x in _JSON_KINDS for x in t):
        return set(t)
    return None


def _overlap(a: set[str], b: set[str]) -> bool:
    numeric = {"integer", "number"}
    return bool(a & b) or bool(a & numeric and b & numeric)


def _values(schema: Any) -> set[str] | None:
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return {json.dumps(schema["const"], sort_keys=True)}
    if isinstance(schema.get("enum"), list):
        return {json.dumps(v, sort_keys=True) for v in schema["enum"]}
    return None


def _close_objects(schema: Any) -> Any:
    """Copy of ``schema`` where every object schema that declares ``properties`` and none of
    ``additionalProperties``/``patternProperties``/``minProperties`` gets ``additionalProperties: false``."""
    if isinstance(schema, list):
        return [_close_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: _close_objects(sub) for name, sub in value.items()}
        elif key in ("additionalProperties", "propertyNames", "items", "prefixItems", "anyOf", "oneOf", "allOf"):
            out[key] = _close_objects(value)
        else:
            out[key] = value  # enum/const/default values are data, not schemas
    if ("properties" in out and not {"additionalProperties", "patternProperties", "minProperties"} & out.keys()):
        out["additionalProperties"] = False  # type: ignore[assignment]  # a schema value, like the others
    return out
