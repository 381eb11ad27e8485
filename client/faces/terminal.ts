/**
 * The terminal face: a prompt that incoming messages never garble, colour,
 * timestamps, a progress bar redrawn in place, peer text escaped.
 *
 * @module
 */
import readline from "node:readline";
import { styleText } from "node:util";
import type { ChatEvent } from "../events.ts";
import { printable } from "../../lib/printable.ts";
import { formatSize } from "../files.ts";
import type { InputSink } from "./json.ts";

/** A terminal interface: prompt, colour, timestamps. */
export class Terminal {
  #rl: readline.Interface;
  #name: string;
  #progressLine = false;
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
    readline.clearLine(out, 0);
    readline.cursorTo(out, 0);
    // A transfer's progress bar is one line, redrawn in place until it is done.
    if (this.#progressLine) {
      readline.moveCursor(out, 0, -1);
      readline.clearLine(out, 0);
    }
    out.write(`${styleText("gray", time())} ${text}\n`);
    this.#progressLine = event.type === "progress" && event.bytes < event.total;
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
      return `${styleText("cyan", `<${e.from}>`)} ${printable(e.text)}${
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
          printable(e.name)
        } (${e.bytes} bytes, ` +
          `SHA-256 ok) → ${printable(e.path)}`,
      );
    case "file_offer":
      return styleText(
        "yellow",
        `${e.from} offers a file${e.room ? ` to ${e.room}` : ""}: ${printable(e.name)} (${
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
            ? printable(h.text ?? "")
            : `file ${printable(h.file?.name ?? "")} (${h.file?.bytes} bytes)${
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
      return `${styleText("cyan", `<${e.from}@${e.room}>`)} ${printable(e.text)}`;
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
