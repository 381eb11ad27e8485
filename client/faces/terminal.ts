/**
 * The terminal face: a prompt that incoming messages never garble, colour,
 * timestamps, a progress bar redrawn in place, peer text escaped, and lines
 * wrapped here, each row after the first marked, so that no row a peer's text
 * spills into can pass for a line of ours or another sender's.
 *
 * @module
 */
import readline from "node:readline";
import { styleText } from "node:util";
import type { ChatEvent } from "../events.ts";
import { printable, shortened } from "../../lib/printable.ts";
import { formatSize } from "../files.ts";
import type { InputSink } from "./json.ts";

/** A terminal interface: prompt, colour, timestamps. */
export class Terminal {
  #rl: readline.Interface;
  #name: string;
  #progressRows = 0;
  #closed = false;

  /** A terminal for user `name`. */
  constructor(name: string) {
    this.#name = name;
    this.#rl = readline.createInterface({
      input: process.stdin,
      output: process.stdout,
      terminal: true,
    });
    this.#rl.setPrompt(styleText("bold", `${name}> `));
    // After /quit, Ctrl-D or Ctrl-C the last lines (bye) still print, with no prompt to redraw.
    this.#rl.on("close", () => this.#closed = true);
  }

  /** Prints an event above the prompt, then redraws the prompt with what was typed. */
  show(event: ChatEvent): void {
    const text = format(event);
    if (text === undefined) return;
    const out = process.stdout;
    const tty = out.isTTY === true;
    const width = Math.max(MIN_COLUMNS, tty ? out.columns || PIPE_COLUMNS : PIPE_COLUMNS);
    const rows = `${styleText("gray", time())} ${text}`.split("\n").flatMap((l) => wrap(l, width));
    readline.clearLine(out, 0);
    readline.cursorTo(out, 0);
    // A transfer's progress bar is redrawn in place until it is done.
    if (this.#progressRows) {
      readline.moveCursor(out, 0, -this.#progressRows);
      readline.clearScreenDown(out);
    }
    // On a terminal, automatic margins are off while our rows print: a row the terminal draws
    // wider than we reckoned (a character of ambiguous width) is cut at its edge, never wrapped
    // into an unmarked row.
    const body = rows.join("\n") + "\n";
    out.write(tty ? `${WRAP_OFF}${body}${WRAP_ON}` : body);
    this.#progressRows = event.type === "progress" && event.bytes < event.total ? rows.length : 0;
    if (!this.#closed) this.#rl.prompt(true);
  }

  /** Reads lines into `sink` until /quit or end of input. */
  async run(sink: InputSink): Promise<void> {
    if (this.#closed) return; // the input ended while the chat started
    this.#rl.prompt();
    for await (const line of this.#rl) {
      if (!await sink.input(line) || this.#closed) break;
      this.#rl.prompt();
    }
    this.#rl.close();
  }

  /** The user's name. */
  get name(): string {
    return this.#name;
  }
}

function format(e: ChatEvent): string | undefined {
  switch (e.type) {
    case "ready":
      return `${
        e.listen ? `listening on ${e.listen}` : "not listening (peers come through the relay)"
      } as ${styleText("bold", e.name)} — /help for commands`;
    case "invite":
      return styleText(
        "yellow",
        `${printable(e.from)} wants to chat — /accept ${printable(e.from)}`,
      );
    case "invited":
      return `invited ${e.to} (certificate ${
        e.fingerprint.slice(0, 16)
      }…); waiting for them to /accept`;
    case "connected":
      return styleText(
        "green",
        `connected to ${e.peer} [${e.trust}] via ${e.via} certificate ${
          e.fingerprint.slice(0, 16)
        }…`,
      );
    case "message":
      return `${styleText("cyan", `<${e.from}>`)} ${peerText(e.text, MAX_TEXT)}${
        e.via === "mailbox" ? styleText("gray", " (mailbox)") : ""
      }`;
    case "sent":
      return undefined;
    case "queued":
      return styleText("gray", `… queued for ${e.to} in the mailbox (they are offline)`);
    case "delivered":
      return styleText("gray", `✓ delivered to ${e.to}`);
    case "file":
      return styleText(
        "green",
        `file from ${e.from}${e.room ? ` in ${e.room}` : ""}: ${
          peerText(e.name, MAX_NAME)
        } (${e.bytes} bytes, ` +
          `SHA-256 ok) → ${printable(e.path)}`,
      );
    case "file_offer":
      return styleText(
        "yellow",
        `${e.from} offers a file${e.room ? ` to ${e.room}` : ""}: ${peerText(e.name, MAX_NAME)} (${
          formatSize(e.bytes)
        }${
          e.sha256 ? `, SHA-256 ${e.sha256.slice(0, 16)}…` : ""
        }) — /get ${e.id} to accept, /decline ${e.id} to refuse`,
      );
    case "file_failed":
      return styleText("yellow", printable(e.message));
    case "progress": {
      const pct = e.total ? Math.floor((e.bytes / e.total) * 100) : 100;
      const bar = "#".repeat(Math.floor(pct / 5)).padEnd(20, ".");
      return styleText("gray", `${e.direction === "out" ? "→" : "←"} ${e.peer} [${bar}] ${pct}%`);
    }
    case "safety":
      return `safety number with ${e.peer}: ${
        styleText("bold", e.number)
      }\ncompare it with ${e.peer} out of band, then /verify ${e.peer}`;
    case "peers":
      return e.peers.length
        ? e.peers.map((p) => `${p.current ? "*" : " "} ${p.name} [${p.trust}]`).join("\n")
        : "no peers connected";
    case "disconnected":
      return styleText("yellow", `${e.peer} disconnected (${printable(e.reason)})`);
    case "log_alarm":
      return styleText(
        ["bold", "red"],
        `LOG ALARM: ${printable(e.message)} — no new connections until this is resolved; ` +
          `tell your admin and run \`deno task client audit\``,
      );
    case "warning":
      return styleText("yellow", printable(e.message));
    case "ca_back":
      return styleText("green", printable(e.message));
    case "error":
      return styleText("red", `error: ${printable(e.message)}`);
    case "history":
      return e.entries.length
        ? e.entries.map((h) => {
          const when = styleText("gray", h.at.slice(0, 16).replace("T", " "));
          const what = h.kind === "message"
            ? peerText(h.text ?? "", MAX_TEXT)
            : `file ${peerText(h.file?.name ?? "", MAX_NAME)} (${h.file?.bytes} bytes)${
              h.file?.path ? ` → ${printable(h.file.path)}` : ""
            }`;
          const mark = h.state === "delivered" ? styleText("gray", " ✓") : "";
          return `${when} ${styleText("cyan", `<${h.from}>`)} ${what}${mark}`;
        }).join("\n")
        : `no history with ${e.peer}`;
    case "room_invite":
      return styleText(
        "yellow",
        // Naming the creator picks this invitation even when another to the same name waits.
        `${printable(e.from)} invites you to ${e.room} — /room join ${e.room} ${
          printable(e.from)
        } (or /room decline ${e.room} ${printable(e.from)})`,
      );
    case "room_invite_dropped":
      return styleText(
        "yellow",
        `${printable(e.from)}'s invitation to ${e.room} is dropped: ${printable(e.reason)}`,
      );
    case "room_joined":
      return styleText("green", `you are in ${e.room}: ${e.members.join(", ")}`);
    case "room_message":
      return `${styleText("cyan", `<${e.from}@${e.room}>`)}${
        e.late ? styleText("yellow", " (late)") : ""
      } ${peerText(e.text, MAX_TEXT)}`;
    case "room_member":
      return styleText("yellow", `${e.name} ${e.change} ${e.room}`);
    case "room_gap":
      return styleText(
        "yellow",
        `${e.room}: ${e.count} message(s) from ${e.from} could not be recovered`,
      );
    case "room_members":
      return `${e.room} (created by ${e.creator}), member list version ${e.version}, hash ${e.hash}\n` +
        e.members.map((m) => `  ${m.name} key ${m.keyFingerprint}`).join("\n");
    case "rooms":
      return [
        ...e.rooms.map((r) => `  ${r.room} (${r.members} members)`),
        ...e.invitations.map((r) => `  ${r} (invited — /room join ${r})`),
      ].join("\n") || "no rooms";
    case "help":
      return e.text;
    case "bye":
      return "bye";
  }
}

function time(): string {
  return new Date().toTimeString().slice(0, 5);
}

// The most characters of a peer's message (about 25 rows of 80 columns) and of a file's name the
// terminal shows; the rest is in the history file and the JSON face.
const MAX_TEXT = 2000;
const MAX_NAME = 200;

/** A peer's text as the terminal shows it: escaped, blanks collapsed, cut when long. */
function peerText(text: string, max: number): string {
  return shortened(printable(text), max);
}

// Where stdout is not a terminal (a pipe, `| tee`, a file read later in one), rows of this width.
const PIPE_COLUMNS = 80;
const MIN_COLUMNS = 20;
/** The start of each row after the first of a line: no line of ours or a sender's starts so. */
const CONTINUED = "  │ ";
const CONTINUED_COLUMNS = 4;
// DECAWM (automatic margins) off and on again.
const WRAP_OFF = "\x1b[?7l";
const WRAP_ON = "\x1b[?7h";
// deno-lint-ignore no-control-regex
const STYLE = /(\x1b\[[0-9;]*m)/;
const SEGMENTER = new Intl.Segmenter(undefined, { granularity: "grapheme" });
// Characters most terminals draw two columns wide (East Asian wide and fullwidth, emoji). Where a
// guess is needed it is two: a row reckoned too wide only wraps earlier.
const WIDE =
  /[\u1100-\u115f\u2329\u232a\u2e80-\u303e\u3041-\u33ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf\ua960-\ua97f\uac00-\ud7a3\uf900-\ufaff\ufe0f\ufe10-\ufe19\ufe30-\ufe6f\uff00-\uff60\uffe0-\uffe6\u{16fe0}-\u{1b2ff}\u{1f000}-\u{1faff}\u{20000}-\u{3fffd}]|\p{Emoji_Presentation}|\p{Regional_Indicator}/u;
const PLAIN = /^[\x20-\x7e]*$/;

interface Cell {
  text: string;
  columns: number;
  blank: boolean;
}

/**
 * The rows of `line` on a terminal `width` columns wide, each after the first
 * starting with CONTINUED: broken at a blank where one is in the row's second
 * half, else at the last character that fits, never inside a character.
 */
function wrap(line: string, width: number): string[] {
  const parts = line.split(STYLE);
  if (PLAIN.test(parts.filter((_, i) => i % 2 === 0).join("")) && line.length <= width) {
    return [line]; // short and ASCII, colour or not: the usual line
  }
  const cells: Cell[] = parts.flatMap((part, i) =>
    i % 2
      ? [{ text: part, columns: 0, blank: false }] // a colour of ours: no width
      : Array.from(SEGMENTER.segment(part), ({ segment }) => ({
        text: segment,
        columns: WIDE.test(segment) ? 2 : 1,
        blank: segment === " ",
      }))
  );
  const rows: string[] = [];
  let row: Cell[] = [];
  let used = 0;
  let limit = width;
  for (const cell of cells) {
    if (used + cell.columns > limit) {
      const at = row.findLastIndex((c) => c.blank);
      const carry = at > 0 && columnsOf(row.slice(0, at)) >= limit / 2
        ? row.splice(at).slice(1)
        : [];
      rows.push(row.map((c) => c.text).join(""));
      row = carry;
      used = columnsOf(carry);
      limit = width - CONTINUED_COLUMNS;
    }
    if (cell.blank && used === 0 && rows.length) continue; // no continuation starts blank
    row.push(cell);
    used += cell.columns;
  }
  rows.push(row.map((c) => c.text).join(""));
  return rows.map((r, i) => i ? CONTINUED + r : r);
}

function columnsOf(cells: Cell[]): number {
  return cells.reduce((n, c) => n + c.columns, 0);
}
