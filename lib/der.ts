/**
 * A small, strict DER reader: enough ASN.1 to inspect certificate requests
 * ourselves instead of parsing openssl's human-oriented text output.
 *
 * It accepts definite lengths only, rejects trailing or truncated bytes and
 * bounds nesting, so hostile input fails fast with a {@linkcode DerError}.
 *
 * @module
 */
import { E2eError } from "./errors.ts";

/**
 * A malformed DER encoding: an {@linkcode E2eError} with code `ERR_DER_INVALID`,
 * so one that escapes is reported like any other domain failure. Readers of a
 * particular structure (CSR, CRL) turn it into their own code.
 *
 * @example
 * ```ts
 * import { DerError, readDer } from "./der.ts";
 * try {
 *   readDer(new Uint8Array([0x30]));
 * } catch (e) {
 *   if (e instanceof DerError) console.log(e.code, e.message); // ERR_DER_INVALID Truncated DER element
 * }
 * ```
 */
export class DerError extends E2eError {
  /** Makes the error. */
  constructor(message: string) {
    super("ERR_DER_INVALID", message);
    this.name = "DerError";
  }
}

/** One decoded type-length-value element. */
export interface DerNode {
  /** The identifier octet (class, constructed bit and tag number). */
  tag: number;
  /** The whole element, header included. */
  raw: Uint8Array;
  /** The contents only. */
  value: Uint8Array;
}

/** Identifier octets used by e2e-chat. */
export const Tag = {
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  T61_STRING: 0x14,
  IA5_STRING: 0x16,
  UNIVERSAL_STRING: 0x1c,
  BMP_STRING: 0x1e,
  SEQUENCE: 0x30,
  SET: 0x31,
  CONTEXT_0: 0xa0,
} as const;

/**
 * Reads exactly one element that spans all of `bytes`.
 *
 * @example
 * ```ts
 * import { readDer } from "./der.ts";
 * const node = readDer(new Uint8Array([0x05, 0x00]));
 * console.log(node.tag); // 5 (NULL)
 * ```
 */
export function readDer(bytes: Uint8Array): DerNode {
  const [node, next] = readAt(bytes, 0);
  if (next !== bytes.length) throw new DerError("Trailing bytes after the DER element");
  return node;
}

/**
 * The elements inside a constructed element, optionally checking that it has the expected tag.
 *
 * @example
 * ```ts
 * import { children, readDer } from "./der.ts";
 * const seq = readDer(new Uint8Array([0x30, 0x02, 0x05, 0x00]));
 * console.log(children(seq, 0x30).length); // 1
 * ```
 */
export function children(node: DerNode, expectTag?: number, max = 10_000): DerNode[] {
  if (expectTag !== undefined && node.tag !== expectTag) {
    throw new DerError(
      `Expected tag 0x${expectTag.toString(16)}, found 0x${node.tag.toString(16)}`,
    );
  }
  if ((node.tag & 0x20) === 0) throw new DerError("Element is not constructed");
  const out: DerNode[] = [];
  let offset = 0;
  while (offset < node.value.length) {
    const [child, next] = readAt(node.value, offset);
    out.push(child);
    offset = next;
    if (out.length > max) throw new DerError("Too many elements");
  }
  return out;
}

/**
 * Decodes an OBJECT IDENTIFIER element to dotted form.
 *
 * @example
 * ```ts
 * import { decodeOid, readDer } from "./der.ts";
 * console.log(decodeOid(readDer(new Uint8Array([0x06, 0x03, 0x55, 0x04, 0x03])))); // "2.5.4.3"
 * ```
 */
export function decodeOid(node: DerNode | undefined): string {
  if (!node || node.tag !== Tag.OID || node.value.length === 0 || node.value.length > 64) {
    throw new DerError("Invalid OBJECT IDENTIFIER");
  }
  const arcs: number[] = [];
  let acc = 0;
  let arcStart = true;
  for (const byte of node.value) {
    // DER: an arc never starts with a 0x80 padding byte.
    if (arcStart && byte === 0x80) throw new DerError("Non-minimal OBJECT IDENTIFIER arc");
    arcStart = (byte & 0x80) === 0;
    acc = acc * 128 + (byte & 0x7f);
    if (acc > Number.MAX_SAFE_INTEGER / 128) throw new DerError("OBJECT IDENTIFIER arc too large");
    if ((byte & 0x80) === 0) {
      arcs.push(acc);
      acc = 0;
    }
  }
  if (node.value[node.value.length - 1] & 0x80) throw new DerError("Truncated OBJECT IDENTIFIER");
  const first = arcs[0] < 80 ? Math.floor(arcs[0] / 40) : 2;
  return [first, arcs[0] - first * 40, ...arcs.slice(1)].join(".");
}

/**
 * Decodes one of the X.520 string types to a JavaScript string.
 *
 * @example
 * ```ts
 * import { decodeString, readDer } from "./der.ts";
 * console.log(decodeString(readDer(new Uint8Array([0x0c, 0x01, 0x61])))); // "a"
 * ```
 */
export function decodeString(node: DerNode): string {
  try {
    return decodeStringUnchecked(node);
  } catch (e) {
    if (e instanceof DerError) throw e;
    throw new DerError(`Invalid string: ${e instanceof Error ? e.message : e}`);
  }
}

function decodeStringUnchecked(node: DerNode): string {
  switch (node.tag) {
    case Tag.UTF8_STRING:
      return new TextDecoder("utf-8", { fatal: true }).decode(node.value);
    case Tag.PRINTABLE_STRING:
    case Tag.IA5_STRING:
    case Tag.T61_STRING:
      return String.fromCharCode(...node.value);
    case Tag.BMP_STRING:
      return new TextDecoder("utf-16be", { fatal: true }).decode(node.value);
    case Tag.UNIVERSAL_STRING: {
      if (node.value.length % 4) throw new DerError("Invalid UniversalString");
      const view = new DataView(node.value.buffer, node.value.byteOffset, node.value.length);
      let s = "";
      for (let i = 0; i < node.value.length; i += 4) s += String.fromCodePoint(view.getUint32(i));
      return s;
    }
    default:
      throw new DerError(`Unsupported string type 0x${node.tag.toString(16)}`);
  }
}

function readAt(bytes: Uint8Array, offset: number): [DerNode, number] {
  if (offset + 2 > bytes.length) throw new DerError("Truncated DER element");
  const tag = bytes[offset];
  if ((tag & 0x1f) === 0x1f) throw new DerError("High tag numbers are not supported");
  let length = bytes[offset + 1];
  let header = 2;
  if (length & 0x80) {
    const n = length & 0x7f;
    if (n === 0) throw new DerError("Indefinite lengths are not DER");
    if (n > 4) throw new DerError("DER length too large");
    if (offset + 2 + n > bytes.length) throw new DerError("Truncated DER length");
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + bytes[offset + 2 + i];
    if (length < 0x80 || bytes[offset + 2] === 0) throw new DerError("Non-minimal DER length");
    header += n;
  }
  const end = offset + header + length;
  if (end > bytes.length) throw new DerError("Truncated DER element");
  return [{
    tag,
    raw: bytes.subarray(offset, end),
    value: bytes.subarray(offset + header, end),
  }, end];
}
