// One-channel PNGs of class ids, both ways. The label API takes and gives an 8-bit
// greyscale PNG at the field's size (255 = not labelled); a canvas can only encode RGBA,
// so this writes the PNG itself (zlib by the browser's CompressionStream). Reading goes
// through createImageBitmap without colour conversion, so every grey value is the id.

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
const FILTER_UP = 2; // each row as its difference from the one above: label rows repeat, so mostly zeros

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n += 1) {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i += 1) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i += 1) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

async function deflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// The PNG (bytes) of `ids`, one byte per pixel, row after row.
export async function encodeGrey(ids, width, height) {
  if (ids.length !== width * height) throw new Error(`${ids.length} ids for a ${width} × ${height} picture`);
  const raw = new Uint8Array((width + 1) * height);
  for (let y = 0; y < height; y += 1) {
    const row = y * (width + 1);
    raw[row] = FILTER_UP;
    const at = y * width;
    if (y === 0) raw.set(ids.subarray(0, width), row + 1);
    else for (let x = 0; x < width; x += 1) raw[row + 1 + x] = (ids[at + x] - ids[at - width + x]) & 0xff;
  }
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header.set([8, 0, 0, 0, 0], 8); // 8 bits, greyscale, deflate, adaptive filtering, no interlace
  const parts = [new Uint8Array(SIGNATURE), chunk("IHDR", header), chunk("IDAT", await deflate(raw)),
    chunk("IEND", new Uint8Array(0))];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

// Base64 of bytes, in slices (a spread of millions of arguments would overflow the stack).
export function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

// The grey values (or the red channel of a colour PNG) of a picture, as {ids, width, height}.
export async function decodeIds(blob) {
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const { width, height } = bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = context.getImageData(0, 0, width, height).data;
  const ids = new Uint8Array(width * height);
  for (let p = 0, q = 0; q < ids.length; p += 4, q += 1) ids[q] = rgba[p];
  return { ids, width, height };
}
