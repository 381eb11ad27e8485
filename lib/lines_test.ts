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

Deno.test("readLineBatches() of a reader (a file, as Deno.stdin is read) gives the same lines, a character split between two reads of its one buffer included", async () => {
  // "é" (two bytes) straddles the 64 KiB a read takes; later reads reuse the same buffer.
  const first = "x".repeat(64 * 1024 - 1) + "é\n";
  const text = first + "a\nb\n" + "y".repeat(100_000) + "\nlast";
  const file = await Deno.makeTempFile();
  try {
    await Deno.writeTextFile(file, text);
    using reader = await Deno.open(file);
    const lines: string[] = [];
    for await (const batch of readLineBatches(reader)) lines.push(...batch);
    assert.deepEqual(lines, text.split("\n"));
  } finally {
    await Deno.remove(file);
  }
});
