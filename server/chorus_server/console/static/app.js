// Console start-up: tabs (arrow keys move between them), the API key and the adapter picker.
import { AUTO, api, say } from "./api.js";
import { setUpLive } from "./live.js";
import { setUpFile } from "./file.js";
import { setUpOperator, refreshOperator } from "./operator.js";

function setUpTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const show = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
    }
    tab.focus();
    if (tab.id === "tab-operator") refreshOperator();
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => show(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (step) show(tabs[(i + step + tabs.length) % tabs.length]);
      if (event.key === "Home") show(tabs[0]);
      if (event.key === "End") show(tabs[tabs.length - 1]);
    });
  });
}

// The picker: `auto` (the language decides), then the caller's own adapters, then the public ones; the server's
// default adapter (what `whisper-1` means) is chosen unless the user picked another that still exists.
export async function loadAdapters() {
  const select = document.getElementById("adapter");
  const previous = select.value;
  try {
    const models = await api("/v1/models");
    const transcribers = models.data.filter((model) => model.kind !== "classifier");
    const option = (model) => new Option(model.default ? `${model.id} (default)` : model.id, model.id);
    const group = (label, members) => {
      const element = document.createElement("optgroup");
      element.label = label;
      element.append(...members.map(option));
      return members.length ? [element] : [];
    };
    select.replaceChildren(
      new Option("auto (detect the language)", AUTO),
      ...group("Yours", transcribers.filter((model) => model.own)),
      ...group("Public", transcribers.filter((model) => !model.own)),
    );
    const offered = [...select.options].map((o) => o.value);
    const fallback = transcribers.find((model) => model.default) || transcribers[0];
    select.value = offered.includes(previous) ? previous : fallback ? fallback.id : AUTO;
    say(`${transcribers.length} adapters`);
  } catch (error) {
    say(`adapters: ${error.message}`, true);
  }
}

function setUpKey() {
  const input = document.getElementById("api-key");
  input.value = sessionStorage.getItem("chorus-key") || "";
  input.addEventListener("change", () => {
    sessionStorage.setItem("chorus-key", input.value.trim());
    loadAdapters();
    refreshOperator();
  });
}

setUpTabs();
setUpKey();
setUpLive();
setUpFile();
setUpOperator(loadAdapters);
loadAdapters();
