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
 * `listen`) keeps its listening socket at its cap too: closing it would free
 * the port for any local process to take (neither node:net nor Deno offers
 * SO_REUSEPORT, and Deno 2.9's listener has no way to stop accepting short of
 * closing). What comes past the cap is accepted and closed at once; a listen
 * backlog of half the cap ({@linkcode listenBacklog}) bounds how many come in
 * one turn, so the descriptors held stay within twice the cap, which
 * {@linkcode connectionBudget} leaves room for. After a minute without a
 * connection, or a second after connections refused at a cap stop coming, it
 * checks that it still accepts by connecting to itself (the descriptors may
 * have run out for other reasons: files, child processes, a flood's burst);
 * if not, it wakes its accept loop on the same socket, and only if that does
 * not help (and not after a flood) takes a fresh listening socket on the same
 * port.
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
 * pipes, outgoing connections — and the connections closed at the cap, whose
 * descriptors Deno releases only a turn of the event loop later: at most two
 * listen backlogs of them ({@linkcode listenBacklog}, half the cap each), so a
 * server at its cap holds about twice the cap, half of what is free.
 *
 * @example
 * ```ts
 * import { connectionBudget } from "./connections.ts";
 * console.log(connectionBudget(256)); // 64
 * ```
 */
export function connectionBudget(descriptors: number): number {
  return listenerShare(descriptors, MAX_CONNECTIONS_CEILING);
}

/**
 * A listener's share of `budget`, the connections a process's listeners share
 * ({@linkcode connectionBudget}): a quarter of it, between {@linkcode MIN_CONNECTIONS} and `max`.
 * The CA's CRL port (ca/crl_listener.ts) and the page's server (client/faces/web/server.ts) take
 * it; the main listener of each process takes the rest.
 *
 * @example
 * ```ts
 * import { listenerShare } from "./connections.ts";
 * console.log(listenerShare(57, 64)); // 14
 * ```
 */
export function listenerShare(budget: number, max: number): number {
  return Math.max(MIN_CONNECTIONS, Math.min(max, Math.floor(budget / 4)));
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
   * The listeners of the same process: once one of them finds its accept loop dead (below), every
   * one listened through its guard checks its own at once, the same way (whatever took the last
   * descriptor may have killed theirs too). Default: a group of this server alone.
   */
  group?: ListenerGroup;
  /**
   * After this long without a connection (or {@linkcode AFTER_FLOOD_MS} after refusals at a
   * cap stop), a server listened through its guard connects to itself; if that connection is
   * not accepted within {@linkcode PROBE_MS} (its accept loop died when something else took the
   * last descriptor), it wakes the loop on the same socket and checks again, and takes a fresh
   * listening socket only if that fails too (not after a flood), in ms.
   * Default: {@linkcode QUIET_PROBE_MS}.
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
  /** Whether the server is at its total cap: what comes meanwhile is accepted and closed at once. */
  readonly paused: boolean;
  /**
   * Listens on host:port (0 picks a port) with a backlog of {@linkcode listenBacklog}`(maxConnections)`,
   * and keeps that socket, at its cap too (closing it would free the port for any local process);
   * it takes a fresh one on the same port only when its accept loop is proven dead and cannot be
   * woken on that one. Rejects with
   * the listen error (EADDRINUSE, say).
   */
  listen(port: number, host: string): Promise<void>;
  /** Stops the guard's checks: call it before the server's own close(). */
  stop(): void;
}

/** How long after a listener error a server listened through its guard takes a fresh socket, in ms. */
export const RESUME_DELAY_MS = 100;
/** How long a server listened through its guard may go without a connection before it checks that it still accepts, in ms. */
export const QUIET_PROBE_MS = 60_000;
/** How long that check waits for its own connection to be accepted, in ms. */
export const PROBE_MS = 2_000;
/**
 * How long a server listened through its guard waits, once connections stop coming after it
 * refused some at a cap, before it checks that it still accepts, in ms: a flood is when its
 * descriptors may run out, and it must not stay deaf for {@linkcode QUIET_PROBE_MS} after one.
 */
export const AFTER_FLOOD_MS = 1_000;
const RELISTEN_RETRY_MAX_MS = 5_000;

/**
 * The listen backlog of a server listened through its guard with a cap of `maxConnections`: half
 * of it, between 1 and 511. Deno accepts, in one turn of its event loop, every connection the
 * kernel queued (at most backlog + 1, and a few that come meanwhile) before any JavaScript runs,
 * so the backlog bounds a burst; and what comes past the cap is closed at once but gives its
 * descriptor back only a turn later, so a server holds at most about
 * `maxConnections + 2 × backlog` descriptors: twice its cap, which
 * {@linkcode connectionBudget} leaves room for.
 *
 * @example
 * ```ts
 * import { listenBacklog } from "./connections.ts";
 * console.log(listenBacklog(64)); // 32
 * ```
 */
export function listenBacklog(maxConnections: number): number {
  return Math.max(1, Math.min(511, Math.ceil(maxConnections / 2)));
}

/**
 * The servers of one process that share its file descriptors: once one finds its accept loop
 * dead (Deno's accept loop dies silently when something takes the last descriptor), each checks
 * its own at once by connecting to itself, as it would after a quiet minute. Refusals at a cap
 * change nothing here: anyone can set those off.
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
  #checks = new Set<() => void>();

  /** Adds a listener's self-check; returns the function that takes it out again. */
  add(check: () => void): () => void {
    this.#checks.add(check);
    return () => void this.#checks.delete(check);
  }

  /** A listener of the group found its accept loop dead: every one checks its own now. */
  died(): void {
    for (const check of this.#checks) check();
  }
}

/**
 * Caps the connections of `server` (in total and per address) and cuts off
 * each whose TLS handshake is not done `handshakeMs` after it was accepted.
 * A connection over a cap is closed before a byte is read, and `onRefused`
 * hears of it (the first refusal at once, then a count every 10 s). A server
 * listened through the returned guard's `listen` keeps its listening socket
 * at its cap too (closing it would let any local process take the port), with
 * a backlog of {@linkcode listenBacklog} that bounds how many come at once;
 * when a connection to itself after `quietMs` without one is not accepted (its
 * accept loop died for want of descriptors), it wakes that loop on the same
 * socket, and takes a fresh listening socket on the same port only if a second
 * check fails too, or the server reports a listener error.
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
  // While a self-check is under way: the refusals it cannot yet tell from its own connection.
  let probing: Array<{ port?: number; why: string }> | undefined;
  let cancelProbe = () => {};
  let afterError: ReturnType<typeof setTimeout> | undefined;
  const quietMs = limits.quietMs ?? QUIET_PROBE_MS;
  // Where the server listens, once it listened through the guard: it may need a fresh socket.
  let where: { port: number; host: string } | undefined;
  let stopped = false;
  let leaveGroup = () => {};
  let relistening = false;
  let retryMs = 0;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  // Whether the last self-check failed and the listener was woken on its socket since.
  let woken = false;
  // Whether a cap refused connections since the last self-check: one is due once they stop.
  let flooded = false;
  // Tells Deno's listening handle to poll its socket again (the accept loop that an EMFILE left
  // for dead takes what the kernel queued), without letting go of the port; false where the
  // handle has no such call.
  const wake = (): boolean => {
    const handle = (server as unknown as { _handle?: { listen?: (backlog: number) => number } })
      ._handle;
    try {
      return typeof handle?.listen === "function" && handle.listen(backlog) === 0;
    } catch {
      return false;
    }
  };
  const report = (why: string) => {
    refused++;
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
    const port = socket.remotePort;
    socket.destroy();
    // During a self-check its own connection may be this one (its port may be known only
    // later): that is no refusal, and is told apart when the check ends.
    if (probing) return void probing.push({ port, why });
    flooded = true;
    report(why);
  };
  const backlog = listenBacklog(maxConnections);
  // Takes a fresh listening socket on `where` now, or tries again later (the port may not be
  // free yet, or no descriptor): only for a listener proven dead or failed, never at a cap.
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
      clearTimeout(retryTimer);
      retryTimer = setTimeout(relisten, retryMs);
    };
    const onListening = () => {
      server.off("error", onError);
      relistening = false;
      retryMs = 0;
      if (stopped) net.Server.prototype.close.call(server);
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen({ port: where.port, host: where.host, backlog });
  };
  // Connects to the server itself: accepted (or refused at a cap: it was accepted first), it
  // still accepts; not within PROBE_MS, its accept loop is dead: it is woken on its socket and
  // checked again, and takes a fresh listening socket only if still dead (not after a flood:
  // anyone can set one off, and a fresh socket frees the port for a moment); the group's other
  // listeners check theirs. `force`: check whether it has been quiet or not.
  const probe = (force = false, mayRelisten = true) => {
    if (probing || stopped || relistening || !where) return;
    const quiet = Date.now() - lastConnection;
    if (!force) {
      if (flooded && quiet >= AFTER_FLOOD_MS) return probe(true, false);
      if (quiet < quietMs) return;
    }
    flooded = false;
    const host = where.host === "0.0.0.0" ? "127.0.0.1" : where.host === "::" ? "::1" : where.host;
    const own = net.connect({ port: where.port, host });
    own.on("error", () => {});
    const held: Array<{ port?: number; why: string }> = [];
    probing = held;
    // The ports of connections accepted meanwhile: its own local port may be known only later.
    const ports = new Set<number | undefined>();
    const end = () => {
      const mine = own.localPort;
      server.off("connection", seen);
      clearTimeout(timer);
      own.destroy();
      probing = undefined;
      lastConnection = Date.now();
      cancelProbe = () => {};
      for (const r of held) {
        if (r.port !== undefined && r.port === mine) continue;
        flooded = true;
        report(r.why);
      }
    };
    const accepted = () => {
      if (own.localPort === undefined || !ports.has(own.localPort)) return;
      woken = false;
      end();
    };
    const seen = (socket: Socket) => {
      ports.add(socket.remotePort);
      accepted();
    };
    own.once("connect", accepted);
    server.on("connection", seen);
    const timer = setTimeout(() => {
      end();
      if (stopped) return;
      // First on the same socket, which keeps the port: Deno 2.9's handle polls its listener
      // again when told to listen once more. Only if that did not help, a fresh socket.
      if (!woken && wake()) {
        woken = true;
        limits.onRefused?.(
          `the listener on port ${where?.port} stopped accepting; woke it on the same socket`,
        );
        probe(true, mayRelisten);
      } else if (!mayRelisten) {
        woken = false;
        limits.onRefused?.(
          `the listener on port ${where?.port} stopped accepting after a flood; checks again after a quiet minute`,
        );
      } else {
        woken = false;
        limits.onRefused?.(
          `the listener on port ${where?.port} stopped accepting; listening again`,
        );
        relisten();
      }
      // Whatever took the last descriptor may have killed the others' too (this one is busy).
      group.died();
    }, PROBE_MS);
    cancelProbe = end;
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
      return open >= maxConnections;
    },
    listen(port: number, host: string): Promise<void> {
      return new Promise<void>((resolve, reject) => {
        const onError = (e: Error) => reject(e);
        server.once("error", onError);
        server.listen({ port, host, backlog }, () => {
          server.off("error", onError);
          // The port it took (0 picks one), on the address it listens on.
          const address = server.address() as { port: number; address: string };
          where = { port: address.port, host: address.address };
          lastConnection = Date.now();
          watchdog = setInterval(
            () => probe(),
            Math.max(100, Math.min(quietMs, AFTER_FLOOD_MS)),
          );
          Deno.unrefTimer(watchdog);
          leaveGroup = group.add(() => probe(true));
          // An accept that fails (EMFILE) is an "error" on node's server, which Deno 2.9.6 never
          // emits; should it, the listener takes a fresh socket rather than the process dying.
          server.on("error", (e: Error) => {
            if (relistening || stopped) return; // relisten() handles its own
            limits.onRefused?.(`the listener on port ${where?.port} failed: ${e.message}`);
            clearTimeout(afterError);
            afterError = setTimeout(relisten, RESUME_DELAY_MS);
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
      clearTimeout(retryTimer);
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
