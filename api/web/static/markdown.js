// A small Markdown renderer for model output. It builds DOM nodes and only ever sets text (never
// innerHTML), so whatever a model writes (`<script>`, `<img onerror=...>`) stays visible text.
// It covers what chat models write: fenced code, headings, lists (nested by indentation), quotes,
// rules, paragraphs, and inline code, bold, italic and links (http, https and mailto only).
// An unclosed fence, as seen mid-stream, renders as the code so far.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
// Code spans first, so that `**` inside backticks stays literal.
const INLINE = /(`+)(.+?)\1(?!`)|\*\*(.+?)\*\*|\*([^\s*](?:.*?[^\s*])?)\*|\[([^\]]+)\]\(([^)\s]+)\)/g;
const SAFE_SCHEMES = new Set(["http:", "https:", "mailto:"]);

/** Markdown text → a DocumentFragment of elements and text nodes. */
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) {
      i++;
    } else if ((m = line.match(FENCE))) {
      i = fence(lines, i, m, out);
    } else if ((m = line.match(HEADING))) {
      // h3..h6: the page has its own headings above the conversation.
      out.append(el(`h${Math.min(6, m[1].length + 2)}`, inline(m[2])));
      i++;
    } else if (RULE.test(line)) {
      out.append(el("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) inner.push(lines[i++].match(QUOTE)[1]);
      out.append(el("blockquote", renderMarkdown(inner.join("\n"))));
    } else if (ITEM.test(line)) {
      i = list(lines, i, out);
    } else {
      const para = [];
      while (i < lines.length && lines[i].trim() && (para.length === 0 || !startsBlock(lines[i]))) para.push(lines[i++]);
      out.append(paragraph(para));
    }
  }
  return out;
}

/** One line of inline Markdown → a DocumentFragment. */
export function inline(text) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    frag.append(text.slice(last, m.index)); // a string becomes a Text node: never parsed as HTML
    if (m[2] !== undefined) frag.append(el("code", m[2]));
    else if (m[3] !== undefined) frag.append(el("strong", inline(m[3])));
    else if (m[4] !== undefined) frag.append(el("em", inline(m[4])));
    else frag.append(link(m[5], m[6], m[0]));
    last = m.index + m[0].length;
  }
  frag.append(text.slice(last));
  return frag;
}

function el(tag, ...children) {
  const node = document.createElement(tag);
  node.append(...children);
  return node;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function indentOf(line) {
  return line.length - line.trimStart().length;
}

function paragraph(lines) {
  const p = el("p");
  lines.forEach((line, k) => {
    if (k) p.append(el("br")); // models mean their single newlines
    p.append(inline(line.trim()));
  });
  return p;
}

function link(label, href, whole) {
  let url;
  try {
    url = new URL(href, document.baseURI);
  } catch {
    return document.createTextNode(whole);
  }
  if (!SAFE_SCHEMES.has(url.protocol)) return document.createTextNode(whole); // javascript:, data:, ...
  const a = el("a", inline(label));
  a.href = url.href;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  return a;
}

function fence(lines, i, m, out) {
  const [, marker, lang] = m;
  const closing = new RegExp(`^ {0,3}${marker[0]}{${marker.length},}\\s*$`);
  const body = [];
  for (i++; i < lines.length && !closing.test(lines[i]); i++) body.push(lines[i]);
  out.append(codeBlock(body.join("\n"), lang));
  return i + 1; // past the closing fence, or the end
}

function codeBlock(code, lang) {
  const copy = el("button", "Copy");
  copy.type = "button";
  copy.className = "copy";
  copy.addEventListener("click", () => navigator.clipboard?.writeText(code));
  const head = el("div", el("span", lang || "code"), copy);
  head.className = "code-head";
  const codeEl = el("code", code);
  if (lang) codeEl.dataset.lang = lang;
  const block = el("div", head, el("pre", codeEl));
  block.className = "code-block";
  return block;
}

function list(lines, i, out) {
  const first = lines[i].match(ITEM);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const node = el(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) node.start = parseInt(first[2], 10);
  while (i < lines.length) {
    const m = lines[i].match(ITEM);
    if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
    const width = indent + m[2].length + 1; // where the item's own text starts
    const body = [m[3]];
    for (i++; i < lines.length; i++) {
      const next = lines[i];
      if (!next.trim()) {
        const j = nextFilled(lines, i);
        if (j < lines.length && indentOf(lines[j]) > indent) { body.push(""); continue; }
        break;
      }
      if (indentOf(next) > indent) body.push(next.slice(Math.min(indentOf(next), width)));
      else if (!startsBlock(next) && body[body.length - 1] !== "") body.push(next.trim()); // lazy continuation
      else break;
    }
    node.append(el("li", renderMarkdown(body.join("\n"))));
    // Blank lines between two items of this list keep the list going.
    const j = nextFilled(lines, i);
    const after = j < lines.length && lines[j].match(ITEM);
    if (after && after[1].length === indent && /\d/.test(after[2]) === ordered) i = j;
  }
  out.append(node);
  return i;
}

function nextFilled(lines, i) {
  while (i < lines.length && !lines[i].trim()) i++;
  return i;
}
