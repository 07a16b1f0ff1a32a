"""Constrained decoding (handlers/constraints.py) in-process on the real SmolLM2-135M: whatever the
model would rather say, the decoded text is JSON valid for the schema, and generation ends on a stop
token right after it."""

from __future__ import annotations

import json
import re
import time

import jsonschema
import pytest
import torch

from handlers.constraints import GrammarCompiler, UnsupportedSchema, mask_batch
from tasks.contract.payloads import Message
from tests.conftest import SMOL
from tests.test_families import load

pytestmark = pytest.mark.slow

# Every free string and array is bounded, so the grammar itself guarantees an end: the JSON is
# compact (no free whitespace) and one character costs at most 6 tokens (a \uXXXX escape, byte by
# byte), so WORST_* tokens always reach the closing brace, whatever a sampled 135M model rambles
# (unbounded, one seed in 20 wrote a 200-token name, and a bf16 machine ran a title to the limit).
SMALL = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "color": {"enum": ["red", "green", "blue"]},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 4},
    },
    "required": ["name", "age", "color", "hobbies"],
}
WORST_SMALL = 6 * (40 + 4 * 24) + 80  # free characters × 6, plus keys, punctuation, numbers, enum
NESTED = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "author": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 30},
                           "born": {"type": "integer", "minimum": 1000, "maximum": 2100}},
            "required": ["name", "born"],
        },
        "chapters": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {"title": {"type": "string", "maxLength": 30},
                               "pages": {"type": "integer", "minimum": 1, "maximum": 9999},
                               "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 2}},
                "required": ["title", "pages"],
            },
        },
        "in_print": {"type": "boolean"},
        "rating": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 5}, {"type": "null"}]},
    },
    "required": ["title", "author", "chapters", "in_print"],
}
WORST_NESTED = 6 * (40 + 30 + 3 * (30 + 2 * 12)) + 200
ENUM_ONLY = {"enum": ["positive", "negative", "neutral"]}

PERSON = [Message(role="system", content="You reply with JSON only."),
          Message(role="user", content="Describe a fictional person: name, age, favourite color and hobbies.")]
BOOK = [Message(role="user", content="Give me a JSON record for a short book with its author and chapters.")]
SENTIMENT = [Message(role="user", content="Is the sentiment of 'I love this film' positive, negative or neutral?")]
FREE = [Message(role="user", content="Return a JSON object with two keys: name and capital, for France.")]


@pytest.fixture(scope="module")
def smol(tiny_models):
    # fp32 everywhere: greedy answers must not depend on whether the CPU has native bf16.
    return load(tiny_models, SMOL, dtype="float32")


@pytest.fixture(scope="module")
def compiler(smol):
    width = smol.model.get_output_embeddings().out_features
    return GrammarCompiler(smol.tokenizer, width, smol.stop_ids)


def decode(handler, grammar, messages, seeds=(None,), temperature: float = 0.0, max_tokens: int = 200,
           timings: list[float] | None = None) -> list[tuple[str, str]]:
    """Generate one sequence per seed (same prompt, so one unpadded batch), every step masked by the
    grammar; ``(text, finish_reason)`` per sequence. Greedy rows use ``Matcher.mask_logits`` one by
    one; sampled batches use ``mask_batch``."""
    prompt = handler.encode_chat(messages)
    rows = len(seeds)
    matchers = [grammar.matcher() for _ in seeds]
    generators = [torch.Generator().manual_seed(s) if s is not None else None for s in seeds]
    tokens: list[list[int]] = [[] for _ in seeds]
    finished: list[str | None] = [None] * rows
    stop = min(handler.stop_ids)
    ids, cache = torch.tensor([prompt] * rows), None
    with torch.inference_mode():
        for _ in range(max_tokens + 1):
            out = handler.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
            cache, logits = out.cache, out.logits[:, -1]
            t0 = time.perf_counter()
            if temperature == 0:
                for i, m in enumerate(matchers):
                    if not finished[i]:
                        m.mask_logits(logits[i])
            else:
                mask_batch(logits, [None if finished[i] else m for i, m in enumerate(matchers)])
            mask_s = time.perf_counter() - t0
            chosen = []
            for i, m in enumerate(matchers):
                if finished[i]:
                    chosen.append(stop)
                    continue
                if temperature == 0:
                    token = int(torch.argmax(logits[i]))
                else:
                    probs = torch.softmax(logits[i].float() / temperature, dim=-1)
                    token = int(torch.multinomial(probs, 1, generator=generators[i]))
                t0 = time.perf_counter()
                m.accept(token)  # raises if the mask let through a token the grammar refuses
                if timings is not None:
                    timings.append(mask_s / rows + time.perf_counter() - t0)
                if token in handler.stop_ids:
                    assert m.done, "a stop token was allowed before the JSON was complete"
                    finished[i] = "stop"
                else:
                    tokens[i].append(token)
                    if len(tokens[i]) >= max_tokens:
                        finished[i] = "length"
                chosen.append(token)
            if all(finished):
                break
            ids = torch.tensor(chosen)[:, None]
    return [(handler.tokenizer.decode(t, skip_special_tokens=True), f or "length") for t, f in zip(tokens, finished)]


def assert_valid(text: str, finish: str, schema: dict) -> object:
    assert finish == "stop", f"did not finish within the token limit: {text!r}"
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


def test_json_object_greedy(smol, compiler):
    timings: list[float] = []
    [(text, finish)] = decode(smol, compiler.json_object(), FREE, timings=timings)
    value = assert_valid(text, finish, {"type": "object"})
    assert isinstance(value, dict)
    print(f"\njson_object: {text}\nmask+accept per token: mean {1e6 * sum(timings) / len(timings):.0f} µs, "
          f"max {1e6 * max(timings):.0f} µs over {len(timings)} tokens")


def test_small_schema_greedy_and_sampled(smol, compiler):
    grammar = compiler.json_schema(SMALL)
    [(text, finish)] = decode(smol, grammar, PERSON, max_tokens=WORST_SMALL)
    assert_valid(text, finish, SMALL)
    timings: list[float] = []
    results = decode(smol, grammar, PERSON, seeds=range(20), temperature=1.0, timings=timings, max_tokens=WORST_SMALL)
    assert len({text for text, _ in results}) > 1, "20 seeds at temperature 1.0 gave one answer"
    for text, finish in results:
        assert_valid(text, finish, SMALL)
    print(f"\nsampled x20, e.g. {results[0][0]}\nmask_batch+accept per token: "
          f"mean {1e6 * sum(timings) / len(timings):.0f} µs over {len(timings)} tokens")


def test_nested_schema(smol, compiler):
    grammar = compiler.json_schema(NESTED)
    results = (decode(smol, grammar, BOOK, seeds=(None,), max_tokens=WORST_NESTED)
               + decode(smol, grammar, BOOK, seeds=(1, 2, 3), temperature=0.7, max_tokens=WORST_NESTED))
    for text, finish in results:
        value = assert_valid(text, finish, NESTED)
        assert isinstance(value["author"], dict) and 1 <= len(value["chapters"]) <= 3


def test_enum_only(smol, compiler):
    results = decode(smol, compiler.json_schema(ENUM_ONLY), SENTIMENT, seeds=(None,))
    results += decode(smol, compiler.json_schema(ENUM_ONLY), SENTIMENT, seeds=(5, 6, 7), temperature=1.0)
    for text, finish in results:
        assert json.loads(text) in ENUM_ONLY["enum"]
        assert finish == "stop"


def test_compiled_once_per_schema(compiler):
    a = compiler.json_schema(SMALL)
    b = compiler.json_schema(json.loads(json.dumps(SMALL, sort_keys=True)))  # same schema, other key order
    assert a is b
    assert compiler.json_object() is compiler.json_object()


def test_stop_tokens_only_when_complete(smol, compiler):
    """Stop tokens are masked out mid-JSON, and are the only choice once the object is closed."""
    matcher = compiler.json_schema(ENUM_ONLY).matcher()
    width = smol.model.get_output_embeddings().out_features
    text_ids = smol.tokenizer.encode('"neutral"', add_special_tokens=False)
    for token in text_ids:
        row = torch.zeros(width)
        matcher.mask_logits(row)
        assert all(row[s] == float("-inf") for s in smol.stop_ids)
        assert not matcher.done
        matcher.accept(token)
    assert matcher.done
    row = torch.zeros(width)
    matcher.mask_logits(row)
    assert set(torch.nonzero(row == 0).flatten().tolist()) == set(smol.stop_ids)
    with pytest.raises(ValueError):  # refused, so the matcher stays where it was
        matcher.accept(text_ids[0])
    assert matcher.done
    matcher.accept(min(smol.stop_ids))
    # A row kept running after its stop token only ever gets stop tokens.
    row = torch.zeros(width)
    matcher.mask_logits(row)
    assert set(torch.nonzero(row == 0).flatten().tolist()) == set(smol.stop_ids)
    matcher.accept(min(smol.stop_ids))
    with pytest.raises(ValueError):
        matcher.accept(text_ids[0])


def test_mask_batch_leaves_unconstrained_rows(smol, compiler):
    width = smol.model.get_output_embeddings().out_features
    logits = torch.randn(3, width + 8, dtype=torch.bfloat16)  # wider than the model's vocab: padding
    before = logits.clone()
    mask_batch(logits, [compiler.json_object().matcher(), None, compiler.json_schema(ENUM_ONLY).matcher()])
    assert torch.equal(logits[1], before[1])
    for row in (0, 2):
        allowed = torch.isfinite(logits[row])
        assert 0 < int(allowed.sum()) < 100 and not bool(allowed[width:].any())
    alone = before[0].clone()  # the same tokens allowed as masking the row alone
    compiler.json_object().matcher().mask_logits(alone)
    assert torch.equal(torch.isfinite(alone), torch.isfinite(logits[0]))


@pytest.mark.parametrize("schema,keyword", [
    ({"$ref": "https://example.com/person.json"}, "$ref"),
    ({"type": "object", "properties": {"a": {"$ref": "other.json#/x"}}}, "$ref"),
    ({"type": "object", "properties": {"ab": {"type": "string"}}, "patternProperties": {"^a": {"type": "integer"}}},
     "patternProperties"),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "if": {"required": ["a"]},
      "then": {"required": ["b"]}},
     "if"),
    ({"type": "object", "dependentSchemas": {"a": {"required": ["b"]}}}, "dependentSchemas"),
    ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
    ({"not": {"type": "string"}}, "not"),
    ({"type": "object", "properties": {"e": {"type": "string", "format": "idn-email"}}}, "format"),
    ({"type": "string", "format": "regex"}, "format"),
    ({"type": "string", "format": "phone-number"}, "format"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "array", "contains": {"const": 1}}, "contains"),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "unevaluatedProperties": False},
     "unevaluatedProperties"),
    ({"allOf": [{"required": ["a"]}, {"required": ["b"]}]}, "allOf"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
    ({"type": "number", "multipleOf": 0.5}, "multipleOf"),
    ({"type": "integer", "multipleOf": 5, "minimum": 0}, "multipleOf"),
    ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}, "pattern"),
    ({"type": "string", "format": "email", "maxLength": 30}, "format"),
    ({"type": "object", "required": ["a"]}, "required"),
    ({"type": "object", "properties": {"x": {"type": "integer"}}, "anyOf": [{"required": ["x"]}]}, "anyOf"),
    ({"$defs": {"i": {"type": "integer"}}, "$ref": "#/$defs/i", "minimum": 5}, "$ref"),
    ({"$ref": "#/$defs/missing"}, "$ref"),
    ({"type": "string", "pattern": "a(?=b)"}, "pattern"),
    ({"$dynamicRef": "#node"}, "$dynamicRef"),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 1}, "minItems"),
])
def test_unsupported_keywords_are_refused(compiler, schema, keyword):
    with pytest.raises(UnsupportedSchema, match=re.escape(keyword)):
        compiler.json_schema(schema)


@pytest.mark.parametrize("schema", [
    {"oneOf": [{"type": "integer"}, {"type": "string"}]},  # disjoint by type
    {"$defs": {"Cat": {"type": "object", "properties": {"kind": {"const": "cat"}}, "required": ["kind"]},
               "Dog": {"type": "object", "properties": {"kind": {"const": "dog"}}, "required": ["kind"]}},
     "oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}]},  # disjoint by a discriminator
    {"type": "object", "patternProperties": {"^x_": {"type": "integer"}}, "additionalProperties": False},
    {"$defs": {"node": {"type": "object",
                        "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
     "$ref": "#/$defs/node", "description": "annotations next to $ref are fine"},
    {"type": "string", "format": "date-time"},
    {"type": "integer", "multipleOf": 5},
    {"type": "string", "pattern": "^[A-Z][a-z]+$"},
    {"type": "string", "minLength": 2, "maxLength": 5},
    True,
])
def test_supported_schemas_compile(compiler, schema):
    compiler.json_schema(schema)
