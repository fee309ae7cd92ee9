// What every page shares: the status line, the shared event stream and the screen-reader
// announcements of new and failed fields. A page's own script imports this module,
// registers its listeners (stream.on) and then calls boot().

import { api, postJson } from "./api.js";
import { $ } from "./dom.js";
import { fixed, reasonText } from "./format.js";
import * as stream from "./stream.js";

export { stream };

const STATUS_POLL_MS = 5000;
let status = null;

function renderStatus() {
  const parts = [stream.isLive() ? "live" : "offline (retrying)"];
  if (status) {
    parts.push(`queued ${status.queued}`, `processing ${status.processing}`, `done ${status.done}`,
      `failed ${status.failed}`, `model ${status.model}`, `backend ${status.backend}`);
    const reasons = (status.health.reasons || []).join("; ");
    parts.push(status.health.ok ? "healthy" : `UNHEALTHY${reasons ? ": " + reasons : ""}`);
  }
  $("status").textContent = parts.join(" · ");
  $("status").classList.toggle("bad", !stream.isLive() || (status && !status.health.ok));
}

async function refreshStatus() {
  try {
    status = await api("/api/status");
  } catch (err) {
    status = null;
  }
  renderStatus();
}

// Said once per field, politely; a failed field interrupts.
function announce(image) {
  if (image.state === "failed") {
    $("alarm").textContent = `Field ${image.file} failed: ${reasonText(image)}`;
    return;
  }
  const main = image.phases.find((p) => image.fractions && p in image.fractions);
  const value = main ? `, ${image.labels[main] || main} ${fixed(100 * image.fractions[main], 1)} %` : "";
  const flagged = image.trust && !image.trust.ok ? ", outside the model's experience" : "";
  const duplicate = image.duplicate_of ? `, duplicate of field ${image.duplicate_of}, not counted` : "";
  $("announce").textContent = `New field ${image.file}${value}${flagged}${duplicate}`;
}

// The server ends the session (the cookie is revoked, not only forgotten), then the
// browser goes to the sign-in form.
async function signOut() {
  try {
    await postJson("/logout");
  } finally {
    window.location.assign("/login");
  }
}

export function boot() {
  const signOutButton = $("sign-out");
  if (signOutButton) signOutButton.addEventListener("click", signOut);
  stream.on("live", renderStatus);
  stream.on("open", refreshStatus);
  stream.on("field", (image) => {
    announce(image);
    refreshStatus();
  });
  stream.start();
  refreshStatus();
  setInterval(refreshStatus, STATUS_POLL_MS);
}
