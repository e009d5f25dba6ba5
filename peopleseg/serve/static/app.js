// peopleseg web page: upload a photo to POST /v1/segment and show the answer; stream the webcam over /v1/stream.
// Plain JavaScript, no build step. State lives in the `state` object; the DOM shows it.
"use strict";

const PERSON_RGB = [255, 40, 40]; // the server's overlay colour, for the live view drawn here
const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "application/json": "json" };

const state = {
  file: null,          // the photo being shown
  view: "overlay",     // overlay | mask | cutout | blur
  cache: new Map(),    // view -> {url, type, stats}: switching back costs no request
  limits: null,        // from /v1/models
  apiKey: sessionStorage.getItem("peopleseg-api-key") || "",
  live: null,          // the webcam session while it runs
};

const $ = (id) => document.getElementById(id);

function headers() {
  return state.apiKey ? { "X-API-Key": state.apiKey } : {};
}

// --- errors -----------------------------------------------------------------------------------------------------

const FRIENDLY = {
  upload_too_large: "That file is too large",
  too_many_pixels: "That photo has too many pixels",
  not_an_image: "That file is not an image",
  corrupt_image: "That image is damaged",
  no_image: "No image was sent",
  busy: "The server is busy, try again in a moment",
  timeout: "The server took too long",
  unauthorized: "An API key is needed",
};

function showError(code, message) {
  const box = $("error");
  const title = FRIENDLY[code] || "Something went wrong";
  box.textContent = message ? `${title}: ${message}` : title;
  box.dataset.code = code || "error";
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

async function problemOf(response) {
  try {
    const body = await response.json();
    return { code: body.code || `http_${response.status}`, message: body.error || response.statusText };
  } catch {
    return { code: `http_${response.status}`, message: response.statusText };
  }
}

function needKey() {
  $("key-panel").hidden = false;
  $("api-key").focus();
}

// --- the model line ---------------------------------------------------------------------------------------------

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) {
    $("model").textContent = "An API key is needed to use this server.";
    needKey();
    return;
  }
  if (!response.ok) {
    const problem = await problemOf(response);
    $("model").textContent = `The model is not available (${problem.message}).`;
    return;
  }
  const body = await response.json();
  const model = body.models[0];
  state.limits = body.limits;
  const warning = model.random_weights ? " · random weights: masks are meaningless" : "";
  $("model").textContent = `Model ${model.id} (${model.arch}) on ${model.backend} ${model.device}${warning}`;
  $("key-panel").hidden = true;
}

// --- photos -----------------------------------------------------------------------------------------------------

function takeFile(file) {
  if (!file) return;
  clearError();
  if (state.limits && file.size > state.limits.max_upload_bytes) {
    const mb = (n) => (n / 1048576).toFixed(1);
    showError("upload_too_large", `${file.name} is ${mb(file.size)} MB; the limit is ${mb(state.limits.max_upload_bytes)} MB`);
    return;
  }
  if (state.live) stopWebcam();
  $("live").hidden = true; // the last live frame must not stay beside the new photo
  for (const entry of state.cache.values()) URL.revokeObjectURL(entry.url);
  state.cache.clear();
  state.file = file;
  show(state.view);
}

async function segment(file, view) {
  const form = new FormData();
  form.append("file", file, file.name || "photo");
  const params = new URLSearchParams({ format: view });
  if (view === "mask") params.set("binary_255", "true"); // 0/255 is visible; label ids 0/1 look all black
  const started = performance.now();
  const response = await fetch(`/v1/segment?${params}`, { method: "POST", body: form, headers: headers() });
  if (!response.ok) {
    const problem = await problemOf(response);
    if (response.status === 401) needKey();
    throw Object.assign(new Error(problem.message), { code: problem.code });
  }
  const blob = await response.blob();
  return {
    url: URL.createObjectURL(blob),
    type: blob.type,
    stats: {
      people: Number(response.headers.get("X-People-Count")),
      fraction: Number(response.headers.get("X-Person-Fraction")),
      size: response.headers.get("X-Image-Size"),
      ms: Math.round(performance.now() - started),
    },
  };
}

async function show(view) {
  state.view = view;
  for (const button of document.querySelectorAll("#views [data-view]")) {
    button.setAttribute("aria-pressed", String(button.dataset.view === view));
  }
  if (!state.file) return;
  const file = state.file;
  const image = $("result");
  image.dataset.state = "loading";
  let entry = state.cache.get(view);
  if (!entry) {
    try {
      entry = await segment(file, view);
    } catch (error) {
      image.dataset.state = "error";
      showError(error.code, error.message);
      return;
    }
    if (state.file !== file) { URL.revokeObjectURL(entry.url); return; } // a newer photo replaced this one
    state.cache.set(view, entry);
  }
  if (state.view !== view) return; // the user already switched again
  clearError();
  image.onload = () => { image.dataset.format = view; image.dataset.state = "ready"; };
  image.src = entry.url;
  const { people, fraction, size, ms } = entry.stats;
  $("stats").textContent =
    `${people} ${people === 1 ? "person" : "people"} · ${(100 * fraction).toFixed(1)}% person pixels · ${size} · ${ms} ms`;
  const stem = (file.name || "photo").replace(/\.[^.]*$/, "");
  const link = $("download");
  link.href = entry.url;
  link.download = `${stem}_${view}.${EXTENSIONS[entry.type] || "bin"}`;
  link.hidden = false;
  $("photo-result").hidden = false;
}

// --- live webcam ------------------------------------------------------------------------------------------------

async function startWebcam() {
  clearError();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("no_camera", "this browser gives no camera access here (it needs https or localhost)");
    return;
  }
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (error) {
    showError("no_camera", `the camera could not be opened (${error.name})`);
    return;
  }
  const video = $("camera");
  video.srcObject = media;
  await video.play();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/v1/stream`);
  const live = {
    media, socket, frames: 0, times: [], sent: null,
    grab: document.createElement("canvas"), maskCanvas: document.createElement("canvas"),
  };
  state.live = live;
  $("webcam").textContent = "Stop webcam";
  $("webcam").setAttribute("aria-pressed", "true");
  $("live").hidden = false;
  $("photo-result").hidden = true;
  socket.onopen = () => {
    if (state.apiKey) socket.send(JSON.stringify({ api_key: state.apiKey }));
    sendFrame(live);
  };
  socket.onmessage = (event) => onLiveMessage(live, event);
  socket.onclose = (event) => {
    if (state.live === live) {
      stopWebcam();
      if (event.code === 1008) { showError("unauthorized", event.reason || "the API key was refused"); needKey(); }
    }
  };
  socket.onerror = () => showError("stream", "the live connection failed");
}

function stopWebcam() {
  const live = state.live;
  if (!live) return;
  state.live = null;
  live.socket.close();
  for (const track of live.media.getTracks()) track.stop();
  $("webcam").textContent = "Start webcam";
  $("webcam").setAttribute("aria-pressed", "false");
  $("fps").textContent = "stopped";
}

function sendFrame(live) {
  if (state.live !== live || live.socket.readyState !== WebSocket.OPEN) return;
  const video = $("camera");
  if (!video.videoWidth) { setTimeout(() => sendFrame(live), 50); return; }
  live.grab.width = video.videoWidth;
  live.grab.height = video.videoHeight;
  live.grab.getContext("2d").drawImage(video, 0, 0);
  // Keep the pixels that were sent: the mask that comes back is drawn over this frame, not a later one.
  live.sent = live.grab.getContext("2d").getImageData(0, 0, live.grab.width, live.grab.height);
  live.grab.toBlob((blob) => { if (blob && state.live === live) live.socket.send(blob); }, "image/jpeg", 0.8);
}

function onLiveMessage(live, event) {
  const message = JSON.parse(event.data);
  if (message.ok) return; // the answer to a control message
  if (message.error) {
    showError(message.code, message.error);
    setTimeout(() => sendFrame(live), message.retry_after ? 1000 * message.retry_after : 200);
    return;
  }
  const mask = new Image();
  mask.onload = () => {
    drawLive(live, mask);
    live.frames += 1;
    const now = performance.now();
    live.times.push(now);
    while (live.times.length && now - live.times[0] > 2000) live.times.shift();
    const fps = live.times.length > 1 ? (1000 * (live.times.length - 1)) / (now - live.times[0]) : 0;
    $("fps").textContent = `${fps.toFixed(1)} FPS`;
    $("fps").dataset.frames = String(live.frames);
    $("live-stats").textContent =
      `${message.people_count} ${message.people_count === 1 ? "person" : "people"} · ` +
      `${(100 * message.person_fraction).toFixed(1)}% person pixels`;
    sendFrame(live); // one frame in flight: the stream runs as fast as the server answers, never faster
  };
  mask.src = `data:image/png;base64,${message.mask}`;
}

function drawLive(live, mask) {
  const frame = live.sent;
  if (!frame) return;
  const canvas = $("live-canvas");
  canvas.width = frame.width;
  canvas.height = frame.height;
  live.maskCanvas.width = frame.width;
  live.maskCanvas.height = frame.height;
  const maskContext = live.maskCanvas.getContext("2d");
  maskContext.drawImage(mask, 0, 0, frame.width, frame.height);
  const person = maskContext.getImageData(0, 0, frame.width, frame.height).data;
  const pixels = new ImageData(new Uint8ClampedArray(frame.data), frame.width, frame.height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    if (person[i] > 127) { // halfway to the person colour, as the server's overlay does
      data[i] = (data[i] + PERSON_RGB[0]) >> 1;
      data[i + 1] = (data[i + 1] + PERSON_RGB[1]) >> 1;
      data[i + 2] = (data[i + 2] + PERSON_RGB[2]) >> 1;
    }
  }
  canvas.getContext("2d").putImageData(pixels, 0, 0);
}

// --- wiring -----------------------------------------------------------------------------------------------------

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    takeFile(event.target.files[0]);
    event.target.value = ""; // picking the same file again (after an error, say) must fire "change" again
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("dragging"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    takeFile(event.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("file").click(); });
  for (const button of document.querySelectorAll("#views [data-view]")) {
    button.addEventListener("click", () => {
      if (state.live) stopWebcam();
      $("live").hidden = true;
      show(button.dataset.view);
    });
  }
  $("webcam").addEventListener("click", () => (state.live ? stopWebcam() : startWebcam()));
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.apiKey = $("api-key").value.trim();
    sessionStorage.setItem("peopleseg-api-key", state.apiKey);
    clearError();
    loadModel().then(() => { if (state.file) { state.cache.clear(); show(state.view); } });
  });
  loadModel().catch((error) => showError("offline", `the server cannot be reached (${error.message})`));
}

wire();
