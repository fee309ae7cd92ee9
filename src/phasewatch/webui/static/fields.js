// The history (/fields): every field, newest first, a page at a time, narrowed by the
// form (file name, state, arrival dates, specimen). The form is a plain GET form, so the
// address holds the search and each page of it (bookmark it, send it); paging keeps the
// search and adds before= or after=.

import { api } from "./api.js";
import { boot, stream } from "./app.js";
import { card } from "./cards.js";
import { $, element, showError } from "./dom.js";
import { plural } from "./format.js";

const PAGE = 48;
const query = new URLSearchParams(window.location.search);
const form = $("filter");

// A date input's day as epoch seconds at local midnight; `after` adds a day (inclusive "to").
function dayStart(value, after = false) {
  if (!value) return null;
  const [y, m, d] = value.split("-").map(Number);
  return new Date(y, m - 1, d + (after ? 1 : 0)).getTime() / 1000;
}

function apiQuery() {
  const params = new URLSearchParams({ limit: String(PAGE + 1) });
  for (const key of ["q", "state", "specimen", "before", "after"]) {
    if (query.get(key)) params.set(key, query.get(key));
  }
  const since = dayStart(query.get("from"));
  const until = dayStart(query.get("to"), true);
  if (since != null) params.set("since", String(since));
  if (until != null) params.set("until", String(until));
  return params;
}

function pageLink(anchor, key, id) {
  const params = new URLSearchParams(query);
  params.delete("before");
  params.delete("after");
  params.set(key, String(id));
  anchor.href = `/fields?${params}`;
  anchor.hidden = false;
}

async function fillSpecimens() {
  const { specimens } = await api("/api/specimens");
  const select = form.elements.namedItem("specimen");
  select.append(...specimens.map((s) => {
    const option = element("option", `${s.name} (#${s.id})`);
    option.value = String(s.id);
    return option;
  }));
  select.value = query.get("specimen") || "";
}

async function load() {
  try {
    const rows = await api(`/api/images?${apiQuery()}`);
    // One more than a page was asked for: whether there is more in the direction we went.
    const forward = query.has("after");
    const more = rows.length > PAGE;
    const shown = forward ? rows.slice(rows.length > PAGE ? 1 : 0) : rows.slice(0, PAGE);
    $("list").replaceChildren(...shown.map((image) => card(image, { details: true })));
    $("summary").textContent = shown.length ? `${plural(shown.length, "field")}, newest first.` : "No fields match.";
    $("older").hidden = true;
    $("newer").hidden = true;
    if (shown.length) {
      if (forward || more) pageLink($("older"), "before", shown[shown.length - 1].id);
      if (query.has("before") || (forward && more)) pageLink($("newer"), "after", shown[0].id);
    }
    showError($("list-error"), null);
  } catch (err) {
    showError($("list-error"), err);
  }
}

for (const name of ["q", "state", "from", "to"]) {
  form.elements.namedItem(name).value = query.get(name) || "";
}
// Empty fields stay out of the address.
form.addEventListener("formdata", (event) => {
  for (const [key, value] of [...event.formData.entries()]) if (!value) event.formData.delete(key);
});

// New fields appear at the top of the first page only; a later page stays put.
const firstPage = !query.has("before") && !query.has("after");
stream.on("open", load);
stream.on("field", () => firstPage && load());
stream.on("specimen", load);
boot();
fillSpecimens();
load();
