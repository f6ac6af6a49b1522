// The explorer page: plain JavaScript over the JSON API (no build step, no library, nothing
// fetched from outside this server). Each section fills itself from one API call.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, key: null, explore: null, layer: null, scale: "map", start: 0, pageSize: 24, seq: 0 };
const COLORS = ["#2f6fb3", "#d9730d", "#2e9e5b", "#9b4dca", "#c23b3b"];

async function api(path, options) {
  const r = await fetch(path, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new Error(body && body.error ? body.error : `${r.status} ${r.statusText}`);
  return { status: r.status, body };
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

const fmt = (n) => Number(n).toLocaleString("en-US");
const pct = (x) => `${(100 * x).toFixed(2)}%`;

function note(text) { $("notes").append(el("p", { class: "note", text })); }

// ------------------------------------------------------------------ the model
function renderModel(info) {
  const pp = info.preprocess;
  const mean = pp.mean_image ? "mean image" : `mean ${pp.mean.map((v) => v.toFixed(1)).join("/")}`;
  const std = pp.std ? `, std ${pp.std.map((v) => v.toFixed(1)).join("/")}` : "";
  $("model-line").textContent = `${info.arch} from ${info.source} · ${info.classes.length} classes · ` +
    `input ${pp.in_chans}×${pp.crop}×${pp.crop} (centre of ${pp.resize}, ${pp.in_chans === 3 ? pp.channel_order : "grey"}, ${mean}${std}, ×${+pp.scale.toFixed(5)}) · ` +
    `${info.towers > 1 ? info.towers + " towers" : "one tower"} · ${info.device}`;
  for (const [part, why] of Object.entries(info.missing)) note(`${part}: ${why}`);
  $("layer-buttons").append(layerButton("all"));
  for (const layer of info.layers) $("layer-buttons").append(layerButton(layer.name));
  state.layer = info.layers[0].name;
  markLayer();
}

function layerButton(name) {
  const b = el("button", { type: "button", text: name, "data-layer": name });
  b.addEventListener("click", () => { state.layer = name; markLayer(); renderLayers(); });
  return b;
}

function markLayer() {
  for (const b of $("layer-buttons").children) b.classList.toggle("active", b.dataset.layer === state.layer);
}

// ------------------------------------------------------------------ choosing an image
async function loadStorePage(start) {
  const s = state.info.store;
  start = Math.max(0, Math.min(start, s.count - 1));
  const page = (await api(`/api/store?start=${start}&count=${state.pageSize}`)).body;
  state.start = start;
  $("store-title").textContent = `${s.split} images (${fmt(s.count)}, ${s.size}×${s.size}×${s.channels})`;
  $("page-label").textContent = `${start}–${start + page.images.length - 1}`;
  const thumbs = page.images.map((im) => {
    const b = el("button", { type: "button", class: "thumb", title: `#${im.index}: ${im.class}`, "data-index": im.index },
      el("img", { src: im.png, alt: im.class }));
    b.addEventListener("click", () => choose({ index: im.index }));
    return b;
  });
  $("thumbs").replaceChildren(...thumbs);
  markThumb();
}

function markThumb() {
  for (const t of $("thumbs").children) t.classList.toggle("selected", state.key === `${state.info.store.split}:${t.dataset.index}`);
}

async function choose(ref) {
  const seq = ++state.seq;
  $("upload-error").hidden = true;
  let res;
  try {
    const q = `scale=${state.scale}&k=5`;
    if (ref.file) {
      const form = new FormData();
      form.append("image", ref.file);
      res = await api(`/api/explore?${q}`, { method: "POST", body: form });
    } else if (ref.index !== undefined) {
      res = await api(`/api/explore?index=${ref.index}&${q}`);
    } else {
      res = await api(`/api/explore?image=${encodeURIComponent(ref.key)}&${q}`);
    }
  } catch (err) {
    $("upload-error").textContent = err.message;
    $("upload-error").hidden = false;
    return;
  }
  if (seq !== state.seq) return;  // a newer choice has been made meanwhile
  state.key = res.body.image;
  state.explore = res.body;
  if (state.info.store) markThumb();
  renderChosen(res.body);
  renderLayers();
  loadNeighbors(seq);
}

function renderChosen(x) {
  const pp = state.info.preprocess;
  $("view").src = $("normalized").checked ? x.view_normalized : x.view;
  $("view").dataset.image = x.image;
  $("view-caption").textContent = `${x.image}: the centre ${pp.crop}×${pp.crop} view the model is fed` +
    (x.class !== undefined ? `; true class ${x.class}` : "");
  const bars = x.top.map((t) => {
    const bar = el("div", { class: "bar" + (t.class === x.class ? " truth" : ""), "data-class": t.class, "data-probability": t.probability },
      el("div", { class: "fill" }), el("span", { class: "label", text: t.class }), el("span", { class: "p", text: t.probability.toFixed(3) }));
    bar.firstChild.style.width = `${(100 * t.probability).toFixed(2)}%`;
    return bar;
  });
  $("top5").replaceChildren(...bars);
  $("truth").textContent = x.class !== undefined ? `true class: ${x.class}` : "uploaded image (no label)";
}

// ------------------------------------------------------------------ activations
function zoomFor(img, target) {
  const z = Math.max(1, Math.min(8, Math.floor(target / Math.max(img.naturalWidth, 1))));
  img.style.width = `${img.naturalWidth * z}px`;
}

function renderLayers() {
  if (!state.explore) return;
  const shown = state.layer === "all" ? state.explore.layers : state.explore.layers.filter((l) => l.name === state.layer);
  const blocks = shown.map((l) => {
    const shape = l.shape.join(" × ");
    const meta = `${shape}${l.towers > 1 ? ` · ${l.towers} towers` : ""} · max ${l.max.toPrecision(3)} · ${(100 * l.zero_fraction).toFixed(0)}% zeros`;
    const per = l.kind === "maps" ? l.shape[0] / l.towers : l.shape[0];
    const figs = l.images.map((src, t) => {
      const img = el("img", { src, alt: `${l.name} tower ${t + 1}` });
      const target = l.kind === "maps" ? (l.towers > 1 ? 420 : 640) : 640;
      img.addEventListener("load", () => zoomFor(img, target));
      const caption = l.kind === "maps"
        ? (l.towers > 1 ? `tower ${t + 1}: maps ${t * per + 1}–${(t + 1) * per}` : `${per} maps`)
        : `${per} units, row by row`;
      return el("figure", {}, img, el("figcaption", { text: caption }));
    });
    return el("div", { class: "layer", "data-layer": l.name },
      el("h3", {}, l.name, el("span", { class: "small", text: meta })), el("div", { class: "towers" }, ...figs));
  });
  $("layer-view").replaceChildren(...blocks);
}

// ------------------------------------------------------------------ kernels, neighbours, summary, run
async function loadKernels() {
  const k = (await api("/api/kernels")).body;
  $("kernels-caption").textContent = `${k.count} kernels of ${k.shape.join("×")} (channels × height × width), each scaled to its own range` +
    (k.towers > 1 ? "; the paper found one tower's kernels colour-agnostic and the other's colour-specific" : "");
  const figs = k.images.map((src, t) => {
    const img = el("img", { src, alt: `conv1 kernels, tower ${t + 1}` });
    img.addEventListener("load", () => zoomFor(img, k.towers > 1 ? 280 : 400));
    return el("figure", {}, img, el("figcaption", { text: k.towers > 1 ? `tower ${t + 1}` : `${k.count} kernels` }));
  });
  $("kernels").replaceChildren(...figs);
}

async function loadNeighbors(seq) {
  const why = state.info.missing.neighbors;
  if (why) { $("neighbors-status").textContent = why; return; }
  let r;
  try {
    r = await api(`/api/neighbors?image=${encodeURIComponent(state.key)}&k=8`);
  } catch (err) { $("neighbors-status").textContent = err.message; return; }
  if (seq !== state.seq) return;
  if (r.status === 202) {
    const s = r.body.status;
    $("neighbors-status").textContent = `${s.message}… (${s.seconds ?? 0} s so far; this happens once, the index is cached beside the run)`;
    setTimeout(() => loadNeighbors(seq), 1500);
    return;
  }
  const x = r.body;
  $("neighbors-status").textContent = `${x.neighbors.length} nearest of ${fmt(x.count)} ${x.database} images by ${x.layer} distance` +
    ` (exact; ${x.search_ms} ms, ${fmt(x.ranked_exactly)} ranked in full precision)${x.excluded_itself ? "; the image itself left out" : ""}`;
  const items = x.neighbors.map((n) => el("div", { class: "neighbor", "data-index": n.store_index },
    el("img", { src: n.png, alt: n.class ?? String(n.label) }),
    el("div", { text: `${n.class ?? n.label}` }), el("div", { class: "small", text: `#${n.store_index}` }),
    el("div", { class: "small", text: `distance ${n.distance.toPrecision(3)}` })));
  $("neighbors").replaceChildren(...items);
}

async function loadSummary() {
  const s = (await api("/api/summary")).body;
  const head = el("tr", {}, ...["layer", "type", "output", "parameters", "mult-adds", "neurons"].map((h) => el("th", { text: h })));
  const rows = s.rows.map((r) => el("tr", {}, el("td", { text: r.name }), el("td", { text: r.kind }),
    el("td", { text: r.output_shape.join("×") }), el("td", { text: fmt(r.params) }), el("td", { text: fmt(r.macs) }), el("td", { text: fmt(r.neurons) })));
  const total = el("tr", { class: "total" }, el("td", { text: "total" }), el("td"), el("td"),
    el("td", { text: fmt(s.params) }), el("td", { text: fmt(s.macs) }), el("td", { text: fmt(s.neurons) }));
  const title = el("p", { class: "small", text: `${s.arch}, input ${s.input_shape.join("×")}${s.note ? " (" + s.note + ")" : ""}` });
  $("summary").replaceChildren(title, el("table", {}, head, ...rows, total));
}

async function loadRun() {
  const r = (await api("/api/run")).body;
  const train = r.train, val = r.validation;
  const drops = val.filter((v) => v.lr_dropped).map((v) => v.epoch);
  const loss = chart("loss (cross-entropy)", [
    { name: "train", points: train.map((m) => [m.epoch, m.loss]) },
    { name: "validation", points: val.map((m) => [m.epoch, m.val_loss]), dots: true },
  ], drops);
  const err = chart("error (%)", [
    { name: "train top-1", points: train.filter((m) => m.train_error !== undefined).map((m) => [m.epoch, 100 * m.train_error]) },
    { name: "validation top-1", points: val.map((m) => [m.epoch, 100 * m.val_top1_error]), dots: true },
    { name: "validation top-5", points: val.map((m) => [m.epoch, 100 * m.val_top5_error]), dots: true },
  ], drops);
  const lines = [["run folder", r.run]];
  if (r.final) lines.push([`final validation (${r.final.split ?? "val"}, epoch ${r.final.epoch})`, `top-1 ${pct(r.final.val_top1_error)}, top-5 ${pct(r.final.val_top5_error)}, loss ${r.final.val_loss.toFixed(4)}`]);
  if (r.best && r.final && r.best.epoch !== r.final.epoch) lines.push([`best (epoch ${r.best.epoch})`, `top-1 ${pct(r.best.val_top1_error)}`]);
  if (train.length) lines.push(["steps", fmt(train[train.length - 1].step)]);
  for (const [k, v] of Object.entries(r.config)) lines.push([k, String(v)]);
  const table = el("table", { id: "final" }, ...lines.map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { text: v }))));
  const parts = [el("div", { class: "charts" }, loss, err), table];
  if (!train.length && !val.length) parts.splice(1, 0, el("p", { class: "small", text: "metrics.jsonl has no training records yet" }));
  $("run").replaceChildren(...parts);
}

// A line chart as inline SVG: series of [x, y] points, dashed marks at the lr drops.
function chart(title, series, marks) {
  const W = 460, H = 260, L = 48, R = 12, T = 40, B = 34;
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  const pts = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
  add("text", { x: L, y: 14 }, title);
  if (!pts.length) { add("text", { x: L, y: H / 2 }, "no records"); return svg; }
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(0, ...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) y1 = y0 + 1;
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = (y) => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  for (const v of ticks(y0, y1)) {
    add("line", { class: "grid", x1: L, x2: W - R, y1: sy(v), y2: sy(v) });
    add("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end" }, +v.toPrecision(3));
  }
  for (const v of ticks(x0, x1)) add("text", { x: sx(v), y: H - B + 16, "text-anchor": "middle" }, +v.toPrecision(3));
  add("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B });
  add("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B });
  add("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "epoch");
  for (const m of marks) add("line", { x1: sx(m), x2: sx(m), y1: T, y2: H - B, stroke: "#888", "stroke-dasharray": "3 3" });
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const p = s.points.filter((q) => Number.isFinite(q[1]));
    if (!p.length) return;
    add("polyline", { points: p.map((q) => `${sx(q[0]).toFixed(1)},${sy(q[1]).toFixed(1)}`).join(" "), fill: "none", stroke: color, "stroke-width": 1.5, "data-series": s.name });
    if (s.dots) for (const q of p) add("circle", { cx: sx(q[0]), cy: sy(q[1]), r: 3, fill: color });
  });
  let x = L;  // the legend: one row under the title
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    add("line", { x1: x, x2: x + 14, y1: 27, y2: 27, stroke: color, "stroke-width": 2 });
    add("text", { x: x + 18, y: 31, style: `fill:${color}` }, s.name);
    x += 30 + 6.2 * s.name.length;
  });
  return svg;
}

function ticks(lo, hi, n = 5) {
  const step0 = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(v);
  return out;
}

// ------------------------------------------------------------------ wiring
function wire() {
  $("upload").addEventListener("change", (e) => { if (e.target.files.length) choose({ file: e.target.files[0] }); });
  $("normalized").addEventListener("change", () => { if (state.explore) renderChosen(state.explore); });
  $("scale").addEventListener("change", (e) => { state.scale = e.target.value; if (state.key) choose({ key: state.key }); });
  $("prev").addEventListener("click", () => loadStorePage(state.start - state.pageSize));
  $("next").addEventListener("click", () => loadStorePage(state.start + state.pageSize));
  $("goto").addEventListener("change", (e) => {
    const i = parseInt(e.target.value, 10);
    if (Number.isInteger(i) && i >= 0 && i < state.info.store.count) { loadStorePage(i - (i % state.pageSize)); choose({ index: i }); }
  });
  const over = (e) => { e.preventDefault(); document.body.classList.add("dragging"); };
  document.addEventListener("dragover", over);
  document.addEventListener("dragenter", over);
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    const f = e.dataTransfer && e.dataTransfer.files[0];
    if (f) choose({ file: f });
  });
}

async function main() {
  wire();
  try {
    state.info = (await api("/api/model")).body;
  } catch (err) { $("model-line").textContent = `cannot reach the model: ${err.message}`; return; }
  renderModel(state.info);
  const jobs = [loadSummary(), loadKernels()];
  if (state.info.run) jobs.push(loadRun()); else $("run").textContent = state.info.missing.run;
  if (state.info.store) {
    $("store-picker").hidden = false;
    jobs.push(loadStorePage(0).then(() => choose({ index: 0 })));
  } else {
    $("view-caption").textContent = "upload or drop an image to begin";
  }
  await Promise.all(jobs);
  document.body.dataset.loaded = "1";
}

main();
