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

/**
 * Yields the complete lines of each chunk of `stream` together (without their
 * newlines), then what is left after the last newline, if anything: a reader
 * that handles a burst of lines in one turn instead of one await each.
 *
 * @example Read stdin a burst at a time
 * ```ts
 * import { readLineBatches } from "./lines.ts";
 * for await (const lines of readLineBatches(Deno.stdin.readable)) {
 *   for (const line of lines) console.log(line.length);
 * }
 * ```
 */
export async function* readLineBatches(
  stream: ReadableStream<Uint8Array>,
): AsyncGenerator<string[], void, undefined> {
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of stream) {
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
