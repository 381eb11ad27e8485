/**
 * The CA service: HTTPS (TLS 1.2+, 1.3 preferred) with a certificate the CA
 * issues to itself, client certificates requested but optional at the TLS
 * layer (the API decides per route), bounded bodies, timeouts, and a log line
 * per request that never holds a secret.
 *
 * Caps and deadlines (docs/SECURITY.md §1): one budget of connections for the
 * process, `connectionBudget(freeDescriptors())` (a quarter of the files it can
 * still open at start, at most 1,024), split between the CRL listener
 * (`crlConnections`) and the API, which keep their ports at their caps and
 * accept and close what comes past them (lib/connections.ts); {@linkcode MAX_CONNECTIONS_PER_ADDRESS}
 * from one address; the TLS handshake
 * within {@linkcode HANDSHAKE_MS} of accept, a request's headers within
 * {@linkcode HEADERS_MS} of the handshake or of the previous reply, its body
 * within {@linkcode BODY_MS} of its headers — deadlines, which a client cannot
 * stretch by trickling bytes — and {@linkcode IDLE_MS} of inactivity while a
 * request is served (a long poll raises it); at most {@linkcode MAX_PIPELINED}
 * requests waiting for their replies on one connection, and at most `unreadBytes`
 * ({@linkcode DEFAULT_UNREAD_BYTES}) held in replies nobody has read yet, all connections
 * together (lib/reply_budget.ts: past it, the connections holding the most are closed).
 * Members' writes keep `freeFloorBytes` free on the CA's disk (ca/disk_floor.ts). A refused
 * connection is logged.
 * A connection upgraded to the relay (`GET /v1/relay`) leaves these for the
 * relay's own caps and deadlines (ca/relay.ts), and what it holds for its sides
 * for the relay's own bound (`relay.maxBufferedBytes`, 64 MiB by default).
 *
 * @module
 */
import { createHash, createPrivateKey } from "node:crypto";
import https from "node:https";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { E2eError } from "../lib/errors.ts";
import { writeFileAtomic } from "../lib/fs.ts";
import { holdLock, isLocked } from "../lib/lock.ts";
import {
  connectionBudget,
  type ConnectionGuard,
  deadline,
  freeDescriptors,
  guardConnections,
  ListenerGroup,
} from "../lib/connections.ts";
import { ReplyBudget } from "../lib/reply_budget.ts";
import { Backoff } from "../lib/backoff.ts";
import {
  type Credentials,
  pauseReading,
  peerCertificateDer,
  resumeReading,
  serverOptions,
  trustAnchor,
} from "../lib/tls.ts";
import { type CertificateInfo, parseCertificate } from "../lib/x509.ts";
import {
  type ApiContext,
  type ApiRequest,
  checkBodyHeaders,
  errorReply,
  handle,
  MAX_BODY_BYTES,
  MAX_WAIT_SECONDS,
  parseJsonBody,
  relayParty,
  tooLarge,
} from "./api.ts";
import type { CertificateAuthority } from "./authority.ts";
import type { CaPaths } from "./home.ts";
import { crlConnections, type CrlListener, listenHint, startCrlListener } from "./crl_listener.ts";
import { InviteStore } from "./invites.ts";
import { CRL_URL_PATH } from "./policy.ts";
import { RateLimiter } from "./rate_limit.ts";
import {
  readEarly,
  Relay,
  RELAY_PROTOCOL,
  type RelayBuffered,
  relayError,
  type RelayOptions,
  relayPairBudget,
} from "./relay.ts";
import { Rendezvous } from "./rendezvous.ts";
import { Mailbox, type MailboxLimits } from "./mailbox.ts";
import { DEFAULT_FREE_FLOOR_BYTES, DiskFloor } from "./disk_floor.ts";

/** The port the service listens on when none is given. */
export const DEFAULT_PORT = 65433;
/** How often the service looks whether its own certificate was revoked (then replaced at once), ms. */
const SERVICE_REVOCATION_CHECK_MS = 5_000;

/** The port of the plain-HTTP CRL listener when none is given (0 when the service's port is 0). */
export const DEFAULT_CRL_PORT = 65434;
/** Connections open at once from one address (a team behind one NAT shares it). */
export const MAX_CONNECTIONS_PER_ADDRESS = 256;
/** From accept to the end of the TLS handshake, in ms. */
export const HANDSHAKE_MS = 10_000;
/** From the handshake, or the end of the previous reply, to the end of a request's headers, in ms. */
export const HEADERS_MS = 10_000;
/** From a request's headers to the end of its body (at most 64 KiB), in ms. */
export const BODY_MS = 10_000;
/** Inactivity allowed while a request is served, in ms (a long poll raises it). */
export const IDLE_MS = 15_000;
/** From a mailbox POST's headers to the end of its body (an item up to ~8 MiB), in ms. */
export const MAILBOX_BODY_MS = 60_000;
/** Mailbox bodies held in memory at once, all connections together, in bytes (then 429). */
export const MAILBOX_INFLIGHT_BYTES = 64 * 1024 * 1024;
/**
 * Of those, what one member's uploads may hold at once, in largest items (then 429): one
 * member with a few stalled uploads must not take the whole budget from every other member.
 */
export const MAILBOX_INFLIGHT_ITEMS_PER_MEMBER = 2;
/**
 * Requests one connection may have waiting for their replies at once (HTTP pipelining); one more
 * closes it. Clients send a request once the previous reply is in; one that sends thousands at
 * once and reads nothing would have them all served and every reply held in memory.
 */
export const MAX_PIPELINED = 8;
/**
 * Bytes of replies written and not yet read by their clients, all connections together, past
 * which the connections holding the most are closed. Twice {@linkcode MAILBOX_INFLIGHT_BYTES}:
 * mailbox items being sent count here too and may take that much on their own, which leaves
 * as much again for every other reply (a CRL, a page of the log, certificates).
 */
export const DEFAULT_UNREAD_BYTES = 2 * MAILBOX_INFLIGHT_BYTES;
/** Options of {@linkcode CaService.start}. */
export interface ServeOptions {
  /** Address to listen on. Default: "127.0.0.1". */
  host?: string;
  /** Port; 0 picks a free one. Default: 65433. */
  port?: number;
  /** More DNS names or IPs for the service certificate. Default: none. */
  names?: string[];
  /** How long a rendezvous invitation lasts, in ms. Default: 300000. */
  rendezvousTtlMs?: number;
  /** Enrollment attempts allowed per address per minute. Default: 10. */
  enrollPerMinute?: number;
  /** Where log lines go. Default: stderr. */
  log?: (line: string) => void;
  /** Inactivity allowed while a request is served, in ms. Default: {@linkcode IDLE_MS} (long polls excepted). */
  idleTimeoutMs?: number;
  /**
   * Connections open at once on the API's port. Default: the service's budget (a quarter of the
   * files it can still open at start, at most 1,024) less the CRL listener's share of it.
   */
  maxConnections?: number;
  /** Port of the plain-HTTP CRL listener; 0 picks one. Default: {@linkcode DEFAULT_CRL_PORT}, or 0 when `port` is 0. */
  crlPort?: number;
  /** How often the service certificate is checked and reissued when due, in ms. Default: 3600000. */
  renewCheckMs?: number;
  /** Caps of the mailbox (ca/mailbox.ts). Default: {@linkcode DEFAULT_MAILBOX_LIMITS}. */
  mailbox?: Partial<MailboxLimits>;
  /**
   * The relay's caps (ca/relay.ts); its `tap` is for tests only. Default: the
   * defaults of {@linkcode RelayOptions}, with at most a quarter of `maxConnections` pairs.
   */
  relay?: Omit<RelayOptions, "log">;
  /** Bytes unread replies may hold, all connections together. Default: {@linkcode DEFAULT_UNREAD_BYTES}. */
  unreadBytes?: number;
  /**
   * Free bytes kept on the disk of the CA home: below them members' enrollments, renewals and
   * mailbox posts get 507 `ERR_QUOTA`; 0 for none. Default: {@linkcode DEFAULT_FREE_FLOOR_BYTES}.
   */
  freeFloorBytes?: number;
  /**
   * The home's claim, taken beforehand with {@linkcode claimServiceHome} (`ca serve` takes it
   * before it asks for the passphrase); start() takes one itself when none is given. Either
   * way the service owns it from then on: close(), or a failed start, lets go of it.
   * Default: none.
   */
  claim?: ServiceClaim;
  /**
   * How long start() waits for another service on the same home to stop (a restart), ms, when
   * it takes the claim itself. Default: {@linkcode SERVICE_BUSY_WAIT_MS}.
   */
  busyWaitMs?: number;
}

/** How long a service starting waits for another one on the same CA home to stop, ms. */
export const SERVICE_BUSY_WAIT_MS = 5_000;

/**
 * One service's hold on a CA home: `HOME/.service.lock` held (flock, so the kernel lets go when
 * the process dies, SIGKILL included) with the holder's pid written in it.
 */
export interface ServiceClaim {
  /** The CA home claimed. */
  readonly home: string;
  /** Lets go of the claim; safe to call twice. */
  release(): void;
}

/**
 * Claims `paths`' home for one CA service, waiting up to `timeoutMs`
 * ({@linkcode SERVICE_BUSY_WAIT_MS}) for another service there to stop. Two services on one
 * home would each supersede the other's service certificate at start, overwrite each other's
 * `service.json`, and keep invites, rendezvous, relay and mailbox state the other never sees.
 * Throws `ERR_LOCK_TIMEOUT` naming the running service (its pid, and its URL once it listens).
 *
 * @example One service per CA home
 * ```ts
 * import { CaPaths } from "./home.ts";
 * import { claimServiceHome } from "./service.ts";
 * await Deno.mkdir("/tmp/example-ca-home", { recursive: true });
 * const claim = await claimServiceHome(new CaPaths("/tmp/example-ca-home"));
 * claim.release();
 * ```
 */
export async function claimServiceHome(
  paths: CaPaths,
  options: { timeoutMs?: number } = {},
): Promise<ServiceClaim> {
  let release: () => void;
  try {
    release = await holdLock(paths.serviceLock, {
      timeoutMs: options.timeoutMs ?? SERVICE_BUSY_WAIT_MS,
    });
  } catch (e) {
    if (!(e instanceof E2eError) || e.code !== "ERR_LOCK_TIMEOUT") throw e;
    const { pid, url } = await serviceStatus(paths);
    const which = pid === undefined ? "" : `: pid ${pid}, ${url ?? "still starting"}`;
    throw new E2eError("ERR_LOCK_TIMEOUT", `Another CA service runs on ${paths.home}${which}`, {
      cause: e,
      hint: `stop it first${
        pid === undefined ? "" : ` (kill -TERM ${pid})`
      }, or serve another --home`,
    });
  }
  try {
    // Read by the next one refused; the flock, not this text, says whether a service runs.
    await Deno.writeTextFile(paths.serviceLock, `${Deno.pid}\n`);
  } catch (e) {
    release();
    throw e;
  }
  let held = true;
  return {
    home: paths.home,
    release() {
      if (held) release();
      held = false;
    },
  };
}

// The pid a service wrote in the lock: the running one's, else the last one's.
async function lockPid(paths: CaPaths): Promise<number | undefined> {
  const pid = Number((await Deno.readTextFile(paths.serviceLock).catch(() => "")).trim());
  return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined; // else a service from before pids
}

// service.json (written by CaService.#start): the URL, and the HOST:PORT members are given.
async function readServiceInfo(
  paths: CaPaths,
): Promise<{ pid?: number; url: string; address: string } | undefined> {
  try {
    const info = JSON.parse(await Deno.readTextFile(paths.serviceInfo));
    if (typeof info?.url !== "string" || typeof info.host !== "string") return undefined;
    if (!Number.isSafeInteger(info.port)) return undefined;
    return { pid: info.pid, url: info.url, address: `${info.host}:${info.port}` };
  } catch {
    return undefined; // not written yet, gone, or cut short
  }
}

/** What {@linkcode serviceStatus} finds of the service of a CA home. */
export interface ServiceStatus {
  /** Whether a service holds the home's claim now (one killed does not: the kernel let go). */
  running: boolean;
  /** The pid in `HOME/.service.lock`: the running service's, else the last one's. */
  pid?: number;
  /** HOST:PORT members reach the running service at (its service.json), once it listens. */
  address?: string;
  /** The running service's URL (its service.json), e.g. https://127.0.0.1:65433, once it listens. */
  url?: string;
  /**
   * HOST:PORT of a service.json left behind by a service that no longer runs (killed: a service
   * stopped removes it), for a message only: nothing listens there now.
   */
  lastAddress?: string;
}

/**
 * Whether a CA service runs on `paths`' home, and where members reach it: what `ca invite`
 * names. The lock says whether one runs, not service.json, which a service killed (SIGKILL, a
 * power cut) leaves behind; a running service's own service.json names its pid.
 *
 * @example The address of the running service, if any
 * ```ts
 * import { CaPaths } from "./home.ts";
 * import { serviceStatus } from "./service.ts";
 * const status = await serviceStatus(new CaPaths("/tmp/example-ca-home"));
 * console.log(status.running ? status.address ?? "still starting" : "not running");
 * ```
 */
export async function serviceStatus(paths: CaPaths): Promise<ServiceStatus> {
  const running = await isLocked(paths.serviceLock);
  const pid = await lockPid(paths);
  const info = await readServiceInfo(paths);
  const status: ServiceStatus = { running };
  if (pid !== undefined) status.pid = pid;
  // Until a starting service writes its own, service.json may be a killed one's.
  if (running && pid !== undefined && info?.pid === pid) {
    status.address = info.address;
    status.url = info.url;
  }
  if (!running && info) status.lastAddress = info.address;
  return status;
}

/** A running CA service. */
export class CaService {
  /** The URL clients use, e.g. https://127.0.0.1:65433. */
  readonly url: string;
  /** The port it listens on. */
  readonly port: number;
  /** The CRL URL issued certificates carry, e.g. http://127.0.0.1:65434/crl.der. */
  crlUrl = "";
  #crl?: CrlListener;
  #server: https.Server;
  #ctx: ApiContext;
  #timer: { stop(): Promise<void> };
  #stopping: AbortController;
  #sockets: Set<Socket>;
  #relay?: Relay;
  #replies?: ReplyBudget;
  #claim?: ServiceClaim;
  #guard?: ConnectionGuard;

  private constructor(
    server: https.Server,
    ctx: ApiContext,
    url: string,
    port: number,
    timer: { stop(): Promise<void> },
    stopping: AbortController,
    sockets: Set<Socket>,
  ) {
    this.#stopping = stopping;
    this.#sockets = sockets;
    this.#server = server;
    this.#ctx = ctx;
    this.url = url;
    this.port = port;
    this.#timer = timer;
  }

  /**
   * Starts the service for an unlocked CA, holding its home's claim ({@linkcode ServiceClaim})
   * until close(): on a home whose service runs it throws `ERR_LOCK_TIMEOUT` before it issues,
   * supersedes or writes anything.
   */
  static async start(ca: CertificateAuthority, options: ServeOptions = {}): Promise<CaService> {
    const claim = options.claim ??
      await claimServiceHome(ca.paths, { timeoutMs: options.busyWaitMs });
    try {
      if (claim.home !== ca.paths.home) {
        throw new TypeError(`The claim is on "${claim.home}", not on "${ca.paths.home}"`);
      }
      const service = await CaService.#start(ca, options);
      service.#claim = claim;
      return service;
    } catch (e) {
      claim.release();
      throw e;
    }
  }

  static async #start(ca: CertificateAuthority, options: ServeOptions): Promise<CaService> {
    const host = options.host ?? "127.0.0.1";
    const log = options.log ?? logToStderr;
    const names = serviceNames(host, options.names ?? []);
    const anchor = trustAnchor(ca.certificate.pem);
    const disk = new DiskFloor(ca.paths.dir, options.freeFloorBytes ?? DEFAULT_FREE_FLOOR_BYTES, {
      log,
    });
    disk.check(); // a service that cannot read the free space says so now
    const invites = new InviteStore(ca.paths);
    await invites.clearReservations();
    const ctx: ApiContext = {
      ca,
      anchor,
      invites,
      rendezvous: new Rendezvous({ ttlMs: options.rendezvousTtlMs }),
      enrollLimiter: new RateLimiter(options.enrollPerMinute ?? 10, 60_000),
      // Made on the first start (an existing CA's certificates are back-filled), then appended to.
      log: await ca.openLog(),
      mailbox: await Mailbox.open(ca.paths, options.mailbox),
      disk,
      logLine: log,
    };
    const replies = new ReplyBudget(options.unreadBytes ?? DEFAULT_UNREAD_BYTES, {
      onClose: (socket, held) =>
        log(
          `e2e-chat-ca: ${addressOf(socket)} closed: unread replies on all connections reached ` +
            `${replies.maxBytes} bytes, and it held ${held}`,
        ),
    });
    // One budget for the process's descriptors, counted once: the CRL listener's share and the
    // HTTPS API's come out of it; the connections closed past a cap take about as many again
    // (lib/connections.ts listenBacklog), and the other half of what is free stays for files and
    // openssl's pipes.
    const budget = connectionBudget(freeDescriptors());
    const crlShare = crlConnections(budget);
    const listeners = new ListenerGroup();
    // The CRL listener first: its URL goes into every certificate issued from now on.
    const crl = await startCrlListener(
      ctx,
      host,
      options.crlPort ?? (options.port === 0 ? 0 : DEFAULT_CRL_PORT),
      log,
      { replies, maxConnections: crlShare, group: listeners },
    );
    let own: Credentials & { serial: string };
    let crlUrl: string;
    // Whether service certificates but `own` may still be valid: a supersede that failed (a full
    // disk, a CA folder being restored) is tried again within seconds (below), not at the
    // hourly check: one left valid may be the one whose key an attacker holds.
    let unretired = false;
    const retire = async (): Promise<boolean> => {
      try {
        await ca.retireServiceCertificates(own.serial);
        unretired = false;
        return true;
      } catch (e) {
        unretired = true;
        log(
          `e2e-chat-ca: cannot supersede old service certificates: ${
            e instanceof Error ? e.message : e
          }`,
        );
        return false;
      }
    };
    // The address members are given (in certificates' CRL URL, in invites): the first --name,
    // else the address we listen on (a wildcard means this machine).
    const advertised = urlHost(
      options.names?.[0] ?? (host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host),
    );
    try {
      crlUrl = `http://${advertised}:${crl.port}${CRL_URL_PATH}`;
      await writeFileAtomic(ca.paths.crlUrl, crlUrl + "\n");
      own = await serviceCredentials(ca, names);
      // Before anyone connects: service certificates left valid by a renewal cut short go now.
      await retire();
    } catch (e) {
      await crl.close();
      throw e;
    }
    const idle = options.idleTimeoutMs ?? IDLE_MS;
    const sockets = new Set<Socket>();
    const stopping = new AbortController();
    const server = https.createServer(serverOptions(own, anchor), (req, res) => {
      if (!admitPipelined(req.socket, res, log)) return;
      serveRequest(ctx, stopping.signal, req, res, log, idle, replies).catch(() => res.destroy());
    });
    // Slow or idle clients are cut off; a long poll raises the limit while it waits.
    const guard = guardConnections(server, {
      maxConnections: options.maxConnections ?? Math.max(crlShare, budget - crlShare),
      maxPerAddress: MAX_CONNECTIONS_PER_ADDRESS,
      handshakeMs: HANDSHAKE_MS,
      idleMs: idle,
      onRefused: (message) => log(`e2e-chat-ca: ${message}`),
      group: listeners,
    });
    server.on("secureConnection", (socket: TLSSocket) => {
      pausesStopReads(socket);
      awaitHeaders(socket);
    });
    const relay = new Relay({
      maxPairs: relayPairBudget(guard.maxConnections),
      // A member revoked (by this process or `ca revoke`) loses its relay sessions within seconds;
      // a renewal (same key) keeps them, as it keeps peer connections.
      isCurrent: (serial) => ca.keyIsCurrent(serial),
      ...options.relay,
      log,
    });
    server.on("upgrade", (req: IncomingMessage, socket: TLSSocket, head: Uint8Array) => {
      serveRelay(ctx, relay, req, socket, head, log).catch(() => socket.destroy());
    });
    server.on("connection", (socket: Socket) => {
      sockets.add(socket);
      socket.once("close", () => sockets.delete(socket));
    });
    await guard.listen(options.port ?? DEFAULT_PORT, host).catch(async (e) => {
      guard.stop();
      await crl.close();
      throw new E2eError(
        "ERR_NETWORK",
        `Cannot listen on ${host}:${options.port ?? DEFAULT_PORT}`,
        {
          cause: e,
          hint: listenHint(e, "--port"),
        },
      );
    });
    const port = (server.address() as { port: number }).port;
    const url = `https://${urlHost(host === "0.0.0.0" ? "127.0.0.1" : host)}:${port}`;
    // Renew the service certificate well before it expires, without a restart.
    let renewing: Promise<boolean> | undefined;
    const renew = () =>
      renewing ??= (async () => {
        try {
          const next = await serviceCredentials(ca, names);
          if (next.cert !== own.cert) {
            own = next;
            server.setSecureContext(serverOptions(own, anchor));
            log("e2e-chat-ca: renewed the service certificate");
          }
        } catch (e) {
          log(
            `e2e-chat-ca: cannot renew the service certificate: ${
              e instanceof Error ? e.message : e
            }`,
          );
          return false;
        }
        // Only now, the new one presented, does a CRL supersede the old: a client that fetched
        // that CRL meanwhile would have refused the service (it refuses a listed certificate).
        return await retire();
      })().finally(() => (renewing = undefined));
    const renewal = setInterval(renew, options.renewCheckMs ?? 3_600_000);
    // One revoked (`ca revoke SERIAL`, its key stolen, say) is replaced within seconds, not at the
    // hourly check: clients holding the CRL refuse it (lib/tls.ts checkService), so until then
    // the service would answer nobody. So are old ones that a renewal could not supersede.
    // A replacement or supersede that keeps failing (a full disk, a broken CA folder) is tried
    // again after 10, 20, 40 … s, at most every 5 min: not openssl runs and a log line every 5 s
    // for as long.
    let checking: Promise<void> | undefined;
    const backoff = new Backoff();
    let notBefore = 0;
    const revoked = setInterval(() => {
      if (renewing || checking || Date.now() < notBefore) return;
      checking = (async () => {
        if (unretired || !await ca.isCurrent(own.serial).catch(() => true)) {
          if (await renew()) backoff.reset();
          // Half a tick early: the tick after the wait tries, not the one after that.
          else notBefore = Date.now() + backoff.next() - SERVICE_REVOCATION_CHECK_MS / 2;
        }
      })().finally(() => (checking = undefined));
    }, SERVICE_REVOCATION_CHECK_MS);
    // Stopped with the service, after what they started has ended.
    const timer = {
      stop: async () => {
        clearInterval(renewal);
        clearInterval(revoked);
        await checking;
        await renewing;
      },
    };
    const service = new CaService(server, ctx, url, port, timer, stopping, sockets);
    service.#guard = guard;
    service.#relay = relay;
    service.#replies = replies;
    service.crlUrl = crlUrl;
    service.#crl = crl;
    await writeFileAtomic(
      ca.paths.serviceInfo,
      JSON.stringify({
        url,
        host: advertised,
        port,
        fingerprint: ca.certificate.fingerprint,
        pid: Deno.pid,
      }) + "\n",
    );
    // A running service signs often enough to keep openssl started ahead (CertificateAuthority).
    ca.keepOpensslWarm();
    return service;
  }

  /**
   * What replies not yet read by their clients hold now, the most they ever held at once, and
   * the budget (lib/reply_budget.ts), in bytes.
   */
  get unreadReplies(): { held: number; peak: number; maxBytes: number } {
    const replies = this.#replies!;
    return { held: replies.held, peak: replies.peak, maxBytes: replies.maxBytes };
  }

  /**
   * What the relay holds now for sides that have not taken it, the most it held at once, and
   * its bound (ca/relay.ts), in bytes.
   */
  get relayBuffered(): RelayBuffered {
    return this.#relay!.buffered;
  }

  /** Stops accepting connections, ends long polls and closes every connection. */
  async close(): Promise<void> {
    try {
      await this.#timer.stop();
      this.#stopping.abort();
      this.#ctx.rendezvous.wakeAll();
      this.#ctx.mailbox?.close();
      this.#relay?.close();
      this.#guard?.stop();
      const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
      for (const socket of this.#sockets) socket.destroy();
      await closed;
      await this.#crl?.close();
      await this.#ctx.ca.stopWarmOpenssl();
      await Deno.remove(this.#ctx.ca.paths.serviceInfo).catch(() => {});
    } finally {
      // Last: the next service on this home writes a service.json this one must not remove.
      this.#claim?.release();
    }
  }
}

async function serveRequest(
  ctx: ApiContext,
  stopping: AbortSignal,
  req: IncomingMessage,
  res: ServerResponse,
  log: (line: string) => void,
  idleMs: number,
  replies: ReplyBudget,
): Promise<void> {
  const started = performance.now();
  const socket = req.socket as TLSSocket;
  const remoteAddress = (socket.remoteAddress ?? "").replace(/^::ffff:/, "");
  const url = new URL(req.url ?? "/", "https://ca.invalid");
  const gone = new AbortController();
  const onStop = () => gone.abort();
  stopping.addEventListener("abort", onStop, { once: true });
  res.once("close", () => {
    gone.abort();
    stopping.removeEventListener("abort", onStop);
  });
  let status = 500;
  let user = "-";
  let code = "";
  let note = "";
  // The headers are in: their deadline ends; the body's starts, and the next request's
  // headers get theirs once this reply is sent.
  headerDeadlines.get(socket)?.();
  const bodyDone = req.method === "GET" || req.method === "HEAD"
    ? () => {}
    : deadline(socket, url.pathname.startsWith("/v1/mailbox/") ? MAILBOX_BODY_MS : BODY_MS);
  req.once("end", bodyDone);
  res.once("close", bodyDone);
  res.once("finish", () => awaitHeaders(socket));
  try {
    const longPoll = url.pathname === "/v1/rendezvous" || url.pathname === "/v1/mailbox";
    if (longPoll) {
      socket.setTimeout((MAX_WAIT_SECONDS + 15) * 1000);
      // Back to the idle limit for whatever the kept-alive connection carries next.
      res.once("finish", () => socket.setTimeout(idleMs));
    }
    const apiRequest: ApiRequest = {
      method: req.method ?? "GET",
      path: url.pathname,
      query: url.searchParams,
      remoteAddress,
      peerDer: peerCertificateDer(socket),
      wantsJson: (req.headers.accept ?? "").includes("application/json"),
      json: () => readJson(req),
      bytes: (type, maxBytes) => readBytes(req, type, maxBytes),
      signal: gone.signal,
    };
    // A mailbox item stays in memory until the client has taken it: held against the budget,
    // for the largest item while it is read, then for its size.
    const itemGet = req.method === "GET" && url.pathname.startsWith("/v1/mailbox/items/");
    const hold = itemGet && apiRequest.peerDer && ctx.mailbox
      ? holdReply(socket, ctx.mailbox.limits.maxItemBytes)
      : undefined;
    if (hold) {
      // A reply pipelined behind an unread one gets no "close" when its socket closes.
      const release = () => {
        hold(0);
        socket.off("close", release);
      };
      res.once("close", release);
      socket.once("close", release);
    }
    const reply = await handle(ctx, apiRequest);
    hold?.(reply.bytes?.length ?? 0);
    status = reply.status;
    user = reply.user ?? "-";
    note = reply.note ?? "";
    send(res, status, reply.type, reply.bytes ?? reply.body, closeIfUnread(req), {
      replies,
      socket,
    });
  } catch (e) {
    const reply = errorReply(e);
    status = reply.status;
    code = reply.code;
    send(res, status, reply.type, reply.body, { ...reply.headers, ...closeIfUnread(req) }, {
      replies,
      socket,
    });
    if (status === 500) log(`e2e-chat-ca: internal error: ${e instanceof Error ? e.stack : e}`);
  } finally {
    log(accessLine(req.method, url.pathname, { remoteAddress, started, status, code, user, note }));
  }
}

// GET /v1/relay with `Upgrade: e2e-chat-relay/1` (docs/API.md "Relay"): authorized like a
// route, then the relay holds the connection until the other side comes and splices the two.
async function serveRelay(
  ctx: ApiContext,
  relay: Relay,
  req: IncomingMessage,
  socket: TLSSocket,
  head: Uint8Array,
  log: (line: string) => void,
): Promise<void> {
  const started = performance.now();
  // The request's headers are in; from now on the relay's deadlines apply, not the API's idle.
  headerDeadlines.get(socket)?.();
  headerDeadlines.delete(socket);
  socket.setTimeout(0);
  // The HTTP server no longer watches this socket: a reset must not become an uncaught error.
  socket.on("error", () => {});
  // Nor reads it: what the client sends before its 101 is read, and bounded, from now on.
  pausesStopping.get(socket)?.();
  const early = readEarly(socket);
  resumeReading(socket); // its reads, if a pause of the HTTP server stopped them
  const remoteAddress = (socket.remoteAddress ?? "").replace(/^::ffff:/, "");
  const url = new URL(req.url ?? "/", "https://ca.invalid");
  let status = 101;
  let user = "-";
  let code = "";
  let outcome = "";
  try {
    if (url.pathname !== "/v1/relay") {
      throw new E2eError("ERR_NOT_FOUND", `No route ${JSON.stringify(url.pathname)}`);
    }
    if (req.method !== "GET") {
      throw new E2eError(
        "ERR_METHOD_NOT_ALLOWED",
        `Method ${req.method} is not allowed here; use GET`,
      );
    }
    if ((req.headers.upgrade ?? "").toLowerCase() !== RELAY_PROTOCOL) {
      throw new E2eError("ERR_BAD_REQUEST", `The relay takes "Upgrade: ${RELAY_PROTOCOL}" only`);
    }
    const gone = new AbortController();
    const party = await relayParty(ctx, {
      method: "GET",
      path: url.pathname,
      query: url.searchParams,
      remoteAddress,
      peerDer: peerCertificateDer(socket),
      wantsJson: true,
      json: () => Promise.resolve(undefined),
      signal: gone.signal,
    });
    user = party.user;
    const joined = relay.join({
      invitation: party.invitation.id,
      name: user,
      peer: party.peer,
      socket,
      head: new Uint8Array(head),
      early,
      serial: party.serial,
    });
    if (typeof joined === "object") {
      status = joined.status;
      code = joined.code;
      relayError(socket, joined.status, joined.code, joined.message);
    } else {
      outcome = ` (${joined})`;
      // The recipient waits: the inviter learns of it in its long poll, and comes.
      if (joined === "waiting" && user === party.invitation.to) {
        const request = ctx.rendezvous.requestRelay(party.invitation, relay.waitMs);
        relay.awaitPickup(party.invitation.id, () => request.delivered);
      }
    }
  } catch (e) {
    const error = errorReply(e);
    status = error.status;
    code = error.code;
    relayError(socket, error.status, error.code, JSON.parse(error.body).error.message);
    if (status === 500) log(`e2e-chat-ca: internal error: ${e instanceof Error ? e.stack : e}`);
  } finally {
    log(
      accessLine(req.method, url.pathname, { remoteAddress, started, status, code, user, outcome }),
    );
  }
}

// The access-log line of one request (API route or relay), once it is answered. Paths and
// codes only: bodies (tokens, CSRs) and query strings never reach the log.
function accessLine(
  method: string | undefined,
  path: string,
  at: {
    remoteAddress: string;
    started: number;
    status: number;
    code: string;
    user: string;
    note?: string;
    outcome?: string;
  },
): string {
  const ms = (performance.now() - at.started).toFixed(1);
  return `e2e-chat-ca: ${at.remoteAddress} ${method} ${path} ${at.status}${
    at.code ? ` ${at.code}` : ""
  } ${at.user}${at.note ? ` ${at.note}` : ""} ${ms}ms${at.outcome ?? ""}`;
}

const headerDeadlines = new WeakMap<Socket, () => void>();

// Sockets whose pauses stop their reads (pausesStopReads), with the function that undoes it.
const pausesStopping = new WeakMap<Socket, () => void>();

/**
 * Makes node's pauses of `socket` stop its reads, and its resumes start them again. The HTTP
 * server pauses a connection whose replies back up (a client that sends requests and reads no
 * reply) or whose request body waits for a handler that has not read it (a body on a GET, a
 * long poll's, a request refused before its body is read), and counts on that to stop taking
 * in what the client sends. In Deno 2.9.6 a paused socket reads on into memory (lib/tls.ts
 * `pauseReading`): one connection with a GET body of 100 GB took the service from 64 MB to
 * 2.6 GB in 6 s without a certificate, a member's long poll to 4.4 GB in 10 s.
 */
function pausesStopReads(socket: TLSSocket): void {
  const pause = () => void pauseReading(socket);
  const resume = () => resumeReading(socket);
  socket.on("pause", pause);
  socket.on("resume", resume);
  pausesStopping.set(socket, () => {
    socket.off("pause", pause);
    socket.off("resume", resume);
  });
}

const unanswered = new WeakMap<Socket, number>();

// Whether a request on `socket` is served: at most MAX_PIPELINED wait for their replies at once
// (a reply waits until the client reads the ones before it); past that the connection is closed.
function admitPipelined(socket: Socket, res: ServerResponse, log: (line: string) => void): boolean {
  if (socket.destroyed) return false;
  const waiting = (unanswered.get(socket) ?? 0) + 1;
  if (waiting > MAX_PIPELINED) {
    const address = (socket.remoteAddress ?? "").replace(/^::ffff:/, "");
    socket.destroy();
    log(`e2e-chat-ca: ${address} closed: more than ${MAX_PIPELINED} requests wait for replies`);
    return false;
  }
  unanswered.set(socket, waiting);
  res.once("finish", () => unanswered.set(socket, (unanswered.get(socket) ?? 1) - 1));
  return true;
}

// The header that ends a connection whose request's body is neither read whole nor thrown away
// (refused before it was read, or sent with a GET): its reads stop (pausesStopReads), so it would
// only wait for its deadline. A body being thrown away (a refusal while it was read) is not held:
// the connection stays, and the client reads its reply rather than a reset.
function closeIfUnread(req: IncomingMessage): Record<string, string> {
  return req.complete || req.readableFlowing ? {} : { connection: "close" };
}

/** Starts the deadline for the next request's headers on `socket`. */
function awaitHeaders(socket: Socket): void {
  headerDeadlines.get(socket)?.();
  headerDeadlines.set(socket, deadline(socket, HEADERS_MS));
}

function addressOf(socket: Socket): string {
  return (socket.remoteAddress ?? "").replace(/^::ffff:/, "");
}

function logToStderr(line: string): void {
  Deno.stderr.writeSync(new TextEncoder().encode(line + "\n"));
}

// A host as it goes in a URL (an IPv6 address in brackets).
function urlHost(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}

/** The names the service certificate covers: localhost, 127.0.0.1, the listen address and extra names. */
function serviceNames(host: string, extra: string[]): string[] {
  const names = ["localhost", "127.0.0.1"];
  if (host !== "0.0.0.0" && host !== "::") names.push(host);
  return [...new Set([...names, ...extra])];
}

// Whether `key` (PEM) is the private key of the certificate `info`.
function ownKey(info: CertificateInfo, key: string): boolean {
  try {
    return info.x509.checkPrivateKey(createPrivateKey(key));
  } catch {
    return false;
  }
}

/**
 * The service's key and certificate, reissued when missing, for other names, revoked or past two
 * thirds of its life.
 */
async function serviceCredentials(
  ca: CertificateAuthority,
  names: string[],
): Promise<Credentials & { serial: string }> {
  try {
    const cert = await Deno.readTextFile(ca.paths.serviceCert);
    const key = await Deno.readTextFile(ca.paths.serviceKey);
    const info = parseCertificate(cert);
    const san = (info.x509.subjectAltName ?? "").split(", ").map((s) =>
      s.replace(/^(DNS|IP Address):/, "")
    );
    const life = info.notAfter.getTime() - info.notBefore.getTime();
    const fresh = info.notAfter.getTime() - Date.now() > life / 3;
    const covers = names.every((n) => san.includes(n) || san.includes(n.toUpperCase()));
    // A certificate from before the CRL URL (or with another one) is reissued.
    const url = await ca.crlUrl();
    if (url && !new TextDecoder().decode(info.x509.raw).includes(url)) throw new NotCurrent();
    const issuedHere = info.x509.checkIssued(ca.certificate.x509) &&
      info.x509.verify(ca.certificate.x509.publicKey);
    // A key that is not the certificate's (or not a key at all) would fail every start.
    if (!ownKey(info, key)) throw new NotCurrent();
    if (fresh && covers && issuedHere && await ca.isCurrent(info.serial)) {
      return { key, cert, serial: info.serial };
    }
  } catch (e) {
    const stale = e instanceof Deno.errors.NotFound || e instanceof E2eError ||
      e instanceof NotCurrent;
    if (!stale) throw e;
  }
  const { key, cert, certificate } = await ca.issueServiceCertificate(names);
  return { key, cert, serial: certificate.serial };
}

class NotCurrent extends Error {}

function readJson(req: IncomingMessage): Promise<unknown> {
  const type = req.headers["content-type"];
  try {
    // Refused before reading: a wrong type, or a declared length over the limit.
    checkBodyHeaders(type, Number(req.headers["content-length"] ?? "0"));
  } catch (e) {
    req.resume();
    return Promise.reject(e);
  }
  return collect(req, MAX_BODY_BYTES, tooLarge).then((bytes) => parseJsonBody(type, bytes));
}

let inFlight = 0;
// The same, per member (the SHA-256 of its certificate: the API checked it is current).
const inFlightOf = new Map<string, number>();

function memberOf(socket: TLSSocket): string {
  const der = peerCertificateDer(socket);
  return der ? createHash("sha256").update(der).digest("hex") : "";
}

// Holds `maxItemBytes` of the budgets of uploads for a mailbox item about to be read for a
// reply (a client that reads no reply would have every item it asks for held in memory: 32
// connections of one member, 8 requests each, took the service from 97 MB to 2.6 GB); returns
// the function that sets what stays held (the item's size once read, 0 once the reply is gone).
function holdReply(socket: TLSSocket, maxItemBytes: number): (bytes: number) => void {
  const member = memberOf(socket);
  const maxMine = MAILBOX_INFLIGHT_ITEMS_PER_MEMBER * maxItemBytes;
  if (inFlight + maxItemBytes > MAILBOX_INFLIGHT_BYTES) throw mailboxBusy();
  if ((inFlightOf.get(member) ?? 0) + maxItemBytes > maxMine) throw mailboxYours(maxMine);
  inFlight += maxItemBytes;
  inFlightOf.set(member, (inFlightOf.get(member) ?? 0) + maxItemBytes);
  let held = maxItemBytes;
  // It only shrinks: a reply gone before its item was read stays released.
  return (bytes) => {
    const next = Math.min(bytes, held);
    inFlight -= held - next;
    const left = (inFlightOf.get(member) ?? 0) - (held - next);
    if (left > 0) inFlightOf.set(member, left);
    else inFlightOf.delete(member);
    held = next;
  };
}

function mailboxBusy(): E2eError {
  return new E2eError("ERR_RATE_LIMITED", "The mailbox is busy with other transfers", {
    hint: "try again in a minute",
  });
}

function mailboxYours(maxBytes: number): E2eError {
  return new E2eError(
    "ERR_RATE_LIMITED",
    `Your transfers with the mailbox under way hold more than ${maxBytes} bytes`,
    { hint: "send or fetch one file at a time, or try again in a minute" },
  );
}

// A binary body (a mailbox item): its type, and at most `maxBytes`, declared or sent.
function readBytes(req: IncomingMessage, type: string, maxBytes: number): Promise<Uint8Array> {
  const declared = (req.headers["content-type"] ?? "").split(";")[0].trim().toLowerCase();
  const tooBig = () =>
    new E2eError("ERR_TOO_LARGE", `The body is larger than ${maxBytes} bytes`, {
      hint: "the mailbox takes files up to 8 MiB",
    });
  if (declared !== type) {
    req.resume();
    return Promise.reject(
      new E2eError("ERR_UNSUPPORTED_MEDIA_TYPE", `The body must be ${type}`),
    );
  }
  if (Number(req.headers["content-length"] ?? "0") > maxBytes) {
    req.resume();
    return Promise.reject(tooBig());
  }
  return collect(req, maxBytes, tooBig, {
    member: memberOf(req.socket as TLSSocket),
    maxBytes: MAILBOX_INFLIGHT_ITEMS_PER_MEMBER * maxBytes,
  });
}

// A request body of at most `maxBytes` (else `tooBig()`), whole. `counted`: held against the
// service-wide budget of mailbox uploads while it is read (a flood of 8 MiB posts), and
// against the member's share of it.
function collect(
  req: IncomingMessage,
  maxBytes: number,
  tooBig: () => E2eError,
  counted?: { member: string; maxBytes: number },
): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const chunks: Uint8Array[] = [];
    let size = 0;
    const release = () => {
      if (counted) {
        inFlight -= size;
        const left = (inFlightOf.get(counted.member) ?? 0) - size;
        if (left > 0) inFlightOf.set(counted.member, left);
        else inFlightOf.delete(counted.member);
      }
      size = 0;
    };
    const fail = (e: E2eError) => {
      release();
      chunks.length = 0;
      reject(e);
      req.removeAllListeners("data");
      req.resume();
    };
    req.on("data", (chunk: Uint8Array) => {
      size += chunk.length;
      if (counted) {
        inFlight += chunk.length;
        inFlightOf.set(counted.member, (inFlightOf.get(counted.member) ?? 0) + chunk.length);
      }
      if (size > maxBytes) return fail(tooBig());
      if (counted && inFlight > MAILBOX_INFLIGHT_BYTES) {
        return fail(mailboxBusy());
      }
      const mine = counted ? inFlightOf.get(counted.member) ?? 0 : 0;
      if (counted && mine > counted.maxBytes) return fail(mailboxYours(counted.maxBytes));
      chunks.push(chunk);
    });
    // A client that hangs up mid-body is its own problem, not an internal error.
    const ended = () => fail(new E2eError("ERR_BAD_REQUEST", "The request body ended early"));
    req.on("error", ended);
    req.on("aborted", ended);
    req.on("end", () => {
      const bytes = new Uint8Array(size);
      let offset = 0;
      for (const c of chunks) {
        bytes.set(c, offset);
        offset += c.length;
      }
      release();
      resolve(bytes);
    });
  });
}

function send(
  res: ServerResponse,
  status: number,
  type: string,
  body: string | Uint8Array,
  headers: Record<string, string> = {},
  held?: { replies: ReplyBudget; socket: Socket },
): void {
  if (res.headersSent || res.destroyed) return;
  const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
  // Counted until the client has taken it; false: the connection was closed instead.
  if (held && !held.replies.admit(held.socket, res, bytes.length)) return;
  res.writeHead(status, {
    "content-type": type === "application/json" ? "application/json; charset=utf-8" : type,
    "content-length": String(bytes.length),
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    ...headers,
  });
  res.end(bytes);
}
