// The chat playground: a conversation streamed from /v1/chat/completions, one answer at a time.

import { api, errorOf, getJson } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { sseData } from "./sse.js";

const $ = (id) => document.getElementById(id);
const turns = []; // {role, content} sent with every request after the system prompt
let controller = null; // the AbortController of the answer being streamed
let epoch = 0; // bumped by "New chat", so that an answer ending after it leaves the new conversation alone

export function startChat() {
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("message").addEventListener("keydown", (e) => {
    // Enter sends, Shift+Enter is a new line; not while an IME is composing a character.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  $("stop").addEventListener("click", () => controller?.abort());
  $("new-chat").addEventListener("click", () => {
    controller?.abort();
    epoch++;
    turns.length = 0;
    $("conversation").replaceChildren();
  });
  loadModels();
}

async function loadModels() {
  const select = $("model");
  const note = $("model-note");
  try {
    const cards = (await getJson("/v1/models")).data.filter((m) => m.kind === "chat");
    const chosen = select.value;
    select.replaceChildren(...cards.map((m) => new Option(m.id, m.id)));
    if (cards.some((m) => m.id === chosen)) select.value = chosen;
    note.hidden = cards.length > 0;
    note.textContent = "No chat model is ready yet; retrying.";
    if (!cards.length) setTimeout(loadModels, 3000);
  } catch (err) {
    note.hidden = false;
    note.textContent = err.message;
    setTimeout(loadModels, 5000);
  }
}

function bubble(role) {
  const conversation = $("conversation");
  conversation.querySelector(".empty")?.remove();
  const article = document.createElement("article");
  article.className = `msg ${role}`;
  const body = document.createElement("div");
  body.className = "body";
  article.append(body);
  conversation.append(article);
  return article;
}

function scrollDown() {
  const c = $("conversation");
  c.scrollTop = c.scrollHeight;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function requestBody(model) {
  const system = $("system").value.trim();
  const body = {
    model,
    messages: [...(system ? [{ role: "system", content: system }] : []), ...turns],
    stream: true,
    stream_options: { include_usage: true },
  };
  const temperature = parseFloat($("temperature").value);
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  if (!Number.isNaN(maxTokens)) body.max_tokens = maxTokens;
  return body;
}

async function send() {
  const input = $("message");
  const text = input.value.trim();
  const model = $("model").value;
  if (!text || controller || !model) return;
  input.value = "";
  turns.push({ role: "user", content: text });
  bubble("user").querySelector(".body").textContent = text;
  const answer = bubble("assistant");
  answer.classList.add("streaming");
  const body = answer.querySelector(".body");
  const stats = document.createElement("p");
  stats.className = "stats";
  answer.append(stats);
  scrollDown();

  controller = new AbortController();
  const turn = epoch;
  setBusy(true);
  const started = performance.now();
  let content = "";
  let firstAt = null;
  let usage = null;
  let finish = null;
  let pending = false;
  const render = () => {
    // At most once a frame: re-rendering the Markdown of a long answer on every token is wasted work.
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      body.replaceChildren(renderMarkdown(content));
      scrollDown();
    });
  };
  try {
    const res = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody(model)),
      signal: controller.signal,
    });
    if (!res.ok) throw await errorOf(res);
    for await (const data of sseData(res.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message); // a failure after the 200
      answer.dataset.job = chunk.id;
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) {
        firstAt ??= performance.now();
        content += choice.delta.content;
        render();
      }
      if (choice?.finish_reason) finish = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }
    stats.textContent = summary(started, firstAt, performance.now(), usage, finish);
  } catch (err) {
    if (err.name === "AbortError") {
      stats.textContent = `Stopped after ${seconds(performance.now() - started)}.`;
      answer.classList.add("stopped");
    } else {
      const error = document.createElement("p");
      error.className = "error";
      error.setAttribute("role", "alert");
      error.textContent = err.message;
      answer.append(error);
    }
  } finally {
    body.replaceChildren(renderMarkdown(content));
    answer.classList.remove("streaming");
    // What was shown stays in the conversation, even a stopped answer; a failed turn is dropped.
    if (turn === epoch) {
      if (content) turns.push({ role: "assistant", content });
      else turns.pop();
    }
    controller = null;
    setBusy(false);
    scrollDown();
    input.focus();
  }
}

function seconds(ms) {
  return `${(ms / 1000).toFixed(2)} s`;
}

/** TTFT, completion tokens and decode speed (tokens after the first over the time after it). */
function summary(started, firstAt, ended, usage, finish) {
  const parts = [];
  if (firstAt !== null) parts.push(`TTFT ${seconds(firstAt - started)}`);
  const tokens = usage?.completion_tokens;
  if (tokens !== undefined) parts.push(`${tokens} token${tokens === 1 ? "" : "s"}`);
  if (tokens > 1 && firstAt !== null && ended > firstAt) {
    parts.push(`${((tokens - 1) / ((ended - firstAt) / 1000)).toFixed(1)} tokens/s`);
  }
  if (finish === "length") parts.push("cut at max tokens");
  return parts.join(" · ");
}
