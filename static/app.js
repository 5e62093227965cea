// voiceprint page: microphone -> 16 kHz mono 16-bit WAV (made here, in the page) -> the HTTP API.
"use strict";

const TARGET_RATE = 16000;
const clips = {}; // slot -> {blob, seconds}
let recorder = null; // the recording in progress
let countingDown = false; // the 3-2-1 before a recording starts
const COUNTDOWN_MS = 500; // per step
const QUIET_PEAK = 0.01; // -40 dBFS: too quiet to trust (as utils/record.py)
const CLIPPED_SHARE = 0.001; // more than 0.1% of samples at full scale: clipped

const $ = (id) => document.getElementById(id);

// capture: AudioWorklet where available, ScriptProcessor otherwise; both hand over Float32 blocks

const WORKLET_SOURCE = `
class Capture extends AudioWorkletProcessor {
  process(inputs) {
    const input = inputs[0];
    if (input && input.length) {
      const n = input[0].length, mono = new Float32Array(n);
      for (const channel of input) for (let i = 0; i < n; i++) mono[i] += channel[i] / input.length;
      this.port.postMessage(mono, [mono.buffer]);
    }
    return true;
  }
}
registerProcessor("voiceprint-capture", Capture);
`;

async function startRecording(slot) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("no microphone access here: open the page on localhost or over HTTPS");
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const context = new AudioContext();
  const source = context.createMediaStreamSource(stream);
  const blocks = [];
  let captured = 0;
  const onBlock = (block) => {
    blocks.push(block);
    captured += block.length;
    showLevel(block);
    $("mic-status").textContent = `recording ${(captured / context.sampleRate).toFixed(1)} s`;
  };
  let node;
  if (context.audioWorklet && window.AudioWorkletNode) {
    const url = URL.createObjectURL(new Blob([WORKLET_SOURCE], { type: "application/javascript" }));
    await context.audioWorklet.addModule(url);
    URL.revokeObjectURL(url);
    node = new AudioWorkletNode(context, "voiceprint-capture");
    node.port.onmessage = (event) => onBlock(event.data);
  } else {
    node = context.createScriptProcessor(4096, 1, 1);
    node.onaudioprocess = (event) => onBlock(new Float32Array(event.inputBuffer.getChannelData(0)));
  }
  source.connect(node);
  node.connect(context.destination); // keeps the graph pulling; the node outputs silence
  return { slot, stream, context, node, blocks, rate: context.sampleRate };
}

async function stopRecording(rec) {
  rec.node.disconnect();
  rec.stream.getTracks().forEach((track) => track.stop());
  await rec.context.close();
  showLevel(new Float32Array(1));
  const total = rec.blocks.reduce((n, b) => n + b.length, 0);
  const samples = new Float32Array(total);
  let offset = 0;
  for (const block of rec.blocks) {
    samples.set(block, offset);
    offset += block.length;
  }
  const pcm = resample(samples, rec.rate, TARGET_RATE);
  return { blob: encodeWav(pcm, TARGET_RATE), seconds: pcm.length / TARGET_RATE, problem: levelProblem(samples) };
}

// the same rule as the command line: a recording too quiet or clipped to trust, in words a user can act on
function levelProblem(samples) {
  let peak = 0;
  let clipped = 0;
  for (let i = 0; i < samples.length; i++) {
    const a = Math.abs(samples[i]);
    if (a > peak) peak = a;
    if (a >= 0.999) clipped++;
  }
  if (samples.length === 0) return "";
  if (peak < QUIET_PEAK) {
    const db = Math.round(20 * Math.log10(Math.max(peak, 1e-9)));
    return `too quiet (peak ${db} dBFS): speak up, move closer or raise the input volume`;
  }
  if (clipped / samples.length > CLIPPED_SHARE) return "clipped: move back or lower the input volume";
  return "";
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function showLevel(block) {
  let peak = 0;
  for (let i = 0; i < block.length; i++) peak = Math.max(peak, Math.abs(block[i]));
  $("level-bar").style.width = `${Math.min(100, Math.round(peak * 100))}%`;
}

// windowed-sinc resampling (Blackman window, cut-off below the lower Nyquist rate): no aliasing

function resample(input, fromRate, toRate) {
  if (fromRate === toRate) return input;
  const ratio = fromRate / toRate;
  const cutoff = 0.95 * Math.min(1, toRate / fromRate); // in cycles per input sample x2
  const half = 24; // taps on each side, in input samples scaled by the cut-off
  const radius = Math.ceil(half / cutoff);
  const out = new Float32Array(Math.floor(input.length / ratio));
  for (let i = 0; i < out.length; i++) {
    const centre = i * ratio;
    const first = Math.max(0, Math.ceil(centre - radius));
    const last = Math.min(input.length - 1, Math.floor(centre + radius));
    let sum = 0;
    let weights = 0;
    for (let j = first; j <= last; j++) {
      const x = j - centre;
      const arg = Math.PI * cutoff * x;
      const sinc = x === 0 ? 1 : Math.sin(arg) / arg;
      const w = 0.42 + 0.5 * Math.cos((Math.PI * x) / radius) + 0.08 * Math.cos((2 * Math.PI * x) / radius);
      const k = sinc * w;
      sum += input[j] * k;
      weights += k;
    }
    out[i] = weights ? sum / weights : 0;
  }
  return out;
}

function encodeWav(samples, rate) {
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(buffer);
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true); // fmt chunk size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true); // byte rate
  view.setUint16(32, 2, true); // block align
  view.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([buffer], { type: "audio/wav" });
}

// the page

function showResult(text, kind, score, threshold) {
  const result = $("result");
  const scored = typeof score === "number" ? ` (score ${score.toFixed(3)}, threshold ${threshold.toFixed(3)})` : "";
  result.textContent = text + scored;
  result.className = kind;
  result.dataset.state = kind;
  $("score").textContent = typeof score === "number" ? score.toFixed(3) : "-";
  if (threshold !== undefined) $("threshold").textContent = threshold.toFixed(3);
}

// what the server measured about the recordings (speech used, warnings), one line each
function showNotes(lines) {
  const notes = $("notes");
  notes.replaceChildren();
  for (const line of lines) {
    const item = document.createElement("li");
    item.textContent = line;
    if (line.startsWith("warning")) item.className = "warning";
    notes.appendChild(item);
  }
}

function speechLine(label, speech) {
  return speech ? `${label}: ${speech.speech_seconds.toFixed(1)} s of speech` : `${label}: -`;
}

function showClip(slot) {
  const clip = clips[slot];
  const label = $(`clip-${slot}`);
  label.textContent = `${clip.seconds.toFixed(1)} s `;
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.src = URL.createObjectURL(clip.blob);
  label.appendChild(audio);
  label.dataset.seconds = clip.seconds.toFixed(2);
}

function updateButtons() {
  const busy = recorder !== null || countingDown;
  $("register").disabled = busy || !clips.register || !$("name").value.trim();
  $("recognize").disabled = busy || !clips.recognize;
  $("compare").disabled = busy || !clips.a || !clips.b;
}

async function toggleRecording(button) {
  const slot = button.dataset.slot;
  try {
    if (recorder && recorder.slot === slot) {
      const rec = recorder;
      recorder = null;
      button.classList.remove("recording");
      button.textContent = button.dataset.label;
      clips[slot] = await stopRecording(rec);
      const problem = clips[slot].problem;
      $("mic-status").textContent = problem ? `warning: the recording is ${problem}` : "";
      $("mic-status").dataset.state = problem ? "warning" : "idle";
      showClip(slot);
    } else if (!recorder && !countingDown) {
      button.dataset.label = button.textContent;
      countingDown = true;
      $("mic-status").dataset.state = "countdown";
      try {
        for (const n of [3, 2, 1]) {
          $("mic-status").textContent = `recording in ${n}...`;
          await sleep(COUNTDOWN_MS);
        }
      } finally {
        countingDown = false;
      }
      recorder = await startRecording(slot);
      button.classList.add("recording");
      button.textContent = "Stop";
      $("mic-status").textContent = `recording 0.0 s`;
      $("mic-status").dataset.state = "recording";
    }
  } catch (error) {
    recorder = null;
    button.classList.remove("recording");
    $("mic-status").dataset.state = "error";
    showResult(`Microphone error: ${error.message}`, "error");
  }
  updateButtons();
}

// a server started with --api_key answers 401: ask for the key once, keep it for this tab only
function authHeaders() {
  const key = sessionStorage.getItem("voiceprint-api-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function fetchWithKey(path, options = {}) {
  let response = await fetch(path, { ...options, headers: authHeaders() });
  if (response.status === 401) {
    const key = window.prompt("This server needs its API key:");
    if (key) {
      sessionStorage.setItem("voiceprint-api-key", key.trim());
      response = await fetch(path, { ...options, headers: authHeaders() });
    }
  }
  return response;
}

async function callApi(path, form) {
  showResult("working...", "busy");
  let response;
  try {
    response = await fetchWithKey(path, { method: "POST", body: form });
  } catch (error) {
    showResult(`Network error: ${error.message}`, "error");
    return null;
  }
  let body;
  try {
    body = await response.json();
  } catch (error) {
    body = { detail: `HTTP ${response.status}` };
  }
  if (!response.ok) {
    showResult(`Error (${response.status}): ${body.detail}`, "error");
    showNotes([]);
    return null;
  }
  return body;
}

async function register() {
  const name = $("name").value.trim();
  const form = new FormData();
  form.append("name", name);
  form.append("add", $("add").checked ? "true" : "false");
  form.append("files", clips.register.blob, "register.wav");
  const body = await callApi("/register", form);
  if (body) {
    showResult(`Registered ${body.name} (${body.recordings} recording${body.recordings === 1 ? "" : "s"})`, "ok");
    showNotes([...body.new.map((r) => speechLine("new recording", r)), ...body.warnings.map((w) => `warning: ${w}`)]);
    refreshSpeakers();
  }
}

async function recognize() {
  const form = new FormData();
  form.append("file", clips.recognize.blob, "recognize.wav");
  const body = await callApi("/recognize", form);
  if (!body) return;
  const result = $("result");
  if (body.name === null) {
    const closest = body.best ? ` (closest: ${body.best})` : "";
    showResult(`Unknown speaker${closest}`, "unknown", body.score, body.threshold);
  } else {
    showResult(`Recognised: ${body.name}`, "ok", body.score, body.threshold);
  }
  result.dataset.name = body.name === null ? "" : body.name;
  showNotes([speechLine("speech used", body.speech)]);
}

async function compare() {
  const form = new FormData();
  form.append("file1", clips.a.blob, "a.wav");
  form.append("file2", clips.b.blob, "b.wav");
  const body = await callApi("/contrast", form);
  if (body) {
    const text = body.same_speaker ? "Same speaker" : "Different speakers";
    showResult(text, body.same_speaker ? "ok" : "unknown", body.score, body.threshold);
    showNotes([speechLine("recording A", body.speech[0]), speechLine("recording B", body.speech[1])]);
  }
}

async function refreshSpeakers() {
  try {
    const response = await fetchWithKey("/speakers");
    const body = await response.json();
    const list = $("speakers");
    list.replaceChildren();
    for (const [name, count] of Object.entries(body.speakers)) {
      const item = document.createElement("li");
      item.textContent = `${name} (${count})`;
      item.dataset.name = name;
      list.appendChild(item);
    }
  } catch (error) {
    // the list is informative only; the result box reports real failures
  }
}

// live: the microphone streams 16 kHz 16-bit PCM over a WebSocket; the server answers 4 times a second

const LIVE_SEND_SECONDS = 0.25;
let live = null; // {socket, capture, pending, timeline}

async function toggleLive() {
  if (live) {
    stopLive();
    return;
  }
  const key = sessionStorage.getItem("voiceprint-api-key");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = key ? `?key=${encodeURIComponent(key)}` : "";
  const socket = new WebSocket(`${scheme}://${location.host}/live${query}`);
  socket.binaryType = "arraybuffer";
  live = { socket, capture: null, pending: [], pendingLength: 0, timeline: [] };
  const state = live;
  socket.onmessage = (event) => showLive(state, JSON.parse(event.data));
  socket.onclose = (event) => {
    if (live === state) {
      stopLive();
      if (event.code !== 1000) $("live").textContent = `stopped: ${event.reason || "connection closed"}`;
    }
  };
  await new Promise((resolve, reject) => {
    socket.onopen = resolve;
    socket.onerror = () => reject(new Error("cannot open the live connection"));
  });
  const capture = await startRecording("live");
  state.capture = capture;
  if (capture.node.port) capture.node.port.onmessage = (event) => sendLive(state, event.data);
  else capture.node.onaudioprocess = (event) => sendLive(state, new Float32Array(event.inputBuffer.getChannelData(0)));
  $("live-toggle").textContent = "Stop live";
  $("live").textContent = "listening...";
}

function sendLive(state, block) {
  state.pending.push(block);
  state.pendingLength += block.length;
  if (state.pendingLength < LIVE_SEND_SECONDS * state.capture.rate) return;
  const samples = new Float32Array(state.pendingLength);
  let offset = 0;
  for (const b of state.pending) {
    samples.set(b, offset);
    offset += b.length;
  }
  state.pending = [];
  state.pendingLength = 0;
  const pcm16k = resample(samples, state.capture.rate, TARGET_RATE);
  const pcm = new Int16Array(pcm16k.length);
  for (let i = 0; i < pcm.length; i++) {
    const s = Math.max(-1, Math.min(1, pcm16k[i]));
    pcm[i] = s < 0 ? s * 0x8000 : s * 0x7fff;
  }
  if (state.socket.readyState === WebSocket.OPEN) state.socket.send(pcm.buffer);
}

function showLive(state, decision) {
  state.timeline.push(decision);
  const label = $("live");
  label.dataset.label = decision.label;
  label.dataset.time = decision.time.toFixed(2);
  // by name and score, not label: an older library may hold a speaker called "no speech" or "unknown"
  label.textContent =
    decision.name !== null
      ? `now speaking: ${decision.name} (${decision.score.toFixed(2)})`
      : decision.score === null
        ? "no speech"
        : `now speaking: unknown (best: ${decision.best} ${decision.score.toFixed(2)})`;
  const peak = Math.pow(10, decision.level_dbfs / 20);
  $("live-level-bar").style.width = `${Math.min(100, Math.round(peak * 100))}%`;
  document.body.dataset.liveTimeline = JSON.stringify(state.timeline.slice(-400));
}

function stopLive() {
  const state = live;
  live = null;
  if (!state) return;
  if (state.capture) stopRecording(state.capture);
  if (state.socket.readyState <= WebSocket.OPEN) state.socket.close(1000);
  $("live-toggle").textContent = "Start live";
}

$("live-toggle").addEventListener("click", () =>
  toggleLive().catch((error) => {
    stopLive();
    $("live").textContent = `error: ${error.message}`;
  }),
);

for (const button of document.querySelectorAll("button[data-slot]")) {
  button.addEventListener("click", () => toggleRecording(button));
}
$("name").addEventListener("input", updateButtons);
$("register").addEventListener("click", register);
$("recognize").addEventListener("click", recognize);
$("compare").addEventListener("click", compare);
$("refresh").addEventListener("click", refreshSpeakers);
refreshSpeakers();
updateButtons();
