"use strict";
// The live page: data from the JSON API, new fields from /events (Server-Sent Events).

const STRIP_SIZE = 24;
const STATUS_POLL_MS = 5000;
const RECONNECT_MS = 10000; // after the server refused or closed the stream for good
const SVG_NS = "http://www.w3.org/2000/svg";
const WHO_KEY = "phasewatch.who"; // the last operator who accepted a field, offered again

const state = {
  shown: null, follow: true, specimen: null, mainPhase: null, live: false, status: null, countFlagged: false,
};

const $ = (id) => document.getElementById(id);

async function api(url, options) {
  const response = await fetch(url, options);
  if (response.status === 401) {
    // The service wants its token (or the sign-in cookie expired): sign in again.
    window.location.assign("/login");
    throw new Error("signing in");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${url}: HTTP ${response.status}`);
  return body;
}

// Every change is a JSON POST: the server refuses other content types (CSRF).
const postJson = (url, body = {}) =>
  api(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

const fixed = (value, digits = 2) => (value == null ? "–" : value.toFixed(digits));

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text != null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// -- status line ---------------------------------------------------------------------

function renderStatus() {
  const s = state.status;
  const parts = [state.live ? "live" : "offline (retrying)"];
  if (s) {
    parts.push(`queued ${s.queued}`, `processing ${s.processing}`, `done ${s.done}`, `failed ${s.failed}`,
      `backend ${s.backend}`, `model ${s.model}`);
    const reasons = (s.health.reasons || []).join("; ");
    parts.push(s.health.ok ? "healthy" : `UNHEALTHY${reasons ? ": " + reasons : ""}`);
  }
  $("status").textContent = parts.join(" · ");
  $("status").classList.toggle("bad", !state.live || (s && !s.health.ok));
}

async function refreshStatus() {
  try {
    state.status = await api("/api/status");
  } catch (err) {
    state.status = null;
  }
  renderStatus();
}

// -- trust: fields outside the model's experience ------------------------------------

// Records from before the trust record have trust null: trusted.
const isFlagged = (image) => image.trust != null && !image.trust.ok;

function trustText(image) {
  const [first, ...more] = image.trust.reasons;
  return `Outside this model's experience: ${first || "no reason given"}` +
    (more.length ? ` (+${more.length} more)` : "");
}

function trustState(image) {
  if (image.accepted) return `Accepted by ${image.accepted_by}: ${image.accept_reason}`;
  return state.countFlagged
    ? "Counted in the statistics although nobody has accepted it."
    : "Not counted in the statistics until someone accepts it.";
}

function showTrust(image) {
  const flagged = isFlagged(image);
  $("trust").hidden = !flagged;
  if (!flagged) return;
  $("trust").classList.toggle("accepted", image.accepted);
  $("trust-reason").textContent = trustText(image);
  $("trust-reason").title = image.trust.reasons.join("\n");
  $("trust-state").textContent = trustState(image);
  $("accept").hidden = image.accepted;
  $("unaccept").hidden = !image.accepted;
}

function openAccept() {
  const form = $("accept-form");
  form.reset();
  form.elements.namedItem("who").value = localStorage.getItem(WHO_KEY) || "";
  $("accept-field").textContent = `${state.shown.file} (#${state.shown.id}): ${trustText(state.shown)}`;
  $("accept-error").hidden = true;
  $("accept-dialog").showModal();
}

async function submitAccept(event) {
  event.preventDefault();
  const form = event.target;
  const who = form.elements.namedItem("who").value;
  try {
    showField(await postJson(`/api/images/${state.shown.id}/accept`, {
      who, reason: form.elements.namedItem("reason").value,
    }));
    localStorage.setItem(WHO_KEY, who.trim());
    $("accept-dialog").close();
  } catch (err) {
    $("accept-error").textContent = err.message;
    $("accept-error").hidden = false;
  }
}

async function unaccept() {
  showField(await postJson(`/api/images/${state.shown.id}/unaccept`));
}

// -- the field shown -----------------------------------------------------------------

function fractionsText(fractions) {
  if (!fractions) return "";
  return Object.entries(fractions).map(([name, f]) => `${name} ${fixed(100 * f, 1)} %`).join(" · ");
}

function showField(image) {
  state.shown = image;
  const img = $("overlay");
  const failed = image.state === "failed";
  $("field-title").textContent = `${image.file} (#${image.id}, ${image.excluded ? "excluded" : image.state})`;
  $("field-error").hidden = !failed;
  $("field-error").textContent = failed ? image.error : "";
  if (image.pictures.overlay) {
    img.src = image.pictures.overlay;
    img.alt = `Overlay of ${image.file}`;
  }
  img.hidden = failed || !image.pictures.overlay;
  $("field-fractions").textContent = fractionsText(image.fractions);
  showTrust(image);
  $("exclude").disabled = image.state !== "done" || image.excluded;
  $("exclude").hidden = image.excluded;
  $("include").hidden = !image.excluded;
  $("exclude-reason").value = image.exclude_reason || "";
}

function setFollow(follow) {
  state.follow = follow;
  $("follow").hidden = follow;
}

async function viewField(id) {
  setFollow(false);
  showField(await api(`/api/images/${id}`));
}

async function setExcluded(exclude) {
  const id = state.shown.id;
  const body = exclude ? { reason: $("exclude-reason").value } : {};
  showField(await postJson(`/api/images/${id}/${exclude ? "exclude" : "include"}`, body));
  // Statistics and strip follow from the "specimen" event the server sends.
}

// -- recent fields -------------------------------------------------------------------

function thumbnail(image) {
  const flagged = isFlagged(image);
  const classes = ["thumb", image.state, image.excluded && "excluded", flagged && "flagged",
    flagged && image.accepted && "accepted"];
  const item = element("li", null, classes.filter(Boolean).join(" "));
  const button = element("button");
  button.type = "button";
  button.dataset.id = image.id;
  const picture = image.pictures.preview || image.pictures.overlay;
  if (picture) {
    const img = element("img");
    img.src = picture;
    img.alt = image.file;
    img.loading = "lazy";
    button.append(img);
  }
  button.append(element("span", image.file, "name"));
  if (image.state === "failed") {
    button.append(element("span", image.error, "error"));
  } else if (image.state === "done" && image.fractions) {
    const phase = state.mainPhase && state.mainPhase in image.fractions ? state.mainPhase : image.phases[0];
    const label = phase ? `${phase} ${fixed(100 * image.fractions[phase], 1)} %` : fractionsText(image.fractions);
    button.append(element("span", label + (image.excluded ? " (excluded)" : ""), "value"));
  } else {
    button.append(element("span", image.state, "value"));
  }
  if (flagged) {
    const label = image.accepted ? "outside experience · accepted" : "⚠ outside experience";
    const marker = element("span", label, "trust-mark");
    marker.title = image.trust.reasons.join("\n");
    button.append(marker);
  }
  button.addEventListener("click", () => viewField(image.id));
  item.append(button);
  return item;
}

async function refreshStrip() {
  const images = await api(`/api/images?limit=${STRIP_SIZE}`);
  $("strip").replaceChildren(...images.map(thumbnail));
  if (state.follow && !state.shown) {
    const newest = images.find((i) => i.state === "done" || i.state === "failed");
    if (newest) showField(newest);
  }
}

// -- specimen statistics -------------------------------------------------------------

function statsRow(name, s) {
  const row = element("tr", null, name === state.mainPhase ? "main" : "");
  row.dataset.class = name;
  const cells = [
    [name, "class"], [String(s.n), "n"], [fixed(s.mean), "mean"], [fixed(s.std), "std"],
    [fixed(s.ci95), "ci"], [fixed(s.ra_pct, 1), "ra"],
    [s.fields_needed == null ? "–" : String(s.fields_needed), "needed"], [fixed(s.weighted_mean), "weighted"],
  ];
  for (const [text, cls] of cells) row.append(element("td", text, cls));
  return row;
}

function svg(tag, attributes) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

function renderTrend(trend) {
  const plot = $("trend");
  plot.replaceChildren();
  if (!trend || trend.values.length === 0) {
    $("trend-caption").textContent = "";
    return;
  }
  const [width, height, pad, axis] = [400, 140, 8, 50];
  const n = trend.values.length;
  // The y range fits the data and the CI band, so that field-to-field scatter stays visible.
  const highs = trend.mean.map((m, i) => m + (trend.ci95[i] || 0));
  const lows = trend.mean.map((m, i) => m - (trend.ci95[i] || 0));
  let top = Math.max(...trend.values, ...highs);
  let bottom = Math.max(0, Math.min(...trend.values, ...lows));
  const margin = (top - bottom) * 0.1 || 1;
  [top, bottom] = [top + margin, Math.max(0, bottom - margin)];
  const x = (i) => axis + (n === 1 ? (width - axis - pad) / 2 : (i * (width - axis - pad)) / (n - 1));
  const y = (v) => height - pad - ((Math.min(Math.max(v, bottom), top) - bottom) * (height - 2 * pad)) / (top - bottom);
  for (const v of [bottom, top]) {
    const label = svg("text", { x: axis - 4, y: y(v) + 4, class: "axis" });
    label.textContent = `${fixed(v, 1)} %`;
    plot.append(label);
  }
  const withCi = trend.ci95.map((ci, i) => [i, ci]).filter(([, ci]) => ci != null);
  if (withCi.length > 1) {
    const upper = withCi.map(([i, ci]) => `${x(i)},${y(trend.mean[i] + ci)}`);
    const lower = withCi.reverse().map(([i, ci]) => `${x(i)},${y(trend.mean[i] - ci)}`);
    plot.append(svg("polygon", { points: [...upper, ...lower].join(" "), class: "band" }));
  }
  plot.append(svg("polyline", { points: trend.mean.map((m, i) => `${x(i)},${y(m)}`).join(" "), class: "mean" }));
  trend.values.forEach((v, i) => plot.append(svg("circle", { cx: x(i), cy: y(v), r: 3, class: "value" })));
  const last = n - 1;
  $("trend-caption").textContent =
    `${trend.class}: area % per field (dots), running mean ${fixed(trend.mean[last])} %` +
    (trend.ci95[last] == null ? "" : ` ± ${fixed(trend.ci95[last])} (95 % CI band)`);
}

async function refreshStats() {
  const { current } = await api("/api/specimens");
  state.specimen = current;
  const stats = await api(`/api/specimens/${current.id}/stats`);
  state.mainPhase = stats.main_phase;
  $("specimen-name").textContent = `${current.name} (${stats.fields} fields)`;
  $("specimen-notes").textContent = current.notes || "";
  const names = Object.keys(stats.fractions).sort((a, b) => (b === stats.main_phase) - (a === stats.main_phase));
  $("stats").tBodies[0].replaceChildren(...names.map((name) => statsRow(name, stats.fractions[name])));
  renderTrend(stats.trend);
  state.countFlagged = stats.count_flagged;
  $("flagged-note").textContent = flaggedNote(stats);
  $("flagged-note").hidden = !stats.flagged_pending;
  if (state.shown) showTrust(state.shown);
}

function flaggedNote(stats) {
  const n = stats.flagged_pending;
  const [fields, them] = n === 1
    ? ["1 field outside the model's experience is", "it"]
    : [`${n} fields outside the model's experience are`, "them"];
  return stats.count_flagged
    ? `${fields} counted although nobody has accepted ${them}.`
    : `${fields} not counted until someone accepts ${them}.`;
}

async function startSpecimen(event) {
  event.preventDefault();
  const form = event.target;
  const error = $("form-error");
  try {
    await postJson("/api/specimens", {
      name: form.elements.namedItem("name").value,
      notes: form.elements.namedItem("notes").value,
    });
    form.reset();
    error.hidden = true;
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
  }
}

// -- live updates --------------------------------------------------------------------

async function refreshAll() {
  await Promise.allSettled([refreshStatus(), refreshStats().then(refreshStrip)]);
}

function onField(event) {
  const image = JSON.parse(event.data);
  if (state.follow) showField(image);
  refreshStats().then(refreshStrip);
  refreshStatus();
}

function connect() {
  const source = new EventSource("/events");
  // Also after a reconnection: whatever happened meanwhile is reloaded.
  source.addEventListener("open", () => {
    state.live = true;
    refreshAll();
  });
  source.addEventListener("field", onField);
  source.addEventListener("specimen", () => refreshStats().then(refreshStrip));
  source.addEventListener("error", () => {
    state.live = false;
    renderStatus();
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, RECONNECT_MS);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("follow").addEventListener("click", () => {
    setFollow(true);
    state.shown = null;
    refreshStrip();
  });
  $("exclude").addEventListener("click", () => setExcluded(true));
  $("include").addEventListener("click", () => setExcluded(false));
  $("accept").addEventListener("click", openAccept);
  $("unaccept").addEventListener("click", unaccept);
  $("accept-form").addEventListener("submit", submitAccept);
  $("accept-cancel").addEventListener("click", () => $("accept-dialog").close());
  $("new-specimen").addEventListener("submit", startSpecimen);
  refreshAll();
  connect();
  setInterval(refreshStatus, STATUS_POLL_MS);
});
