// The live view (/): the newest field as it arrives, the current specimen's statistics,
// and the recent fields (each a link to its own page, /fields/ID).

import { api } from "./api.js";
import { boot, stream } from "./app.js";
import { card } from "./cards.js";
import { $ } from "./dom.js";
import { FieldView } from "./fieldview.js";
import { wireSpecimenForm } from "./specimenform.js";
import { StatsView } from "./statsview.js";

const STRIP_SIZE = 24;
const state = { shownId: null, mainPhase: null };
const statsView = new StatsView();
const fieldView = new FieldView((image) => showField(image.id));

async function showField(id) {
  state.shownId = id;
  const field = await api(`/api/images/${id}`);
  if (state.shownId !== id) return; // another field was picked meanwhile
  $("field-title").textContent = `${field.file} (#${field.id})`;
  $("field-link").href = `/fields/${field.id}`;
  $("field-link").hidden = false;
  await fieldView.show(field);
}

async function refreshStrip() {
  const images = await api(`/api/images?limit=${STRIP_SIZE}`);
  $("strip").replaceChildren(...images.map((image) => card(image, { mainPhase: state.mainPhase })));
  const newest = images.find((i) => i.state === "done" || i.state === "failed");
  if (newest && newest.id !== state.shownId) await showField(newest.id);
}

async function refreshStats() {
  const { current } = await api("/api/specimens");
  const stats = await api(`/api/specimens/${current.id}/stats`);
  state.mainPhase = stats.main_phase;
  fieldView.countFlagged = stats.count_flagged;
  $("specimen-name").textContent = `${current.name} (${stats.fields} fields counted)`;
  $("specimen-name").href = `/specimens/${current.id}`;
  $("specimen-notes").textContent = current.notes || "";
  $("export-csv").href = `/export.csv?specimen=${current.id}`;
  statsView.show(stats);
}

// Everything again (at start and whenever the stream reconnects: events may have been missed).
async function refreshAll() {
  await refreshStats().then(refreshStrip, refreshStrip);
  if (state.shownId != null) await showField(state.shownId);
}

wireSpecimenForm();

stream.on("open", refreshAll);
stream.on("field", (image) => {
  showField(image.id);
  refreshStats().then(refreshStrip);
});
stream.on("specimen", () => refreshStats().then(refreshStrip));
boot();
refreshAll();
