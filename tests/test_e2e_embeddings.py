"""Embeddings through the stack equal sentence-transformers' vectors."""

import base64
import struct

import pytest

from tests.conftest import MINILM, TINY_CHATML

TEXTS = ["The capital of France is Paris.", "Embeddings map text to vectors.", "héllo wörld 🙂"]


@pytest.fixture(scope="module")
def reference(stack):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(stack.models_dir / MINILM), device="cpu").encode(TEXTS)


def test_vectors_equal_sentence_transformers(client, reference):
    r = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    assert [d.index for d in r.data] == [0, 1, 2] and r.model == MINILM
    for d, want in zip(r.data, reference):
        assert len(d.embedding) == 384
        assert max(abs(a - b) for a, b in zip(d.embedding, want)) < 1e-5
    assert r.usage.prompt_tokens > len(TEXTS) and r.usage.total_tokens == r.usage.prompt_tokens


def test_single_string_and_base64(http, reference):
    r = http.post("/v1/embeddings", json={"model": MINILM, "input": TEXTS[0], "encoding_format": "base64"})
    assert r.status_code == 200
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    vec = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(vec) == 384 and max(abs(a - b) for a, b in zip(vec, reference[0])) < 1e-5


def test_sdk_default_base64_roundtrip(client, reference):
    # The openai SDK asks for base64 by default and decodes it itself.
    r = client.embeddings.create(model=MINILM, input=TEXTS[1])
    assert max(abs(a - b) for a, b in zip(r.data[0].embedding, reference[1])) < 1e-5


def test_dimensions_refused_clearly(http):
    r = http.post("/v1/embeddings", json={"model": MINILM, "input": "x", "dimensions": 128})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "dimensions" and "384" in err["message"]
    ok = http.post("/v1/embeddings", json={"model": MINILM, "input": "x", "dimensions": 384})
    assert ok.status_code == 200


def test_chat_model_refuses_embeddings_and_vice_versa(http):
    r = http.post("/v1/embeddings", json={"model": TINY_CHATML, "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported"
    r = http.post("/v1/chat/completions", json={"model": MINILM, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported"
