// The playground: pick, drop or paste an image, say what to find, watch objects stream in.
// Plain JavaScript, no dependencies: it talks to this service only (/health, /segment).

import { ACCEPTED, imageKind } from "./image-kind.js";

const PALETTE = [ // the service's overlay colours (app/overlay.py), so both pictures agree
  [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
  [240, 50, 230], [210, 245, 60], [110, 100, 255], [255, 225, 25], [0, 170, 150], [255, 80, 160],
];
const FILL_ALPHA = 115; // of 255: the mask tint
const MAX_CANVAS_SIDE = 4096; // bigger images are drawn scaled down (masks too)
const PIXELATED_FROM = 4; // scaled up this much or more, a pixel shows as a sharp square
const TOKEN_KEY = "segment-api-token"; // sessionStorage: this tab only, never in the URL

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);

const state = {
  file: null, // the chosen File
  bitmap: null, // its pixels, EXIF orientation applied (as the service applies it)
  scale: 1, // canvas pixels per image pixel
  objects: [], // {label, box, score, area, colour, layer (canvas or null), hidden}
  response: null, // the `done` line: the whole answer
  busy: false,
};

// -- service state -----------------------------------------------------------------------------
async function refreshHealth() {
  const health = $("health");
  try {
    const response = await fetch("/health", { cache: "no-store" });
    const body = await response.json();
    $("random-banner").hidden = !body.random_weights;
    if (response.ok) {
      health.textContent = `Ready · ${body.model} · ${body.device}`;
      health.className = "health ok";
      return;
    }
    if (body.status === "loading") {
      health.textContent = "Loading the model…";
      health.className = "health";
      setTimeout(refreshHealth, 1500);
      return;
    }
    health.textContent = `Not available: ${body.reason}`;
    health.className = "health bad";
  } catch (error) {
    health.textContent = "The service does not answer. Is it running (make serve)?";
    health.className = "health bad";
    setTimeout(refreshHealth, 3000);
  }
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "status error" : "status";
}

// -- choosing an image -------------------------------------------------------------------------
async function chooseFile(file) {
  if (!file) return;
  const kind = await imageKind(file);
  state.file = kind ? file : null; // what the service would refuse is never offered to it
  $("file-name").textContent = kind ? file.name || "pasted image" : "";
  state.objects = [];
  state.response = null;
  if (!kind) {
    state.bitmap = null;
    $("image-input").value = "";
    renderObjects();
    draw();
    updateSubmit();
    setStatus(`${file.name || "That file"} is not an image the service takes; choose a ` +
      `${ACCEPTED} file.`, true);
    return;
  }
  updateSubmit();
  try {
    state.bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    state.bitmap = null; // e.g. TIFF: the browser cannot show it, the service can still read it
  }
  renderObjects();
  draw();
  setStatus(state.bitmap ? "Say what to find, then press Segment." :
    `This browser cannot show this ${kind} file, but the service can segment it.`);
}

function updateSubmit() {
  $("submit").disabled = state.busy || !state.file;
}

function wireInputs() {
  const input = $("image-input");
  input.addEventListener("change", () => chooseFile(input.files[0]));
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    chooseFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) chooseFile(item.getAsFile());
  });
  $("form").addEventListener("submit", (event) => {
    event.preventDefault();
    segment();
  });
  const threshold = $("threshold");
  threshold.addEventListener("input", () => {
    $("threshold-value").textContent = formatScore(Number(threshold.value));
    renderObjects();
    draw();
  });
  window.addEventListener("resize", () => draw());
  $("download-json").addEventListener("click", downloadJson);
  $("download-png").addEventListener("click", downloadPicture);
  const token = $("token-input");
  token.value = sessionStorage.getItem(TOKEN_KEY) || "";
  token.addEventListener("change", () => sessionStorage.setItem(TOKEN_KEY, token.value.trim()));
}

// -- asking the service ------------------------------------------------------------------------
async function segment() {
  if (state.busy) return;
  const prompt = $("prompt-input").value.trim();
  if (!state.file) return setStatus("Choose an image first.", true);
  if (!prompt) return setStatus("Say what to find, e.g. cat or cat ; dog.", true);
  const form = new FormData();
  form.append("image_file", state.file, state.file.name || "pasted.png");
  form.append("prompt", prompt);
  form.append("mask_format", "png");
  form.append("stream", "true");
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;

  state.busy = true;
  updateSubmit();
  state.objects = [];
  state.response = null;
  renderObjects();
  draw();
  setStatus("Segmenting…");
  const started = performance.now();
  try {
    const response = await fetch("/segment", { method: "POST", body: form, headers });
    if (!response.ok) {
      const body = await response.json().catch(() => ({ detail: response.statusText }));
      if (response.status === 401) {
        $("token-row").hidden = false;
        $("token-input").focus();
      }
      setStatus(body.detail || `The service answered ${response.status}.`, true);
      return;
    }
    await readLines(response, started);
  } catch (error) {
    setStatus(`Could not reach the service (${error.message}). Is it still running?`, true);
  } finally {
    state.busy = false;
    updateSubmit();
  }
}

async function readLines(response, started) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).trim();
      buffer = buffer.slice(newline + 1);
      if (line) await handleLine(JSON.parse(line), started);
    }
    if (done) return;
  }
}

async function handleLine(line, started) {
  if (line.type === "object") {
    await addObject(line.object);
    const n = state.objects.length;
    setStatus(`Segmenting… ${n} object${n === 1 ? "" : "s"} so far`);
  } else if (line.type === "done") {
    delete line.type;
    state.response = line;
    const n = line.objects.length;
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    setStatus(n ? `Found ${n} object${n === 1 ? "" : "s"} in ${seconds} s.` :
      `Nothing found for “${line.prompt}”. Try other words, or one class at a time.`);
    const t = line.timings_ms;
    $("timing").textContent =
      `generate ${Math.round(t.generate)} ms · masks ${Math.round(t.decode_masks + t.masks)} ms` +
      ` · total ${Math.round(t.total)} ms`;
    renderObjects();
  } else if (line.type === "error") {
    setStatus(line.detail, true);
  }
}

// -- objects and the picture -------------------------------------------------------------------
async function addObject(wire) {
  const colour = PALETTE[state.objects.length % PALETTE.length];
  const object = { ...wire, colour, layer: null, hidden: false };
  if (wire.mask && state.bitmap) object.layer = await maskLayer(wire.mask, colour);
  state.objects.push(object);
  renderObjects();
  draw();
}

async function maskLayer(pngBase64, colour) {
  const image = new Image();
  image.src = `data:image/png;base64,${pngBase64}`;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(image.width * state.scale);
  canvas.height = Math.round(image.height * state.scale);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(image, 0, 0, canvas.width, canvas.height);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data; // RGBA; the mask is grey 0/255
  for (let i = 0; i < data.length; i += 4) {
    const inside = data[i] > 127;
    data[i] = colour[0];
    data[i + 1] = colour[1];
    data[i + 2] = colour[2];
    data[i + 3] = inside ? FILL_ALPHA : 0;
  }
  context.putImageData(pixels, 0, 0);
  return canvas;
}

function visible(object) {
  const threshold = Number($("threshold").value);
  return !object.hidden && (object.score === null || object.score >= threshold);
}

function renderObjects() {
  $("result").hidden = !state.bitmap && !state.objects.length;
  const list = $("objects");
  list.replaceChildren(...state.objects.map((object) => {
    const item = document.createElement("li");
    item.dataset.testid = "object";
    item.classList.toggle("below", !visible(object));
    const toggle = document.createElement("input");
    toggle.type = "checkbox";
    toggle.checked = !object.hidden;
    toggle.title = "Show or hide this object";
    toggle.addEventListener("change", () => {
      object.hidden = !toggle.checked;
      renderObjects();
      draw();
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${object.colour.join(",")})`;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = object.label;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = object.score === null ? "" : formatScore(object.score);
    item.append(toggle, swatch, label, score);
    return item;
  }));
  $("download-json").disabled = !state.response;
  $("download-png").disabled = !state.response || !state.bitmap;
}

function draw() {
  const canvas = $("overlay");
  const bitmap = state.bitmap;
  if (!bitmap) {
    canvas.width = canvas.height = 0;
    return;
  }
  state.scale = fitScale(canvas, bitmap);
  canvas.width = Math.round(bitmap.width * state.scale);
  canvas.height = Math.round(bitmap.height * state.scale);
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = state.scale < PIXELATED_FROM;
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  context.imageSmoothingEnabled = true; // masks: smooth, then cut at their edge
  const shown = state.objects.filter(visible);
  for (const object of shown) {
    if (object.layer) context.drawImage(object.layer, 0, 0, canvas.width, canvas.height);
  }
  const line = Math.max(2, Math.round(Math.min(canvas.width, canvas.height) / 320));
  for (const object of shown) {
    const [x0, y0, x1, y1] = object.box.map((v) => v * state.scale);
    context.strokeStyle = `rgb(${object.colour.join(",")})`;
    context.lineWidth = line;
    context.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  const font = Math.max(12, Math.round(Math.min(canvas.width, canvas.height) / 40));
  context.font = `600 ${font}px -apple-system, "Segoe UI", Roboto, sans-serif`;
  context.textBaseline = "top";
  const placed = [];
  for (const object of shown) tag(context, object, font, placed);
}

// Canvas pixels per image pixel. A large image is drawn at its own size (at most
// MAX_CANVAS_SIDE) and shown scaled down; a small one is drawn at the size it is shown, the
// panel's width or the window's height, so it fills the panel and its lines and labels are sharp.
function fitScale(canvas, bitmap) {
  const longest = Math.max(bitmap.width, bitmap.height);
  const rem = parseFloat(getComputedStyle(document.documentElement).fontSize);
  const border = canvas.offsetWidth - canvas.clientWidth; // both sides
  const width = canvas.parentElement.clientWidth - border;
  const height = window.innerHeight - 12 * rem - border; // the CSS max-height
  const fit = Math.min(width / bitmap.width, height / bitmap.height);
  return Math.min(Math.max(1, fit), MAX_CANVAS_SIDE / longest);
}

// A score as a percentage, with the digits that tell small ones apart: 91%, 4.2%, 0.16%.
function formatScore(score) {
  const percent = score * 100;
  if (percent >= 10 || percent === 0) return `${Math.round(percent)}%`;
  if (percent < 0.001) return "<0.001%";
  return `${Number(percent.toPrecision(2))}%`;
}

function tag(context, object, font, placed) {
  const text = object.score === null ? object.label : `${object.label} ${formatScore(object.score)}`;
  const pad = Math.round(font / 4);
  const width = context.measureText(text).width + 2 * pad;
  const height = font + 2 * pad;
  const canvas = context.canvas;
  let left = Math.min(Math.max(object.box[0] * state.scale, 0), canvas.width - width);
  let top = object.box[1] * state.scale - height;
  if (top < 0) top = object.box[1] * state.scale;
  for (const other of placed.sort((a, b) => a.top - b.top)) { // objects often share a corner
    if (left < other.left + other.width && other.left < left + width &&
        top < other.top + other.height && other.top < top + height) top = other.top + other.height;
  }
  top = Math.min(Math.max(top, 0), canvas.height - height);
  placed.push({ left, top, width, height });
  const [r, g, b] = object.colour;
  context.fillStyle = `rgb(${r},${g},${b})`;
  context.fillRect(left, top, width, height);
  context.fillStyle = 0.299 * r + 0.587 * g + 0.114 * b > 150 ? "#000" : "#fff";
  context.fillText(text, left + pad, top + pad);
}

// -- downloads ---------------------------------------------------------------------------------
function stem() {
  return (state.file?.name || "image").replace(/\.[^.]+$/, "");
}

function save(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

function downloadJson() {
  const body = JSON.stringify(state.response, null, 1);
  save(new Blob([body], { type: "application/json" }), `${stem()}.json`);
}

function downloadPicture() {
  $("overlay").toBlob((blob) => save(blob, `${stem()}.overlay.png`), "image/png");
}

wireInputs();
updateSubmit();
refreshHealth();
