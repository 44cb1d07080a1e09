// The page at /: the loaded adapters (labels, fingerprint, card) and each adapter's probabilities as bars.
// Plain DOM, no build step; every value shown comes from the API (GET /v1/adapters, POST /v1/classify).
"use strict";

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
};

let adapters = [];

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function showAdapters(listing) {
  document.getElementById("base").textContent = `base ${listing.base} · task ${listing.task} · ${listing.adapters.length} adapter(s)`;
  const list = document.getElementById("adapters");
  list.replaceChildren();
  for (const a of listing.adapters) {
    const labels = el("div", { class: "labels" }, ...(a.labels || []).map((l) => el("span", { textContent: l })));
    const item = el(
      "li",
      { "data-name": a.name },
      el("div", { class: "name", textContent: a.name }),
      el("div", { class: "muted", textContent: `${a.method || "adapter"} · ${a.fingerprint.slice(0, 19)}…` }),
      labels,
    );
    if (a.card) item.append(el("details", {}, el("summary", { textContent: "card" }), el("pre", { textContent: a.card })));
    list.append(item);
  }
}

function showResult(adapter, result) {
  const rows = Object.entries(result.probabilities).map(([label, p]) =>
    el(
      "div",
      { class: label === result.label ? "row top" : "row" },
      el("span", { textContent: label }),
      el("div", { class: "track" }, el("div", { class: "bar", "data-label": label, "data-probability": String(p), style: `width:${(p * 100).toFixed(1)}%` })),
      el("span", { textContent: `${(p * 100).toFixed(1)}%` }),
    ),
  );
  return el(
    "section",
    { class: "adapter-result", "data-adapter": adapter.name, "data-label": result.label },
    el("strong", { textContent: `${adapter.name}: ${result.label}` }),
    ...rows,
  );
}

async function classify() {
  const text = document.getElementById("text").value;
  const status = document.getElementById("status");
  const results = document.getElementById("results");
  results.replaceChildren();
  status.textContent = "classifying…";
  const targets = adapters.filter((a) => a.task === "classification");
  const answers = await Promise.all(
    targets.map((a) =>
      api("/v1/classify", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ adapter: a.name, texts: [text] }) })
        .then((body) => showResult(a, body.results[0]))
        .catch((err) => el("p", { class: "error", "data-adapter": a.name, textContent: `${a.name}: ${err.message}` })),
    ),
  );
  results.append(...answers);
  status.textContent = `${targets.length} adapter(s) answered`;
}

async function start() {
  try {
    const listing = await api("/v1/adapters");
    adapters = listing.adapters;
    showAdapters(listing);
  } catch (err) {
    document.getElementById("base").textContent = `could not list adapters: ${err.message}`;
  }
  document.getElementById("classify").addEventListener("click", classify);
}

start();
