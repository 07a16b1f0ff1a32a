"""response_format through the stack: even the 135M model returns schema-valid JSON, every time."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.conftest import SMOL, TINY_CHATML

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "population": {"type": "integer", "minimum": 0, "maximum": 10**9},
        "continent": {"enum": ["Europe", "Asia", "Africa", "America", "Oceania"]},
        "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
    },
    "required": ["city", "population", "continent", "landmarks"],
    "additionalProperties": False,
}
# Sampled, a free string may run as long as the schema allows: bounded strings and arrays in compact
# JSON (≤ 6 tokens per character, a \uXXXX escape byte by byte) make this budget always enough, so
# `finish_reason == "stop"` is the grammar's guarantee, not the model's luck.
WORST = 6 * (40 + 3 * 30) + 100
ASK = [{"role": "user", "content": "Describe Paris as JSON with its population, continent and landmarks."}]


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}


# A random model emits byte soup inside free strings (invalid UTF-8 that decodes to U+FFFD, which
# jsonschema then counts as characters): its schema keeps to values whose validity is decidable.
BOUNDED = {
    "type": "object",
    "properties": {"population": {"type": "integer", "minimum": 0, "maximum": 10**9},
                   "continent": {"enum": ["Europe", "Asia", "Africa", "America", "Oceania"]},
                   "capital": {"type": "boolean"},
                   "ranks": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100}, "maxItems": 3}},
    "required": ["population", "continent", "capital", "ranks"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("model,schema,budget", [(SMOL, SCHEMA, WORST), (TINY_CHATML, BOUNDED, 300)])
def test_json_schema_output_is_valid_over_many_seeds(client, model, schema, budget):
    for seed in range(8):
        r = client.chat.completions.create(model=model, messages=ASK, temperature=1.0, seed=seed, max_tokens=budget,
                                           response_format=schema_format(schema))
        choice = r.choices[0]
        assert choice.finish_reason == "stop", (seed, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_object_and_greedy_stream_equals_non_stream(client):
    # An unbounded json_object lets the model list items forever; ask for something that ends.
    short = [{"role": "user", "content": "Give Alice (age 30) as a JSON object with keys name and age."}]
    r = client.chat.completions.create(model=SMOL, messages=short, temperature=0, max_tokens=100,
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    kw = dict(model=SMOL, messages=ASK, temperature=0, max_tokens=300, response_format=schema_format(SCHEMA))
    whole = client.chat.completions.create(**kw).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                       if c.choices)
    assert streamed == whole
    jsonschema.validate(json.loads(streamed), SCHEMA)


def test_unsupported_schema_feature_is_a_clear_400(client):
    bad = {"type": "object", "properties": {"a": {"type": "string"}}, "if": {"required": ["a"]}, "then": {}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=TINY_CHATML, messages=ASK, response_format=schema_format(bad))
    assert "`if`/`then`/`else` is not supported" in e.value.message and e.value.param == "response_format"
