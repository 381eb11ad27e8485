/**
 * The JSON face (`client chat --json`), for scripts and tests: one JSON event
 * per stdout line (docs/PROTOCOL.md §6), command lines on stdin.
 *
 * @module
 */
import { readLineBatches } from "../../lib/lines.ts";
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
  pending += jsonLine(out) + "\n";
}

// What JSON.stringify leaves in a line that some readers take apart: U+2028, U+2029 and U+0085 (line
// breaks to Python's str.splitlines() and other Unicode-aware readers), the other C1 controls (a
// terminal the line is shown on may obey them), and a lone surrogate's escape ("\ud800": strict
// parsers refuse the whole line; with an odd run of backslashes before it, it is an escape).
const UNSAFE = /[\u007f-\u009f\u2028\u2029]|\\ud[89a-f]/;
const UNSAFE_ALL = /[\u007f-\u009f\u2028\u2029]|(\\+)(ud[89a-f][0-9a-f]{2})/g;

/**
 * One event as one line for every reader: separators and C1 controls as \u escapes, each lone
 * surrogate as U+FFFD (a paired one JSON.stringify writes as the character itself).
 */
function jsonLine(event: unknown): string {
  const line = JSON.stringify(event);
  if (!UNSAFE.test(line)) return line; // the usual line, checked in one pass
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
  for await (const lines of readLineBatches(Deno.stdin.readable)) {
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
