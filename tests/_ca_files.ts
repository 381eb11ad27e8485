/**
 * The CA's files as tests check them: index.txt in openssl's exact format,
 * then read by the product's own parser (ca/store.ts), and the names HOME/ca
 * may hold (from ca/store.ts CaPaths).
 *
 * @module
 */
import assert from "node:assert/strict";
import { basename, join } from "node:path";
import { CaPaths, type IndexEntry, parseIndex } from "../ca/store.ts";

/** Options of {@linkcode assertIndexFormat}. */
export interface IndexFormatOptions {
  /** Accept a last line without "\n" (an append cut short, ignored as docs/CA.md says). Default: false. */
  cutShort?: boolean;
  /** What a CN may be. Default: a user name (a-z, 0-9, ".", "_", "-"); a served CA also has its own. */
  cn?: RegExp;
}

/**
 * Asserts every line of `content` (an index.txt) is as openssl writes it: six
 * tab-separated fields; status V or R; an expiry time; a revocation time (and
 * reason) exactly when revoked; an even-length uppercase hex serial; the file
 * "unknown"; a subject of one valid CN.
 */
export function assertIndexFormat(content: string, options: IndexFormatOptions = {}): void {
  if (content === "") return;
  if (options.cutShort) content = content.slice(0, content.lastIndexOf("\n") + 1);
  else assert.ok(content.endsWith("\n"), "index.txt ends with a newline");
  for (const line of content.slice(0, -1).split("\n")) {
    if (options.cutShort && line === "") continue;
    const fields = line.split("\t");
    assert.equal(fields.length, 6, `six fields in ${JSON.stringify(line)}`);
    const [status, expires, revoked, serial, file, subject] = fields;
    assert.match(status, /^[VR]$/);
    assert.match(expires, /^\d{12}Z$/);
    if (status === "V") assert.equal(revoked, "");
    else assert.match(revoked, /^\d{12}Z(,[A-Za-z]+)?$/);
    assert.match(serial, /^([0-9A-F]{2})+$/);
    assert.equal(file, "unknown");
    const cn = /^\/CN=([^/]+)$/.exec(subject);
    assert.ok(cn, `a single CN in ${JSON.stringify(subject)}`);
    assert.match(
      cn[1],
      options.cn ?? /^[a-z0-9._-]+$/,
      `a single CN in ${JSON.stringify(subject)}`,
    );
  }
}

/**
 * The committed index of the CA in `home`, read by ca/store.ts's parser once
 * {@linkcode assertIndexFormat} has passed.
 */
export async function readIndexChecked(
  home: string,
  options: IndexFormatOptions = {},
): Promise<IndexEntry[]> {
  const content = await Deno.readTextFile(new CaPaths(home).index);
  assertIndexFormat(content, options);
  return parseIndex(content);
}

/** The names HOME/ca holds once a CA exists (key-ids once a signing wrote it), sorted. */
export function caFileNames(home: string): string[] {
  const paths = new CaPaths(home);
  return [
    paths.cert,
    paths.key,
    paths.certs,
    paths.crl,
    join(paths.dir, "crlnumber"),
    paths.generation,
    paths.index,
    paths.index + ".attr",
    paths.keyIds,
    paths.config,
    paths.tmp,
  ].map((path) => basename(path)).sort();
}
