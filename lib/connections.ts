/**
 * Connection caps and absolute deadlines for our servers (the CA service, its
 * plain-HTTP CRL listener and a chat listener): one place that decides how
 * many sockets a server may hold and how long a connection may take to become
 * useful.
 *
 * Why: once a process runs out of file descriptors, the accept loop of Deno's
 * node:net stops for good — no error, no event, the process stays up, and it
 * never accepts again (Deno 2.9: the listener's accept error is dropped and
 * nothing polls it again). A total cap well below the descriptor limit keeps
 * that from happening, a per-address cap keeps one client from taking every
 * slot, and deadlines that count from a fixed start (not inactivity timers,
 * which a client resets with one byte every few seconds) bound how long a slot
 * stays taken. A server listened through its guard ({@linkcode ConnectionGuard}
 * `listen`) also stops listening at its cap rather than accept and close what
 * comes (a closed connection keeps its descriptor until a turn of the event
 * loop later, so how many are pending would depend on the client's speed),
 * takes a fresh listening socket once a burst of refusals is over, in case one
 * went quiet anyway, and after a minute without a connection checks that it
 * still accepts by connecting to itself (the descriptors may have run out for
 * other reasons: files, child processes).
 *
 * @module
 */
import net from "node:net";
import type { Server as NetServer, Socket } from "node:net";
import type { TLSSocket } from "node:tls";

/** Never more connections than this per server, however many descriptors are free. */
export const MAX_CONNECTIONS_CEILING = 1024;
/** Never fewer than this, however few descriptors are free (a server must serve someone). */
export const MIN_CONNECTIONS = 8;
/** Assumed free descriptors when they cannot be counted (no read access to /dev/null). */
export const FALLBACK_FREE_DESCRIPTORS = 256;
/** How often, at most, a server logs that a cap refused connections, in ms. */
export const REFUSAL_LOG_INTERVAL_MS = 10_000;

const PROBE_LIMIT = 4 * MAX_CONNECTIONS_CEILING;

/**
 * How many more files this process can open now, counted up to 4096 by
 * opening /dev/null until the system says no (then closing them all): about
 * 2 ms under `ulimit -n 256`, 40 ms when 4096 are free. Counted, not read:
 * Deno lets only `--allow-all` read /proc/self/limits, and only lib/openssl.ts
 * may start a process to ask `ulimit -n`. Without read access to /dev/null it
 * assumes {@linkcode FALLBACK_FREE_DESCRIPTORS}.
 *
 * @example
 * ```ts
 * import { freeDescriptors } from "./connections.ts";
 * console.log(freeDescriptors()); // e.g. 4096
 * ```
 */
export function freeDescriptors(): number {
  const files: Deno.FsFile[] = [];
  try {
    while (files.length < PROBE_LIMIT) files.push(Deno.openSync("/dev/null"));
  } catch (e) {
    if (!files.length) return FALLBACK_FREE_DESCRIPTORS;
    if (!(e instanceof Error) || !/too many open files|os error 2[34]\b/i.test(e.message)) {
      for (const f of files) f.close();
      return FALLBACK_FREE_DESCRIPTORS;
    }
  }
  for (const f of files) f.close();
  return files.length;
}

/**
 * The most connections one server may hold with `descriptors` free: a quarter
 * of them, between {@linkcode MIN_CONNECTIONS} and
 * {@linkcode MAX_CONNECTIONS_CEILING}. The rest is for files, openssl's
 * pipes, outgoing connections, a second listener — and the connections
 * refused at the cap, whose descriptors Deno releases only a turn of the event
 * loop later: under `ulimit -n 256` a burst of 400 left about 100 of them
 * pending at once, so a cap of half the limit (128) still ran out and a
 * quarter (64) held against 1,000.
 *
 * @example
 * ```ts
 * import { connectionBudget } from "./connections.ts";
 * console.log(connectionBudget(256)); // 64
 * ```
 */
export function connectionBudget(descriptors: number): number {
  return Math.max(MIN_CONNECTIONS, Math.min(MAX_CONNECTIONS_CEILING, Math.floor(descriptors / 4)));
}

/** Limits of {@linkcode guardConnections}. */
export interface ConnectionLimits {
  /** Connections open at once. Default: `connectionBudget(freeDescriptors())`. */
  maxConnections?: number;
  /** Connections open at once from one address (capped by `maxConnections`). */
  maxPerAddress: number;
  /** From accept to the end of the TLS handshake, in ms, whatever the client sends meanwhile (0: plain TCP, no handshake). */
  handshakeMs: number;
  /** Inactivity allowed once the handshake is done, in ms (0: none). Default: 0. */
  idleMs?: number;
  /** Told, at most every {@linkcode REFUSAL_LOG_INTERVAL_MS}, that a cap refused connections. Default: none. */
  onRefused?: (message: string) => void;
  /**
   * The listeners of the same process: once a burst of refusals at any of them is over, every
   * one listened through its guard takes a fresh listening socket (one may have gone quiet
   * when another took the last descriptors). Default: a group of this server alone.
   */
  group?: ListenerGroup;
  /**
   * After this long without a connection, a server listened through its guard connects to
   * itself, and takes a fresh listening socket if that connection is not accepted within
   * {@linkcode PROBE_MS} (its accept loop died when something else took the last descriptor),
   * in ms. Default: {@linkcode QUIET_PROBE_MS}.
   */
  quietMs?: number;
}

/** What {@linkcode guardConnections} applied, for the server's start-up line and tests. */
export interface ConnectionGuard {
  /** The total cap. */
  readonly maxConnections: number;
  /** The per-address cap. */
  readonly maxPerAddress: number;
  /** Connections open now. */
  readonly open: number;
  /** Whether the server stopped listening at its cap (it listens again below it). */
  readonly paused: boolean;
  /**
   * Listens on host:port (0 picks a port) with a backlog of at most `maxConnections`, and from
   * then on stops listening at the cap and listens again on the same port below it. Rejects
   * with the listen error (EADDRINUSE, say).
   */
  listen(port: number, host: string): Promise<void>;
  /** Stops listening again: call it before the server's own close(). */
  stop(): void;
}

/** How long after a server fell below its cap it listens again, in ms (refused connections' descriptors come back meanwhile). */
export const RESUME_DELAY_MS = 100;
/** How long a burst of refusals must be over before a group's listeners take fresh sockets, in ms. */
export const REFRESH_AFTER_MS = 1_000;
/** How long a server listened through its guard may go without a connection before it checks that it still accepts, in ms. */
export const QUIET_PROBE_MS = 60_000;
/** How long that check waits for its own connection to be accepted, in ms. */
export const PROBE_MS = 2_000;
const RELISTEN_RETRY_MAX_MS = 5_000;

/**
 * The servers of one process that share its file descriptors: once refusals at any of them
 * stop for {@linkcode REFRESH_AFTER_MS}, each listens again on a fresh socket (Deno's accept
 * loop of one may have died silently when another's burst took the last descriptor).
 *
 * @example
 * ```ts
 * import http from "node:http";
 * import { guardConnections, ListenerGroup } from "./connections.ts";
 * const group = new ListenerGroup();
 * const a = guardConnections(http.createServer(), { maxPerAddress: 8, handshakeMs: 0, group });
 * const b = guardConnections(http.createServer(), { maxPerAddress: 8, handshakeMs: 0, group });
 * ```
 */
export class ListenerGroup {
  #refreshers = new Set<() => void>();
  #timer?: ReturnType<typeof setTimeout>;

  /** Adds a listener's refresh; returns the function that takes it out again. */
  add(refresh: () => void): () => void {
    this.#refreshers.add(refresh);
    return () => {
      this.#refreshers.delete(refresh);
      if (!this.#refreshers.size) clearTimeout(this.#timer);
    };
  }

  /** A connection was refused (or a listener stopped at its cap): the burst goes on. */
  refused(): void {
    if (!this.#refreshers.size) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      for (const refresh of this.#refreshers) refresh();
    }, REFRESH_AFTER_MS);
  }
}

/**
 * Caps the connections of `server` (in total and per address) and cuts off
 * each whose TLS handshake is not done `handshakeMs` after it was accepted.
 * A connection over a cap is closed before a byte is read, and `onRefused`
 * hears of it (the first refusal at once, then a count every 10 s). A server
 * listened through the returned guard's `listen` stops listening at its total
 * cap (clients are refused by the kernel, holding no descriptor here) and
 * listens again {@linkcode RESUME_DELAY_MS} after it fell below it; once a burst
 * of refusals is over, or when a connection to itself after `quietMs` without
 * one is not accepted, it takes a fresh listening socket on the same port, so a
 * listener that went quiet for want of descriptors accepts again.
 *
 * @example
 * ```ts
 * import tls from "node:tls";
 * import { guardConnections } from "./connections.ts";
 * const server = tls.createServer({});
 * const guard = guardConnections(server, { maxPerAddress: 64, handshakeMs: 10_000 });
 * await guard.listen(0, "127.0.0.1");
 * guard.stop();
 * server.close();
 * ```
 */
export function guardConnections(server: NetServer, limits: ConnectionLimits): ConnectionGuard {
  const maxConnections = limits.maxConnections ?? connectionBudget(freeDescriptors());
  const maxPerAddress = Math.min(limits.maxPerAddress, maxConnections);
  const group = limits.group ?? new ListenerGroup();
  const perAddress = new Map<string, number>();
  let open = 0;
  let refused = 0;
  let lastReport = -Infinity;
  let lastConnection = Date.now();
  let watchdog: ReturnType<typeof setInterval> | undefined;
  let probing = false;
  let cancelProbe = () => {};
  let afterError: ReturnType<typeof setTimeout> | undefined;
  const quietMs = limits.quietMs ?? QUIET_PROBE_MS;
  // Where the server listens, once it listened through the guard: it may stop and listen again.
  let where: { port: number; host: string } | undefined;
  let paused = false;
  let stopped = false;
  let leaveGroup = () => {};
  let relistening = false;
  let retryMs = 0;
  let resumeTimer: ReturnType<typeof setTimeout> | undefined;
  const report = (why: string) => {
    group.refused();
    const now = Date.now();
    if (now - lastReport < REFUSAL_LOG_INTERVAL_MS) return;
    lastReport = now;
    limits.onRefused?.(
      `connection cap reached: ${why}; refused ${refused} connection${
        refused === 1 ? "" : "s"
      } since the last report`,
    );
    refused = 0;
  };
  const refuse = (socket: Socket, why: string) => {
    socket.destroy();
    refused++;
    report(why);
  };
  const backlog = () => Math.max(1, Math.min(511, maxConnections));
  // Listens on `where` now, or tries again later (the port may not be free yet, or no
  // descriptor): the server must not stay deaf.
  const relisten = () => {
    if (stopped || !where || relistening) return;
    relistening = true;
    // net's own close: http's would also close members' idle connections.
    if (server.listening) net.Server.prototype.close.call(server);
    const onError = (e: Error) => {
      server.off("listening", onListening);
      relistening = false;
      retryMs = Math.min(RELISTEN_RETRY_MAX_MS, retryMs ? retryMs * 2 : 100);
      limits.onRefused?.(`cannot listen again on port ${where?.port}: ${e.message}`);
      clearTimeout(resumeTimer);
      resumeTimer = setTimeout(relisten, retryMs);
    };
    const onListening = () => {
      server.off("error", onError);
      relistening = false;
      retryMs = 0;
      // Stopped, or at the cap again, while it was getting its socket.
      if (stopped || paused) net.Server.prototype.close.call(server);
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen({ port: where.port, host: where.host, backlog: backlog() });
  };
  // Connects to the server itself: accepted, it still accepts; not within PROBE_MS (or not
  // even connected), it takes a fresh listening socket. Connections queued for the dead one go.
  const probe = () => {
    if (probing || stopped || paused || relistening || !where) return;
    if (Date.now() - lastConnection < quietMs) return;
    probing = true;
    const host = where.host === "0.0.0.0" ? "127.0.0.1" : where.host === "::" ? "::1" : where.host;
    const own = net.connect({ port: where.port, host });
    own.on("error", () => {});
    // The ports of connections accepted meanwhile: its own local port may be known only later.
    const ports = new Set<number | undefined>();
    const end = () => {
      server.off("connection", seen);
      clearTimeout(timer);
      own.destroy();
      probing = false;
      lastConnection = Date.now();
      cancelProbe = () => {};
    };
    const check = () => {
      if (own.localPort === undefined || !ports.has(own.localPort)) return;
      end();
    };
    const seen = (socket: Socket) => {
      ports.add(socket.remotePort);
      check();
    };
    own.once("connect", check);
    server.on("connection", seen);
    const timer = setTimeout(() => {
      end();
      if (stopped || paused) return;
      limits.onRefused?.(`the listener on port ${where?.port} stopped accepting; listening again`);
      relisten();
    }, PROBE_MS);
    cancelProbe = end;
  };
  const pause = () => {
    if (!where || paused || stopped) return;
    paused = true;
    clearTimeout(resumeTimer);
    if (server.listening) net.Server.prototype.close.call(server);
    report(`${open} connections open, at most ${maxConnections}; not listening until fewer are`);
  };
  const resumeSoon = () => {
    if (!paused || stopped || open >= maxConnections) return;
    clearTimeout(resumeTimer);
    resumeTimer = setTimeout(() => {
      if (stopped || open >= maxConnections) return;
      paused = false;
      relisten();
    }, RESUME_DELAY_MS);
  };
  server.on("connection", (socket: Socket) => {
    lastConnection = Date.now();
    // A host may take any address of its IPv6 /64: its connections count together.
    const address = addressKey(socket.remoteAddress ?? "?");
    if (open >= maxConnections) {
      return refuse(socket, `${open} connections open, at most ${maxConnections}`);
    }
    const mine = perAddress.get(address) ?? 0;
    if (mine >= maxPerAddress) {
      return refuse(socket, `${mine} connections open from ${address}, at most ${maxPerAddress}`);
    }
    open++;
    perAddress.set(address, mine + 1);
    if (open >= maxConnections) pause();
    const handshake = limits.handshakeMs > 0
      ? setTimeout(() => socket.destroy(), limits.handshakeMs)
      : undefined;
    handshakes.set(socket, handshake);
    socket.once("close", () => {
      clearTimeout(handshake);
      open--;
      const left = (perAddress.get(address) ?? 1) - 1;
      if (left > 0) perAddress.set(address, left);
      else perAddress.delete(address);
      resumeSoon();
    });
  });
  server.on("secureConnection", (socket: TLSSocket) => {
    // The deadline sits on the TCP socket beneath (Deno's node:tls keeps it as _parent).
    const tcp = (socket as unknown as { _parent?: Socket })._parent;
    if (tcp) clearTimeout(handshakes.get(tcp));
    if (limits.idleMs) socket.setTimeout(limits.idleMs, () => socket.destroy());
  });
  // A failed handshake is the peer's problem; it must not become ours.
  server.on("tlsClientError", () => {});
  return {
    maxConnections,
    maxPerAddress,
    get open() {
      return open;
    },
    get paused() {
      return paused;
    },
    listen(port: number, host: string): Promise<void> {
      return new Promise<void>((resolve, reject) => {
        const onError = (e: Error) => reject(e);
        server.once("error", onError);
        server.listen({ port, host, backlog: backlog() }, () => {
          server.off("error", onError);
          // The port it took (0 picks one), on the address it listens on.
          const address = server.address() as { port: number; address: string };
          where = { port: address.port, host: address.address };
          lastConnection = Date.now();
          watchdog = setInterval(probe, Math.max(100, Math.min(quietMs, PROBE_MS)));
          Deno.unrefTimer(watchdog);
          leaveGroup = group.add(() => {
            if (!paused) relisten();
          });
          // An accept that fails (EMFILE) is an "error" on node's server, which Deno 2.9.6 never
          // emits; should it, the listener takes a fresh socket rather than the process dying.
          server.on("error", (e: Error) => {
            if (relistening || stopped) return; // relisten() handles its own
            limits.onRefused?.(`the listener on port ${where?.port} failed: ${e.message}`);
            clearTimeout(afterError);
            afterError = setTimeout(() => paused || relisten(), RESUME_DELAY_MS);
          });
          resolve();
        });
      });
    },
    stop() {
      stopped = true;
      clearInterval(watchdog);
      clearTimeout(afterError);
      cancelProbe();
      clearTimeout(resumeTimer);
      leaveGroup();
    },
  };
}

const handshakes = new WeakMap<Socket, ReturnType<typeof setTimeout> | undefined>();

/**
 * Destroys `socket` `ms` from now unless the returned function is called
 * first: an absolute deadline, which traffic does not extend.
 *
 * @example
 * ```ts
 * import net from "node:net";
 * import { deadline } from "./connections.ts";
 * const socket = net.connect(65433, "127.0.0.1");
 * const done = deadline(socket, 10_000);
 * socket.once("data", done);
 * ```
 */
export function deadline(socket: Socket, ms: number): () => void {
  const timer = setTimeout(() => socket.destroy(), ms);
  const clear = () => clearTimeout(timer);
  socket.once("close", clear);
  return () => {
    clear();
    socket.off("close", clear);
  };
}

/**
 * The key an address counts for (per-address caps, rate limits): an IPv6 address stands for its
 * /64 (`2001:db8:1:2::/64`), an IPv4-mapped one (`::ffff:192.0.2.7`) or a NAT64 one
 * (`64:ff9b::192.0.2.7`) for its IPv4 address, however either is written (case, leading zeros,
 * `::`, a zone); any other key stands for itself.
 *
 * @example
 * ```ts
 * import { addressKey } from "./connections.ts";
 * console.log(addressKey("2001:DB8:1:2:aaaa::1")); // "2001:db8:1:2::/64"
 * console.log(addressKey("::ffff:192.0.2.7")); // "192.0.2.7"
 * console.log(addressKey("alice")); // "alice"
 * ```
 */
export function addressKey(key: string): string {
  const groups = ipv6Groups(key);
  if (!groups) return key;
  // An IPv4 address in IPv6 clothes: IPv4-mapped (::ffff:0:0/96), or translated by NAT64 / SIIT
  // (64:ff9b::/96, RFC 6052), where every IPv4 client shares one /64.
  const mapped = groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff;
  const nat64 = groups[0] === 0x64 && groups[1] === 0xff9b && groups.slice(2, 6).every((g) => !g);
  if (mapped || nat64) {
    return [groups[6] >> 8, groups[6] & 255, groups[7] >> 8, groups[7] & 255].join(".");
  }
  return groups.slice(0, 4).map((g) => g.toString(16)).join(":") + "::/64";
}

// The eight 16-bit groups of an IPv6 address, or undefined when `text` is not one.
function ipv6Groups(text: string): number[] | undefined {
  if (!text.includes(":")) return undefined;
  let address = text.toLowerCase().replace(/%.*$/, "");
  // A dotted IPv4 tail (::ffff:192.0.2.7) is two groups.
  const dotted = /^(.*:)(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(address);
  if (dotted) {
    const o = dotted.slice(2).map(Number);
    if (o.some((n) => n > 255)) return undefined;
    address = `${dotted[1]}${((o[0] << 8) | o[1]).toString(16)}:${
      ((o[2] << 8) | o[3]).toString(16)
    }`;
  }
  const halves = address.split("::");
  if (halves.length > 2) return undefined;
  const split = (part: string) => (part === "" ? [] : part.split(":"));
  const head = split(halves[0]);
  const tail = halves.length === 2 ? split(halves[1]) : [];
  // "::" stands for one group or more; without it there are eight.
  const zeros = halves.length === 2 ? 8 - head.length - tail.length : 0;
  if (halves.length === 2 ? zeros < 1 : head.length !== 8) return undefined;
  const all = [...head, ...Array<string>(zeros).fill("0"), ...tail];
  if (!all.every((g) => /^[0-9a-f]{1,4}$/.test(g))) return undefined;
  return all.map((g) => parseInt(g, 16));
}
