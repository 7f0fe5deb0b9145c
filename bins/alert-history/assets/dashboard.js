// Alert History dashboard: plain JS, no dependencies, data from /api/dashboard/*.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fmtTime(iso) {
  if (!iso || iso.startsWith("0001-")) return "–";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC");
}

function ago(iso) {
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 129600) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function duration(seconds) {
  if (seconds < 60) return seconds.toFixed(0) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}

const badge = (text, cls) => el("span", { class: "badge " + (cls || text || "") }, text || "none");
const labelsCell = (labels) =>
  el("td", { class: "labels" }, ...Object.entries(labels || {})
    .filter(([k]) => k !== "alertname")
    .map(([k, v]) => el("span", {}, k + "=" + v)));

// The LLM's classification: severity badge and confidence, the reasoning
// as a tooltip; "–" when the alert has none.
function classificationCell(c) {
  if (!c) return el("td", { class: "muted" }, "–");
  return el("td", { class: "classification", title: c.reasoning || "" },
    badge(c.severity), " ", el("span", { class: "confidence" }, Math.round(c.confidence * 100) + " %"));
}

function renderRecommendations(r) {
  $("#recommendations-mode").textContent = "(mode: " + r.mode + ")";
  fill($("#recommendations-table tbody"), r.recommendations.map((c) =>
    el("tr", { class: "clickable", onclick: () => showTimeline(c.fingerprint) },
      el("td", {}, el("strong", {}, c.alertname || c.fingerprint), c.namespace ? " · " + c.namespace : ""),
      classificationCell(c),
      el("td", {}, el("ul", { class: "recommendations" }, ...c.recommendations.map((t) => el("li", {}, t)))),
      el("td", { title: fmtTime(c.classified_at) }, ago(c.classified_at)))));
  $("#recommendations-empty").hidden = r.recommendations.length > 0;
}

async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || body.detail || r.statusText);
  return body;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function renderOverview(o) {
  $("#firing-count").textContent = o.summary.firing_now;
  $("#resolved-count").textContent = o.summary.resolved_now;
  $("#total-events").textContent = o.total_events;
  $("#unique-alerts").textContent = o.unique_alerts;
  $("#updated").textContent = "updated " + fmtTime(o.generated_at);
  const sev = Object.entries(o.summary.firing_by_severity || {}).map(([k, v]) => k + ": " + v).join(" · ");
  $("#severity-summary").textContent = sev ? "(" + sev + ")" : "";

  fill($("#firing-table tbody"), o.firing.map((a) =>
    el("tr", { class: "clickable", "data-fingerprint": a.fingerprint, onclick: () => showTimeline(a.fingerprint) },
      el("td", {}, el("strong", {}, a.alertname),
        a.ack && a.ack.active ? el("span", { class: "badge ack", title: `acknowledged by ${a.ack.by}: ${a.ack.reason}` }, "ack") : null),
      el("td", {}, badge(a.severity)),
      el("td", {}, a.namespace || "–"),
      el("td", { title: fmtTime(a.startsAt) }, ago(a.startsAt)),
      el("td", {}, (a.annotations && (a.annotations.summary || a.annotations.description)) || ""),
      classificationCell(a.classification))));
  $("#firing-empty").hidden = o.firing.length > 0;

  fill($("#top-table tbody"), o.top_alerts.map((t) =>
    el("tr", { class: "clickable", onclick: () => search("alertname=" + quote(t.alertname)) },
      el("td", {}, t.alertname), el("td", {}, t.namespace || "–"), el("td", { class: "r" }, t.events))));
  fill($("#flapping-table tbody"), o.flapping_alerts.map((t) =>
    el("tr", { class: "clickable", onclick: () => search("alertname=" + quote(t.alertname)) },
      el("td", {}, t.alertname), el("td", {}, t.namespace || "–"), el("td", { class: "r" }, t.flaps))));
  if (o.flapping_alerts.length === 0) {
    fill($("#flapping-table tbody"), [el("tr", {}, el("td", { colspan: 3, class: "empty" }, "No flapping alerts."))]);
  }
}

function renderChart(c) {
  const W = 1000, H = 200, PAD = 28;
  const n = c.buckets.length;
  const max = Math.max(1, ...c.buckets.map((b) => b.firing + b.resolved));
  const bw = (W - PAD) / Math.max(1, n);
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  const y = (v) => H - 20 - (v / max) * (H - 34);
  add("line", { x1: PAD, y1: H - 20, x2: W, y2: H - 20, class: "axis" });
  add("text", { x: 0, y: y(max) + 4 }, String(max));
  add("text", { x: 0, y: H - 16 }, "0");
  c.buckets.forEach((b, i) => {
    const x = PAD + i * bw + 1;
    const w = Math.max(1, bw - 2);
    const yf = y(b.firing), yr = y(b.firing + b.resolved);
    const bar = add("rect", { x, y: yf, width: w, height: H - 20 - yf, fill: "#d64545", "data-firing": b.firing });
    add("title", {}, `${fmtTime(b.start)}: ${b.firing} firing, ${b.resolved} resolved`);
    bar.append(svg.lastChild);
    add("rect", { x, y: yr, width: w, height: yf - yr, fill: "#2f9e5b", "data-resolved": b.resolved });
    if (n <= 24 || i % Math.ceil(n / 12) === 0) {
      add("text", { x, y: H - 4 }, new Date(b.start).toISOString().slice(11, 16));
    }
  });
  const legend = el("div", { class: "legend" },
    el("i", { style: "background:#d64545" }), "firing",
    el("i", { style: "background:#2f9e5b" }), "resolved",
    `  · ${c.bucket_seconds >= 3600 ? c.bucket_seconds / 3600 + " h" : c.bucket_seconds / 60 + " min"} per bar`);
  $("#chart").replaceChildren(svg, legend);
}

// Search terms are name=value; either side goes in double quotes when it
// holds spaces, "=", quotes or backslashes (escaped with a backslash):
// alertname="Disk full"  "service.name"=api.
const TERM = /\s*(?:"((?:[^"\\]|\\.)*)"|([^\s="]+))=(?:"((?:[^"\\]|\\.)*)"|([^\s"]*))/y;
const unquote = (s) => s.replace(/\\(.)/g, "$1");
const quote = (s) => (s === "" || /[\s="\\]/.test(s)) ? '"' + s.replace(/["\\]/g, "\\$&") + '"' : s;

function parseTerms(text) {
  const terms = [];
  TERM.lastIndex = 0;
  while (TERM.lastIndex < text.length && text.slice(TERM.lastIndex).trim() !== "") {
    const m = TERM.exec(text);
    if (!m) throw new Error("search terms are name=value (quote a side with spaces: alertname=\"Disk full\")");
    terms.push([m[1] !== undefined ? unquote(m[1]) : m[2], m[3] !== undefined ? unquote(m[3]) : m[4]]);
  }
  return terms;
}

async function search(prefill) {
  if (typeof prefill === "string") $("#search-labels").value = prefill;
  const params = new URLSearchParams({ limit: "50" });
  let terms;
  try {
    terms = parseTerms($("#search-labels").value);
  } catch (err) {
    $("#search-error").textContent = String(err.message || err);
    $("#search-error").hidden = false;
    return;
  }
  for (const [name, value] of terms) {
    if (name === "alertname" || name === "namespace" || name === "severity" || name === "fingerprint") params.set(name, value);
    // The server reads label=name=value, or label="name"=value when the
    // name holds "=" or starts with a quote.
    else params.append("label", (/[="\\]/.test(name) ? '"' + name.replace(/["\\]/g, "\\$&") + '"' : name) + "=" + value);
  }
  const status = $("#search-status").value;
  if (status) params.set("status", status);
  try {
    const rows = await getJSON("/history?" + params);
    $("#search-error").hidden = true;
    fill($("#history-table tbody"), rows.map((e) =>
      el("tr", { class: "clickable", onclick: () => showTimeline(e.fingerprint) },
        el("td", {}, fmtTime(e.status === "resolved" ? e.endsAt : e.startsAt)),
        el("td", {}, badge(e.status)),
        el("td", {}, e.alertname),
        el("td", {}, e.namespace || "–"),
        labelsCell(e.labels),
        el("td", { class: "r" }, e.occurrences))));
  } catch (err) {
    $("#search-error").textContent = String(err.message || err);
    $("#search-error").hidden = false;
  }
}

async function showTimeline(fp) {
  const t = await getJSON("/alerts/" + encodeURIComponent(fp));
  $("#timeline-panel").hidden = false;
  $("#timeline-fp").textContent = t.alertname + " · " + fp;
  $("#timeline-summary").textContent =
    `Now ${t.status}; firing for ${duration(t.firing_seconds)} in ${t.firing_periods} period(s); ${t.flaps} status change(s); first seen ${fmtTime(t.first_seen)}.` +
    (t.ack && t.ack.active ? ` Acknowledged by ${t.ack.by} (${fmtTime(t.ack.acked_at)}): ${t.ack.reason}; not published until it resolves.` : "") +
    (t.classification ? ` Classified ${t.classification.severity} (${Math.round(t.classification.confidence * 100)} %): ${t.classification.reasoning}` +
      (t.classification.recommendations.length ? " Recommendations: " + t.classification.recommendations.join("; ") : "") : "");
  const events = t.events;
  const t0 = new Date(events[0].startsAt).getTime();
  const t1 = Math.max(Date.now(), t0 + 1);
  const bar = [];
  let cursor = t0;
  const periods = {};
  for (const e of events) {
    const s = new Date(e.startsAt).getTime();
    periods[s] = e.status === "resolved" ? new Date(e.endsAt).getTime() : (periods[s] || null);
  }
  const starts = Object.keys(periods).map(Number).sort((a, b) => a - b);
  starts.forEach((s, i) => {
    const end = Math.min(periods[s] || (starts[i + 1] || t1), starts[i + 1] || t1);
    if (s > cursor) bar.push(el("div", { style: `flex:${s - cursor};background:#dfe6ee` }));
    bar.push(el("div", { style: `flex:${Math.max(end - s, 1)};background:#d64545`, title: fmtTime(new Date(s).toISOString()) }));
    cursor = Math.max(cursor, end);
  });
  if (t1 > cursor) bar.push(el("div", { style: `flex:${t1 - cursor};background:#dfe6ee` }));
  $("#timeline-bar").replaceChildren(...bar);
  fill($("#timeline-table tbody"), events.map((e) =>
    el("tr", {},
      el("td", {}, fmtTime(e.status === "resolved" ? e.endsAt : e.startsAt)),
      el("td", {}, badge(e.status)),
      el("td", {}, fmtTime(e.startsAt)),
      el("td", {}, fmtTime(e.endsAt)),
      el("td", { class: "r" }, e.occurrences))));
  $("#timeline-panel").scrollIntoView();
}

async function refresh() {
  const hours = $("#hours").value;
  try {
    const [overview, charts] = await Promise.all([
      getJSON("/api/dashboard/overview?hours=" + hours),
      getJSON("/api/dashboard/charts?hours=" + hours + "&buckets=48"),
    ]);
    renderOverview(overview);
    renderChart(charts);
    getJSON("/api/dashboard/recommendations?limit=20").then(renderRecommendations, () => {});
    document.body.dataset.loaded = "true";
  } catch (err) {
    $("#updated").textContent = "error: " + (err.message || err);
  }
}

$("#search").addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
$("#hours").addEventListener("change", refresh);
refresh();
search();
setInterval(refresh, 30000);
