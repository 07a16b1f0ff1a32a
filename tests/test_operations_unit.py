"""Operations pieces without the stack: settings parsing, keys, log format, metrics registries."""

from __future__ import annotations

import io
import json
import logging

import pytest
from pydantic import ValidationError

from api.metrics import Metrics, outcome_of
from api.middleware import sane_request_id
from api.security import KeyChecker, bearer_token
from tasks.contract.errors import JobError, queue_full, retry_after
from tasks.contract.logging_setup import (
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    job_facts,
    job_logger,
    log_context,
    note_fact,
)
from tasks.contract.payloads import GenerateResult, Output
from tasks.contract.settings import Settings, load_api_keys


@pytest.mark.parametrize("raw,expected", [
    ('["a","b"]', ["a", "b"]), ("a,b", ["a", "b"]), (" a , b ,, ", ["a", "b"]), ("single", ["single"]),
    ("", []), ("[]", []),
])
def test_list_settings_accept_json_or_commas(monkeypatch, raw, expected):
    monkeypatch.setenv("LLMHOST_API_KEYS", raw)
    monkeypatch.setenv("LLMHOST_CORS_ORIGINS", raw)
    s = Settings()
    assert s.api_keys == expected and s.cors_origins == expected


def test_bad_key_list_is_refused_without_echoing_it(monkeypatch):
    monkeypatch.setenv("LLMHOST_API_KEYS", '["sk-secret-value", ')
    with pytest.raises(ValidationError) as e:
        Settings()
    assert "api_keys" in str(e.value) and "sk-secret-value" not in str(e.value)


def test_keys_are_not_in_the_settings_repr():
    assert "sk-hidden" not in repr(Settings(api_keys=["sk-hidden"]))


def test_keys_file_with_comments(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# team keys\n\nsk-one\n  sk-two  \n#sk-off\nsk-one\n")
    assert load_api_keys(Settings(api_keys=["sk-env"], api_keys_file=f)) == ["sk-env", "sk-one", "sk-two"]
    with pytest.raises(RuntimeError, match="LLMHOST_API_KEYS_FILE"):
        load_api_keys(Settings(api_keys_file=tmp_path / "missing"))


def test_key_checker_and_bearer_parsing():
    checker = KeyChecker(["sk-a", "sk-b"])
    assert checker.valid("sk-a") and checker.valid("sk-b")
    assert not checker.valid("sk-") and not checker.valid("sk-ab") and not checker.valid("")
    assert not KeyChecker([])
    assert bearer_token([(b"authorization", b"Bearer  sk-a ")]) == "sk-a"
    assert bearer_token([(b"authorization", b"bearer sk-a")]) == "sk-a"
    assert bearer_token([(b"authorization", b"Basic sk-a")]) is None
    assert bearer_token([(b"authorization", b"Bearer")]) is None
    assert bearer_token([]) is None


def _emit(formatter: logging.Formatter, fn) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter({"service": "test"}))
    logger = logging.getLogger(f"llmhost.test.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    fn(logger)
    return stream.getvalue()


def test_json_lines_carry_context_and_scalar_extras_only():
    def log(lg: logging.Logger) -> None:
        lg.info("outside")
        with log_context(request_id="rid-1", job_id="job-1"):
            lg.info("inside %d", 7, extra={"route": "/x", "data": {"args": "a prompt"}, "args2": ["list"]})
            try:
                raise ValueError("boom")
            except ValueError:
                lg.exception("failed")
        job_logger(lg, "job-2", "rid-2").warning("adapted")

    lines = [json.loads(x) for x in _emit(JsonFormatter(), log).splitlines()]
    assert len(lines) == 4
    first, inside, failed, adapted = lines
    assert set(first) == {"ts", "level", "logger", "msg", "pid", "service"} and first["ts"].endswith("Z")
    assert inside["msg"] == "inside 7" and inside["request_id"] == "rid-1" and inside["job_id"] == "job-1"
    assert inside["route"] == "/x" and "data" not in inside and "args2" not in inside
    assert failed["level"] == "ERROR" and "ValueError: boom" in failed["exc"]
    assert adapted["job_id"] == "job-2" and adapted["request_id"] == "rid-2"


def test_job_facts_collect_only_inside_their_block_and_nest():
    note_fact(lost=1)  # outside any block: nowhere to go, no error
    with job_facts() as outer:
        note_fact(engine_seconds=0.25)
        with job_facts() as inner:
            note_fact(inner=True)
        note_fact(after=2, msg="would clash with the record's own")
    assert outer == {"engine_seconds": 0.25, "after": 2} and inner == {"inner": True}


def test_engine_seconds_spans_the_jobs_sequences_or_is_unknown():
    from tasks.worker.engine_loop import SeqWaiter
    from tasks.worker.generation import engine_seconds

    def waiter(added: float, ended: float) -> SeqWaiter:
        w = SeqWaiter("job-1", 0, None, 0.0)
        w.added_at, w.ended_at = added, ended
        return w

    assert engine_seconds([waiter(10.0, 10.5), waiter(10.1, 10.75)]) == 0.75  # first taken to last ended
    assert engine_seconds([waiter(10.0, 10.5), waiter(10.1, 0.0)]) is None  # one never ended in a step
    assert engine_seconds([waiter(0.0, 0.0)]) is None and engine_seconds([]) is None


def test_text_format_appends_ids():
    def log(lg: logging.Logger) -> None:
        lg.info("plain")
        with log_context(job_id="job-9"):
            lg.info("with")

    out = _emit(TextFormatter(), log)
    plain, with_id = out.splitlines()
    assert plain.endswith("plain") and with_id.endswith("with job_id=job-9")


def test_request_id_sanitising():
    assert sane_request_id("abc-DEF_1.2") == "abc-DEF_1.2"
    assert sane_request_id("x" * 64) and not sane_request_id("x" * 65)
    for bad in ("", "a b", "a/b", "é", "a\nb", None):
        assert sane_request_id(bad) is None


def test_retry_after_and_queue_full():
    assert [retry_after(d, 10) for d in (10, 11, 20, 21, 1000)] == [1, 2, 2, 3, 5]
    assert retry_after(5, 1) == 5 and retry_after(1, 1) == 1
    err = queue_full("acme/m", 12, 10)
    assert err.status_code == 429 and err.type == "rate_limit_error" and err.code == "queue_full"
    assert err.headers == {"Retry-After": "2"}


def test_outcomes_and_separate_registries():
    assert outcome_of(JobError("x", status_code=504, type="timeout_error", code="request_timeout")) == "timeout"
    assert outcome_of(JobError("x", status_code=499, type="cancelled", code="cancelled")) == "cancelled"
    assert outcome_of(JobError("x", status_code=502, type="server_error", code="worker_lost")) == "failed"
    a, b = Metrics(), Metrics()  # two apps in one process: no "Duplicated timeseries" error
    a.observe_request("/x", "GET", 200, 0.1)
    t = a.track("/v1/chat/completions", "m")
    t.delta(0), t.delta(0), t.succeeded(GenerateResult(outputs=[Output(index=0, text="ab", finish_reason="length",
                                                                       prompt_tokens=3, completion_tokens=2)]))
    t.cancelled()  # ignored: the job already has its outcome
    assert b"llmhost_requests_total{" in a.render() and b"llmhost_requests_total{" not in b.render()
    text = a.render().decode()
    assert 'llmhost_job_outcomes_total{endpoint="/v1/chat/completions",outcome="succeeded"} 1.0' in text
    assert 'outcome="cancelled"' not in text
    assert 'llmhost_generation_tokens_total{model="m"} 2.0' in text
    assert 'llmhost_inter_token_latency_seconds_count{model="m"} 1.0' in text
