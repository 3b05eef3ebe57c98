// reason-sae explorer: one offline script, no libraries, talking only to the server that served it.
// Pages (hash routes): #/features, #/feature/N, #/playground?feature=N. Everything with data is under /v1
// (vLLM's --api-key guards it): on a 401 the page asks for the key and sends it as a Bearer token.
"use strict";

const KEY_NAME = "reason-explore-key";
const S = { key: sessionStorage.getItem(KEY_NAME) || "", index: null, sort: { col: "score", desc: true }, query: "", last: null };
window.explorer = S;  // what the browser tests and the benchmark read (timings, last request ids)

function h(tag, attrs = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) el.append(kid.nodeType ? kid : String(kid));
  return el;
}
const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(d));

function showError(text) {
  const el = document.getElementById("alert");
  el.textContent = text || "";
  el.hidden = !text;
}

function askKey() {
  const form = document.getElementById("keyform");
  form.hidden = false;
  document.getElementById("apikey").focus();
}

async function api(path, opts = {}) {
  const headers = { "Content-Type": "application/json", ...(opts.headers || {}) };
  if (S.key) headers.Authorization = "Bearer " + S.key;
  const r = await fetch(path, { ...opts, headers });
  if (r.status === 401) { askKey(); throw new Error("this server needs its API key: enter it above"); }
  return r;
}
function errorText(body, r) {
  const e = body && (body.error || body);
  return (e && (e.message || e.detail)) || (typeof e === "string" ? e : "") || `${r.status} ${r.statusText}`;
}
async function getJSON(path, opts) {
  const r = await api(path, opts);
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error(errorText(body, r));
  return body;
}

async function loadIndex() {
  if (!S.index) S.index = await getJSON("/v1/explore/index");
  document.getElementById("served").textContent = `model ${S.index.registry.model} · SAE ${S.index.sae || "–"} at ${S.index.hook || "–"}`;
  return S.index;
}
const featureRow = (f) => S.index.features.find((r) => r.feature === f);

// ---------------------------------------------------------------- Features
function histogram(hist) {
  if (!hist || !hist.counts) return null;
  const W = 600, H = 120, n = hist.counts.length, top = Math.max(...hist.counts.map((c) => Math.log10(1 + c)), 1);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 16}`);
  svg.setAttribute("class", "hist");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `histogram of the ReasonScore of ${hist.total} features (log counts); top-list threshold ${fmt(hist.threshold)}`);
  hist.counts.forEach((c, i) => {
    const r = document.createElementNS(svg.namespaceURI, "rect"), hgt = (Math.log10(1 + c) / top) * H;
    r.setAttribute("x", (i * W) / n); r.setAttribute("width", W / n - 1); r.setAttribute("y", H - hgt); r.setAttribute("height", hgt);
    if (hist.edges[i + 1] > hist.threshold) r.setAttribute("class", "top");
    const t = document.createElementNS(svg.namespaceURI, "title");
    t.textContent = `${fmt(hist.edges[i])} to ${fmt(hist.edges[i + 1])}: ${c} features`;
    r.append(t); svg.append(r);
  });
  const label = document.createElementNS(svg.namespaceURI, "text");
  label.setAttribute("x", 0); label.setAttribute("y", H + 14); label.setAttribute("font-size", 11);
  label.textContent = `score ${fmt(hist.edges[0])} … ${fmt(hist.edges[n])} (log counts; orange: the listed top features)`;
  svg.append(label);
  return svg;
}

const COLUMNS = [["feature", "feature"], ["score", "ReasonScore"], ["mu_pos", "μ+"], ["mu_neg", "μ−"], ["entropy", "entropy"],
                 ["max_act", "max activation"], ["groups", "top groups"]];

function featuresPage(main) {
  const idx = S.index;
  main.append(h("h2", { text: `Features ranked by ReasonScore (${idx.features.length} of ${idx.d_sae ?? "?"})` }));
  if (idx.note) main.append(h("p", { class: "muted", text: idx.note }));
  const search = h("input", { id: "search", type: "search", value: S.query, placeholder: "feature id or group" });
  const body = h("tbody");
  const table = h("table", { id: "features" }, h("caption", { class: "muted", text: "Click a column to sort; values on every row." }),
    h("thead", {}, h("tr", {}, COLUMNS.map(([col, label]) => h("th", { scope: "col", class: col === "groups" ? "text" : null,
      "aria-sort": S.sort.col === col ? (S.sort.desc ? "descending" : "ascending") : null },
      col === "groups" ? label : h("button", { type: "button", onclick: () => { S.sort = { col, desc: S.sort.col === col ? !S.sort.desc : true }; render(); } }, label))),
      h("th", { scope: "col", text: "" }))), body);
  const draw = () => {
    const q = S.query.trim().toLowerCase();
    const rows = idx.features.filter((r) => !q || String(r.feature).startsWith(q) || r.top_groups.some((g) => g.group.toLowerCase().includes(q)));
    const key = (r) => (S.sort.col === "feature" ? r.feature : r[S.sort.col] ?? -Infinity);
    rows.sort((a, b) => (S.sort.desc ? key(b) - key(a) : key(a) - key(b)));
    body.replaceChildren(...rows.map((r) => h("tr", {},
      h("td", {}, h("a", { href: `#/feature/${r.feature}` }, `#${r.feature}`)), h("td", { text: fmt(r.score, 4) }), h("td", { text: fmt(r.mu_pos) }),
      h("td", { text: fmt(r.mu_neg) }), h("td", { text: fmt(r.entropy) }), h("td", { text: fmt(r.max_act) }),
      h("td", { class: "text", text: r.top_groups.map((g) => `${g.group} (${fmt(g.mu, 2)})`).join(", ") }),
      h("td", {}, h("a", { href: `#/playground?feature=${r.feature}`, "aria-label": `steer feature ${r.feature}` }, "Steer")))));
  };
  search.addEventListener("input", () => { S.query = search.value; draw(); });
  main.append(h("div", { class: "toolbar" }, h("label", { for: "search", text: "Search" }), search), histogram(idx.histogram), table);
  draw();
}

// ---------------------------------------------------------------- one feature
function featurePage(main, f) {
  const r = featureRow(f);
  main.append(h("h2", { text: `Feature #${f}` }));
  if (!r) { main.append(h("p", { text: `feature ${f} is not in this run's listed features` })); return; }
  main.append(h("p", {}, h("a", { class: "primary", role: "button", href: `#/playground?feature=${f}` }, "Steer this feature in the playground")));
  const facts = [["ReasonScore", fmt(r.score, 4)], ["rank", r.rank], ["μ+ (reasoning tokens)", fmt(r.mu_pos)], ["μ− (other tokens)", fmt(r.mu_neg)],
    ["entropy over groups", fmt(r.entropy)], ["max activation (SAE units, steering scale)", fmt(r.max_act)], ["decoder norm", fmt(r.decoder_norm)],
    ["token-driven control", r.control ? r.control.verdict : "not run for this feature"]];
  main.append(h("table", { class: "facts" }, h("tbody", {}, facts.map(([k, v]) => h("tr", {}, h("th", { scope: "row", text: k }), h("td", { text: v }))))));
  main.append(h("h3", { text: "Strongest groups" }), h("ul", {}, r.top_groups.map((g) => h("li", { text: `${g.group}: ${fmt(g.mu)}` }))));
  if (r.contexts && r.contexts.length) {
    main.append(h("h3", { text: "Top contexts" }), h("table", {}, h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "activation" }), h("th", { scope: "col", class: "text", text: "context (token in brackets)" }))),
      h("tbody", {}, r.contexts.map((c) => h("tr", {}, h("td", { text: fmt(c.activation) }), h("td", { class: "text", text: c.text }))))));
  }
}

// ---------------------------------------------------------------- playground
let rowId = 0;
function steerRow(feature, strength = "2") {
  const id = ++rowId, idx = S.index;
  const sel = h("select", { id: `feat-${id}`, class: "feat" }, idx.features.map((r) => h("option", { value: r.feature, selected: r.feature === feature },
    `#${r.feature} (score ${fmt(r.score, 3)}, max ${fmt(r.max_act, 2)})`)));
  const range = h("input", { id: `range-${id}`, type: "range", min: 0, max: 10, step: 0.1, value: Number(strength) || 0, "aria-label": "strength slider" });
  const num = h("input", { id: `strength-${id}`, class: "strength", type: "text", inputmode: "decimal", value: strength, size: 7 });
  range.addEventListener("input", () => { num.value = range.value; });
  num.addEventListener("input", () => { if (Number.isFinite(Number(num.value))) range.value = num.value; });
  const mode = h("select", { id: `mode-${id}`, class: "mode" }, ["set", "add", "scale"].map((m) => h("option", { value: m }, m)));
  const row = h("div", { class: "row steer" }, h("label", { for: `feat-${id}`, text: "Feature" }), sel,
    h("label", { for: `strength-${id}`, text: "Strength (× max activation)" }), range, num, h("label", { for: `mode-${id}`, text: "Mode" }), mode,
    h("button", { type: "button", "aria-label": "remove this feature", onclick: () => row.remove() }, "Remove"));
  return row;
}

function field(id, label, attrs = {}) {
  return [h("label", { for: id, text: label }), h("input", { id, ...attrs })];
}

function buildRequest() {
  const idx = S.index, val = (id) => document.getElementById(id).value.trim();
  const edits = [...document.querySelectorAll(".row.steer")].map((row) => {
    const feature = Number(row.querySelector(".feat").value), text = row.querySelector(".strength").value.trim(), k = Number(text);
    const max = featureRow(feature).max_act;
    return { feature, mode: row.querySelector(".mode").value, value: text !== "" && Number.isFinite(k) ? Number((k * max).toPrecision(6)) : text, strength: text };
  });
  const cond = {};
  if (val("from-token") !== "") cond.from_token = Number(val("from-token"));
  if (val("to-token") !== "") cond.to_token = Number(val("to-token"));
  if (document.getElementById("only-think").checked) cond.only_in = "think";
  if (val("gate-feature") !== "") cond.when = { feature: Number(val("gate-feature")), above: Number(val("gate-above") || 0) };
  const specs = [];
  if (edits.length) specs.push({ sae: idx.sae, sae_id: idx.sae_id, hook: idx.hook, edits: edits.map(({ strength, ...e }) => e), ...cond });
  const vec = document.getElementById("vector");
  if (vec && vec.value) specs.push({ vector: vec.value, hook: val("vector-hook"), coefficient: Number(val("vector-coef")), ...cond });
  const extra = val("read-extra").split(/[\s,]+/).filter(Boolean).map(Number);
  const read = [...new Set([...edits.map((e) => e.feature), ...extra])];
  const readout = { sae: idx.sae, sae_id: idx.sae_id, hook: idx.hook, features: read.length ? read : [idx.features[0].feature], positions: "output" };
  const chat = document.getElementById("chat").checked, prompt = document.getElementById("prompt").value;
  const common = { model: idx.registry.model, max_tokens: Number(val("max-tokens")), temperature: 0 };
  const body = chat ? { ...common, messages: [{ role: "user", content: prompt }] } : { ...common, prompt };
  const name = edits.map((e) => `f${e.feature}_s${e.strength}`).join("_") || "vector";
  return { steering: specs.length === 0 ? null : specs.length === 1 ? specs[0] : specs, readout, body, chat, name };
}

function copyBlocks(req) {
  const path = req.chat ? "/v1/chat/completions" : "/v1/completions";
  const payload = { ...req.body, vllm_xargs: { steering: JSON.stringify(req.steering), readout: JSON.stringify(req.readout) } };
  const auth = S.key ? " -H \"Authorization: Bearer $API_KEY\"" : "";
  return {
    spec: JSON.stringify(req.steering, null, 1),
    curl: `curl -s ${location.origin}${path} -H 'Content-Type: application/json'${auth} -d '${JSON.stringify(payload).replace(/'/g, "'\\''")}'`,
    arms: JSON.stringify({ name: req.name, steering: req.steering }),
  };
}

async function streamArm(req, steering, out, onToken) {
  const path = req.chat ? "/v1/chat/completions" : "/v1/completions";
  const xargs = { readout: JSON.stringify(req.readout) };
  if (steering) xargs.steering = JSON.stringify(steering);
  const r = await api(path, { method: "POST", body: JSON.stringify({ ...req.body, stream: true, vllm_xargs: xargs }) });
  if (!r.ok) throw new Error(errorText(await r.json().catch(() => null), r));
  const reader = r.body.getReader(), dec = new TextDecoder();
  let buf = "", id = null, text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const line = buf.slice(0, cut).trim(); buf = buf.slice(cut + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(errorText(chunk, r));
      id = chunk.id || id;
      const c = chunk.choices && chunk.choices[0];
      const piece = c ? (req.chat ? (c.delta && c.delta.content) || "" : c.text || "") : "";
      if (piece) { text += piece; out.textContent = text; onToken(); }
    }
  }
  return { id, text };
}

async function heatmap(arm, result, req, box) {
  const read = await getJSON(`/v1/features/${encodeURIComponent(result.id)}`);
  const rec = Object.values(read.requests)[0][req.readout.hook];
  const { tokens } = await getJSON("/v1/explore/tokens", { method: "POST", body: JSON.stringify({ ids: rec.token_ids }) });
  const feats = req.readout.features, pick = document.getElementById("heat-feature");
  const col = Math.max(0, feats.indexOf(Number(pick.value)));
  const f = feats[col], max = (featureRow(f) && featureRow(f).max_act) || Math.max(1e-9, ...rec.activations.map((a) => a[col]));
  const cells = rec.token_ids.map((_, i) => {
    const v = rec.activations[i][col], a = Math.min(1, Math.max(0, v / max));
    return h("span", { "data-value": v, "data-feature": f, title: `${JSON.stringify(tokens[i])}: feature ${f} = ${v.toFixed(4)}`,
      style: `background: rgba(194, 65, 12, ${a.toFixed(3)})` }, tokens[i]);
  });
  const table = h("details", {}, h("summary", { text: `${arm}: values as a table` }), h("table", {},
    h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "position" }), h("th", { scope: "col", class: "text", text: "token" }),
      feats.map((ff) => h("th", { scope: "col", text: `#${ff}` })))),
    h("tbody", {}, rec.token_ids.map((_, i) => h("tr", {}, h("td", { text: rec.positions[i] }), h("td", { class: "text", text: JSON.stringify(tokens[i]) }),
      rec.activations[i].map((v) => h("td", { text: v.toFixed(4) })))))));
  box.replaceChildren(h("h4", { text: `${arm}: feature #${f} per token (shade: share of max activation ${fmt(max)})` }),
    h("div", { class: "heat", id: `heat-${arm}`, "data-request-id": result.id }, cells), table);
}

function playgroundPage(main, params) {
  const idx = S.index, reg = idx.registry;
  const first = Number(params.get("feature") ?? idx.features[0]?.feature);
  rowId = 0;  // the first feature row's controls are always #feat-1, #strength-1, #mode-1
  const rows = h("div", { id: "steer-rows" }, steerRow(first));
  const vectors = reg.vectors.length ? h("fieldset", {}, h("legend", { text: "Registered vector" }), h("div", { class: "row" },
    h("label", { for: "vector", text: "Vector" }), h("select", { id: "vector" }, h("option", { value: "" }, "none"), reg.vectors.map((v) => h("option", { value: v }, v))),
    h("label", { for: "vector-hook", text: "Hook" }), h("select", { id: "vector-hook" }, [...new Set([...reg.vector_hooks, ...reg.saes.map((s) => s.hook)])].map((k) => h("option", { value: k }, k))),
    ...field("vector-coef", "Coefficient", { type: "text", inputmode: "decimal", value: "1", size: 6 }))) : null;
  const status = h("p", { id: "status", role: "status", "aria-live": "polite", class: "muted" });
  const progress = h("progress", { id: "progress", max: 1, value: 0, "aria-label": "tokens streamed" });
  const outBase = h("div", { class: "out", id: "out-baseline", "aria-label": "baseline text" });
  const outSteer = h("div", { class: "out", id: "out-steered", "aria-label": "steered text" });
  const heatBase = h("div", { id: "heatbox-baseline" }), heatSteer = h("div", { id: "heatbox-steered" });
  const copies = h("div", { id: "copies" });
  const button = h("button", { type: "submit", class: "primary", id: "generate" }, "Generate baseline and steered");
  const form = h("form", { id: "playground" },
    h("fieldset", {}, h("legend", { text: "Prompt" }), h("label", { for: "prompt", class: "muted", text: "Prompt text" }),
      h("textarea", { id: "prompt", rows: 3 }, params.get("prompt") || "Solve step by step: what is 17 + 25?"),
      h("div", { class: "row" }, h("input", { id: "chat", type: "checkbox", checked: params.get("chat") !== "0" }), h("label", { for: "chat", text: "apply the chat template" }),
        ...field("max-tokens", "Max tokens", { type: "number", min: 1, max: 4096, value: params.get("max_tokens") || 64 }))),
    h("fieldset", {}, h("legend", { text: "SAE features to steer" }), rows,
      h("button", { type: "button", onclick: () => rows.append(steerRow(idx.features[0].feature)) }, "Add a feature")),
    vectors,
    h("fieldset", {}, h("legend", { text: "Conditions (optional)" }), h("div", { class: "row" },
      ...field("from-token", "From generated token", { type: "text", inputmode: "numeric", size: 5 }),
      ...field("to-token", "to (not including)", { type: "text", inputmode: "numeric", size: 5 }),
      h("input", { id: "only-think", type: "checkbox" }), h("label", { for: "only-think", text: "only inside <think>" }),
      ...field("gate-feature", "Gate: feature", { type: "text", inputmode: "numeric", size: 6 }),
      ...field("gate-above", "above", { type: "text", inputmode: "decimal", size: 6 }))),
    h("fieldset", {}, h("legend", { text: "Readout" }), h("div", { class: "row" },
      ...field("read-extra", "Also read features", { type: "text", size: 16, placeholder: "e.g. 3, 17" }),
      h("label", { for: "heat-feature", text: "Heatmap feature" }), h("select", { id: "heat-feature" }, idx.features.map((r) => h("option", { value: r.feature, selected: r.feature === first }, `#${r.feature}`))))),
    h("div", { class: "row" }, button, progress), status);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError("");
    const req = buildRequest(), t0 = performance.now(), timing = {};
    if (!req.readout.features.includes(Number(document.getElementById("heat-feature").value))) req.readout.features.push(Number(document.getElementById("heat-feature").value));
    const c = copyBlocks(req);
    copies.replaceChildren(h("h3", { text: "Copy as" }), ...[["spec", "steering spec (JSON)"], ["curl", "curl call"], ["arms", "lm-eval arms= entry"]].map(([k, label]) =>
      h("div", {}, h("div", { class: "row" }, h("strong", { text: label }), h("button", { type: "button", onclick: () => navigator.clipboard && navigator.clipboard.writeText(c[k]) }, `Copy ${k}`)),
        h("pre", { class: "copy", id: `copy-${k}`, tabindex: 0 }, c[k]))));
    button.disabled = true; outBase.textContent = ""; outSteer.textContent = ""; heatBase.replaceChildren(); heatSteer.replaceChildren();
    let streamed = 0;
    progress.max = 2 * req.body.max_tokens; progress.value = 0;
    status.textContent = "generating baseline and steered together…";
    const onToken = () => { if (!timing.first_token_ms) timing.first_token_ms = performance.now() - t0; progress.value = ++streamed; };
    S.last = { request: req, timing, state: "running" };
    const arms = await Promise.allSettled([streamArm(req, null, outBase, onToken), streamArm(req, req.steering, outSteer, onToken)]);
    timing.done_ms = performance.now() - t0;
    progress.value = progress.max;
    const failed = arms.find((a) => a.status === "rejected");
    S.last.ids = arms.map((a) => (a.status === "fulfilled" ? a.value.id : null));
    S.last.texts = arms.map((a) => (a.status === "fulfilled" ? a.value.text : null));
    try {
      if (failed) throw failed.reason;
      await heatmap("baseline", arms[0].value, req, heatBase);
      await heatmap("steered", arms[1].value, req, heatSteer);
      status.textContent = `done: first token after ${Math.round(timing.first_token_ms)} ms, both texts after ${Math.round(timing.done_ms)} ms`;
      S.last.state = "done";
    } catch (e) {
      showError(e.message);
      status.textContent = "the server refused or failed: see the message above";
      S.last.state = "error"; S.last.error = e.message;
    } finally {
      button.disabled = false;
    }
  });
  main.append(h("h2", { text: "Playground: baseline vs steered, greedy, in one batch" }), form,
    h("div", { class: "grid2" }, h("section", { "aria-label": "baseline" }, h("h3", { text: "Baseline" }), outBase, heatBase),
      h("section", { "aria-label": "steered" }, h("h3", { text: "Steered" }), outSteer, heatSteer)), copies);
}

// ---------------------------------------------------------------- arms
function armsPage(main) {
  const arms = S.index.arms;
  main.append(h("h2", { text: "Arms: a steered_vllm run, every arm against its baseline" }));
  if (!arms) { main.append(h("p", { text: "No arms run here: start the explorer with `reason-sae explore --scores DIR --arms RUN_DIR`." })); return; }
  const figure = h("figure", {}, h("figcaption", { class: "muted", text: `Forest plot: each arm minus ${arms.baseline}, 95% CI (values in the table below)` }));
  main.append(h("p", { class: "muted", text: `${arms.run}: baseline ${arms.baseline}, ${arms.arms.length - 1} arm(s), tasks ${arms.report.tasks.join(", ")}, p-values ${arms.report.correction}-adjusted` }), figure);
  api("/v1/explore/arms/plot").then(async (r) => {
    if (!r.ok) throw new Error(errorText(await r.json().catch(() => null), r));
    figure.prepend(h("img", { id: "forest", src: URL.createObjectURL(await r.blob()), alt: "forest plot of every arm's difference from the baseline", style: "max-width: 100%" }));
  }).catch((e) => figure.append(h("p", { class: "muted", text: e.message })));
  const rows = [];
  for (const [arm, metrics] of Object.entries(arms.report.arms)) for (const [metric, r] of Object.entries(metrics)) rows.push([arm, metric, r]);
  main.append(h("table", { id: "arms-table" }, h("thead", {}, h("tr", {}, ["arm", "metric", "n", "baseline", "arm", "difference [95% CI]", "p (adjusted)", "significant"].map((t, i) =>
    h("th", { scope: "col", class: i < 2 ? "text" : null, text: t })))),
    h("tbody", {}, rows.map(([arm, metric, r]) => h("tr", {}, h("td", { text: arm }), h("td", { class: "text", text: metric }), h("td", { text: r.n }),
      h("td", { text: fmt(r.baseline[0]) }), h("td", { text: fmt(r.steered[0]) }), h("td", { text: `${fmt(r.diff)} [${fmt(r.diff_low)}, ${fmt(r.diff_high)}]` }),
      h("td", { text: `${fmt(r.p_value)} (${fmt(r.p_adjusted)})` }), h("td", { text: r.significant ? "yes" : "no" }))))));
  const others = arms.arms.filter((a) => a !== arms.baseline);
  main.append(h("h3", { text: `Per problem: ${arms.baseline} vs each arm` }), h("table", { id: "problems" },
    h("thead", {}, h("tr", {}, ["task / doc", "target", arms.baseline, ...others].map((t) => h("th", { scope: "col", class: "text", text: t })))),
    h("tbody", {}, arms.problems.map((p) => h("tr", {}, h("td", { class: "text", text: `${p.task} #${p.doc_id}` }), h("td", { class: "text", text: p.target }),
      [arms.baseline, ...others].map((a) => {
        const ans = p.answers[a];
        if (!ans) return h("td", { class: "text", text: "–" });
        const m = Object.entries(ans.metrics).map(([k, v]) => `${k} ${fmt(v, 0)}`).join(", ");
        return h("td", { class: "text" }, h("details", {}, h("summary", { text: m || "answer" }), h("div", { class: "out", text: ans.answer })));
      }))))));
}

// ---------------------------------------------------------------- routing
async function render() {
  const main = document.getElementById("main");
  const [path, query] = (location.hash.slice(1) || "/features").split("?");
  const params = new URLSearchParams(query || "");
  const page = path.split("/")[1] || "features";
  document.querySelectorAll("nav a").forEach((a) => (a.dataset.page === page || (page === "feature" && a.dataset.page === "features")
    ? a.setAttribute("aria-current", "page") : a.removeAttribute("aria-current")));
  try {
    await loadIndex();
  } catch (e) {
    main.replaceChildren(h("p", { text: e.message }));
    return;
  }
  const keepFocus = document.activeElement && document.activeElement.id === "search";
  main.replaceChildren();
  if (page === "feature") featurePage(main, Number(path.split("/")[2]));
  else if (page === "playground") playgroundPage(main, params);
  else if (page === "arms") armsPage(main);
  else featuresPage(main);
  if (keepFocus) document.getElementById("search").focus();
  document.body.dataset.ready = page;
}

document.getElementById("keyform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  S.key = document.getElementById("apikey").value;
  sessionStorage.setItem(KEY_NAME, S.key);
  document.getElementById("keyform").hidden = true;
  showError("");
  render();
});
window.addEventListener("hashchange", () => { showError(""); render(); });
render();
