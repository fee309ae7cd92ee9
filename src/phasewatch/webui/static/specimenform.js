// The "start a new specimen" form, on the live view and the specimens page alike.

import { postJson } from "./api.js";
import { $, showError } from "./dom.js";

async function startSpecimen(event) {
  event.preventDefault();
  const form = event.target;
  try {
    await postJson("/api/specimens", {
      name: form.elements.namedItem("name").value, notes: form.elements.namedItem("notes").value,
      operator: form.elements.namedItem("operator").value,
    });
    form.reset();
    showError($("form-error"), null);
  } catch (err) {
    showError($("form-error"), err);
  }
}

// The page's #new-specimen form starts a specimen; its errors show in #form-error.
export function wireSpecimenForm() {
  $("new-specimen").addEventListener("submit", startSpecimen);
}
