// Which of the service's image formats a file is, from its first bytes, as the service itself
// tells them apart (app/steps/images.py): the page never offers to send what it would refuse.
// A file's name and type can lie (notes.txt renamed .png); its first bytes are what it is.

export const ACCEPTED = "PNG, JPEG, WebP, GIF, BMP or TIFF";

const text = (s) => [...s].map((c) => c.charCodeAt(0));
const SIGNATURES = [
  ["PNG", [0x89, ...text("PNG\r\n"), 0x1a, 0x0a]],
  ["JPEG", [0xff, 0xd8, 0xff]],
  ["GIF", text("GIF87a")],
  ["GIF", text("GIF89a")],
  ["BMP", text("BM")],
  ["TIFF", [...text("II*"), 0]],
  ["TIFF", [...text("MM"), 0, ...text("*")]],
];

const startsWith = (bytes, prefix, at = 0) => prefix.every((b, i) => bytes[at + i] === b);

// "PNG", "JPEG", "WebP", "GIF", "BMP" or "TIFF"; null for anything else.
export async function imageKind(file) {
  const head = new Uint8Array(await file.slice(0, 12).arrayBuffer());
  if (startsWith(head, text("RIFF")) && startsWith(head, text("WEBP"), 8)) return "WebP";
  const found = SIGNATURES.find(([, signature]) => startsWith(head, signature));
  return found ? found[0] : null;
}
