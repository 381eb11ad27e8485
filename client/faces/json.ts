/**
 * The JSON face (`client chat --json`), for scripts and tests: one JSON event
 * per stdout line (docs/PROTOCOL.md §6), command lines on stdin.
 *
 * @module
 */
import { readLines } from "../../lib/lines.ts";
import type { ChatEvent } from "../events.ts";

/** Something that takes input lines; false from `input` means quit. */
export interface InputSink {
  /** Runs one line; resolves false to quit. */
  input(line: string): Promise<boolean>;
}

const encoder = new TextEncoder();

let pending = "";

/**
 * Writes one event as a JSON line on stdout. Events of one turn of the event
 * loop leave in one write (a burst of messages is one syscall, not one each).
 */
export function jsonEvent(event: ChatEvent): void {
  if (!pending) queueMicrotask(flushEvents);
  // What we typed is not echoed: a script's stdout holds our text only where it must.
  const out = (event.type === "sent" || event.type === "queued") && event.text !== undefined
    ? { ...event, text: undefined }
    : event;
  pending += JSON.stringify(out) + "\n";
}

/** Writes out events still waiting (before the process exits). */
export function flushEvents(): void {
  const text = pending;
  pending = "";
  if (text) writeAllSync(encoder.encode(text));
}

/** Reads stdin line by line into `sink` until EOF or /quit. */
export async function runJsonInput(sink: InputSink): Promise<void> {
  for await (const line of readLines(Deno.stdin.readable)) {
    if (!await sink.input(line)) return;
  }
}

function writeAllSync(bytes: Uint8Array): void {
  let n = 0;
  while (n < bytes.length) n += Deno.stdout.writeSync(bytes.subarray(n));
}
