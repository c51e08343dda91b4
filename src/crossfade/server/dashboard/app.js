// The crossfade dashboard: plain JavaScript, no build step. It polls the API every POLL_MS and redraws.
"use strict";

const POLL_MS = 2000;
const READ_KEY = "crossfade.readToken";
const OPERATOR_KEY = "crossfade.operatorToken";
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const pct = (x) => (x == null ? "-" : `${(x * 100).toFixed(x < 0.01 && x > 0 ? 2 : 1).replace(/\.0$/, "")}%`);
const pp = (x) => `${x >= 0 ? "+" : ""}${(x * 100).toFixed(2)} pp`;
const ms = (s) => (s == null ? "-" : s < 0.001 ? `${(s * 1e6).toFixed(0)}µs` : `${(s * 1000).toFixed(1)}ms`);
const time = (t) => new Date(t * 1000).toLocaleTimeString();
const dateTime = (t) => new Date(t * 1000).toLocaleString();

let timer = null;
let lastSeq = null;

class HttpError extends Error {
  constructor(status, body) { super((body && body.error) || `HTTP ${status}`); this.status = status; }
}

// Asks for a token in the dialog; resolves to the token, or null when cancelled.
function askToken(title, why) {
  const dialog = $("#token-dialog");
  $("#token-title").textContent = title;
  $("#token-why").textContent = why;
  $("#token-input").value = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok" ? $("#token-input").value.trim() || null : null), { once: true });
  });
}

async function api(path, { method = "GET", body = null, token = sessionStorage.getItem(READ_KEY) } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== null) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === null ? null : JSON.stringify(body) });
  const data = resp.headers.get("content-type")?.includes("json") ? await resp.json() : null;
  if (!resp.ok) throw new HttpError(resp.status, data);
  return data;
}

// Reads: with the read token if one was given; a 401 shows the Sign in button instead of failing silently.
async function read(path) {
  try {
    $("#signin").hidden = true;
    return await api(path);
  } catch (e) {
    if (e.status === 401) {
      $("#signin").hidden = false;
      $("#live").textContent = "sign in to read (a viewer token suffices)";
      $("#main").innerHTML = `<div class="card" id="signin-help"><h1>Sign in</h1><p>This control plane needs a token to read.
        Press <b>Sign in</b> above and paste a token of role viewer or above; it is kept for this browser session only.</p>
        <p class="muted">No token yet? On the control plane's database: <code>crossfade token create --role viewer --name NAME --url DB_URL</code>.</p></div>`;
    }
    throw e;
  }
}

// Operator actions ask for an operator token once per browser session.
async function operate(name, action, reason) {
  let token = sessionStorage.getItem(OPERATOR_KEY);
  if (!token) {
    token = await askToken("Operator token", `To ${action} ${name}, paste a token with role operator or admin. It is kept for this browser session only.`);
    if (!token) return;
  }
  try {
    await api(`/v1/migrations/${encodeURIComponent(name)}/${action}`, { method: "POST", body: { reason: reason || null }, token });
    sessionStorage.setItem(OPERATOR_KEY, token);
    notice("");
  } catch (e) {
    if (e.status === 401 || e.status === 403) sessionStorage.removeItem(OPERATOR_KEY);
    notice(`${action} refused: ${e.message}`);
  }
  lastSeq = null;
  refresh();
}

function notice(text) {
  const el = $("#notice");
  if (el) { el.textContent = text; el.hidden = !text; }
}

// -- charts -----------------------------------------------------------------------------------

function lineChart(title, points, value, format) {
  const W = 340, H = 150, L = 48, R = 8, T = 18, B = 20;
  const arms = ["legacy", "candidate"];
  const series = arms.map((arm) => points.filter((p) => p.arm === arm && value(p) != null).map((p) => [p.start, value(p)]));
  const all = series.flat();
  if (!all.length) return `<div class="card"><b>${esc(title)}</b><p class="muted">no data yet</p></div>`;
  const x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0])) || x0 + 1;
  const y1 = Math.max(...all.map((p) => p[1])) * 1.1 || 1;
  const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y) => H - B - (y / y1) * (H - T - B);
  const paths = series.map((pts, i) => pts.length
    ? `<polyline fill="none" stroke="var(--${arms[i]})" stroke-width="${i ? 2 : 1.5}" ${i ? "" : 'stroke-dasharray="4 2"'} points="${pts.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ")}"/>`
      + pts.map((p) => `<circle r="2" fill="var(--${arms[i]})" cx="${sx(p[0]).toFixed(1)}" cy="${sy(p[1]).toFixed(1)}"/>`).join("")
    : "").join("");
  return `<div class="card"><b>${esc(title)}</b>
  <svg viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="${esc(title)}">
    <line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#e5e7eb"/>
    <text x="${L - 4}" y="${sy(y1 / 1.1) + 3}" text-anchor="end">${esc(format(y1 / 1.1))}</text>
    <text x="${L - 4}" y="${H - B}" text-anchor="end">0</text>
    <text x="${L}" y="${H - 4}">${esc(time(x0))}</text><text x="${W - R}" y="${H - 4}" text-anchor="end">${esc(time(x1))}</text>
    ${paths}
  </svg>
  <div class="legend"><span><i style="background:var(--legacy)"></i>legacy (baseline)</span><span><i style="background:var(--candidate)"></i>candidate</span></div></div>`;
}

// One gate: its interval (lower..upper) and estimate drawn against the limit.
function gateRow(g) {
  const W = 260, H = 26, pad = 10;
  const known = [g.lower, g.upper, g.estimate, g.limit, 0].filter((v) => v != null && isFinite(v));
  let lo = Math.min(...known), hi = Math.max(...known);
  if (hi === lo) { hi += 1; lo -= 1; }
  const span = hi - lo; lo -= span * 0.1; hi += span * 0.1;
  const sx = (v) => pad + ((v - lo) / (hi - lo)) * (W - 2 * pad);
  const a = g.lower == null ? pad : sx(g.lower), b = g.upper == null ? W - pad : sx(g.upper);
  // Latency and cost are ratios to legacy; the error rate gate measures the candidate's rate minus legacy's, in
  // percentage points; the mismatch rate is the candidate's own rate.
  const fmt = (v) => (v == null ? "∞" : g.gate === "latency" || g.gate === "cost" ? `x${Number(v).toFixed(2)}`
    : g.gate === "error_rate" ? pp(v) : pct(v));
  const svg = `<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" aria-label="interval of ${esc(g.gate)}">
    <line x1="${pad}" y1="13" x2="${W - pad}" y2="13" stroke="#e5e7eb"/>
    ${g.verdict === "NODATA" ? "" : `<line x1="${a}" y1="13" x2="${b}" y2="13" stroke="var(--candidate)" stroke-width="4" stroke-linecap="round"/>`}
    ${g.estimate == null ? "" : `<circle cx="${sx(g.estimate)}" cy="13" r="4" fill="#1e3a8a"/>`}
    <line x1="${sx(g.limit)}" y1="2" x2="${sx(g.limit)}" y2="24" stroke="var(--fail)" stroke-width="2" stroke-dasharray="3 2"/>
  </svg>`;
  const n = g.samples ? `${g.samples.candidate ?? 0} / ${g.samples.legacy ?? 0}` : "";
  return `<tr class="gate" data-gate="${esc(g.gate)}"><td>${esc(g.gate)}</td><td class="verdict ${esc(g.verdict)}">${esc(g.verdict)}</td>
    <td>${svg}</td><td class="num">${g.estimate == null ? "-" : `${fmt(g.estimate)} (${fmt(g.lower)}..${fmt(g.upper)})`} limit ${fmt(g.limit)}</td><td class="num">${n}</td></tr>
    <tr><td></td><td colspan="4" class="muted">${esc(g.message)}</td></tr>`;
}

// -- views ------------------------------------------------------------------------------------

// Programs: several migrations moved in dependency order (`crossfade serve --program FILE`).
function programRows(programs) {
  return programs.map((p) => `<tr data-program="${esc(p.program)}"><td><a href="#/p/${encodeURIComponent(p.program)}">${esc(p.program)}</a></td>
    <td class="num">${p.percent}%</td><td class="num">${p.completed} of ${p.components.length}</td><td>${esc(p.critical_path.join(" → "))}</td></tr>`).join("");
}

async function renderProgram(name) {
  const p = await read(`/v1/programs/${encodeURIComponent(name)}`);
  const critical = new Set(p.critical_path);
  const rows = p.components.map((c) => `<tr class="component" data-component="${esc(c.component)}" data-state="${esc(c.state)}">
    <td class="num">${c.phase}</td><td>${esc(c.component)}${critical.has(c.component) ? ' <span class="critical" title="on the critical path">critical</span>' : ""}</td>
    <td>${c.status === "not applied" ? esc(c.migration) : `<a href="#/m/${encodeURIComponent(c.migration)}">${esc(c.migration)}</a>`}</td>
    <td class="component-state ${esc(c.state.replace(" ", "_"))}">${esc(c.summary)}</td><td class="num">${pct(c.done)}</td></tr>`).join("");
  $("#main").innerHTML = `<p><a href="#/">← all migrations</a></p><h1 id="title">${esc(p.program)}</h1>
    <div class="card"><p><b id="percent">${p.percent}%</b> done · ${p.completed} of ${p.components.length} components completed</p>
    <div class="split" aria-label="program progress"><div class="c" style="width:${p.percent}%"></div><div class="l" style="width:${100 - p.percent}%"></div></div>
    <p id="critical-path">Critical path: <b>${esc(p.critical_path.join(" → "))}</b> <span class="muted">(${Math.round(p.critical_seconds / 86400 * 10) / 10} days of holds)</span></p></div>
    <h2>Components</h2><div class="card"><table><tr><th class="num">phase</th><th>component</th><th>migration</th><th>state</th><th class="num">stages passed</th></tr>${rows}</table></div>`;
}

async function renderList() {
  const [states, programs] = await Promise.all([read("/v1/migrations"), read("/v1/programs")]);
  const rows = states.map((s) => `<tr><td><a href="#/m/${encodeURIComponent(s.name)}">${esc(s.name)}</a></td>
    <td><span class="status ${esc(s.status)}">${esc(s.status.replace("_", " "))}</span></td><td>${esc(s.stage ?? "-")}</td>
    <td class="num">${pct(s.traffic)}</td><td>${s.updated_at ? esc(dateTime(s.updated_at)) : "-"}</td></tr>`).join("");
  $("#main").innerHTML = `<h1>Migrations</h1><div class="card">${states.length
    ? `<table><tr><th>name</th><th>status</th><th>stage</th><th class="num">candidate traffic</th><th>updated</th></tr>${rows}</table>`
    : `<p class="muted">No migrations yet: <code>crossfade apply FILE</code> stores one.</p>`}</div>`
    + (programs.length ? `<h1>Programs</h1><div class="card" id="programs"><table><tr><th>program</th><th class="num">done</th><th class="num">components completed</th><th>critical path</th></tr>${programRows(programs)}</table></div>` : "");
}

function skeleton(name) {
  $("#main").innerHTML = `<p><a href="#/">← all migrations</a></p>
    <h1 id="title">${esc(name)}</h1><div id="notice" class="notice" hidden></div>
    <div id="summary"></div>
    <h2>Stages</h2><div id="ladder" class="ladder"></div>
    <h2>Traffic</h2><div id="split"></div><div id="routers"></div>
    <div id="approval"></div>
    <div class="actions" id="actions"><input id="reason" placeholder="reason (recorded in the audit log)" size="40">
      <button id="stepback" class="secondary">Step back</button>
      <button id="rollback" class="danger">Rollback</button></div>
    <h2>Gates</h2><div id="gates" class="card"></div>
    <h2>Triggers</h2><div id="triggers" class="card"></div>
    <h2>Notifications</h2><div id="notifications" class="card"></div>
    <h2>Arms in this stage</h2><div id="arms" class="card"></div>
    <h2>Custom metrics</h2><div id="custom" class="card"></div>
    <h2>Over time</h2><div id="charts" class="charts"></div>
    <h2>Events</h2><div class="card"><ul id="timeline" class="timeline"></ul></div>`;
  $("#rollback").addEventListener("click", () => operate(name, "rollback", $("#reason").value.trim() || "rolled back from the dashboard"));
  $("#stepback").addEventListener("click", () => operate(name, "step-back", $("#reason").value.trim() || "stepped back from the dashboard"));
}

// A custom metric's value: a rate as a percentage, anything else as a number.
function customValue(f, x) {
  if (x == null) return "-";
  return f.kind === "rate" ? pct(x) : esc(Number(x).toPrecision(4));
}

function triggerThreshold(t, custom) {
  if (custom) return t.below != null ? `below ${customValue(custom, t.below)}` : `above ${customValue(custom, t.above)}`;
  return `above ${esc(t.metric.includes("latency_p") && !t.metric.endsWith("ratio") ? ms(t.above) : t.metric.endsWith("ratio") ? `x${t.above}` : pct(t.above))}`;
}

async function renderMigration(name) {
  if (!$("#ladder") || $("#title").textContent !== name) skeleton(name);
  const q = encodeURIComponent(name);
  const [m, series, events, notes] = await Promise.all([
    read(`/v1/migrations/${q}`), read(`/v1/migrations/${q}/series`),
    read(`/v1/migrations/${q}/events?after=0&limit=1000`), read(`/v1/notifications?migration=${q}&limit=20`),
  ]);
  const s = m.state;
  $("#summary").innerHTML = `<span class="status ${esc(s.status)}" id="status">${esc(s.status.replace("_", " "))}</span>
    ${s.stage ? `stage <b id="stage">${esc(s.stage)}</b> (${s.stage_index + 1} of ${m.stages.length})` : "not started"}
    · attempt ${s.attempt} · ${s.reason ? esc(s.reason) : ""}`;
  $("#ladder").innerHTML = m.stages.map((st, i) => {
    const cls = i < s.stage_index ? "done" : i === s.stage_index ? "current" : "";
    return `<div class="step ${cls}" data-stage="${esc(st.name)}"><div>${esc(st.name)}</div><div class="t">${pct(st.traffic)}${st.shadow ? ` · shadow ${pct(st.shadow)}` : ""}</div>
      ${st.approval ? `<div class="gate">approval</div>` : ""}${st.hold ? `<div class="t">hold ${esc(st.hold_text)}</div>` : ""}</div>`;
  }).join("");
  const c = s.traffic;
  $("#split").innerHTML = `<div class="split" aria-label="traffic split"><div class="c" style="width:${c * 100}%">${c > 0.08 ? `candidate ${pct(c)}` : ""}</div><div class="l" style="width:${(1 - c) * 100}%">${c < 0.92 ? `legacy ${pct(1 - c)}` : ""}</div></div>`;
  $("#routers").innerHTML = (s.routers ?? []).map(([router, status, share, detail]) =>
    `<div class="router ${esc(status)}" data-router="${esc(router)}">router <b>${esc(router)}</b>: <span class="status ${esc(status)}">${esc(status.replace("_", " "))}</span> at ${pct(share)} candidate${detail ? ` <span class="muted">${esc(detail)}</span>` : ""}</div>`).join("");
  if (lastSeq !== s.seq) {
    lastSeq = s.seq;
    const p = m.pending_approval;
    $("#approval").innerHTML = p ? `<div class="card approval"><b>Approval needed:</b> enter stage <b>${esc(p.next_stage)}</b> (${pct(p.next_traffic)} candidate traffic)
      <div class="actions"><button id="approve">Approve</button></div></div>` : "";
    if (p) $("#approve").addEventListener("click", () => operate(name, "approve", $("#reason").value.trim() || null));
    $("#rollback").disabled = ["draft", "rolled_back", "aborted"].includes(s.status);
    $("#stepback").disabled = !["running", "awaiting_approval"].includes(s.status) || s.stage_index < 1;
  }
  const gates = m.controller?.gates ?? m.last_verdict?.payload?.gates ?? [];
  // A metric source that cannot be read holds the stage: say so above the (last known) gates.
  const source = m.source?.error
    ? `<p class="source-failed" role="alert"><b>Metric source ${esc(m.source.name)} cannot be read:</b> ${esc(m.source.error)}. The stage holds: no promotion, no rollback.</p>`
    : "";
  $("#gates").innerHTML = source + (gates.length
    ? `<table><tr><th>gate</th><th>verdict</th><th>interval vs limit</th><th class="num">estimate (interval)</th><th class="num">samples c / l</th></tr>${gates.map(gateRow).join("")}</table>
       ${m.controller?.waiting_for ? `<p class="muted">waiting for ${esc(m.controller.waiting_for)}</p>` : ""}`
    : `<p class="muted">No verdict in this stage yet.</p>`);
  const firing = m.controller?.triggers ?? [];
  $("#triggers").innerHTML = (m.triggers.length
    ? `<ul>${m.triggers.map((t) => `<li>${esc(t.metric)} ${triggerThreshold(t, m.metrics?.[t.metric])} over ${t.window}s rolls back</li>`).join("")}</ul>`
    : `<p class="muted">No triggers.</p>`) + firing.map((f) => `<p class="error">FIRING: ${esc(f)}</p>`).join("");
  $("#notifications").innerHTML = notes.length
    ? `<table><tr><th>event</th><th>kind</th><th>to</th><th>status</th><th class="num">tries</th><th>last error</th></tr>
      ${notes.map((n) => `<tr data-kind="${esc(n.kind)}"><td>#${n.seq}</td><td>${esc(n.kind.replace("_", " "))}</td><td>${esc(n.target)}</td>
        <td class="delivery ${esc(n.status)}">${esc(n.status)}${n.status === "pending" ? ` (next ${esc(dateTime(n.next_at))})` : ""}</td>
        <td class="num">${n.attempts}</td><td class="muted">${esc(n.last_error ?? "")}</td></tr>`).join("")}</table>`
    : `<p class="muted">${m.spec.notify?.length ? "Nothing sent yet." : "No one is notified: add targets under <code>notify:</code> in the spec."}</p>`;
  const arms = Object.entries(m.arms);
  const streamed = arms.some(([, a]) => a.first_chunk);
  const firstChunk = (a) => streamed ? `<td class="num">${ms(a.first_chunk?.p50)}</td><td class="num">${ms(a.first_chunk?.p99)}</td>` : "";
  $("#arms").innerHTML = arms.length
    ? `<table><tr><th>arm</th><th class="num">calls</th><th class="num">error rate</th><th class="num">fallbacks</th><th class="num">p50</th><th class="num">p95</th><th class="num">p99</th>${streamed ? `<th class="num">first chunk p50</th><th class="num">first chunk p99</th>` : ""}</tr>
      ${arms.map(([arm, a]) => `<tr><td>${esc(arm)}</td><td class="num">${a.calls}</td><td class="num">${pct(a.error_rate)}</td><td class="num">${a.fallbacks}</td><td class="num">${ms(a.p50)}</td><td class="num">${ms(a.p95)}</td><td class="num">${ms(a.p99)}</td>${firstChunk(a)}</tr>`).join("")}</table>`
    : `<p class="muted">No calls recorded in this stage yet.</p>`;
  const custom = Object.entries(m.metrics ?? {});
  $("#custom").innerHTML = custom.length
    ? `<table><tr><th>metric</th><th class="num">candidate</th><th class="num">legacy</th><th>bad</th></tr>
      ${custom.map(([name, f]) => `<tr data-metric="${esc(name)}"><td>${esc(f.label)}</td><td class="num">${customValue(f, f.candidate)}</td><td class="num">${customValue(f, f.legacy)}</td><td>${esc(f.bad)}</td></tr>`).join("")}</table>`
    : `<p class="muted">No custom metrics declared (<code>metrics:</code> in the spec).</p>`;
  const pts = series.points;
  $("#charts").innerHTML = lineChart("error rate", pts, (p) => p.error_rate, pct)
    + lineChart("p50 latency", pts, (p) => p.p50, ms) + lineChart("p95 latency", pts, (p) => p.p95, ms) + lineChart("p99 latency", pts, (p) => p.p99, ms);
  $("#timeline").innerHTML = events.events.slice().reverse().map((e) => `<li data-type="${esc(e.type)}"><span class="when">${esc(dateTime(e.time))}</span>
    <span class="type">${esc(e.type.replace("_", " "))}</span> by ${esc(e.actor)}${e.reason ? `: ${esc(e.reason)}` : ""}</li>`).join("");
}

async function refresh() {
  const hash = location.hash || "#/";
  const match = hash.match(/^#\/m\/(.+)$/);
  const program = hash.match(/^#\/p\/(.+)$/);
  try {
    if (match) await renderMigration(decodeURIComponent(match[1]));
    else if (program) await renderProgram(decodeURIComponent(program[1]));
    else await renderList();
    $("#live").textContent = `live · updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (e.status !== 401) $("#live").textContent = `cannot update: ${e.message}`;
  }
}

function start() {
  clearInterval(timer);
  lastSeq = null;
  refresh();
  timer = setInterval(refresh, POLL_MS);
}

$("#signin").addEventListener("click", async () => {
  const token = await askToken("Sign in", "Paste a token (role viewer or above) to read migrations. It is kept for this browser session only.");
  if (token) { sessionStorage.setItem(READ_KEY, token); start(); }
});
window.addEventListener("hashchange", start);
start();
