/**
 * Slash commands: the one parser of command lines, shared by the terminal and
 * the JSON face (and the web page's command box), and the one runner that turns
 * them into calls on the typed chat core. It also keeps the "current peer" that
 * plain text goes to, which is a notion of a line-based interface, not of the core.
 *
 * @module
 */
import { E2eError } from "../../lib/errors.ts";
import { resolveUserPath } from "../../lib/home.ts";
import { checkName } from "../../lib/names.ts";
import { checkRoomName, isRoomName } from "../../lib/room.ts";
import type { Chat } from "../chat.ts";
import type { ChatEvent } from "../events.ts";
import { declinedText } from "../rooms.ts";

/** The commands, for /help. */
export const HELP = `/chat NAME          invite NAME (through the CA) and wait for them
/accept NAME        connect to NAME, who invited you
TEXT                send to the current peer
/msg NAME TEXT      send to NAME (through the CA's mailbox when NAME is not connected)
/file [NAME] PATH   offer a file (it is sent in the background once accepted; up to 8 MiB
                    through the mailbox to someone you talked with who is not connected)
/get [NAME] ID      accept the file offered as ID (NAME when two peers used that ID)
/decline [NAME] ID  decline the file offered as ID
/peers              connected peers
/fingerprint NAME   the safety number to compare with NAME out of band
/verify NAME        mark NAME's key as verified (after comparing)
/trust NAME         accept NAME's new key after a key change warning
/close NAME         close the connection to NAME
/history NAME [N]   the last N (default 20) messages and files of the conversation with NAME
/room create #ROOM            create a room (names start with #)
/room invite #ROOM NAME       invite NAME to your room
/room join #ROOM [CREATOR]    accept an invitation to a room (CREATOR: when two share its name)
/room decline #ROOM [CREATOR] decline an invitation to a room (its creator is told)
/room leave #ROOM             leave a room
/room remove #ROOM NAME       remove NAME from your room
/room members #ROOM           members, key fingerprints and the member-list hash to compare
/rooms                        your rooms and room invitations
/msg #ROOM TEXT               send to a room (plain text goes there when it is the current one)
/file #ROOM PATH              offer a file to each member of the room connected now
/quit               leave`;

/** One parsed line of input. */
export type Command =
  | { op: "none" }
  | { op: "invite"; name: string }
  | { op: "accept"; name: string }
  | { op: "send"; name?: string; text: string }
  | { op: "file"; name?: string; path: string }
  | { op: "get"; name?: string; id: string }
  | { op: "decline"; name?: string; id: string }
  | { op: "peers" }
  | { op: "fingerprint"; name: string }
  | { op: "verify"; name: string }
  | { op: "trust"; name: string }
  | { op: "close"; name: string }
  | { op: "history"; name: string; limit: number }
  | { op: "room"; action: RoomAction; room: string; name?: string }
  | { op: "rooms" }
  | { op: "help" }
  | { op: "quit" };

/** What `/room` does. */
export type RoomAction =
  | "create"
  | "invite"
  | "join"
  | "decline"
  | "leave"
  | "remove"
  | "members";

/** Every {@linkcode RoomAction}, for the faces that parse one (the terminal and JSON, the page). */
export const ROOM_ACTIONS: readonly RoomAction[] = [
  "create",
  "invite",
  "join",
  "decline",
  "leave",
  "remove",
  "members",
];

/** A user or room name: rooms start with `#`. */
function target(name: string): string {
  return name.startsWith("#") ? checkRoomName(name) : checkName(name);
}

/** Options of {@linkcode parseCommand}. */
export interface ParseOptions {
  /** Whether `name` is a connected peer (for `/file NAME PATH` against `/file PATH`). Default: no one. */
  isPeer?: (name: string) => boolean;
}

/**
 * Parses one line: a slash command, or text for the current peer (`name` left out).
 * Throws `ERR_USAGE` (or `ERR_NAME_INVALID`) for a line that is not a command.
 *
 * @example
 * ```ts
 * import { parseCommand } from "./commands.ts";
 * console.log(parseCommand("/msg bob hi there")); // { op: "send", name: "bob", text: "hi there" }
 * console.log(parseCommand("hello")); // { op: "send", text: "hello" }
 * ```
 */
export function parseCommand(line: string, options: ParseOptions = {}): Command {
  const text = line.replace(/\r$/, "");
  if (!text.startsWith("/")) return text.trim() ? { op: "send", text } : { op: "none" };
  const [command, ...args] = text.split(" ");
  const arg = (i: number, what = "NAME") => {
    if (!args[i]) throw new E2eError("ERR_USAGE", `${command} needs ${what}`);
    return args[i];
  };
  const name = () => checkName(arg(0));
  switch (command) {
    case "/chat":
      return { op: "invite", name: name() };
    case "/accept":
      return { op: "accept", name: name() };
    case "/msg":
      arg(1, "NAME TEXT");
      return { op: "send", name: target(args[0]), text: args.slice(1).join(" ") };
    case "/file": {
      arg(0, "PATH");
      // "/file NAME PATH" when the first word is a room or a known peer; else all of it is the path.
      if (args.length >= 2 && (isRoomName(args[0]) || options.isPeer?.(args[0]))) {
        return { op: "file", name: args[0], path: args.slice(1).join(" ") };
      }
      return { op: "file", path: args.join(" ") };
    }
    case "/get":
    case "/decline": {
      const op = command === "/get" ? "get" : "decline";
      arg(0, "ID");
      if (args.length > 2) throw new E2eError("ERR_USAGE", `${command} takes [NAME] ID`);
      const id = args.at(-1)!;
      if (!/^[A-Za-z0-9_.-]{1,64}$/.test(id)) {
        throw new E2eError("ERR_USAGE", `${command}: ${JSON.stringify(id)} is not a file id`);
      }
      return args.length === 2 ? { op, name: checkName(args[0]), id } : { op, id };
    }
    case "/peers":
      return { op: "peers" };
    case "/fingerprint":
      return { op: "fingerprint", name: name() };
    case "/verify":
      return { op: "verify", name: name() };
    case "/trust":
      return { op: "trust", name: name() };
    case "/close":
      return { op: "close", name: name() };
    case "/history": {
      const limit = args[1] === undefined ? 20 : Number(args[1]);
      if (!/^\d{1,6}$/.test(args[1] ?? "20") || limit < 1) {
        throw new E2eError(
          "ERR_USAGE",
          `/history NAME [N]: N is a number from 1, not ${JSON.stringify(args[1])}`,
        );
      }
      return { op: "history", name: target(arg(0)), limit };
    }
    case "/room": {
      const action = arg(
        0,
        "create, invite, join, decline, leave, remove or members",
      ) as RoomAction;
      if (!ROOM_ACTIONS.includes(action)) {
        throw new E2eError("ERR_USAGE", `Unknown /room ${JSON.stringify(action)}: see /help`);
      }
      const room = checkRoomName(arg(1, "#ROOM"));
      if (action === "invite" || action === "remove") {
        if (args.length !== 3) throw new E2eError("ERR_USAGE", `/room ${action} takes #ROOM NAME`);
        return { op: "room", action, room, name: checkName(args[2]) };
      }
      // Two invitations may name rooms of the same name: the creator says which.
      const invitation = action === "join" || action === "decline";
      if (invitation && args.length === 3) {
        return { op: "room", action, room, name: checkName(args[2]) };
      }
      if (args.length !== 2) {
        throw new E2eError(
          "ERR_USAGE",
          `/room ${action} takes #ROOM${invitation ? " [CREATOR]" : ""}`,
        );
      }
      return { op: "room", action, room };
    }
    case "/rooms":
      return { op: "rooms" };
    case "/help":
      return { op: "help" };
    case "/quit":
      return { op: "quit" };
    default:
      throw new E2eError("ERR_USAGE", `Unknown command ${JSON.stringify(command)}: see /help`);
  }
}

/**
 * Characters of messages that may wait behind peers (one still connecting, one that reads slowly)
 * before a face takes no more input until they go down to half: the user's lines are kept, and
 * memory stays bounded.
 */
export const MAX_WAITING_CHARS = 32 * 1024 * 1024;

/** Runs command lines against a chat, reporting answers and errors as events. */
export class CommandRunner {
  #chat: Chat;
  #emit: (event: ChatEvent) => void;
  #current?: string;
  #pending = new Map<string, Promise<unknown>>(); // per peer: the last command queued for it
  #accepting?: string; // the peer of the last /accept
  #waiting = 0; // characters of messages queued behind a peer (#queue)
  #inputRoom?: PromiseWithResolvers<void>; // input waiting for #waiting to go down (#lessWaiting)

  /**
   * A runner over `chat` whose answers (and errors) go to `emit`.
   *
   * @example
   * ```ts
   * import { Chat } from "../chat.ts";
   * import { Identity } from "../identity.ts";
   * import { CommandRunner } from "./commands.ts";
   * const chat = await Chat.start(await Identity.load("/tmp/alice"));
   * const runner = new CommandRunner(chat, (e) => console.log(JSON.stringify(e)));
   * await runner.input("/chat bob");
   * ```
   */
  constructor(chat: Chat, emit: (event: ChatEvent) => void) {
    this.#chat = chat;
    this.#emit = emit;
    chat.on((e) => {
      // A room stays the current conversation while its members connect (and go).
      const inRoom = this.#current !== undefined && isRoomName(this.#current);
      if (e.type === "connected" && !inRoom) this.#current = e.peer;
      if (e.type === "disconnected" && this.#current === e.peer && !chat.isConnected(e.peer)) {
        this.#current = chat.peers().at(-1)?.name;
      }
      if (e.type === "room_joined") this.#current = e.room;
      if (e.type === "room_member" && e.name === chat.name && this.#current === e.room) {
        this.#current = chat.peers().at(-1)?.name;
      }
    });
  }

  async #room(action: RoomAction, room: string, name?: string): Promise<void> {
    await runRoom(this.#chat, this.#emit, action, room, name);
  }

  #offerer(id: string): string {
    return offererOf(this.#chat, id);
  }

  /** The peer plain text goes to. */
  get current(): string | undefined {
    return this.#current;
  }

  /**
   * Runs one line; resolves false for /quit. Errors become `error` events.
   *
   * `/chat` and `/accept` wait for the CA or a handshake (up to its deadline): they run in the
   * background, and what comes after them for the same peer (a message, a file, `/close`…)
   * waits its turn behind them; every other line runs at once, so one slow peer never holds
   * up the others, `/peers`, `/help` or `/quit`.
   */
  input(line: string): boolean | Promise<boolean> {
    try {
      const command = parseCommand(line, {
        isPeer: (n) => this.#chat.isConnected(n) || this.#chat.isKnown(n),
      });
      const peer = this.#peerOf(command);
      if (peer && (command.op === "invite" || command.op === "accept" || this.#pending.has(peer))) {
        // Text after "/accept NAME" is for NAME once connected, as it was when /accept blocked.
        if (command.op === "accept") this.#accepting = peer;
        const bound = command.op === "send" || command.op === "file" || "name" in command
          ? { ...command, name: peer } as Command
          : command;
        this.#queue(peer, bound);
        // What waits for slow peers is bounded: past it, no more input is taken until it runs.
        return this.#waiting > MAX_WAITING_CHARS ? this.#lessWaiting().then(() => true) : true;
      }
      // A message to a connected peer or a room is done at once, without a promise: most of a
      // chat's input, and a burst of it then runs in one turn.
      const to = command.op === "send" ? command.name ?? this.#current : undefined;
      if (command.op === "send" && this.#sendNow(to, command.text)) {
        // Past a few MiB unsent to them, what comes next for them waits until they read (a
        // script that writes faster than a peer reads is held back, not cut off from it).
        const ready = this.#chat.whenWritable(to!);
        if (ready) this.#after(to!, ready);
        return true;
      }
      return this.run(command).catch((e) => {
        this.#emit({ type: "error", message: describeError(e) });
        return true;
      });
    } catch (e) {
      this.#emit({ type: "error", message: describeError(e) });
      return true;
    }
  }

  // Sends `text` to `name` if it is a connected peer or a room (the mailbox takes longer).
  #sendNow(name: string | undefined, text: string): boolean {
    if (name === undefined) return false;
    if (isRoomName(name)) this.#chat.rooms.send(name, text);
    else if (this.#chat.isConnected(name)) this.#chat.send(name, text);
    else return false;
    this.#current = name;
    return true;
  }

  // The peer a command is about: named, or (text, a file) the current one.
  #peerOf(command: Command): string | undefined {
    if ("name" in command && command.name) return command.name;
    if (command.op === "send" || command.op === "file") {
      return this.#pending.has(this.#accepting ?? "") ? this.#accepting : this.#current;
    }
    return undefined;
  }

  #queue(peer: string, command: Command): void {
    const chars = command.op === "send" ? command.text.length : 0;
    this.#waiting += chars;
    this.#after(
      peer,
      (this.#pending.get(peer) ?? Promise.resolve()).then(async () => {
        this.#waiting -= chars;
        if (this.#waiting <= MAX_WAITING_CHARS / 2) this.#inputRoom?.resolve();
        await this.run(command);
        // A message leaves a peer that reads slowly more to read: the next one waits for it.
        if (command.op === "send") await this.#chat.whenWritable(peer);
      }).catch((e) => this.#emit({ type: "error", message: describeError(e) })),
    );
  }

  // What comes next for `peer` runs after `step` (a queued command, or its backlog draining).
  #after(peer: string, step: Promise<unknown>): void {
    const next = step.catch(() => {});
    this.#pending.set(peer, next);
    next.finally(() => {
      if (this.#pending.get(peer) === next) this.#pending.delete(peer);
    });
  }

  // Resolves once what waits for slow peers is down to half of MAX_WAITING_CHARS.
  #lessWaiting(): Promise<void> {
    if (!this.#inputRoom) {
      const made = Promise.withResolvers<void>();
      made.promise.finally(() => (this.#inputRoom = undefined));
      this.#inputRoom = made;
    }
    return this.#inputRoom.promise;
  }

  /** Runs one parsed command; resolves false for quit. Throws what the core throws. */
  async run(command: Command): Promise<boolean> {
    const chat = this.#chat;
    switch (command.op) {
      case "none":
        return true;
      case "invite":
        await chat.invite(command.name);
        return true;
      case "accept":
        await chat.accept(command.name);
        return true;
      case "send": {
        const name = command.name ?? this.#current;
        if (!name) {
          throw new E2eError("ERR_USAGE", "No current peer: /chat NAME or /accept NAME first");
        }
        if (this.#sendNow(name, command.text)) return true;
        // Someone not connected: through the mailbox, awaited so a refusal is an `error`.
        await chat.sendToMailbox(name, command.text);
        this.#current = name;
        return true;
      }
      case "file": {
        const name = command.name ?? this.#current;
        if (!name) {
          throw new E2eError(
            "ERR_USAGE",
            "No current peer: /file NAME PATH takes the NAME of someone you have talked with " +
              "(/chat NAME or /msg NAME first)",
          );
        }
        // Not awaited: hashing a large file, or a peer slow to say hello, must not hold up
        // the next command. Its outcome comes as events (`sent`, `file_failed`, or `error`).
        chat.sendFile(name, resolveUserPath(command.path)).catch((e) =>
          this.#emit({ type: "error", message: describeError(e) })
        );
        return true;
      }
      case "get":
      case "decline": {
        const name = command.name ?? this.#offerer(command.id);
        if (command.op === "get") {
          await chat.acceptFile(name, command.id);
          this.#emit({ type: "warning", message: `Receiving file ${command.id} from "${name}"` });
        } else {
          await chat.declineFile(name, command.id);
          this.#emit({ type: "warning", message: `Declined file ${command.id} from "${name}"` });
        }
        return true;
      }
      case "peers":
        this.#emit({
          type: "peers",
          peers: chat.peers().map((p) => ({
            name: p.name,
            trust: p.trust,
            current: p.name === this.#current,
          })),
        });
        return true;
      case "fingerprint":
        this.#emit({
          type: "safety",
          peer: command.name,
          number: chat.safetyNumber(command.name),
        });
        return true;
      case "verify":
        await chat.verify(command.name);
        this.#emit({ type: "warning", message: `"${command.name}" is now verified` });
        return true;
      case "trust":
        await chat.trust(command.name);
        this.#emit({ type: "warning", message: `Now trusting the new key of "${command.name}"` });
        return true;
      case "close":
        chat.close(command.name);
        return true;
      case "history":
        this.#emit({
          type: "history",
          peer: command.name,
          entries: await chat.history(command.name, command.limit),
        });
        return true;
      case "room":
        await this.#room(command.action, command.room, command.name);
        return true;
      case "rooms":
        this.#emit({ type: "rooms", ...chat.rooms.list() });
        return true;
      case "help":
        this.#emit({ type: "help", text: HELP });
        return true;
      case "quit":
        return false;
    }
  }
}

// Runs one /room command against the core.
async function runRoom(
  chat: Chat,
  emit: (event: ChatEvent) => void,
  action: RoomAction,
  room: string,
  name?: string,
): Promise<void> {
  const rooms = chat.rooms;
  switch (action) {
    case "create":
      await rooms.create(room);
      return;
    case "invite":
      await rooms.invite(room, name!);
      emit({ type: "room_invited", room, to: name! });
      return;
    case "join":
      rooms.join(room, name);
      return;
    case "decline": {
      const { from, told } = rooms.decline(room, name);
      emit({ type: "warning", message: declinedText(room, from, told) });
      return;
    }
    case "leave":
      await rooms.leave(room);
      return;
    case "remove":
      await rooms.remove(room, name!);
      return;
    case "members": {
      const info = rooms.members(room);
      emit({
        type: "room_members",
        room,
        version: info.version,
        hash: info.hash,
        creator: info.creator,
        members: info.members,
      });
      return;
    }
  }
}

// Who offered the file `id`, when only one peer did.
function offererOf(chat: Chat, id: string): string {
  const from = chat.offers().filter((o) => o.id === id).map((o) => o.from);
  if (from.length === 0) throw new E2eError("ERR_NOT_FOUND", `No file offer ${JSON.stringify(id)}`);
  if (from.length > 1) {
    throw new E2eError("ERR_USAGE", `Several peers offered a file ${JSON.stringify(id)}`, {
      hint: `name the peer: ${from.map((n) => `"${n}"`).join(", ")}`,
    });
  }
  return from[0];
}

/** An error as one line for the user: the message, then the hint if there is one. */
export function describeError(e: unknown): string {
  if (e instanceof E2eError && e.hint) return `${e.message}: ${e.hint}`;
  return e instanceof Error ? e.message : String(e);
}
