"""A worker moved to another model through the API: it stops serving the old one, loads the new
one, consumes its queue, and /v1/models shows it."""

from __future__ import annotations

import shutil
import time

from tests.conftest import TINY_CHATML

A, B = "acme/move-from", "acme/move-to"


def test_worker_moves_to_another_model(stack, http):
    for model_id in (A, B):
        shutil.copytree(stack.models_dir / TINY_CHATML, stack.models_dir / model_id)
    stack.start_worker(A)
    end = time.monotonic() + 60
    while not stack.ready_workers().get(A):
        assert time.monotonic() < end
        time.sleep(0.2)
    name = next(w["name"] for w in http.get("/v1/workers").json()["data"] if w["model"] == A)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
    assert http.post("/v1/chat/completions", json={**body, "model": A}).status_code == 200
    assert http.post("/v1/chat/completions", json={**body, "model": B}).status_code == 503

    r = http.post(f"/v1/workers/{name}/model", json={"model": B})
    assert r.status_code == 202 and r.json() == {"worker": name, "from": A, "to": B, "status": "moving"}
    end = time.monotonic() + 60
    while not stack.ready_workers().get(B):
        assert time.monotonic() < end, "the worker did not come up on the new model"
        time.sleep(0.2)
    ok = http.post("/v1/chat/completions", json={**body, "model": B})
    assert ok.status_code == 200, ok.text
    cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert cards[B]["served"] and cards[B]["workers"] == 1
    assert not cards[A]["served"]
    assert http.post("/v1/chat/completions", json={**body, "model": A}).status_code == 503
    assert http.post(f"/v1/workers/{name}/model", json={"model": "acme/nope"}).status_code == 404
    assert http.post("/v1/workers/nobody@nowhere/model", json={"model": B}).status_code == 404
