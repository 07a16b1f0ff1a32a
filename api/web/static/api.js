// Calls to the API's data routes. When keys are set, a 401 opens the key dialog; the key is kept in
// this tab's sessionStorage and sent as `Authorization: Bearer`. The page's own files need no key.

const STORAGE_KEY = "llmhost.apiKey";
let asking = null; // one dialog for every call that got a 401 at the same time

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** The API's own message from an error response (its OpenAI envelope), never a stack trace. */
export async function errorOf(res) {
  let message = `${res.status} ${res.statusText}`.trim();
  try {
    const body = await res.json();
    if (body?.error?.message) message = body.error.message;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(message, res.status);
}

export async function api(path, init = {}) {
  for (;;) {
    const key = sessionStorage.getItem(STORAGE_KEY);
    const headers = new Headers(init.headers);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const res = await fetch(path, { ...init, headers });
    if (res.status !== 401) return res;
    const err = await errorOf(res);
    // A key entered meanwhile (by another call's dialog) is tried before asking again.
    if (sessionStorage.getItem(STORAGE_KEY) !== key) continue;
    sessionStorage.removeItem(STORAGE_KEY);
    await askForKey(err.message);
  }
}

/** GET a JSON body; a non-2xx answer throws an ApiError with the API's message. */
export async function getJson(path) {
  const res = await api(path);
  if (!res.ok) throw await errorOf(res);
  return res.json();
}

function askForKey(reason) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-reason").textContent = reason;
  asking = new Promise((resolve) => {
    // method="dialog": submitting closes the dialog.
    document.getElementById("key-form").onsubmit = () => {
      sessionStorage.setItem(STORAGE_KEY, input.value.trim());
      input.value = "";
      asking = null;
      resolve();
    };
  });
  // Escape would leave the page without a key and every call waiting: keep the dialog up.
  dialog.oncancel = (e) => e.preventDefault();
  dialog.showModal();
  input.focus();
  return asking;
}
