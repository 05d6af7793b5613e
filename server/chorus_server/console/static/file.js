// File upload -> verbose_json with word timestamps -> words highlighted as the audio plays.
import { api, say, selectedAdapter } from "./api.js";

let words = [];

function highlight(player) {
  const now = player.currentTime;
  for (const { span, start, end } of words) {
    const current = now >= start && now < end;
    span.classList.toggle("current", current);
    if (current) span.setAttribute("aria-current", "true");
    else span.removeAttribute("aria-current");
  }
}

export function setUpFile() {
  const form = document.getElementById("file-form");
  const player = document.getElementById("player");
  const box = document.getElementById("file-transcript");
  let frame = 0;
  const follow = () => { highlight(player); frame = requestAnimationFrame(follow); };
  player.addEventListener("play", () => { cancelAnimationFrame(frame); follow(); });
  player.addEventListener("pause", () => { cancelAnimationFrame(frame); highlight(player); });
  player.addEventListener("seeked", () => highlight(player));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = document.getElementById("file-input").files[0];
    if (!file) return;
    const body = new FormData();
    body.append("file", file);
    body.append("model", selectedAdapter());
    body.append("response_format", "verbose_json");
    body.append("timestamp_granularities[]", "word");
    say("transcribing…");
    try {
      const result = await api("/v1/audio/transcriptions", { method: "POST", body });
      words = result.words.map((word) => {
        const span = document.createElement("span");
        span.textContent = word.word;
        span.dataset.start = word.start;
        span.tabIndex = 0; // Enter on a word plays from it
        span.addEventListener("click", () => { player.currentTime = word.start; player.play(); });
        span.addEventListener("keydown", (e) => { if (e.key === "Enter") { player.currentTime = word.start; player.play(); } });
        return { span, start: word.start, end: word.end };
      });
      box.replaceChildren(...words.flatMap(({ span }, i) => (i ? [" ", span] : [span])));
      box.dataset.text = result.text;
      player.src = URL.createObjectURL(file);
      player.hidden = false;
      say(`${result.duration.toFixed(1)} s transcribed`);
    } catch (error) {
      say(`transcription: ${error.message}`, true);
    }
  });
}
