import assert from "node:assert/strict";
import { readLineBatches, readLines } from "./lines.ts";

function streamOf(...chunks: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return ReadableStream.from(chunks.map((c) => encoder.encode(c)));
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<string[]> {
  const lines: string[] = [];
  for await (const line of readLines(stream)) lines.push(line);
  return lines;
}

Deno.test("readLines() splits lines across chunk boundaries and keeps the unterminated tail", async () => {
  assert.deepEqual(await collect(streamOf("a\nb", "c\n\nd")), ["a", "bc", "", "d"]);
});

Deno.test("readLines() decodes a character split between chunks", async () => {
  const bytes = new TextEncoder().encode("é\n");
  const stream = ReadableStream.from([bytes.subarray(0, 1), bytes.subarray(1)]);
  assert.deepEqual(await collect(stream), ["é"]);
});

Deno.test("readLineBatches() yields the complete lines of each chunk together, then the tail", async () => {
  const batches: string[][] = [];
  for await (const lines of readLineBatches(streamOf("a\nb\nc", "d\n", "e"))) batches.push(lines);
  assert.deepEqual(batches, [["a", "b"], ["cd"], ["e"]]);
});
