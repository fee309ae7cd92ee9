// The live view (/): the newest measured field as it arrives, the current specimen's
// statistics, and the recent fields (each a link to its own page, /images/ID). A file that
// fails does not take the view: the last good field stays, and a notice above it names the
// failed file and its one-line reason until the operator dismisses it (or a later file
// fails: then it names that one and counts the others).

import { api } from "./api.js";
import { boot, stream } from "./app.js";
import { card } from "./cards.js";
import { $ } from "./dom.js";
import { plural, reasonText } from "./format.js";
import { FieldView } from "./fieldview.js";
import { wireSpecimenForm } from "./specimenform.js";
import { StatsView } from "./statsview.js";

const STRIP_SIZE = 24;
const state = { shownId: null, mainPhase: null, failed: [] };
const statsView = new StatsView();
const fieldView = new FieldView((image) => showField(image.id));

async function showField(id) {
  state.shownId = id;
  const field = await api(`/api/images/${id}`);
  if (state.shownId !== id) return; // another field was picked meanwhile
  $("field-title").textContent = `${field.file} (#${field.id})`;
  $("field-link").href = `/images/${field.id}`;
  $("field-link").hidden = false;
  await fieldView.show(field);
}

// The failed files not dismissed yet, newest first: the newest is named, the rest counted.
function showFailures() {
  const [latest, ...older] = state.failed;
  $("live-failure").hidden = !latest;
  if (!latest) return;
  $("live-failure-link").textContent = latest.file;
  $("live-failure-link").href = `/images/${latest.id}`;
  $("live-failure-reason").textContent = reasonText(latest);
  $("live-failure-more").textContent = older.length ? `(and ${plural(older.length, "earlier file")} failed)` : "";
}

function noteFailure(image) {
  if (state.failed.some((f) => f.id === image.id)) return;
  state.failed = [image, ...state.failed].sort((a, b) => b.id - a.id);
  showFailures();
}

async function refreshStrip() {
  const images = await api(`/api/images?limit=${STRIP_SIZE}`);
  $("strip").replaceChildren(...images.map((image) => card(image, { mainPhase: state.mainPhase })));
  const newest = images.find((i) => i.state === "done");
  if (newest && newest.id !== state.shownId) await showField(newest.id);
  return images;
}

// At start and after a reconnect: the files that failed after the newest measured one.
function noteRecentFailures(images) {
  const newestDone = images.find((i) => i.state === "done");
  for (const image of images) {
    if (image.state === "failed" && (!newestDone || image.id > newestDone.id)) noteFailure(image);
  }
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
  noteRecentFailures(await refreshStats().then(refreshStrip, refreshStrip));
  if (state.shownId != null) await showField(state.shownId);
}

wireSpecimenForm();
$("live-failure-dismiss").addEventListener("click", () => {
  state.failed = [];
  showFailures();
});

stream.on("open", refreshAll);
stream.on("field", (image) => {
  if (image.state === "failed") noteFailure(image);
  else showField(image.id);
  refreshStats().then(refreshStrip);
});
// A specimen closed or reopened: the field shown may have become read-only or writable again.
stream.on("specimen", () => refreshStats().then(refreshStrip).then(() => state.shownId != null && showField(state.shownId)));
boot();
refreshAll();
