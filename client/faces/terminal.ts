/**
 * The terminal face: a prompt that incoming messages never garble, colour,
 * timestamps, a progress bar redrawn in place, peer text escaped, and lines
 * wrapped here, each row after the first marked, so that no row a peer's text
 * spills into can pass for a line of ours or another sender's.
 *
 * Terminals disagree on how wide a character is: one that joins emoji
 * sequences draws a family (four emoji and three joiners) two columns wide,
 * xterm, tmux and the Linux console draw each emoji apart (eight), a terminal
 * set for CJK draws "—", "é" or Cyrillic two wide, and one that does not know
 * a joiner may show it as a blank. A row reckoned too narrow would either wrap
 * unmarked (automatic margins on: a peer's words pass for a line of ours) or
 * be cut at the edge (margins off: a peer pads "ok" with emoji so that "but I
 * do NOT agree" is never shown). So rows are reckoned at the widest a terminal
 * in its usual setting can draw them: one column for an ASCII character and
 * for an assigned code point of the narrow scripts every such terminal draws
 * one wide (Latin, Greek, Cyrillic, Armenian, Hebrew, Arabic, Georgian, their
 * combining marks, general punctuation, currency signs: see NARROW), two for
 * every other code point (emoji, East Asian wide, unknown: no terminal moves
 * its cursor further for one), a grapheme the sum of its code points. A row
 * is then never wider on screen than reckoned, only narrower where a terminal
 * joins or draws narrow: it just wraps earlier. lib/printable.ts keeps at most
 * four combining marks on a character, so accents cannot make a row tall or
 * wide. One limit stays, in docs/SECURITY.md: a terminal set for CJK draws many
 * letters of the narrow scripts two wide, and a row of them may be cut there.
 * Automatic margins stay off while rows print: should the terminal still be
 * narrower than it said (resized as we print), a row is cut at the edge, as
 * the terminal cuts the rows already shown, never wrapped into a row that
 * could pass for another sender's.
 *
 * @module
 */
import readline from "node:readline";
import { styleText } from "node:util";
import type { ChatEvent } from "../events.ts";
import type { KeyChange } from "../key_changes.ts";
import { printable, shortened } from "../../lib/printable.ts";
import { formatSize } from "../files.ts";
import type { InputSink } from "./json.ts";

/** A terminal interface: prompt, colour, timestamps. */
export class Terminal {
  #rl: readline.Interface;
  // The lines read, from the start: those typed or piped in while the chat starts wait here.
  #lines: AsyncIterator<string>;
  #name: string;
  #progressRows = 0;
  #closed = false;
  // Ctrl-C was typed: the chat stops there, and the lines typed ahead of it are not run.
  #interrupted = false;
  // Output to a pipe or a file gets the lines alone: no prompt, no echo, no cursor codes.
  #tty = process.stdout.isTTY === true;
  // Key changes said ("peer key"): each once, not again at every reconnection or mailbox fetch
  // that presents the key; again only once it is no longer kept (trusted, dismissed) and is back.
  #keysSaid = new Set<string>();
  #kept?: (peer: string) => KeyChange[];

  /** A terminal for user `name`. */
  constructor(name: string) {
    this.#name = name;
    this.#rl = readline.createInterface({
      input: process.stdin,
      output: process.stdout,
      terminal: this.#tty,
    });
    this.#lines = this.#rl[Symbol.asyncIterator]();
    this.#rl.setPrompt(styleText("bold", `${name}> `));
    // After /quit, Ctrl-D or Ctrl-C the last lines (bye) still print, with no prompt to redraw.
    this.#rl.on("close", () => this.#closed = true);
    // Ctrl-C on a terminal (readline reads it in raw mode) stops the chat at once: the lines
    // already typed and waiting in #lines are dropped, not run after it. (Piped input that simply
    // ends still runs every line it holds.)
    this.#rl.on("SIGINT", () => {
      this.#interrupted = true;
      this.#rl.close();
    });
  }

  /**
   * Says the key changes `kept` holds (seen in an earlier run, neither trusted nor dismissed) that
   * were not said yet; from then on a key change already said is said again only after it left
   * `kept` (the chat's `keyChanges()`).
   */
  keyChanges(kept: (peer?: string) => KeyChange[]): void {
    this.#kept = kept;
    for (const { peer, keyFingerprint, via } of kept()) {
      this.show({ type: "key_changed", peer, keyFingerprint, via });
    }
  }

  /** Prints an event above the prompt, then redraws the prompt with what was typed. */
  show(event: ChatEvent): void {
    if (event.type === "key_changed") {
      const said = `${event.peer} ${event.keyFingerprint}`;
      if (this.#keysSaid.has(said)) return;
      this.#keysSaid.add(said);
    } else if (this.#kept && this.#keysSaid.size) {
      // (Not at a key_changed: the chat keeps a change before it tells of it.)
      this.#forgetSettled(this.#kept);
    }
    const text = format(event);
    if (text === undefined) return;
    const out = process.stdout;
    const tty = this.#tty;
    const width = Math.max(MIN_COLUMNS, tty ? out.columns || PIPE_COLUMNS : PIPE_COLUMNS);
    const rows = `${styleText("gray", time())} ${text}`.split("\n").flatMap((l) => wrap(l, width));
    if (tty) {
      readline.clearLine(out, 0);
      readline.cursorTo(out, 0);
    }
    // A transfer's progress bar is redrawn in place until it is done (on a terminal).
    if (tty && this.#progressRows) {
      readline.moveCursor(out, 0, -this.#progressRows);
      readline.clearScreenDown(out);
    }
    // On a terminal, automatic margins are off while our rows print (see the module doc): rows
    // are reckoned never narrower than drawn, and one drawn wider all the same (the terminal
    // resized as we print) is cut at the edge, never wrapped into an unmarked row.
    const body = rows.join("\n") + "\n";
    out.write(tty ? `${WRAP_OFF}${body}${WRAP_ON}` : body);
    this.#progressRows = event.type === "progress" && event.bytes < event.total ? rows.length : 0;
    if (!this.#closed) this.#prompt(true);
  }

  // Forgets the key changes said that are no longer kept: seen again, they are said again.
  #forgetSettled(kept: (peer: string) => KeyChange[]): void {
    for (const said of this.#keysSaid) {
      const [peer, key] = said.split(" ");
      if (!kept(peer).some((c) => c.keyFingerprint === key)) this.#keysSaid.delete(said);
    }
  }

  #prompt(preserveCursor?: boolean): void {
    if (this.#tty) this.#rl.prompt(preserveCursor);
  }

  /**
   * Reads lines into `sink` until /quit, Ctrl-C or end of input; those that came while the chat
   * started (typed ahead, or piped in whole) run first, in order, except after a Ctrl-C: it stops
   * the chat there, and lines typed ahead of it are not run.
   */
  async run(sink: InputSink): Promise<void> {
    this.#prompt();
    for (let next = await this.#lines.next(); !next.done; next = await this.#lines.next()) {
      if (this.#interrupted || !await sink.input(next.value)) break;
      if (this.#interrupted) break;
      if (!this.#closed) this.#prompt();
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
    case "key_changed": {
      const peer = printable(e.peer);
      const where = e.via === "mailbox"
        ? "a mailbox item"
        : e.via === "room"
        ? `the member list of ${printable(e.room ?? "a room")}`
        : "a connection";
      return styleText(
        ["bold", "yellow"],
        `WARNING: ${peer}'s key changed (key ${e.keyFingerprint.slice(0, 16)}… on ${where}) — ` +
          `it may be someone else: /fingerprint ${peer} to compare, /trust ${peer} to accept`,
      );
    }
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
          // As the room message said it when it was shown (docs/PROTOCOL.md §6).
          const late = h.late ? styleText("yellow", " (late)") : "";
          return `${when} ${styleText("cyan", `<${h.from}>`)}${late} ${what}${mark}`;
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
    case "room_invited":
      return `Invited "${e.to}" to ${e.room}`;
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
// DECAWM (automatic margins) off and on again.
const WRAP_OFF = "\x1b[?7l";
const WRAP_ON = "\x1b[?7h";
// deno-lint-ignore no-control-regex
const STYLE = /(\x1b\[[0-9;]*m)/;
const SEGMENTER = new Intl.Segmenter(undefined, { granularity: "grapheme" });
const PLAIN = /^[\x20-\x7e]*$/;

/**
 * The code points of the narrow scripts: those every terminal draws one column wide (or none, for
 * a mark) unless set for CJK, where the East Asian ambiguous ones among them are drawn two. Only
 * assigned ones (an unknown code point may be drawn wide) and no emoji (©, ®, ‼, ⁉ and ™ are drawn
 * wide by some terminals, and two wide by those that give them an emoji's presentation).
 */
const NARROW = new RegExp(
  "(?![\\p{Cn}\\p{Extended_Pictographic}])[" +
    [
      "\\u00a0-\\u02ff", // Latin-1, Latin Extended-A and -B, IPA, spacing modifiers
      "\\u0300-\\u036f", // combining diacritical marks
      "\\u0370-\\u052f", // Greek, Cyrillic
      "\\u0530-\\u06ff", // Armenian, Hebrew, Arabic
      "\\u0750-\\u077f", // Arabic Supplement
      "\\u10a0-\\u10ff\\u1c90-\\u1cbf", // Georgian
      "\\u1ab0-\\u1aff\\u1dc0-\\u1dff", // combining marks
      "\\u1e00-\\u1fff", // Latin Extended Additional (Vietnamese), Greek Extended
      "\\u2000-\\u206f", // general punctuation
      "\\u20a0-\\u20ff", // currency signs, combining marks for symbols
      "\\u2c60-\\u2c7f\\u2de0-\\u2dff\\ua640-\\ua69f\\ua720-\\ua7ff\\uab30-\\uab6f", // more Latin, Cyrillic
      "\\ufe20-\\ufe2f", // combining half marks
    ].join("") + "]",
  "u",
);

/**
 * The most columns a terminal in its usual setting draws `text` in: an ASCII character or one of
 * the NARROW code points one, every other code point two, whether the terminal draws it wide (CJK,
 * emoji, an unknown one), apart from the emoji it is joined to, as a blank, or not at all.
 */
function widest(text: string): number {
  let columns = 0;
  for (const c of text) columns += c <= "\x7e" || NARROW.test(c) ? 1 : 2;
  return columns;
}

const CONTINUED_COLUMNS = widest(CONTINUED);

interface Cell {
  text: string;
  columns: number;
  blank: boolean;
}

/** The cells of `text`: its graphemes, but the code points of one too wide for a row. */
function cellsOf(text: string, width: number): Cell[] {
  return Array.from(SEGMENTER.segment(text), ({ segment }): Cell[] => {
    const columns = widest(segment);
    return columns <= width - CONTINUED_COLUMNS
      ? [{ text: segment, columns, blank: segment === " " }]
      : Array.from(segment, (c) => ({ text: c, columns: widest(c), blank: false }));
  }).flat();
}

/**
 * The rows of `line` on a terminal `width` columns wide, each after the first
 * starting with CONTINUED and none drawn wider than `width` by a terminal in
 * its usual setting: broken at a blank where one is in the row's second half,
 * else at the last character that fits, never inside a character (but one too
 * wide for a row, such as an emoji followed by a hundred skin tones).
 */
function wrap(line: string, width: number): string[] {
  const parts = line.split(STYLE);
  if (PLAIN.test(parts.filter((_, i) => i % 2 === 0).join("")) && line.length <= width) {
    return [line]; // short and ASCII, colour or not: the usual line
  }
  const cells: Cell[] = parts.flatMap((part, i) =>
    i % 2
      ? [{ text: part, columns: 0, blank: false }] // a colour of ours: no width
      : cellsOf(part, width)
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
