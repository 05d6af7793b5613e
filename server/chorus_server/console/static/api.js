// The HTTP API with the key typed in the header (kept in this tab's sessionStorage only).
const keyInput = () => document.getElementById("api-key");

export function apiKey() {
  return keyInput().value.trim();
}

export function headers(extra = {}) {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

export async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body.error && body.error.message) message = body.error.message;
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  const type = response.headers.get("content-type") || "";
  return type.includes("application/json") ? response.json() : response.text();
}

export function say(message, isError = false) {
  const status = document.getElementById("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

export const AUTO = "auto"; // model=auto: the language-ID adapter picks the transcription adapter (files only)

export function selectedAdapter() {
  return document.getElementById("adapter").value || "whisper-1";
}
