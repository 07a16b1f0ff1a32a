"""The web page at ``/`` in a real browser: headless Chromium (Debian's) driven by Playwright,
against the real stack. Every request the page makes is routed through a guard that fails the test
if it leaves 127.0.0.1: the page must work offline.

Screenshots of both views go to the test's tmp dir; with LLMHOST_WEB_SCREENSHOTS=1 they refresh
``docs/web-playground.png`` and ``docs/web-status.png``.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import MINILM, ROOT, SMOL

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # without the `test` extra the browser tests skip; the HTTP ones still run
    expect = sync_playwright = None

CHROMIUM = Path(os.environ.get("LLMHOST_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium phones home, which a closed network refuses.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 120_000  # one answer of SmolLM2 on a shared CPU, fp32


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        pytest.skip("playwright is not installed (the `test` extra of pyproject.toml)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: `make test` installs Debian's `chromium` when run as root "
                    "(or point LLMHOST_CHROMIUM at one)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def keyed_api(stack):
    """A second API process on the same stack, with an API key set."""
    url = stack.start_api("api-keys", LLMHOST_API_KEYS="k1")
    yield url
    proc = stack.procs.pop("api-keys")
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def shots(tmp_path) -> list[Path]:
    """Where a screenshot goes: the tmp dir, and docs/ when asked."""
    return [tmp_path] + ([ROOT / "docs"] if os.environ.get("LLMHOST_WEB_SCREENSHOTS") else [])


@pytest.fixture
def open_page(browser):
    """open_page(url) → a page whose requests may only go to 127.0.0.1, with no JS error or CSP violation."""
    contexts, outside, errors = [], [], []

    def guard(route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    def open_(url: str):
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        ctx.route("**/*", guard)
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(url)
        return page

    yield open_
    for ctx in contexts:
        ctx.close()
    assert not outside, f"the page reached outside 127.0.0.1: {outside}"
    assert not errors, f"uncaught errors in the page: {errors}"


def chat_bodies(page) -> list[dict]:
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data))
            if r.url.endswith("/v1/chat/completions") else None)
    return bodies


def answer(page, n: int = 1):
    """The n-th assistant message (1-based), once its stats line is written (the answer ended)."""
    msg = page.locator(".msg.assistant").nth(n - 1)
    expect(msg.locator(".stats")).not_to_be_empty(timeout=WAIT_MS)
    return msg


def wait_until(check, seconds: float = 30) -> None:
    end = time.monotonic() + seconds
    while not check() and time.monotonic() < end:
        time.sleep(0.2)


def smol_running(stack) -> int:
    return sum(w["running"] for w in httpx.get(f"{stack.base_url}/v1/workers").json()["data"] if w["model"] == SMOL)


def test_page_loads_offline_with_the_chat_models(open_page, stack):
    page = open_page(f"{stack.base_url}/")
    expect(page).to_have_title("LLM-Host")
    models = page.get_by_label("Model")
    expect(models.locator(f'option[value="{SMOL}"]')).to_have_count(1)
    # Only chat models are offered: the embedding model is not.
    assert MINILM not in models.locator("option").all_text_contents()
    for name in ("Temperature", "Max tokens", "Message", "System prompt"):
        expect(page.get_by_label(name, exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()


def test_a_question_streams_an_answer_with_its_numbers(open_page, stack, shots):
    page = open_page(f"{stack.base_url}/")
    bodies = chat_bodies(page)
    page.get_by_label("Model").select_option(SMOL)
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("Max tokens").fill("64")
    message = page.get_by_label("Message")
    message.fill("first line")
    message.press("Shift+Enter")  # a new line, not a send
    message.press_sequentially("second line")
    assert message.input_value() == "first line\nsecond line" and not bodies
    message.fill("What is the capital of France?")
    # Every length the answer's text takes while it streams in.
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const body = document.querySelector('.msg.assistant .body');
            if (body) window.__lengths.push(body.textContent.length);
        }).observe(document.getElementById('conversation'), {childList: true, subtree: true, characterData: true});
    }""")
    message.press("Enter")
    msg = answer(page)
    assert "Paris" in msg.locator(".body").inner_text()
    assert re.fullmatch(r"TTFT \d+\.\d\d s · \d+ tokens? · \d+\.\d tokens/s( · cut at max tokens)?",
                        msg.locator(".stats").inner_text()), msg.locator(".stats").inner_text()
    lengths = sorted(set(page.evaluate("window.__lengths")) - {0})
    assert len(lengths) >= 2, f"the answer appeared at once, not streamed: {lengths}"
    assert bodies[0] == {"model": SMOL, "messages": [{"role": "user", "content": "What is the capital of France?"}],
                         "stream": True, "stream_options": {"include_usage": True}, "temperature": 0, "max_tokens": 64}

    # A follow-up carries the conversation so far, and the system prompt first.
    page.get_by_label("System prompt").fill("You are a concise assistant. Use Markdown.")
    message.fill("Write that fact as a Python dict in a code block.")
    page.get_by_role("button", name="Send").click()
    answer(page, 2)
    roles = [m["role"] for m in bodies[1]["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    for d in shots:
        page.screenshot(path=str(d / "web-playground.png"))


def test_stop_aborts_the_stream_and_cancels_the_job(open_page, stack):
    page = open_page(f"{stack.base_url}/")
    # A long answer whatever the model samples: the request gains ignore_eos on its way out.
    page.route("**/v1/chat/completions", lambda route: route.continue_(
        post_data=json.dumps({**json.loads(route.request.post_data), "ignore_eos": True})))
    page.get_by_label("Model").select_option(SMOL)
    page.get_by_label("Max tokens").fill("2000")
    page.get_by_label("Message").fill("Tell me a very long story about a lighthouse.")
    page.get_by_role("button", name="Send").click()
    msg = page.locator(".msg.assistant").first
    expect(msg.locator(".body")).not_to_be_empty(timeout=WAIT_MS)  # tokens are arriving
    wait_until(lambda: smol_running(stack) >= 1)  # the worker's heartbeat shows the sequence
    page.get_by_role("button", name="Stop").click()
    expect(msg.locator(".stats")).to_contain_text("Stopped after")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    job = msg.get_attribute("data-job")
    wait_until(lambda: smol_running(stack) == 0 and stack.redis.hget(f"llmhost:job:{job}", "status") == b"cancelled")
    assert smol_running(stack) == 0, "the worker still decodes the stopped answer"
    assert stack.redis.hget(f"llmhost:job:{job}", "status") == b"cancelled"


MARKDOWN = """# Title
Hello <script>window.__pwned = 1</script> **bold** and *soft* with `<b>code</b>`.
<img src=x onerror="window.__pwned = 2">

- one [safe](https://example.org/a) and [evil](javascript:window.__pwned=3)
- two
  1. nested

> quoted

```html
<script>window.__pwned = 4</script>
```"""


def test_model_output_renders_as_text_never_as_html(open_page, stack):
    page = open_page(f"{stack.base_url}/")
    got = page.evaluate("""async (src) => {
        const { renderMarkdown } = await import('/web/markdown.js');
        const box = document.createElement('div');
        box.append(renderMarkdown(src));
        document.body.append(box);
        const all = (sel) => [...box.querySelectorAll(sel)];
        return {text: box.innerText, tags: all('*').map((e) => e.tagName.toLowerCase()),
                links: all('a').map((a) => a.href), code: all('pre code').map((c) => c.textContent),
                pwned: window.__pwned ?? null};
    }""", MARKDOWN)
    assert got["pwned"] is None
    assert not {"script", "img", "b"} & set(got["tags"])
    assert {"h3", "strong", "em", "code", "ul", "ol", "li", "blockquote", "pre"} <= set(got["tags"])
    assert "<script>window.__pwned = 1</script>" in got["text"] and '<img src=x onerror="window.__pwned = 2">' in got["text"]
    assert got["links"] == ["https://example.org/a"]  # the javascript: link stays text
    assert got["code"] == ["<script>window.__pwned = 4</script>"]

    # The same through the chat: a stream whose tokens carry HTML shows it as text.
    def fake_stream(route) -> None:
        pieces = ["Look: <scr", "ipt>window.__pwned = 5</script>", " <img src=x onerror=\"window.__pwned = 6\">"]
        chunks = [{"id": "chatcmpl-fake", "choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
        chunks.append({"id": "chatcmpl-fake", "choices": [], "usage": {"completion_tokens": 3}})
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    page.route("**/v1/chat/completions", fake_stream)
    page.get_by_label("Model").select_option(SMOL)
    page.get_by_label("Message").fill("Say something dangerous.")
    page.get_by_label("Message").press("Enter")
    msg = answer(page)
    expect(msg.locator(".body")).to_have_text('Look: <script>window.__pwned = 5</script> <img src=x onerror="window.__pwned = 6">')
    assert msg.locator("script, img").count() == 0 and page.evaluate("window.__pwned ?? null") is None


def test_errors_show_the_api_message(open_page, stack, http):
    body = {"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "temperature": 5}
    expected = http.post("/v1/chat/completions", json=body).json()["error"]["message"]
    page = open_page(f"{stack.base_url}/")
    page.get_by_label("Model").select_option(SMOL)
    page.get_by_label("Temperature").fill("5")
    page.get_by_label("Message").fill("hi")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".msg.assistant").get_by_role("alert")).to_have_text(expected)


def test_status_json_has_the_workers_queues_and_token_totals(http):
    http.post("/v1/chat/completions", json={"model": SMOL, "max_tokens": 3, "ignore_eos": True,
                                             "messages": [{"role": "user", "content": "Hi"}]})
    status = http.get("/v1/status").json()
    assert status["object"] == "status"
    smol = next(w for w in status["workers"] if w["model"] == SMOL)
    assert (smol["kind"], smol["state"], smol["device"], smol["dtype"]) == ("chat", "ready", "cpu", "float32")
    assert MINILM in {w["model"] for w in status["workers"]}
    assert {"model": SMOL, "depth": 0, "classes": {"interactive": 0, "background": 0, "batch": 0}} in status["queues"]
    assert status["tokens"]["generated"][SMOL] >= 3


def test_status_view_shows_the_workers_queues_and_throughput(open_page, stack, http, shots):
    done = threading.Event()

    def traffic() -> None:  # something to draw: short SmolLM2 answers, one after another
        while not done.is_set():
            http.post("/v1/chat/completions", json={"model": SMOL, "max_tokens": 16, "ignore_eos": True,
                                                     "messages": [{"role": "user", "content": "Hello"}]})

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        page = open_page(f"{stack.base_url}/")
        page.get_by_role("tab", name="Status").click()
        assert page.url.endswith("#status")
        rows = page.locator("#workers tbody tr")
        for model in (SMOL, MINILM):
            expect(rows.filter(has_text=model)).to_contain_text("ready")
        expect(page.locator("#queues tbody tr").filter(has_text=SMOL)).to_have_count(1)
        # The chart's legend shows SmolLM2 with a non-zero rate once two readings straddle an answer.
        page.wait_for_function("""(m) => [...document.querySelectorAll('#throughput-legend span')]
            .some((s) => s.textContent.startsWith(m) && parseFloat(s.textContent.split(' ').pop()) > 0)""",
                               arg=SMOL, timeout=WAIT_MS)
        page.wait_for_timeout(10_000)  # a few more readings, for a chart worth a screenshot
        for d in shots:
            page.screenshot(path=str(d / "web-status.png"))
    finally:
        done.set()
        worker.join(timeout=WAIT_MS / 1000)


def test_the_page_loads_without_a_key_and_its_data_does_not(keyed_api):
    for path in ("/", "/web/main.js", "/web/markdown.js", "/web/style.css", "/health"):
        assert httpx.get(keyed_api + path).status_code == 200, path
    assert httpx.get(keyed_api + "/web/main.js").headers["content-type"].startswith("text/javascript")
    assert "default-src 'self'" in httpx.get(keyed_api + "/").headers["content-security-policy"]
    # Exactly the page's files: another path under /web/, the data and the docs need the key.
    for path in ("/web/nothing.js", "/web/", "/v1/models", "/v1/status", "/docs", "/metrics"):
        assert httpx.get(keyed_api + path).status_code == 401, path
    assert httpx.get(keyed_api + "/v1/status", headers={"Authorization": "Bearer k1"}).status_code == 200


def test_the_page_asks_for_a_key_when_keys_are_set(open_page, keyed_api):
    page = open_page(f"{keyed_api}/")
    dialog = page.get_by_role("dialog", name="This server needs an API key")
    expect(dialog).to_contain_text("Missing API key")
    key = dialog.get_by_role("textbox", name="API key")
    key.fill("wrong")
    key.press("Enter")
    expect(dialog).to_contain_text("Incorrect API key provided.")
    key.fill("k1")
    dialog.get_by_role("button", name="Use key").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_label("Model").locator(f'option[value="{SMOL}"]')).to_have_count(1)
    assert page.evaluate("sessionStorage.getItem('llmhost.apiKey')") == "k1"
    page.get_by_role("tab", name="Status").click()
    expect(page.locator("#workers tbody tr").filter(has_text=MINILM)).to_have_count(1)
