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
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of stream) {
    pending += decoder.decode(chunk, { stream: true });
    let start = 0;
    let nl: number;
    while ((nl = pending.indexOf("\n", start)) >= 0) {
      yield pending.slice(start, nl);
      start = nl + 1;
    }
    pending = pending.slice(start);
  }
  pending += decoder.decode();
  if (pending) yield pending;
}
