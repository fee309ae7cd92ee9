// Numbers, units, times and class names as the pages show them.

export const fixed = (value, digits = 2) => (value == null || Number.isNaN(value) ? "–" : value.toFixed(digits));

// A number with about three significant digits (densities run from 0.01 to 1e6).
export function sig(value) {
  if (value == null) return "–";
  const size = Math.abs(value);
  if (size >= 1000) return Math.round(value).toLocaleString("en");
  const text = value.toPrecision(3);
  return text.includes(".") && !text.includes("e") ? text.replace(/\.?0+$/, "") : text;
}

export const UNITS = { um: "µm", px: "px", "1/mm2": "per mm²", "1/Mpx": "per Mpx", "area %": "%" };
export const unitText = (unit) => UNITS[unit] || unit;

// Where a pixel size came from (src/phasewatch/imageio/formats.py's sources, and the daemon's config).
const SOURCES = {
  user: "given by the user", imagej: "ImageJ metadata in the file", ome: "OME metadata in the file",
  fei: "FEI metadata in the file", zeiss: "Zeiss metadata in the file", "tiff-resolution": "the TIFF's resolution tags",
  config: "the service's [calibration] for its folder", none: "none: the file carries no calibration",
};
export const sourceText = (source) => (source ? SOURCES[source] || source : "–");

export function when(epochSeconds) {
  if (epochSeconds == null) return "–";
  return new Date(epochSeconds * 1000).toLocaleString("en-GB", {
    year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
    timeZoneName: "short", // a time is read with its zone: the appliance and the reader may differ
  });
}

// A class's display name: the API gives it (src/phasewatch/webui/names.py); the raw name is the fallback.
export const label = (labels, name) => (labels && labels[name]) || name;

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

// Why a file failed, without its path in front: the page names the file beside it.
export function reasonText(image) {
  const reason = image.error || "no reason recorded";
  const prefix = `${image.path}: `;
  return reason.startsWith(prefix) ? reason.slice(prefix.length) : reason;
}
