// Building the page's DOM without markup strings: text is always text (a file name or a
// reason holding "<b>" shows as typed), and nothing needs an inline style (the CSP).

export const $ = (id) => document.getElementById(id);

export function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text != null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

export function link(href, text, className) {
  const node = element("a", text, className);
  node.href = href;
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text != null) node.textContent = text;
  return node;
}

// A colour swatch: an SVG square filled by attribute, so the CSP's style rules allow it.
export function swatch(colour) {
  const box = svg("svg", { class: colour ? "swatch" : "swatch none", viewBox: "0 0 10 10", "aria-hidden": "true" });
  if (colour) box.append(svg("rect", { width: 10, height: 10, fill: colour }));
  return box;
}

export function showError(node, err) {
  node.textContent = err ? err.message : "";
  node.hidden = !err;
}
