/**
 * Text lines from a byte stream (stdin of the JSON face, of test and bench drivers).
 *
 * @module
 */

/**
 * Yields each `\n`-terminated line of `stream` (without the newline; a trailing `\r`
 * is kept), then what is left after the last newline, if anything.
 *
 * @example Read stdin line by line
 * ```ts
 * import { readLines } from "./lines.ts";
 * for await (const line of readLines(Deno.stdin.readable)) {
 *   if (line === "quit") break;
 * }
 * ```
 */
export async function* readLines(
  stream: ReadableStream<Uint8Array>,
): AsyncGenerator<string, void, undefined> {
  for await (const lines of readLineBatches(stream)) yield* lines;
}

/** What {@linkcode readLineBatches} reads from: a byte stream, or a reader such as `Deno.stdin`. */
export type LineSource = ReadableStream<Uint8Array> | {
  read(p: Uint8Array): Promise<number | null>;
};

/**
 * Yields the complete lines of each chunk of `source` together (without their
 * newlines), then what is left after the last newline, if anything: a reader
 * that handles a burst of lines in one turn instead of one await each. A reader
 * (`Deno.stdin`) is read straight into one buffer: a line costs one read, not a
 * stream's pull, chunk and promises too (a line written alone: 72 µs of CPU
 * instead of 90 in Deno 2.9.6).
 *
 * @example Read stdin a burst at a time
 * ```ts
 * import { readLineBatches } from "./lines.ts";
 * for await (const lines of readLineBatches(Deno.stdin)) {
 *   for (const line of lines) console.log(line.length);
 * }
 * ```
 */
export async function* readLineBatches(
  source: LineSource,
): AsyncGenerator<string[], void, undefined> {
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of chunks(source)) {
    pending += decoder.decode(chunk, { stream: true });
    const last = pending.lastIndexOf("\n");
    if (last < 0) continue;
    const lines = pending.slice(0, last).split("\n");
    pending = pending.slice(last + 1);
    yield lines;
  }
  pending += decoder.decode();
  if (pending) yield [pending];
}

// The chunks of `source`; a reader's are views of one buffer, each decoded before the next read.
async function* chunks(source: LineSource): AsyncGenerator<Uint8Array, void, undefined> {
  if (source instanceof ReadableStream) {
    yield* source;
    return;
  }
  const buffer = new Uint8Array(64 * 1024);
  while (true) {
    const n = await source.read(buffer);
    if (n === null) return;
    if (n > 0) yield buffer.subarray(0, n);
  }
}

// What JSON.stringify leaves in a line that some readers take apart: U+2028, U+2029 and U+0085 (line
// breaks to Python's str.splitlines() and other Unicode-aware readers), the other C1 controls (a
// terminal the line is shown on may obey them), and a lone surrogate's escape ("\ud800": strict
// parsers refuse the whole line; with an odd run of backslashes before it, it is an escape).
const UNSAFE_CHAR = /[\u007f-\u009f\u2028\u2029]/;
const UNSAFE_ALL = /[\u007f-\u009f\u2028\u2029]|(\\+)(ud[89a-f][0-9a-f]{2})/g;

/**
 * `value` as one JSON line for every reader (the JSON face's events, history.jsonl): line
 * separators and C1 controls as \u escapes, each lone surrogate as U+FFFD (a paired one
 * JSON.stringify writes as the character itself). Without any of them, JSON.stringify's text.
 *
 * @example
 * ```ts
 * import { jsonLine } from "./lines.ts";
 * console.log(jsonLine({ text: "a\u2028b" })); // {"text":"a\u2028b"}, escaped
 * ```
 */
export function jsonLine(value: unknown): string {
  const line = JSON.stringify(value);
  // The usual line, checked in one pass and a search (faster than one regex for both).
  if (!UNSAFE_CHAR.test(line) && !line.includes("\\ud")) return line;
  return line.replace(
    UNSAFE_ALL,
    (m, slashes?: string) =>
      slashes === undefined
        ? `\\u${m.charCodeAt(0).toString(16).padStart(4, "0")}`
        : slashes.length % 2
        ? `${slashes.slice(1)}\\ufffd`
        : m,
  );
}
