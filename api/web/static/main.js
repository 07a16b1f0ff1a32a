// The page's entry: two views behind a tab list (Chat, Status); #status opens the second.

import { startChat } from "./chat.js";
import { drawThroughput, startStatus } from "./status.js";

const VIEWS = ["chat", "status"];

function show(name) {
  for (const view of VIEWS) {
    const tab = document.getElementById(`tab-${view}`);
    const on = view === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    document.getElementById(`view-${view}`).hidden = !on;
  }
  history.replaceState(null, "", name === "chat" ? location.pathname : `#${name}`);
  if (name === "status") drawThroughput(); // the canvas has a size only once shown
}

for (const view of VIEWS) {
  const tab = document.getElementById(`tab-${view}`);
  tab.addEventListener("click", () => show(view));
  tab.addEventListener("keydown", (e) => {
    // The tab pattern: arrows move between tabs.
    const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
    if (!step) return;
    const next = VIEWS[(VIEWS.indexOf(view) + step + VIEWS.length) % VIEWS.length];
    show(next);
    document.getElementById(`tab-${next}`).focus();
  });
}

show(location.hash === "#status" ? "status" : "chat");
startChat();
startStatus();
