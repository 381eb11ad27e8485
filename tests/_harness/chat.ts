/**
 * The one chat driver: `client chat --json --home H` run as its own process
 * (docs/PROTOCOL.md §6): commands go to its stdin as lines, and every JSON
 * line of its stdout is kept as an event, with the time it arrived, to wait
 * for with a deadline. Tests, bench and demo all drive the chat through it.
 *
 * @module
 */
import assert from "node:assert/strict";
import { sleep, Wakeup } from "./deadlines.ts";
import { TaskProcess } from "./processes.ts";

/** How long a test waits for an event it expects. */
export const EVENT_TIMEOUT_MS = 15_000;
/**
 * How long a chat client's start may take before `ready`, ms. Longer than other waits: a file's
 * scenarios start all their clients at once on two cores, where one start took over 15 s (a CI
 * run with other tests beside it). A client that exits instead fails the wait at once.
 */
export const READY_TIMEOUT_MS = 45_000;
const STOP_TIMEOUT_MS = 5_000;

/** One JSON event of `client chat --json` (docs/PROTOCOL.md §6). */
export type ChatEvent = Record<string, unknown> & { type: string };

/** A predicate on events, or the fields an event must have. */
export type EventMatch = ((e: ChatEvent) => boolean) | Record<string, unknown>;

/** Who a chat client runs as: a name and a joined home. */
export interface ChatUser {
  /** The user name. */
  name: string;
  /** The user's home (`--home`). */
  home: string;
}

/** Options of {@linkcode ChatClient.start}. */
export interface ChatStartOptions {
  /** More arguments after `chat --json --home H`. Default: none. */
  args?: string[];
  /** Variables added to the child environment. Default: none. */
  env?: Record<string, string>;
  /** How long to wait for `ready`, ms. Default: {@linkcode READY_TIMEOUT_MS}. */
  readyMs?: number;
  /** Make every wait fail at once after an `error` event (bench, demo). Default: false. */
  failOnError?: boolean;
  /** Run it under `ulimit -n` of this many open files (flood tests). Default: the inherited limit. */
  ulimitFiles?: number;
  /** `deno run` flags after the client task's own. Default: none. */
  denoFlags?: string[];
}

function matcher(match: EventMatch): (e: ChatEvent) => boolean {
  if (typeof match === "function") return match;
  return (e) => Object.entries(match).every(([k, v]) => e[k] === v);
}

function describeMatch(match: EventMatch): string {
  return typeof match === "function" ? match.toString() : JSON.stringify(match);
}

/**
 * `client/main.ts chat --json --home H` as its own process: lines go to its
 * stdin, and every JSON line of its stdout is kept as an event.
 */
export class ChatClient<U extends ChatUser = ChatUser> {
  /** The user it runs as. */
  readonly user: U;
  /** Every event so far, in order. */
  get events(): ChatEvent[] {
    this.#parse();
    return this.#events;
  }
  /** When each event arrived (performance.now(), ms), index for index with `events`. */
  get times(): number[] {
    this.#parse();
    return this.#times;
  }
  /** Lines of stdout that were not JSON events (there should be none). */
  get junk(): string[] {
    this.#parse();
    return this.#junk;
  }
  #events: ChatEvent[] = [];
  #times: number[] = [];
  #junk: string[] = [];
  // Lines counted by their type but not parsed yet (a benchmark's burst is parsed when looked
  // at, so the harness never limits how fast a client can print), with their arrival times.
  #unparsed: string[] = [];
  #unparsedTimes: number[] = [];
  #arrivals = new Map<string, number[]>(); // per type, when each event of it arrived
  /** The `ready` event. */
  ready!: ChatEvent;
  #proc!: TaskProcess;
  #claimed = new Set<ChatEvent>();
  /** Events before this index count as claimed (see {@linkcode clear}). */
  #floor = 0;
  #failOnError = false;
  #failed?: ChatEvent;
  #counts = new Map<string, number>();
  #wake = new Wakeup();
  #ended = false;

  private constructor(user: U) {
    this.user = user;
  }

  /** Starts the chat client of `user` and waits for its `ready` event. */
  static async start<U extends ChatUser>(
    user: U,
    options: ChatStartOptions = {},
  ): Promise<ChatClient<U>> {
    const client = new ChatClient(user);
    client.#failOnError = options.failOnError ?? false;
    client.#proc = await TaskProcess.start(
      "client",
      ["chat", "--json", "--home", user.home, ...options.args ?? []],
      {
        env: options.env,
        stdin: true,
        onLine: (line) => client.#take(line),
        ulimitFiles: options.ulimitFiles,
        denoFlags: options.denoFlags,
      },
    );
    client.#proc.drained.then(() => {
      client.#ended = true;
      client.#wake.notify();
    });
    try {
      client.ready = await client.expect({ type: "ready" }, options.readyMs ?? READY_TIMEOUT_MS);
    } catch (e) {
      await client.stop();
      throw e;
    }
    return client;
  }

  /** The user name. */
  get name(): string {
    return this.user.name;
  }

  /** The listening port from `ready`. */
  get port(): number {
    return Number(String(this.ready.listen).split(":").at(-1));
  }

  /** Its process id. */
  get pid(): number {
    return this.#proc.pid;
  }

  /** Everything the process wrote on stdout so far, as written. */
  get stdout(): string {
    return this.#proc.stdout;
  }

  /** What the process wrote on stderr so far. */
  get stderr(): string {
    return this.#proc.stderr;
  }

  /** Its exit status, when it exits. */
  get status(): Promise<Deno.CommandStatus> {
    return this.#proc.status;
  }

  /** Writes one line to its stdin; resolves with the time just before the write. */
  async send(line: string): Promise<number> {
    return await this.write(line + "\n");
  }

  /** Writes text (lines with their newlines) to its stdin as is; the time just before the write. */
  async write(text: string): Promise<number> {
    const t = performance.now();
    await this.#proc.write(text);
    return t;
  }

  /**
   * Waits for the next `file_offer` from `from` and accepts it with `/get FROM ID`
   * (docs/PROTOCOL.md §3, "Offers, consent and quotas"); returns the offer.
   */
  async acceptFile(from: string, ms = EVENT_TIMEOUT_MS): Promise<ChatEvent> {
    const offer = await this.expect({ type: "file_offer", from }, ms);
    await this.send(`/get ${from} ${offer.id}`);
    return offer;
  }

  /** The `warning` and `error` events so far, as JSON. */
  get warnings(): string[] {
    return this.events.filter((e) => e.type === "warning" || e.type === "error")
      .map((e) => JSON.stringify(e));
  }

  /** The index the next event will have: pass it to {@linkcode since}. */
  mark(): number {
    return this.events.length;
  }

  /** The events from index `mark` on that match. */
  since(mark: number, match: EventMatch = () => true): ChatEvent[] {
    return this.events.slice(mark).filter(matcher(match));
  }

  /** How many events of `type` arrived so far. */
  count(type: string): number {
    return this.#counts.get(type) ?? 0;
  }

  /** Forgets the events seen so far for {@linkcode expect} (they stay in `events`). */
  clear(): void {
    this.#floor = this.events.length;
    this.#claimed.clear();
  }

  /**
   * Waits for the first event that matches and was not returned before, and
   * returns it; fails with everything seen after `ms` (default 15 s).
   */
  async expect(match: EventMatch, ms = EVENT_TIMEOUT_MS): Promise<ChatEvent> {
    return (await this.expectTimed(match, ms)).event;
  }

  /** Like {@linkcode expect}, with the time the event arrived (performance.now(), ms). */
  async expectTimed(
    match: EventMatch,
    ms = EVENT_TIMEOUT_MS,
  ): Promise<{ event: ChatEvent; t: number }> {
    const test = matcher(match);
    const until = Date.now() + ms;
    while (true) {
      const events = this.events;
      for (let i = this.#floor; i < events.length; i++) {
        const e = events[i];
        if (!this.#claimed.has(e) && test(e)) {
          this.#claimed.add(e);
          return { event: e, t: this.times[i] };
        }
      }
      this.#throwIfFailed();
      const left = until - Date.now();
      if (left <= 0 || this.#ended) {
        throw new assert.AssertionError({
          message: `${this.name} did not see ${describeMatch(match)}${
            this.#ended ? " (its output ended)" : ""
          }\n${this.describe()}`,
        });
      }
      await this.#wake.wait(left);
    }
  }

  /**
   * Resolves with the arrival time of the `n`-th event of `type` since the
   * start; fails after `ms`.
   */
  async expectCount(type: string, n: number, ms = EVENT_TIMEOUT_MS): Promise<number> {
    const until = Date.now() + ms;
    while (this.count(type) < n) {
      this.#throwIfFailed();
      const left = until - Date.now();
      if (left <= 0 || this.#ended) {
        throw new assert.AssertionError({
          message: `${this.name} saw ${this.count(type)} of ${n} ${type} events${
            this.#ended ? " (its output ended)" : ""
          }\nstderr of ${this.name}:\n${this.stderr.slice(-4000)}`,
        });
      }
      await this.#wake.wait(left);
    }
    return this.#arrivals.get(type)?.[n - 1] ?? performance.now();
  }

  /** Asserts that no event from `mark` on matches, after waiting `ms` for one. */
  async expectNone(mark: number, match: EventMatch, ms = 500): Promise<void> {
    await sleep(ms);
    const found = this.since(mark, match);
    assert.deepEqual(found, [], `${this.name} showed what it should not\n${this.describe()}`);
  }

  /** Events and stderr, for failure messages. */
  describe(): string {
    return `events of ${this.name}:\n${
      this.events.slice(-200).map((e) => "  " + JSON.stringify(e).slice(0, 400)).join("\n")
    }\nstderr of ${this.name}:\n${this.stderr}`;
  }

  /** Sends a signal (SIGKILL to simulate a crash) and waits for the exit. */
  async kill(signal: Deno.Signal = "SIGKILL"): Promise<Deno.CommandStatus> {
    this.#proc.kill(signal);
    return await this.#proc.status;
  }

  /** Says /quit, waits for the exit (SIGKILL after 5 s) and its output; safe to call twice. */
  async stop(): Promise<void> {
    await this.#proc.stop(STOP_TIMEOUT_MS);
  }

  #throwIfFailed(): void {
    if (this.#failed) {
      throw new Error(`${this.name} reported ${JSON.stringify(this.#failed)}\n${this.stderr}`);
    }
  }

  #take(line: string): void {
    if (!line) return;
    const t = performance.now();
    const type = EVENT_TYPE.exec(line)?.[1];
    if (type !== undefined && type !== "error") {
      this.#unparsed.push(line);
      this.#unparsedTimes.push(t);
      this.#counted(type, t);
    } else {
      this.#parse();
      this.#parseLine(line, t, true);
    }
    this.#wake.notify();
  }

  #counted(type: string, t: number): void {
    this.#counts.set(type, (this.#counts.get(type) ?? 0) + 1);
    const arrivals = this.#arrivals.get(type);
    if (arrivals) arrivals.push(t);
    else this.#arrivals.set(type, [t]);
  }

  #parse(): void {
    if (this.#unparsed.length === 0) return;
    const lines = this.#unparsed;
    const times = this.#unparsedTimes;
    this.#unparsed = [];
    this.#unparsedTimes = [];
    for (let i = 0; i < lines.length; i++) this.#parseLine(lines[i], times[i], false);
  }

  // `count`: the line was not counted yet (its type is known only once parsed).
  #parseLine(line: string, t: number, count: boolean): void {
    try {
      const event = JSON.parse(line);
      if (event && typeof event.type === "string") {
        this.#events.push(event as ChatEvent);
        this.#times.push(t);
        if (count) this.#counted(event.type, t);
        if (this.#failOnError && event.type === "error") this.#failed ??= event as ChatEvent;
        return;
      }
    } catch { /* junk */ }
    this.#junk.push(line);
    if (!count) { // counted by a type it does not have after all
      const type = EVENT_TYPE.exec(line)![1];
      this.#counts.set(type, this.#counts.get(type)! - 1);
      this.#arrivals.get(type)!.pop();
    }
  }
}

/** The type of an event line as JSON.stringify writes our events: the first key. */
const EVENT_TYPE = /^\{"type":"([a-z_]+)"[,}]/;

/** Stops every client, whatever state it is in. */
export async function stopAll(clients: Array<ChatClient | undefined>): Promise<void> {
  await Promise.all(clients.map((c) => c?.stop()));
}

/**
 * The original's flow between two running clients: `from` says `/chat TO`, `to`
 * sees the invitation and says `/accept FROM`; resolves with both `connected`
 * events once each side has one.
 */
export async function connect(
  from: ChatClient,
  to: ChatClient,
): Promise<{ atFrom: ChatEvent; atTo: ChatEvent }> {
  await from.send(`/chat ${to.name}`);
  await from.expect({ type: "invited", to: to.name });
  await to.expect({ type: "invite", from: from.name });
  await to.send(`/accept ${from.name}`);
  const atTo = await to.expect({ type: "connected", peer: from.name });
  const atFrom = await from.expect({ type: "connected", peer: to.name });
  return { atFrom, atTo };
}
