/**
 * PEM encoding and decoding (RFC 7468), strict about labels and base64.
 *
 * @module
 */

/**
 * Decodes the single PEM block labelled `label` in `text`; returns null when there is none
 * or the base64 is invalid. Text before and after the block is ignored.
 *
 * @example
 * ```ts
 * import { pemDecode } from "./pem.ts";
 * console.log(pemDecode("-----BEGIN X-----\nAQID\n-----END X-----\n", "X")); // Uint8Array [1, 2, 3]
 * ```
 */
export function pemDecode(text: string, label: string): Uint8Array | null {
  const begin = `-----BEGIN ${label}-----`;
  const end = `-----END ${label}-----`;
  const start = text.indexOf(begin);
  if (start < 0) return null;
  const stop = text.indexOf(end, start + begin.length);
  if (stop < 0) return null;
  if (text.indexOf(begin, stop) >= 0) return null; // exactly one block
  const body = text.slice(start + begin.length, stop).replace(/[\r\n\t ]/g, "");
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body) || body.length % 4 !== 0) return null;
  try {
    const bin = atob(body);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  } catch {
    return null;
  }
}

/**
 * Encodes `der` as a PEM block with 64-character lines.
 *
 * @example
 * ```ts
 * import { pemEncode } from "./pem.ts";
 * console.log(pemEncode(new Uint8Array([1, 2, 3]), "X"));
 * ```
 */
export function pemEncode(der: Uint8Array, label: string): string {
  let bin = "";
  for (let i = 0; i < der.length; i += 0x8000) {
    bin += String.fromCharCode(...der.subarray(i, i + 0x8000));
  }
  const lines = btoa(bin).match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}
