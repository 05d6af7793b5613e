// Microphone -> PCM16 at 16 kHz -> the realtime socket (OpenAI's transcription session) -> live transcript.
import { AUTO, apiKey, say, selectedAdapter } from "./api.js";

const RATES = [16000, 24000, 44100, 48000]; // what the server resamples itself (no resampling in the page)
const SEND_EVERY_MS = 100; // audio per input_audio_buffer.append
let running = null;
let settled = () => {}; // called once the turn committed by Stop has its final transcript

function base64Pcm16(samples) {
  const bytes = new Uint8Array(samples.length * 2);
  const view = new DataView(bytes.buffer);
  samples.forEach((x, i) => view.setInt16(2 * i, Math.max(-32768, Math.min(32767, Math.round(x * 32768))), true));
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function itemElement(itemId) {
  const box = document.getElementById("live-transcript");
  let element = box.querySelector(`[data-item="${CSS.escape(itemId)}"]`);
  if (!element) {
    element = document.createElement("p");
    element.dataset.item = itemId;
    element.className = "partial";
    box.append(element);
  }
  return element;
}

function onEvent(event) {
  switch (event.type) {
    case "session.updated":
      say(`listening (${event.session.audio.input.transcription.model})`);
      break;
    case "conversation.item.input_audio_transcription.delta":
      itemElement(event.item_id).textContent += event.delta;
      break;
    case "conversation.item.input_audio_transcription.completed": {
      const element = itemElement(event.item_id);
      element.textContent = event.transcript;
      element.className = "final";
      if (!running && !document.querySelector("#live-transcript p.partial")) settled();
      break;
    }
    case "conversation.item.input_audio_transcription.failed":
      itemElement(event.item_id).className = "error";
      say(event.error.message, true);
      if (!running && !document.querySelector("#live-transcript p.partial")) settled();
      break;
    case "error":
      say(event.error.message, true);
      if (!running) settled();
      break;
    default:
  }
}

async function start() {
  if (selectedAdapter() === AUTO) {
    throw new Error("the live view needs a named adapter (auto detects the language of whole files); pick one above");
  }
  const key = apiKey();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const protocols = key ? ["realtime", `openai-insecure-api-key.${key}`] : ["realtime"];
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  let context = new AudioContext();
  if (!RATES.includes(context.sampleRate)) {
    context.close();
    context = new AudioContext({ sampleRate: 48000 });
  }
  const rate = context.sampleRate;
  const sendEvery = (rate * SEND_EVERY_MS) / 1000;
  await context.audioWorklet.addModule("/console/pcm-worklet.js");
  const source = context.createMediaStreamSource(media);
  const capture = new AudioWorkletNode(context, "pcm-capture");
  const socket = new WebSocket(`${scheme}://${location.host}/v1/realtime?intent=transcription`, protocols);
  let pending = [];
  let pendingLength = 0;
  capture.port.onmessage = ({ data }) => {
    if (socket.readyState !== WebSocket.OPEN) return;
    pending.push(data);
    pendingLength += data.length;
    if (pendingLength < sendEvery) return;
    const joined = new Float32Array(pendingLength);
    let offset = 0;
    for (const block of pending) { joined.set(block, offset); offset += block.length; }
    pending = [];
    pendingLength = 0;
    socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64Pcm16(joined) }));
  };
  socket.onopen = () => {
    socket.send(JSON.stringify({
      type: "session.update",
      session: {
        type: "transcription",
        audio: { input: {
          format: { type: "audio/pcm", rate },
          transcription: { model: selectedAdapter() },
          turn_detection: { type: "server_vad", threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 500 },
        } },
      },
    }));
    source.connect(capture);
  };
  socket.onmessage = (message) => onEvent(JSON.parse(message.data));
  // A socket that closes while listening (refused key, server gone) ends the session: the button says Start again.
  socket.onclose = (closed) => {
    if (running) stop(`disconnected (${closed.code}${closed.reason ? `: ${closed.reason}` : ""})`);
    else settled();
  };
  running = { socket, media, context };
}

const SETTLE_MS = 10000; // how long Stop waits for the open turn's final transcript

// Stop: the microphone ends at once; an open turn (a grey line) is committed and its final transcript awaited
// (up to SETTLE_MS) before the socket closes, so the last line settles instead of staying grey.
function stop(reason = "stopped") {
  if (!running) return;
  const { socket, media, context } = running;
  running = null;
  render();
  media.getTracks().forEach((track) => track.stop());
  context.close();
  const open = [...document.querySelectorAll("#live-transcript p.partial")];
  const finish = () => {
    for (const line of document.querySelectorAll("#live-transcript p.partial")) {
      if (line.textContent) line.className = "final";
      else line.remove();
    }
    if (socket.readyState === WebSocket.OPEN) socket.close();
  };
  if (socket.readyState === WebSocket.OPEN && open.some((line) => line.textContent)) {
    say("stopping: finishing the last turn…");
    const timer = setTimeout(finish, SETTLE_MS);
    settled = () => {
      settled = () => {};
      clearTimeout(timer);
      finish();
      say(reason, reason !== "stopped");
    };
    socket.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
  } else {
    finish();
    if (reason) say(reason, reason !== "stopped");
  }
}

function render() {
  const button = document.getElementById("mic");
  button.setAttribute("aria-pressed", String(Boolean(running)));
  button.textContent = running ? "Stop microphone" : "Start microphone";
}

export function setUpLive() {
  const button = document.getElementById("mic");
  button.addEventListener("click", async () => {
    if (running) {
      stop();
      return;
    }
    try {
      await start();
    } catch (error) {
      stop(null);
      say(`microphone: ${error.message}`, true);
    }
    render();
  });
}
