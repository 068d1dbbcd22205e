// The playground: submit jobs, follow them, watch and download the results, see the routing.
// Everything goes through the public /v1 API with the key from the key field (Bearer).
// Media cannot be loaded with <img src>/<video src> (they send no Authorization header), so
// thumbnails and videos are fetched with the header and shown through blob: URLs.

const KEY_STORAGE = "paris.apiKey";
const TERMINAL = new Set(["completed", "failed"]);
const LIST_LIMIT = 30;

const $ = (selector, root = document) => root.querySelector(selector);
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  key: localStorage.getItem(KEY_STORAGE) || "",
  experts: [],  // expert names by index, from the model's manifest
  // id -> {job, card, blobs: blob URLs to revoke, follow: AbortController | null,
  //        media: result loaded, liveSteps: routing from progress events}
  jobs: new Map(),
};

// ---- API ------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.param = err.param || null;
    this.code = err.code || null;
  }
}

function authHeaders(extra = {}) {
  return state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : extra;
}

async function api(path, { method = "GET", body, headers, signal } = {}) {
  const res = await fetch(path, { method, body, signal, headers: authHeaders(headers) });
  if (!res.ok) {
    let payload = null;
    try { payload = await res.json(); } catch { /* not JSON */ }
    throw new ApiError(res.status, payload);
  }
  return res;
}

async function apiJson(path, options) {
  return parseJson(await (await api(path, options)).text());
}

// Seeds are 63-bit integers: JSON.parse would round them to the nearest double
// (8772104593415965125 -> 8772104593415965000), so they are kept as the digits the server sent.
// The pattern cannot match inside a JSON string value, where every quote is escaped.
function parseJson(text) {
  return JSON.parse(text.replace(/"seed":\s*(\d+)/g, '"seed":"$1"'));
}

async function apiBlobUrl(entry, path) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  entry.blobs.push(url);
  return url;
}

// ---- API key ---------------------------------------------------------------------------------------
function setupKey() {
  const input = $("#api-key");
  input.value = state.key;
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = input.value.trim();
    if (state.key) localStorage.setItem(KEY_STORAGE, state.key);
    else localStorage.removeItem(KEY_STORAGE);
    for (const id of [...state.jobs.keys()]) removeCard(id);
    start();
  });
}

function keyStatus(text) {
  $("#key-status").textContent = text;
}

// ---- model info ------------------------------------------------------------------------------------
async function loadModel() {
  const models = await apiJson("/v1/models");
  const model = models.data[0];
  $("#model").textContent = model ? model.id : "no model";
  $("#model").title = model && model.description ? model.description : "the model this server serves";
  state.experts = model && Array.isArray(model.experts) ? model.experts : [];
  // the speed presets the server accepts as `speed`, the model's default selected; a server
  // that lists none gets no `speed` field
  const presets = model && Array.isArray(model.speed_presets) ? model.speed_presets : [];
  const select = $("#speed");
  select.replaceChildren(...presets.map((name) => new Option(name, name, false, name === model.default_speed)));
  $("#speed-field").hidden = presets.length === 0;
  showExamples(model && Array.isArray(model.examples) ? model.examples : []);
}

// The model's example prompts (its manifest's `examples`): a click puts one in the prompt field.
function showExamples(examples) {
  const list = $("#examples");
  list.replaceChildren(...examples.map((prompt) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "example";
    button.textContent = prompt;
    button.addEventListener("click", () => {
      const field = $("#create-form").prompt;
      field.value = prompt;
      field.focus();
    });
    return button;
  }));
  $("#examples-field").hidden = examples.length === 0;
}

function expertName(e) {
  return state.experts[e] || `expert ${e}`;
}

// ---- the form --------------------------------------------------------------------------------------
function mode() {
  return $("input[name=mode]:checked").value;
}

function setupForm() {
  const form = $("#create-form");
  for (const radio of form.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => { $("#first-frame").hidden = mode() !== "i2v"; });
  }
  const routing = $("#routing");
  const showRoutingFields = () => {
    for (const field of form.querySelectorAll("[data-routing]")) field.hidden = field.dataset.routing !== routing.value;
  };
  routing.addEventListener("change", showRoutingFields);
  showRoutingFields();

  let previewUrl = null;
  $("#image-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    const preview = $("#image-preview");
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = file ? URL.createObjectURL(file) : null;
    preview.hidden = !file;
    if (file) preview.src = previewUrl;
  });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const error = $("#form-error");
    error.textContent = "";
    let body;
    try {
      body = formBody(form);
    } catch (err) {
      error.textContent = err.message;
      return;
    }
    const button = $("#submit");
    button.disabled = true;
    try {
      const job = await apiJson("/v1/videos", { method: "POST", body });
      upsertJob(job, { prepend: true });
    } catch (err) {
      error.textContent = err.param ? `${err.param}: ${err.message}` : err.message;
      if (err.status === 401) keyStatus("the server needs a valid key");
    } finally {
      button.disabled = false;
    }
  });
}

// Only the fields the user filled in: the server applies the model's defaults to the rest.
function formBody(form) {
  const data = new FormData();
  const prompt = form.prompt.value.trim();
  if (!prompt) throw new Error("Write a prompt first.");
  data.append("prompt", prompt);
  const routing = form.routing.value;
  const fields = ["size", "num_inference_steps", "guidance_scale", "seed", "negative_prompt"];
  if (routing === "top_k") fields.push("top_k");
  if (routing === "fixed") fields.push("expert");
  if (routing === "schedule") fields.push("expert_schedule");
  if (!$("#speed-field").hidden) fields.push("speed");
  for (const name of fields) {
    const value = form.elements[name].value.trim();
    if (value !== "") data.append(name, value);
  }
  data.append("routing", routing);
  const length = $("#length").value.trim();
  if (length !== "") data.append($("#length-unit").value, length);
  if (mode() === "i2v") {
    const file = $("#image-input").files[0];
    if (!file) throw new Error("Choose a first frame for image to video.");
    data.append("input_reference", file, file.name);
  }
  return data;
}

// ---- job cards -------------------------------------------------------------------------------------
function upsertJob(job, { prepend = false } = {}) {
  let entry = state.jobs.get(job.id);
  if (!entry) {
    const card = $("#job-template").content.firstElementChild.cloneNode(true);
    card.dataset.id = job.id;
    $(".cancel", card).addEventListener("click", () => cancelJob(job.id));
    $(".delete", card).addEventListener("click", () => deleteJob(job.id));
    entry = { job, card, blobs: [], follow: null, media: false, liveSteps: [] };
    state.jobs.set(job.id, entry);
    const list = $("#job-list");
    if (prepend) list.prepend(card); else list.append(card);
  }
  entry.job = job;
  render(entry);
  if (TERMINAL.has(job.status)) {
    stopFollowing(entry);
    if (job.status === "completed" && !entry.media) loadResult(entry);
  } else if (!entry.follow) {
    follow(entry);
  }
  $("#jobs-empty").hidden = state.jobs.size > 0;
}

function render(entry) {
  const { job, card } = entry;
  card.dataset.status = job.status;
  $(".status", card).textContent = job.status.replace("_", " ");
  $(".job-id", card).textContent = job.id;
  const created = new Date(job.created_at * 1000);
  $("time", card).dateTime = created.toISOString();
  $("time", card).textContent = created.toLocaleTimeString();
  $(".prompt", card).textContent = job.prompt || "";
  const meta = [job.image_to_video ? "image to video" : "text to video", job.size,
    job.num_frames != null ? `${job.num_frames} frames` : null, `${job.seconds} s`,
    job.num_inference_steps != null ? `${job.num_inference_steps} steps` : null,
    job.seed != null ? `seed ${job.seed}` : null];
  $(".meta", card).textContent = meta.filter(Boolean).join(" · ");
  setProgress(entry, job.progress, progressText(job));
  const error = $(".job-error", card);
  error.hidden = !job.error;
  error.textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  $(".cancel", card).hidden = TERMINAL.has(job.status);
}

function progressText(job) {
  if (job.status === "queued") return job.queue_position ? `queued · position ${job.queue_position}` : "queued";
  if (job.status === "in_progress") {
    return job.step != null && job.num_inference_steps ? `step ${job.step} of ${job.num_inference_steps}` : "starting";
  }
  if (job.status === "completed") return job.completed_at ? `done in ${job.completed_at - job.created_at} s` : "done";
  return "";
}

function setProgress(entry, percent, label) {
  const bar = $(".progress", entry.card);
  bar.setAttribute("aria-valuenow", String(percent));
  $(".bar", bar).style.width = `${percent}%`;
  $(".progress-label", entry.card).textContent = label;
}

async function loadResult(entry) {
  entry.media = true;
  const { job, card } = entry;
  const base = `/v1/videos/${job.id}/content`;
  try {
    // the small thumbnail first, shown until the video is in
    const thumb = await apiBlobUrl(entry, `${base}?variant=thumbnail`);
    const img = $(".thumb", card);
    img.src = thumb;
    img.hidden = false;
    const video = await apiBlobUrl(entry, `${base}?variant=video`);
    const player = $(".player", card);
    player.poster = thumb;
    player.src = video;
    player.hidden = false;
    img.hidden = true;
    const link = $(".download", card);
    link.href = video;
    link.download = `${job.id}.mp4`;
    link.hidden = false;
  } catch (err) {
    entry.media = false;
    showCardError(entry, `could not load the video: ${err.message}`);
  }
  try {
    const trace = await apiJson(`/v1/videos/${job.id}/trace`);
    drawRouting(entry, trace.steps, numExperts(trace), trace.steps.length);
  } catch (err) {
    showCardError(entry, `could not load the routing trace: ${err.message}`);
  }
}

function showCardError(entry, text) {
  const error = $(".job-error", entry.card);
  error.hidden = false;
  error.textContent = text;
}

async function cancelJob(id) {
  const entry = state.jobs.get(id);
  try {
    upsertJob(await apiJson(`/v1/videos/${id}/cancel`, { method: "POST" }));
  } catch (err) {
    showCardError(entry, err.message);
  }
}

async function deleteJob(id) {
  try {
    await api(`/v1/videos/${id}`, { method: "DELETE" });
    removeCard(id);
  } catch (err) {
    showCardError(state.jobs.get(id), err.message);
  }
}

function removeCard(id) {
  const entry = state.jobs.get(id);
  if (!entry) return;
  stopFollowing(entry);
  for (const url of entry.blobs) URL.revokeObjectURL(url);
  entry.card.remove();
  state.jobs.delete(id);
  $("#jobs-empty").hidden = state.jobs.size > 0;
}

// ---- following a running job through its events --------------------------------------------------
function follow(entry) {
  entry.follow = new AbortController();
  const signal = entry.follow.signal;
  followEvents(entry, signal).catch((err) => {
    if (!signal.aborted) showCardError(entry, `lost track of the job: ${err.message}`);
  });
}

function stopFollowing(entry) {
  if (entry.follow) entry.follow.abort();
  entry.follow = null;
}

function setLiveMode(mode) {
  $("#live-mode").textContent = `live: ${mode}`;
}

// Server-Sent Events read with fetch(), because EventSource cannot send the Authorization header.
// A dropped connection (network, an API process restarting) reconnects with Last-Event-ID, so no
// event is missed; the server ends the stream after the job's last event.
async function followEvents(entry, signal) {
  const id = entry.job.id;
  let lastEventId = null;
  let failures = 0;
  while (!signal.aborted) {
    let res = null;
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastEventId) headers["Last-Event-ID"] = lastEventId;
      res = await fetch(`/v1/videos/${id}/events`, { headers: authHeaders(headers), signal });
    } catch (err) {
      if (signal.aborted) return;
    }
    if (res && res.status === 404) return removeCard(id);  // deleted elsewhere or expired
    if (res && res.ok && res.body) {
      failures = 0;
      setLiveMode("server-sent events");
      let ended = false;
      try {
        ended = await readEvents(res.body, signal, (event) => {
          if (event.id) lastEventId = event.id;
          applyEvent(entry, event);
        });
      } catch (err) {
        if (signal.aborted) return;  // the connection dropped: reconnect from lastEventId
      }
      if (ended) return upsertJob(await apiJson(`/v1/videos/${id}`));  // the final record: completed_at, routing
    } else {
      failures += 1;
      setLiveMode("reconnecting");
    }
    await sleep(1000 * Math.min(failures + 1, 5), signal);
  }
}

// Calls onEvent for each complete frame; true when a terminal event arrived.
async function readEvents(stream, signal, onEvent) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    while (!signal.aborted) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value;  // this server ends lines with \n only
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseFrame(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (!event) continue;
        onEvent(event);
        if (event.type === "completed" || event.type === "failed") return true;
      }
    }
    return false;
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseFrame(frame) {
  const event = { id: null, type: "message", data: "" };
  let hasData = false;
  for (const line of frame.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (name === "id") event.id = value;
    else if (name === "event") event.type = value;
    else if (name === "data") { event.data += (hasData ? "\n" : "") + value; hasData = true; }
  }
  if (!hasData) return null;
  try { event.data = JSON.parse(event.data); } catch { return null; }
  return event;
}

function applyEvent(entry, { type, data }) {
  const job = entry.job;
  if (type === "queued") {
    entry.job = { ...job, status: "queued", queue_position: data.position };
  } else if (type === "progress") {
    entry.job = { ...job, status: "in_progress", queue_position: null, step: data.step,
      num_inference_steps: data.total, progress: data.progress };
    // progress step n (steps done) is trace step n - 1 (0-based)
    entry.liveSteps[data.step - 1] = { step: data.step - 1, experts: data.experts || [], weights: data.weights || [] };
    const done = entry.liveSteps.filter(Boolean);
    drawRouting(entry, done, Math.max(0, ...done.flatMap((s) => s.experts)) + 1, data.total);
  } else if (type === "failed") {
    entry.job = { ...job, status: "failed", error: { code: data.code, message: data.message } };
  }
  render(entry);
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

// ---- routing chart ---------------------------------------------------------------------------------
function numExperts(trace) {
  const shares = trace.routing && trace.routing.step_share ? Object.keys(trace.routing.step_share).length : 0;
  const used = Math.max(-1, ...trace.steps.flatMap((s) => s.experts)) + 1;
  return Math.max(shares, used, 1);
}

function svg(name, attrs = {}, parent = null) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.append(el);
  return el;
}

// One column per denoising step, in order (<g class="routing-step" data-step="trace step">), one row
// per expert; a cell's opacity is the routing weight that step gave the expert. Columns for steps
// not run yet (live view) are drawn empty with class "routing-step-pending".
function drawRouting(entry, steps, experts, totalSteps) {
  const figure = $(".routing", entry.card);
  const chart = $(".routing-chart", entry.card);
  const columns = Math.max(totalSteps, steps.length);
  const cell = Math.max(6, Math.min(22, Math.floor(560 / Math.max(columns, 1))));
  const left = 62, top = 4, rowH = 18, bottom = 30, legend = 70;
  const width = left + columns * cell + legend;
  const height = top + experts * rowH + bottom;
  chart.replaceChildren();
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  chart.setAttribute("width", String(width));
  chart.setAttribute("height", String(height));
  chart.dataset.steps = String(steps.length);
  chart.dataset.experts = String(experts);

  for (let e = 0; e < experts; e++) {
    const label = svg("text", { x: left - 8, y: top + e * rowH + rowH / 2 + 3.5, "text-anchor": "end" }, chart);
    label.textContent = expertName(e);
  }
  for (let i = 0; i < columns; i++) {
    const step = steps[i];
    const col = svg("g", step ? { class: "routing-step", "data-step": step.step }
                              : { class: "routing-step-pending pending", "data-step": i }, chart);
    for (let e = 0; e < experts; e++) {
      const k = step ? step.experts.indexOf(e) : -1;
      const weight = k >= 0 ? Number(step.weights[k] ?? 1) : 0;
      const rect = svg("rect", {
        class: weight > 0 ? "cell" : "cell empty", x: left + i * cell, y: top + e * rowH,
        width: cell, height: rowH, "fill-opacity": weight > 0 ? (0.2 + 0.8 * weight).toFixed(3) : 1,
        "data-expert": e, "data-weight": weight.toFixed(4),
      }, col);
      svg("title", {}, rect).textContent = step
        ? `step ${i + 1}${step.t != null ? ` (t=${Number(step.t).toFixed(3)})` : ""} · ${expertName(e)} · weight ${weight.toFixed(3)}`
        : `step ${i + 1}: not run yet`;
    }
    if (columns <= 24 || i === 0 || (i + 1) % 5 === 0 || i === columns - 1) {
      const tick = svg("text", { x: left + i * cell + cell / 2, y: top + experts * rowH + 12, "text-anchor": "middle" }, chart);
      tick.textContent = String(i + 1);
    }
  }
  const axis = svg("text", { x: left, y: height - 4 }, chart);
  axis.textContent = "denoising step →";
  drawLegend(chart, left + columns * cell + 16, top, experts * rowH);
  figure.hidden = false;
}

// A vertical weight scale beside the chart: 1 at the top, 0 at the bottom.
function drawLegend(chart, x, y, height) {
  const id = `weight-scale-${Math.random().toString(36).slice(2)}`;
  const gradient = svg("linearGradient", { id, x1: 0, y1: 1, x2: 0, y2: 0 }, svg("defs", {}, chart));
  svg("stop", { offset: 0, class: "legend-stop-0" }, gradient);
  svg("stop", { offset: 1, class: "legend-stop-1" }, gradient);
  svg("rect", { x, y, width: 8, height, fill: `url(#${id})`, class: "legend" }, chart);
  svg("text", { x: x + 12, y: y + 8 }, chart).textContent = "1";
  svg("text", { x: x + 12, y: y + height }, chart).textContent = "0";
  svg("text", { x: x + 12, y: y + height / 2 + 3.5 }, chart).textContent = "weight";
}

// ---- the job list ----------------------------------------------------------------------------------
async function refreshList() {
  const list = await apiJson(`/v1/videos?limit=${LIST_LIMIT}&order=desc`);
  for (const job of list.data) upsertJob(job);
  // newest first, as the server ordered them
  const listEl = $("#job-list");
  for (const job of list.data) listEl.append(state.jobs.get(job.id).card);
  if (!list.has_more) {  // the whole list is here: cards of jobs deleted elsewhere go
    const listed = new Set(list.data.map((j) => j.id));
    for (const id of [...state.jobs.keys()]) if (!listed.has(id)) removeCard(id);
  }
  $("#jobs-empty").hidden = state.jobs.size > 0;
}

async function start() {
  keyStatus("");
  try {
    await loadModel();
    await refreshList();
    keyStatus(state.key ? "key saved in this browser" : "");
  } catch (err) {
    if (err.status === 401) keyStatus(state.key ? "this key was refused" : "this server needs an API key");
    else keyStatus(err.message);
  }
}

setupKey();
setupForm();
$("#refresh").addEventListener("click", () => refreshList().catch((err) => keyStatus(err.message)));
start();
