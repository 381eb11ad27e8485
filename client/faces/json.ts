/**
 * The JSON face (`client chat --json`), for scripts and tests: one JSON event
 * per stdout line (docs/PROTOCOL.md §6), command lines on stdin.
 *
 * @module
 */
import { jsonLine, readLineBatches } from "../../lib/lines.ts";
import type { ChatEvent } from "../events.ts";

/** Something that takes input lines; false from `input` means quit. */
export interface InputSink {
  /**
   * Runs one line; false to quit. A line done at once (a message to a connected peer)
   * answers without a promise, so a burst of them runs in one turn.
   */
  input(line: string): boolean | Promise<boolean>;
}

const encoder = new TextEncoder();

let pending = "";
let held = false;

/**
 * Writes one event as a JSON line on stdout. Events of one turn of the event
 * loop leave in one write (a burst of messages is one syscall, not one each).
 */
export function jsonEvent(event: ChatEvent): void {
  if (!pending && !held) queueMicrotask(flushEvents);
  // What we typed is not echoed: a script's stdout holds our text only where it must.
  const out = (event.type === "sent" || event.type === "queued") && event.text !== undefined
    ? { ...event, text: undefined }
    : event;
  // A message's `sent` and `delivered` hold only names and ids we checked or made (and numbers):
  // nothing to escape, so the two events of each message sent skip the search.
  const plain = event.type === "delivered" || (event.type === "sent" && event.file === undefined);
  pending += (plain ? JSON.stringify(out) : jsonLine(out)) + "\n";
}

/** Writes out events still waiting (before the process exits). */
export function flushEvents(): void {
  const text = pending;
  pending = "";
  if (text) writeAllSync(encoder.encode(text));
}

/**
 * Reads stdin line by line into `sink` until EOF or /quit. The lines of one read that run at
 * once do so in one turn, and the events they cause leave in one write; a line that has to
 * wait (a mailbox post, /quit) lets the events so far out first.
 */
export async function runJsonInput(sink: InputSink): Promise<void> {
  for await (const lines of readLineBatches(Deno.stdin)) {
    held = true;
    try {
      for (const line of lines) {
        let go = sink.input(line);
        if (go instanceof Promise) {
          release();
          go = await go;
          held = true;
        }
        if (!go) return;
      }
    } finally {
      release();
    }
  }
}

function release(): void {
  held = false;
  flushEvents();
}

function writeAllSync(bytes: Uint8Array): void {
  let n = 0;
  while (n < bytes.length) n += Deno.stdout.writeSync(bytes.subarray(n));
}
