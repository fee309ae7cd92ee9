// A field as a small card with its thumbnail, for the live view's strip and the history.
// Each card is a link to the field's own page.

import { element, link } from "./dom.js";
import { fixed, reasonText, when } from "./format.js";
import { isFlagged } from "./fieldview.js";

function valueText(image, mainPhase) {
  if (image.state === "failed") return null;
  if (image.state !== "done" || !image.fractions) return image.state === "pending" ? "queued" : image.state;
  const phase = mainPhase && mainPhase in image.fractions ? mainPhase : image.phases[0];
  if (!phase) return "";
  const notes = [image.excluded && "excluded", image.duplicate_of != null && `duplicate of #${image.duplicate_of}`];
  const extra = notes.filter(Boolean).join(", ");
  return `${image.labels[phase] || phase} ${fixed(100 * image.fractions[phase], 1)} %${extra ? ` (${extra})` : ""}`;
}

export function card(image, { mainPhase = null, details = false } = {}) {
  const flagged = isFlagged(image);
  const classes = ["thumb", image.state, image.excluded && "excluded", flagged && "flagged",
    flagged && image.accepted && "accepted", image.duplicate_of != null && "duplicate"];
  const item = element("li", null, classes.filter(Boolean).join(" "));
  const anchor = link(`/images/${image.id}`);
  anchor.dataset.id = image.id;
  if (image.thumbnail && image.state !== "failed") {
    const img = element("img");
    img.src = image.thumbnail;
    img.alt = "";  // the name below says what it is
    img.loading = "lazy";
    img.width = 200;
    img.height = 150;
    anchor.append(img);
  } else {
    anchor.append(element("span", image.state === "failed" ? "failed" : "no picture", "no-picture"));
  }
  anchor.append(element("span", image.file, "name"));
  if (image.state === "failed") anchor.append(element("span", reasonText(image), "error"));
  else anchor.append(element("span", valueText(image, mainPhase), "value"));
  if (flagged) {
    const marker = element("span", image.accepted ? "outside experience · accepted" : "⚠ outside experience",
      "trust-mark");
    marker.title = image.trust.reasons.join("\n");
    anchor.append(marker);
  }
  if (details) anchor.append(element("span", `#${image.id} · ${image.specimen} · ${when(image.created)}`, "meta"));
  item.append(anchor);
  return item;
}
