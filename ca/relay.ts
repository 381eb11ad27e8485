/**
 * The relay: when two members cannot reach each other directly, each opens a
 * mutual-TLS connection to the service and asks to be joined to the other for
 * one invitation; once both are there, the service splices the two byte
 * streams. Inside them the peers run their own mutual TLS 1.3 (docs/PROTOCOL.md
 * §2 "Through the relay"), so what passes here is ciphertext the service can
 * neither read nor alter unnoticed.
 *
 * Caps and deadlines (docs/SECURITY.md §1, `ca serve --relay-…` flags): at most
 * {@linkcode RELAY_PAIRS_PER_MEMBER} sessions that a member is part of (one it
 * waits in, or a spliced one), of which {@linkcode RELAY_PAIRS_PER_PEER} with any one
 * other member (a newer one takes the place of their oldest), and a total
 * ({@linkcode relayPairBudget}: a quarter of the service's connection cap, so
 * relayed pairs can take at most half of its connections); the first side
 * waits at most {@linkcode RELAY_WAIT_MS} for the other; a spliced pair idle for {@linkcode RELAY_IDLE_MS} is closed; and every
 * byte spliced counts against {@linkcode RELAY_BYTES_PER_DAY} of each of the
 * two members (a UTC day); {@linkcode RELAY_EARLY_BYTES} from a side before its 101
 * (Deno's sockets read on while paused: nothing else would bound them). Opening and
 * closing a pair are log lines with the names and byte counts, never content.
 *
 * Memory (`ca serve --relay-buffer-mib`): what the relay has read from one side
 * and the other has not taken yet is held in the service. Each side may have
 * {@linkcode RELAY_HIGH_WATER_BYTES} held for it, and all pairs together
 * {@linkcode RELAY_BUFFERED_BYTES}; past either, the relay stops reading the
 * sending side (back-pressure: TCP then holds the sender) until the receiver
 * takes what is held — over the total, a side reads one chunk at a time, each
 * once the last was taken, so pairs whose receivers read go on while others
 * hold the budget. So the relay holds at most the total plus one read (64 KiB)
 * per side, whatever the number of pairs. A receiver that takes nothing of what
 * is held for it for {@linkcode RELAY_STUCK_MS} has its pair closed ("… does
 * not read"), which frees its share.
 *
 * @module
 */
import type { Socket } from "node:net";
import { deadline } from "../lib/connections.ts";
import { pauseReading, resumeReading } from "../lib/tls.ts";

/** Relay sessions one member may be part of at once (waiting in them, or spliced). */
export const RELAY_PAIRS_PER_MEMBER = 8;
/**
 * Relay sessions two members may have together at once (waiting or spliced): a newer one takes
 * the place of their oldest. Why: a spliced session counts against both members, and the one
 * who waits chooses when; without it a member another invited could fill that member's
 * {@linkcode RELAY_PAIRS_PER_MEMBER} by waiting again and again, each wait bringing them to
 * the relay. Two, not one: both may accept the other's invitation at once.
 */
export const RELAY_PAIRS_PER_PEER = 2;
/** A spliced pair with no byte either way for this long is closed, in ms. */
export const RELAY_IDLE_MS = 5 * 60_000;
/** Bytes the relay carries for one member per UTC day (both directions). */
export const RELAY_BYTES_PER_DAY = 1024 ** 3;
/** How long the first side waits for the other, in ms. */
export const RELAY_WAIT_MS = 30_000;
/** How often the service ends relay sessions of members whose certificate was revoked (ms). */
export const RELAY_REVOCATION_CHECK_MS = 5_000;
/**
 * How long the inviter has to pick up a relay request (in its long poll, which
 * a running client keeps open) before the waiting side is told it is not online, in ms.
 */
export const RELAY_PICKUP_MS = 5_000;
/**
 * How long a connection the relay answered with an error may stay open for its reply to be
 * read, in ms: a client that never closes its side must not keep the connection.
 */
export const RELAY_LINGER_MS = 5_000;
/**
 * Bytes the relay holds for a side that does not read them, then the pair is closed. Reading
 * stops long before (at {@linkcode RELAY_HIGH_WATER_BYTES}): this is the guard should it not.
 */
export const RELAY_BUFFER_BYTES = 16 * 1024 * 1024;
/**
 * Bytes held for one side (read from the other, not yet taken by it) past which the relay stops
 * reading the other side; it reads on once a quarter of it is left. A side that reads takes
 * bytes as fast as they come: only a receiver slower than its sender fills it.
 */
export const RELAY_HIGH_WATER_BYTES = 1024 * 1024;
/** Bytes the relay may hold for all sides together by default (`ca serve --relay-buffer-mib`). */
export const RELAY_BUFFERED_BYTES = 64 * 1024 * 1024;
/**
 * A side that takes none of the bytes held for it for this long, in ms, has its pair closed
 * (a chat's client reads as bytes come; one that stops for this long is gone or hostile). What
 * counts as taken is what its connection's kernel buffer accepts: after a full buffer the kernel
 * lets the relay write again only once about half of it is free, so a receiver slower than half
 * its send buffer (up to 4 MiB on loopback, about a round trip's worth over a network) in this
 * time looks stuck.
 */
export const RELAY_STUCK_MS = 10_000;
/** The protocol of the `Upgrade:` header. */
export const RELAY_PROTOCOL = "e2e-chat-relay/1";
/**
 * Bytes a connection may send after its request and before its 101 (clients send none; they
 * wait for the 101): kept for the other side, and one more closes the connection.
 */
export const RELAY_EARLY_BYTES = 64 * 1024;

/**
 * The most relayed pairs the service holds at once, for a connection cap of
 * `maxConnections`: a quarter of it (two connections a pair, so half of the
 * connections at most), at least 1.
 *
 * @example
 * ```ts
 * import { relayPairBudget } from "./relay.ts";
 * console.log(relayPairBudget(1024)); // 256
 * ```
 */
export function relayPairBudget(maxConnections: number): number {
  return Math.max(1, Math.floor(maxConnections / 4));
}

/** Options of {@linkcode Relay}. */
export interface RelayOptions {
  /** Sessions one member may be part of at once. Default: {@linkcode RELAY_PAIRS_PER_MEMBER}. */
  pairsPerMember?: number;
  /**
   * Sessions two members may have together at once; a newer one ends their oldest. Default:
   * {@linkcode RELAY_PAIRS_PER_PEER}.
   */
  pairsPerPeer?: number;
  /** Sessions at once in total. Default: 256. */
  maxPairs?: number;
  /** Idle time after which a spliced pair is closed, ms. Default: {@linkcode RELAY_IDLE_MS}. */
  idleMs?: number;
  /** Bytes per member per UTC day. Default: {@linkcode RELAY_BYTES_PER_DAY}. */
  bytesPerDay?: number;
  /** How long the first side waits for the other, ms. Default: {@linkcode RELAY_WAIT_MS}. */
  waitMs?: number;
  /**
   * Bytes held for all sides together (read from one side, not yet taken by the other), past
   * which sides are read one chunk at a time. Default: {@linkcode RELAY_BUFFERED_BYTES}.
   */
  maxBufferedBytes?: number;
  /** How long a side may take nothing held for it, ms. Default: {@linkcode RELAY_STUCK_MS}. */
  stuckMs?: number;
  /** Where log lines go. Default: nowhere. */
  log?: (line: string) => void;
  /**
   * Whether a certificate serial is still current (the service's: or renewed for the same
   * key, see `CertificateAuthority.keyIsCurrent`): given it, the relay runs
   * {@linkcode Relay.cutRevoked} every `revocationCheckMs` while it holds
   * sessions. Default: none (the service gives the CA's).
   */
  isCurrent?: (serial: string) => Promise<boolean>;
  /** ms; Default: {@linkcode RELAY_REVOCATION_CHECK_MS}. */
  revocationCheckMs?: number;
  /**
   * For tests only: sees every byte spliced (after the service's own TLS is
   * removed), with the name of the member who sent it. Default: none.
   */
  tap?: (chunk: Uint8Array, from: string) => void;
}

/** One side that asks to be joined. */
export interface RelaySide {
  /** The invitation the session is for. */
  invitation: number;
  /** The member on this side. */
  name: string;
  /** The member expected on the other side. */
  peer: string;
  /** The serial of this side's certificate (hex): see {@linkcode Relay.cutRevoked}. Default: none. */
  serial?: string;
  /** The connection, its HTTP request read; nothing written to it yet. */
  socket: Socket;
  /** Bytes the client sent after its request headers. */
  head: Uint8Array;
  /**
   * What it sent since, while it was authorized and waited (from {@linkcode readEarly}); taken
   * at the splice. Default: none.
   */
  early?: () => Uint8Array;
}

/** Why {@linkcode Relay.join} refused a side. */
export interface RelayRefusal {
  /** HTTP status. */
  status: 429 | 503;
  /** The error code of the reply. */
  code: "ERR_RATE_LIMITED";
  /** The message of the reply. */
  message: string;
}

interface Waiting extends RelaySide {
  seq: number; // the order in which sessions began
  timer: ReturnType<typeof setTimeout>;
  onClose: () => void;
}

interface Spliced {
  seq: number; // that of the wait it came from
  invitation: number;
  a: RelaySide;
  b: RelaySide;
  bytes: { a: number; b: number };
  started: number;
  closed: boolean;
  active: number;
  timer?: ReturnType<typeof setTimeout>;
  ways: Way[];
}

// One direction of a spliced pair: what is held for `to`, and whether `from` is read.
interface Way {
  from: RelaySide;
  to: RelaySide;
  held: number; // bytes written to `to` that it has not taken yet
  paused: boolean; // `from` is not read
  stuck?: ReturnType<typeof setTimeout>;
}

/** What the relay holds in memory (see {@linkcode Relay.buffered}). */
export interface RelayBuffered {
  /** Bytes read from one side and not yet taken by the other, all pairs together. */
  held: number;
  /** The most held at once. */
  peak: number;
  /** The bound past which sides are read one chunk at a time. */
  maxBytes: number;
}

/** The reply that starts the splice. */
const SWITCHING =
  `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${RELAY_PROTOCOL}\r\n\r\n`;

/** Pairs members at the relay and splices their connections, within its caps. */
export class Relay {
  readonly pairsPerMember: number;
  readonly pairsPerPeer: number;
  readonly maxPairs: number;
  readonly idleMs: number;
  readonly bytesPerDay: number;
  readonly waitMs: number;
  readonly maxBufferedBytes: number;
  readonly stuckMs: number;
  #held = 0;
  #peak = 0;
  #log: (line: string) => void;
  #tap?: (chunk: Uint8Array, from: string) => void;
  #waiting = new Map<number, Waiting>();
  #seq = 0;
  #spliced = new Set<Spliced>();
  #used = new Map<string, { day: string; bytes: number }>();
  #revocations?: ReturnType<typeof setInterval>;

  /**
   * An empty relay with these caps.
   *
   * @example
   * ```ts
   * import { Relay } from "./relay.ts";
   * const relay = new Relay({ maxPairs: 64, log: (line) => console.error(line) });
   * console.log(relay.pairs); // 0
   * ```
   */
  constructor(options: RelayOptions = {}) {
    this.pairsPerMember = options.pairsPerMember ?? RELAY_PAIRS_PER_MEMBER;
    this.pairsPerPeer = options.pairsPerPeer ?? RELAY_PAIRS_PER_PEER;
    this.maxPairs = options.maxPairs ?? 256;
    this.idleMs = options.idleMs ?? RELAY_IDLE_MS;
    this.bytesPerDay = options.bytesPerDay ?? RELAY_BYTES_PER_DAY;
    this.waitMs = options.waitMs ?? RELAY_WAIT_MS;
    this.maxBufferedBytes = options.maxBufferedBytes ?? RELAY_BUFFERED_BYTES;
    if (!Number.isSafeInteger(this.maxBufferedBytes) || this.maxBufferedBytes <= 0) {
      throw new RangeError(
        `The relay's buffer is a whole number of bytes above 0, not ${this.maxBufferedBytes}`,
      );
    }
    this.stuckMs = options.stuckMs ?? RELAY_STUCK_MS;
    this.#log = options.log ?? (() => {});
    this.#tap = options.tap;
    const isCurrent = options.isCurrent;
    if (isCurrent) {
      let checking = false;
      this.#revocations = setInterval(() => {
        if (checking || this.pairs === 0) return;
        checking = true;
        this.cutRevoked(isCurrent).catch(() => {}).finally(() => checking = false);
      }, options.revocationCheckMs ?? RELAY_REVOCATION_CHECK_MS);
      Deno.unrefTimer(this.#revocations);
    }
  }

  /** Sessions held now: waiting for their second side, or spliced. */
  get pairs(): number {
    return this.#waiting.size + this.#spliced.size;
  }

  /** Bytes the relay holds now for sides that have not taken them, and the most it held. */
  get buffered(): RelayBuffered {
    return { held: this.#held, peak: this.#peak, maxBytes: this.maxBufferedBytes };
  }

  /** Bytes spliced for `name` today (UTC). */
  usedToday(name: string): number {
    const used = this.#used.get(name);
    return used?.day === today() ? used.bytes : 0;
  }

  /**
   * Joins `side` to the session of its invitation: the first side waits (a
   * 504 reply after `waitMs`), the second is spliced to it (both get a 101).
   * Returns "waiting" or "spliced", "gone" for a connection that closed before
   * it came here (it is not held), or a refusal (nothing written: the caller
   * replies) when a cap or the byte budget of this side says no (the peer's are
   * checked when the peer comes, and the refusal goes to it). A side that would wait while
   * its two members already have {@linkcode Relay.pairsPerPeer} sessions together
   * ends the oldest of them (its connections are closed) and takes its place.
   */
  join(side: RelaySide): "waiting" | "spliced" | "gone" | RelayRefusal {
    // Closed while the service authorized it: its "close" has passed, and would never end a wait.
    if (side.socket.destroyed) return "gone";
    const other = this.#waiting.get(side.invitation);
    if (other && other.name === side.name) {
      // The same member again (a retry): the newer connection takes the place.
      this.#unwait(other);
      other.socket.destroy();
    } else if (other && other.name === side.peer && other.peer === side.name) {
      // The side that comes is checked against its own caps now, and told about itself only;
      // the one waiting waits on, and times out as if its peer never came.
      const refused = this.#refusal(side.name);
      if (refused) return refused;
      this.#unwait(other);
      this.#splice(other, side);
      return "spliced";
    }
    // The pair's oldest session, when it has all it may: it gives up its place to this one, so
    // the caps below count without it.
    const ours = this.#sessionsOf(side.name, side.peer);
    const oldest = ours.length >= this.pairsPerPeer ? ours[0] : undefined;
    // Its own caps only: a refusal about the peer would tell any member who invites them (they
    // need not agree) whether they relay with others now, or spent their bytes for the day.
    // The peer's are checked when the peer comes (above).
    const refused = this.#refusal(side.name, oldest);
    if (refused) return refused;
    const pairs = this.pairs - (oldest ? 1 : 0);
    if (pairs >= this.maxPairs) {
      return {
        status: 503,
        code: "ERR_RATE_LIMITED",
        message: `The relay is full: ${pairs} sessions, at most ${this.maxPairs}`,
      };
    }
    if (oldest) this.#replace(oldest);
    const waiting: Waiting = {
      ...side,
      seq: this.#seq++,
      timer: setTimeout(() => {
        this.#unwait(waiting);
        relayError(
          side.socket,
          504,
          "ERR_NETWORK",
          `"${side.peer}" did not join the relay in time`,
        );
      }, this.waitMs),
      onClose: () => this.#unwait(waiting),
    };
    side.socket.once("close", waiting.onClose);
    this.#waiting.set(side.invitation, waiting);
    return "waiting";
  }

  /**
   * Ends the wait of the side waiting for `invitation` with a 404 after `ms`
   * unless `came()` says the other side learnt of it by then (a client that is
   * not running never will: there is no point in waiting the full time).
   */
  awaitPickup(invitation: number, came: () => boolean, ms: number = RELAY_PICKUP_MS): void {
    const waiting = this.#waiting.get(invitation);
    if (!waiting) return;
    const timer = setTimeout(() => {
      if (came() || this.#waiting.get(invitation) !== waiting) return;
      this.#unwait(waiting);
      relayError(
        waiting.socket,
        404,
        "ERR_NOT_FOUND",
        `"${waiting.peer}" is not online to come to the relay`,
      );
    }, ms);
    waiting.socket.once("close", () => clearTimeout(timer));
  }

  /**
   * Ends every session, waiting or spliced, with a side whose certificate is
   * no longer current (revoked, superseded or expired since it joined), as
   * every other route refuses it from then on; returns how many it ended.
   * With {@linkcode RelayOptions.isCurrent} the relay runs it by itself.
   */
  async cutRevoked(isCurrent: (serial: string) => Promise<boolean>): Promise<number> {
    const revoked = async (side: RelaySide) =>
      side.serial !== undefined && !await isCurrent(side.serial);
    let cut = 0;
    for (const w of [...this.#waiting.values()]) {
      if (!await revoked(w) || this.#waiting.get(w.invitation) !== w) continue;
      this.#unwait(w);
      w.socket.destroy();
      this.#log(
        `e2e-chat-ca: relay wait of ${w.name} ended, invitation ${w.invitation}: ` +
          "its certificate is no longer valid",
      );
      cut++;
    }
    for (const s of [...this.#spliced]) {
      const side = await revoked(s.a) ? s.a : await revoked(s.b) ? s.b : undefined;
      if (!side || s.closed) continue;
      this.#end(s, `the certificate of ${side.name} is no longer valid`);
      cut++;
    }
    return cut;
  }

  /** Closes every session (at shutdown). */
  close(): void {
    clearInterval(this.#revocations);
    for (const w of [...this.#waiting.values()]) {
      this.#unwait(w);
      w.socket.destroy();
    }
    for (const s of [...this.#spliced]) this.#end(s, "the service stops");
  }

  // The sessions, waiting or spliced, of members `a` and `b` together, the oldest first.
  #sessionsOf(a: string, b: string): Array<Waiting | Spliced> {
    const of = (x: string, y: string) => (x === a && y === b) || (x === b && y === a);
    const sessions: Array<Waiting | Spliced> = [];
    for (const w of this.#waiting.values()) if (of(w.name, w.peer)) sessions.push(w);
    for (const s of this.#spliced) if (of(s.a.name, s.b.name)) sessions.push(s);
    return sessions.sort((x, y) => x.seq - y.seq);
  }

  // Ends `session` to make room for a newer one of the same two members.
  #replace(session: Waiting | Spliced): void {
    if ("ways" in session) return this.#end(session, "a newer session of the two took its place");
    this.#unwait(session);
    relayError(
      session.socket,
      429,
      "ERR_RATE_LIMITED",
      `"${session.name}" and "${session.peer}" have at most ${this.pairsPerPeer} relay sessions ` +
        "together: a newer one took the place of this one",
    );
    this.#log(
      `e2e-chat-ca: relay wait of ${session.name} ended, invitation ${session.invitation}: ` +
        "a newer session of the two took its place",
    );
  }

  // Why `name` may not be part of one more session; `leaving` is a session that gives up its
  // place to it, not counted.
  #refusal(name: string, leaving?: Waiting | Spliced): RelayRefusal | undefined {
    if (this.usedToday(name) >= this.bytesPerDay) {
      return {
        status: 429,
        code: "ERR_RATE_LIMITED",
        message: `The relay's byte budget of "${name}" for today is spent`,
      };
    }
    let mine = 0;
    // A wait is the waiter's only: were it also its peer's, any member could lock another out
    // of the relay by waiting on invitations to them that they never take up.
    for (const w of this.#waiting.values()) if (w.name === name && w !== leaving) mine++;
    for (const s of this.#spliced) {
      if ((s.a.name === name || s.b.name === name) && s !== leaving) mine++;
    }
    if (mine >= this.pairsPerMember) {
      return {
        status: 429,
        code: "ERR_RATE_LIMITED",
        message: `"${name}" has ${mine} relay sessions, at most ${this.pairsPerMember}`,
      };
    }
    return undefined;
  }

  #unwait(w: Waiting): void {
    clearTimeout(w.timer);
    w.socket.off("close", w.onClose);
    if (this.#waiting.get(w.invitation) === w) this.#waiting.delete(w.invitation);
  }

  #splice(first: Waiting, second: RelaySide): void {
    const s: Spliced = {
      seq: first.seq,
      invitation: first.invitation,
      a: first,
      b: second,
      bytes: { a: 0, b: 0 },
      started: Date.now(),
      closed: false,
      active: Date.now(),
      ways: [],
    };
    this.#spliced.add(s);
    const idle = () => {
      const left = s.active + this.idleMs - Date.now();
      if (left <= 0) this.#end(s, "idle");
      else s.timer = setTimeout(idle, left);
    };
    s.timer = setTimeout(idle, this.idleMs);
    this.#log(
      `e2e-chat-ca: relay opened ${first.name}<->${second.name} invitation ${first.invitation}`,
    );
    for (const side of [first, second]) {
      // Records go on as they come: a chat message is a small write, and Nagle would hold it.
      side.socket.setNoDelay(true);
      side.socket.write(SWITCHING);
    }
    const count = (from: RelaySide, to: RelaySide, key: "a" | "b", chunk: Uint8Array) => {
      s.active = Date.now();
      s.bytes[key] += chunk.length;
      this.#tap?.(chunk, from.name);
      const fromOk = this.#charge(from.name, chunk.length);
      const toOk = this.#charge(to.name, chunk.length);
      if (!fromOk || !toOk) this.#end(s, "byte budget spent");
    };
    const wire = (from: RelaySide, to: RelaySide, key: "a" | "b") => {
      const way: Way = { from, to, held: 0, paused: false };
      s.ways.push(way);
      // Whatever a side sent right after its request goes first.
      for (const head of [from.head, from.early?.() ?? new Uint8Array()]) {
        if (!head.length) continue;
        count(from, to, key, head);
        this.#forward(s, way, head);
      }
      // Not pipe(): its back-pressure only pauses the reading side, and Deno's sockets read on
      // while paused, uncounted; what the other side leaves unread is held and bounded here.
      from.socket.on("data", (chunk: Uint8Array) => {
        count(from, to, key, chunk);
        if (s.closed) return;
        this.#forward(s, way, chunk);
        if (way.held > RELAY_BUFFER_BYTES) return this.#end(s, `${to.name} does not read`);
        if (
          !way.paused && (way.held > RELAY_HIGH_WATER_BYTES || this.#held > this.maxBufferedBytes)
        ) {
          way.paused = true;
          pauseReading(from.socket);
          this.#watchStuck(s, way);
        }
      });
      from.socket.once("end", () => to.socket.end());
      from.socket.once("close", () => this.#end(s, `${from.name} left`));
      from.socket.on("error", () => {});
    };
    wire(first, second, "a");
    wire(second, first, "b");
  }

  // Writes `chunk` to the way's receiver, held (against the relay's total) until it takes it.
  #forward(s: Spliced, way: Way, chunk: Uint8Array): void {
    const n = chunk.length;
    way.held += n;
    this.#held += n;
    if (this.#held > this.#peak) this.#peak = this.#held;
    way.to.socket.write(chunk, () => {
      if (s.closed) return; // released when the pair ended
      way.held -= n;
      this.#held -= n;
      if (!way.paused) return;
      // Over the total, a side reads on only once all held for its receiver was taken: one
      // chunk at a time, however many pairs there are.
      const room = way.held === 0 ||
        (way.held <= RELAY_HIGH_WATER_BYTES / 4 && this.#held <= this.maxBufferedBytes);
      if (!room) return this.#watchStuck(s, way); // progress: the receiver reads
      way.paused = false;
      clearTimeout(way.stuck);
      resumeReading(way.from.socket);
    });
  }

  // (Re)starts the time the way's receiver has to take something of what is held for it.
  #watchStuck(s: Spliced, way: Way): void {
    clearTimeout(way.stuck);
    way.stuck = setTimeout(() => this.#end(s, `${way.to.name} does not read`), this.stuckMs);
  }

  // Counts bytes against `name`'s budget of today; false once it is spent.
  #charge(name: string, bytes: number): boolean {
    const day = today();
    const used = this.#used.get(name);
    const total = (used?.day === day ? used.bytes : 0) + bytes;
    this.#used.set(name, { day, bytes: total });
    return total <= this.bytesPerDay;
  }

  #end(s: Spliced, reason: string): void {
    if (s.closed) return;
    s.closed = true;
    clearTimeout(s.timer);
    for (const way of s.ways) {
      clearTimeout(way.stuck);
      this.#held -= way.held; // gone with the sockets
      way.held = 0;
    }
    this.#spliced.delete(s);
    s.a.socket.destroy();
    s.b.socket.destroy();
    const seconds = ((Date.now() - s.started) / 1000).toFixed(1);
    this.#log(
      `e2e-chat-ca: relay closed ${s.a.name}<->${s.b.name} invitation ${s.invitation}: ` +
        `${s.bytes.a} bytes ${s.a.name}->${s.b.name}, ${s.bytes.b} bytes ${s.b.name}->${s.a.name}, ` +
        `${seconds}s (${reason})`,
    );
  }
}

/**
 * Reads what `socket` (a relay connection, its request read) sends until the returned function
 * is called, which stops and returns it: at most {@linkcode RELAY_EARLY_BYTES}, and a connection
 * that sends more is closed. Why: Deno's sockets read on while paused, so a connection nobody
 * reads piles up in memory whatever its client sends (one member waiting at the relay took the
 * service from 64 MB to 3.9 GB in 10 s; a client without a certificate, in the 5 s before its
 * refusal closes, to 2.3 GB).
 *
 * @example
 * ```ts
 * import net from "node:net";
 * import { readEarly } from "./relay.ts";
 * const socket = net.connect(65433, "127.0.0.1");
 * const early = readEarly(socket);
 * console.log(early().length); // 0
 * ```
 */
export function readEarly(socket: Socket, maxBytes: number = RELAY_EARLY_BYTES): () => Uint8Array {
  const chunks: Uint8Array[] = [];
  let size = 0;
  const onData = (chunk: Uint8Array) => {
    size += chunk.length;
    if (size <= maxBytes) return void chunks.push(chunk);
    chunks.length = 0;
    socket.destroy();
  };
  socket.on("data", onData);
  socket.resume();
  return () => {
    socket.off("data", onData);
    const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let offset = 0;
    for (const c of chunks.splice(0)) {
      bytes.set(c, offset);
      offset += c.length;
    }
    return bytes;
  };
}

/**
 * Writes an HTTP error reply (docs/API.md's `{"error": {code, message}}`) on a
 * connection whose request went to the relay, and ends it.
 *
 * @example
 * ```ts
 * import net from "node:net";
 * import { relayError } from "./relay.ts";
 * const socket = net.connect(65433, "127.0.0.1");
 * relayError(socket, 404, "ERR_NOT_FOUND", "No pending invitation 7");
 * ```
 */
export function relayError(socket: Socket, status: number, code: string, message: string): void {
  if (socket.destroyed) return;
  const body = JSON.stringify({ error: { code, message } }) + "\n";
  const bytes = new TextEncoder().encode(body);
  socket.end(
    `HTTP/1.1 ${status} ${REASONS[status] ?? "Error"}\r\n` +
      `content-type: application/json; charset=utf-8\r\ncontent-length: ${bytes.length}\r\n` +
      `cache-control: no-store\r\nconnection: close\r\n\r\n${body}`,
  );
  // The service's idle limit no longer watches this socket, and end() alone waits for the client.
  deadline(socket, RELAY_LINGER_MS);
}

const REASONS: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  429: "Too Many Requests",
  500: "Internal Server Error",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

function today(): string {
  return new Date().toISOString().slice(0, 10);
}
