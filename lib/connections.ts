/**
 * Connection caps and absolute deadlines for our servers (the CA service, its
 * plain-HTTP CRL listener and a chat listener): one place that decides how
 * many sockets a server may hold and how long a connection may take to become
 * useful.
 *
 * Why: once a process runs out of file descriptors, the accept loop of Deno's
 * node:net stops for good — no error, the process stays up, and it never
 * accepts again. A total cap well below the descriptor limit keeps that from
 * happening (connections past it are closed at once, so the descriptor comes
 * back), a per-address cap keeps one client from taking every slot, and
 * deadlines that count from a fixed start (not inactivity timers, which a
 * client resets with one byte every few seconds) bound how long a slot stays
 * taken.
 *
 * @module
 */
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
}

/** What {@linkcode guardConnections} applied, for the server's start-up line and tests. */
export interface ConnectionGuard {
  /** The total cap. */
  readonly maxConnections: number;
  /** The per-address cap. */
  readonly maxPerAddress: number;
  /** Connections open now. */
  readonly open: number;
}

/**
 * Caps the connections of `server` (in total and per address) and cuts off
 * each whose TLS handshake is not done `handshakeMs` after it was accepted.
 * A connection over a cap is closed before a byte is read, and `onRefused`
 * hears of it (the first refusal at once, then a count every 10 s).
 *
 * @example
 * ```ts
 * import tls from "node:tls";
 * import { guardConnections } from "./connections.ts";
 * const server = tls.createServer({});
 * guardConnections(server, { maxPerAddress: 64, handshakeMs: 10_000 });
 * ```
 */
export function guardConnections(server: NetServer, limits: ConnectionLimits): ConnectionGuard {
  const maxConnections = limits.maxConnections ?? connectionBudget(freeDescriptors());
  const maxPerAddress = Math.min(limits.maxPerAddress, maxConnections);
  const perAddress = new Map<string, number>();
  let open = 0;
  let refused = 0;
  let lastReport = -Infinity;
  const refuse = (socket: Socket, why: string) => {
    socket.destroy();
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
  server.on("connection", (socket: Socket) => {
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
