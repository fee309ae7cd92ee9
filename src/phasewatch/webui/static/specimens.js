// The specimens (/specimens): each with its model, counts and state; start one, make one
// current, go to one's page to close (sign off) or reopen it, and pick some to compare.

import { api, postJson } from "./api.js";
import { boot, stream } from "./app.js";
import { $, element, link, showError } from "./dom.js";
import { when } from "./format.js";
import { wireSpecimenForm } from "./specimenform.js";

const picked = new Set();

function stateText(s) {
  if (s.is_current) return "current";
  return s.closed == null ? "open" : `closed ${when(s.closed)}`;
}

function action(text, path, disabled = false) {
  const button = element("button", text);
  button.type = "button";
  button.disabled = disabled;
  button.addEventListener("click", async () => {
    try {
      await postJson(path);
      showError($("list-error"), null);
    } catch (err) {
      showError($("list-error"), err);
    }
  });
  return button;
}

function specimenRow(s) {
  const tr = element("tr", null, s.is_current ? "main" : "");
  tr.dataset.id = s.id;
  const box = element("input");
  box.type = "checkbox";
  box.checked = picked.has(s.id);
  box.setAttribute("aria-label", `compare ${s.name}`);
  box.addEventListener("change", () => {
    if (box.checked) picked.add(s.id);
    else picked.delete(s.id);
    $("compare").disabled = picked.size < 2;
  });
  const name = element("td");
  name.append(link(`/specimens/${s.id}`, s.name));
  if (s.notes) name.append(element("span", ` · ${s.notes}`, "notes"));
  const actions = element("td");
  // Closing and reopening are signed acts (who, meaning or why): done on the specimen's page.
  if (s.closed != null) actions.append(link(`/specimens/${s.id}`, "Reopen (signed)…"));
  else if (!s.is_current) actions.append(action("Make current", `/api/specimens/${s.id}/current`));
  if (s.closed == null) actions.append(" ", link(`/specimens/${s.id}`, "Close with a signature…"));
  const pick = element("td");
  pick.append(box);
  tr.append(pick, name, element("td", s.model_name || "–"), element("td", String(s.done)),
    element("td", String(s.failed)), element("td", when(s.created)), element("td", stateText(s), "state"), actions);
  return tr;
}

async function load() {
  try {
    const { specimens } = await api("/api/specimens");
    $("specimens").tBodies[0].replaceChildren(...specimens.map(specimenRow));
    showError($("list-error"), null);
  } catch (err) {
    showError($("list-error"), err);
  }
}

$("compare").addEventListener("click", () => {
  window.location.assign(`/specimens/compare?ids=${[...picked].sort((a, b) => a - b).join(",")}`);
});
wireSpecimenForm();

stream.on("open", load);
stream.on("specimen", load);
stream.on("field", load);
boot();
load();
