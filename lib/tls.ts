/**
 * The one place that builds TLS: options for servers and clients (CA pinning,
 * client certificates, TLS 1.2+ with 1.3 preferred, ALPN) and the checks done
 * in our own code after every handshake — the TLS library's verdict is not
 * enough, because a `ca` option may add to the system roots instead of
 * replacing them.
 *
 * Every failed check surfaces as one generic `ERR_PEER_REJECTED` whose message
 * does not say which check failed (the reason is kept in `detail` for logs).
 *
 * @module
 */
import { Buffer } from "node:buffer";
import type { KeyObject, X509Certificate } from "node:crypto";
import { isIP, type Socket } from "node:net";
import tls, {
  type ConnectionOptions,
  type PeerCertificate,
  type TlsOptions,
  type TLSSocket,
} from "node:tls";
import { E2eError } from "./errors.ts";
import {
  type CertificateInfo,
  type CertificateUsage,
  certificateUsage,
  EKU,
  memberKeyProblem,
  parseCertificate,
} from "./x509.ts";
import { pemEncode } from "./pem.ts";

/** The common name of the CA service's own certificate; it can never be a user name (it has spaces). */
export const SERVICE_CN = "e2e-chat service";

/** The subject of the issuance log's key certificate: a name no user can hold (a space). */
export const LOG_CN = "e2e-chat log";

/** The trust anchor: our CA certificate. */
export interface TrustAnchor {
  /** The CA certificate, PEM. */
  pem: string;
  /** The parsed CA certificate. */
  x509: X509Certificate;
}

/**
 * Makes a trust anchor from the CA certificate's PEM.
 *
 * @example
 * ```ts
 * import { trustAnchor } from "./tls.ts";
 * const anchor = trustAnchor(await Deno.readTextFile("ca.crt"));
 * ```
 */
export function trustAnchor(pem: string): TrustAnchor {
  const info = parseCertificate(pem);
  return { pem: info.pem, x509: info.x509 };
}

/**
 * The cipher suites a server accepts, in its order of preference: 256-bit
 * AES-GCM and ChaCha20-Poly1305 before AES-128-GCM, TLS 1.3 first, and for
 * TLS 1.2 only ECDHE with an AEAD. Deno 2.9.6's node:tls (rustls beneath)
 * ignores both `ciphers` and `honorCipherOrder` — it lets the client choose
 * among its own suites, all of them AEAD with forward secrecy — so this is
 * what we ask for, and testssl.sh's "no server cipher order" is the one
 * finding we cannot fix (docs/SECURITY.md "Outside scanner").
 */
export const CIPHER_SUITES: string = [
  "TLS_AES_256_GCM_SHA384",
  "TLS_CHACHA20_POLY1305_SHA256",
  "TLS_AES_128_GCM_SHA256",
  "ECDHE-ECDSA-AES256-GCM-SHA384",
  "ECDHE-ECDSA-CHACHA20-POLY1305",
  "ECDHE-RSA-AES256-GCM-SHA384",
  "ECDHE-RSA-CHACHA20-POLY1305",
  "ECDHE-ECDSA-AES128-GCM-SHA256",
  "ECDHE-RSA-AES128-GCM-SHA256",
].join(":");

/** Our own key and certificate, PEM. */
export interface Credentials {
  /** Private key, PEM. */
  key: string;
  /** Certificate, PEM. */
  cert: string;
}

/** Options of {@linkcode serverOptions}. */
export interface ServerTlsOptions {
  /** Ask clients for a certificate. Default: true. */
  requestCert?: boolean;
  /** Refuse a handshake without a valid client certificate. Default: false (the application decides). */
  requireCert?: boolean;
  /** ALPN protocols offered. Default: none. */
  alpn?: string[];
  /** Accept TLS 1.3 only (between peers). Default: false (TLS 1.2 and 1.3, for curl and older clients). */
  tls13Only?: boolean;
}

/**
 * TLS options of a server that presents `own` and trusts only `anchor` for client certificates.
 *
 * @example
 * ```ts
 * import https from "node:https";
 * import { serverOptions, trustAnchor } from "./tls.ts";
 * const anchor = trustAnchor(await Deno.readTextFile("ca.crt"));
 * const own = { key: await Deno.readTextFile("key.pem"), cert: await Deno.readTextFile("cert.pem") };
 * https.createServer(serverOptions(own, anchor), () => {});
 * ```
 */
export function serverOptions(
  own: Credentials,
  anchor: TrustAnchor,
  options: ServerTlsOptions = {},
): TlsOptions {
  return {
    key: own.key,
    cert: own.cert,
    ca: [anchor.pem],
    requestCert: options.requestCert ?? true,
    rejectUnauthorized: options.requireCert ?? false,
    minVersion: options.tls13Only ? "TLSv1.3" : "TLSv1.2",
    ciphers: CIPHER_SUITES,
    honorCipherOrder: true,
    ...(options.alpn ? { ALPNProtocols: options.alpn } : {}),
  };
}

/** Options of {@linkcode clientOptions}. */
export interface ClientTlsOptions {
  /** Our certificate and key, for mutual TLS. Default: none. */
  own?: Credentials;
  /** ALPN protocols asked for. Default: none. */
  alpn?: string[];
  /** The name for SNI. Default: none. */
  servername?: string;
  /** Accept TLS 1.3 only (between peers). Default: false. */
  tls13Only?: boolean;
}

/**
 * TLS options of a client that trusts only `anchor`. The server's identity is
 * checked after the handshake with {@linkcode checkPeer} or {@linkcode checkService}.
 *
 * @example
 * ```ts
 * import { clientOptions, trustAnchor } from "./tls.ts";
 * const options = clientOptions(trustAnchor(await Deno.readTextFile("ca.crt")));
 * ```
 */
export function clientOptions(
  anchor: TrustAnchor,
  options: ClientTlsOptions = {},
): ConnectionOptions {
  return {
    ca: [anchor.pem],
    ...(options.own ? { key: options.own.key, cert: options.own.cert } : {}),
    minVersion: options.tls13Only ? "TLSv1.3" : "TLSv1.2",
    rejectUnauthorized: true,
    // The host name is not what we pin: checkService/checkPeer run after the handshake.
    checkServerIdentity: () => undefined,
    // SNI carries host names only, never an IP address (RFC 6066).
    ...(options.servername && !isIP(options.servername) ? { servername: options.servername } : {}),
    ...(options.alpn ? { ALPNProtocols: options.alpn } : {}),
  };
}

/** What to expect of a peer's certificate. */
export interface PeerExpectation {
  /** The user name the certificate must carry (CN and SAN DNS). Default: any valid user. */
  name?: string;
  /** The public key fingerprint the certificate must carry. Default: any. */
  keyFingerprint?: string;
  /** Whether a serial is revoked (or otherwise not current). Default: none is. */
  isRevoked?: (serial: string) => boolean;
  /** The time of the check. Default: now. */
  now?: Date;
}

/**
 * The peer's certificate as DER, or null when it sent none.
 *
 * @example
 * ```ts
 * import { peerCertificateDer } from "./tls.ts";
 * // const der = peerCertificateDer(socket);
 * ```
 */
export function peerCertificateDer(socket: TLSSocket): Uint8Array | null {
  const cert = socket.getPeerCertificate(false) as PeerCertificate | Record<string, never>;
  if (!cert || !("raw" in cert) || !cert.raw) return null;
  return new Uint8Array(cert.raw);
}

/**
 * Checks a peer certificate in our own code: issued and signed by our CA, valid
 * now, a member's end-entity certificate (not a CA; keyUsage digitalSignature,
 * extendedKeyUsage serverAuth and clientAuth, a key the CA signs for), not
 * revoked, naming the expected user and carrying the expected key. Returns it
 * parsed; throws one generic `ERR_PEER_REJECTED` otherwise.
 *
 * @example
 * ```ts
 * import { checkPeer, trustAnchor } from "./tls.ts";
 * const anchor = trustAnchor(await Deno.readTextFile("ca.crt"));
 * const peer = checkPeer(await Deno.readFile("bob.der"), anchor, { name: "bob" });
 * ```
 */
export function checkPeer(
  der: Uint8Array | null,
  anchor: TrustAnchor,
  expect: PeerExpectation = {},
): CertificateInfo {
  const { info, memberProblem } = verifiedByAnchor(der, anchor, expect.now);
  if (info.x509.ca) throw rejected("the peer presented a CA certificate");
  if (info.commonName === SERVICE_CN || info.commonName === LOG_CN) {
    throw rejected("the peer presented a certificate of the CA service");
  }
  if (memberProblem) throw rejected(`not a member's certificate: ${memberProblem}`);
  const san = info.x509.subjectAltName ?? "";
  if (expect.name !== undefined) {
    if (info.commonName !== expect.name || !san.split(", ").includes(`DNS:${expect.name}`)) {
      throw rejected(`the certificate names "${info.commonName}", not "${expect.name}"`);
    }
  }
  if (expect.keyFingerprint !== undefined && info.keyFingerprint !== expect.keyFingerprint) {
    throw rejected("the certificate's key differs from the expected key");
  }
  if (expect.isRevoked?.(info.serial)) throw rejected(`serial ${info.serial} is revoked`);
  return info;
}

/** What {@linkcode checkService} expects of the service's certificate beyond its name. */
export interface ServiceExpectation extends Pick<PeerExpectation, "isRevoked"> {
  /**
   * Where the server was reached (https://HOST:PORT): the error then says so, in the words a user
   * needs ("…is not our CA service", "…presents a revoked certificate"). Default: none.
   */
  origin?: string;
}

/**
 * Checks the CA service's certificate: issued by our CA, valid now, named
 * {@linkcode SERVICE_CN} (a name no user can hold), and not on the CRL the
 * client holds (`isRevoked`; a superseded one included: whoever kept its key
 * could pose as the service for the rest of its life; a client that holds no
 * CRL yet, such as one joining, cannot tell). Throws `ERR_PEER_REJECTED`.
 *
 * @example
 * ```ts
 * import { checkService, trustAnchor } from "./tls.ts";
 * const anchor = trustAnchor(await Deno.readTextFile("ca.crt"));
 * checkService(await Deno.readFile("service.der"), anchor, {
 *   isRevoked: () => false,
 *   origin: "https://127.0.0.1:65433",
 * });
 * ```
 */
export function checkService(
  der: Uint8Array | null,
  anchor: TrustAnchor,
  expect: ServiceExpectation = {},
): CertificateInfo {
  let info: CertificateInfo;
  try {
    info = verifiedByAnchor(der, anchor).info;
    if (info.commonName !== SERVICE_CN || info.x509.ca) {
      throw rejected("the server is not the e2e-chat CA service");
    }
  } catch (e) {
    if (expect.origin === undefined) throw e;
    throw new E2eError(
      "ERR_PEER_REJECTED",
      `The server at ${expect.origin} is not our CA service`,
      { cause: e },
    );
  }
  if (expect.isRevoked?.(info.serial)) {
    const cause = rejected(`the service's certificate (serial ${info.serial}) is revoked`);
    if (expect.origin === undefined) throw cause;
    throw new E2eError(
      "ERR_PEER_REJECTED",
      `The CA service at ${expect.origin} presents a revoked certificate`,
      {
        cause,
        detail: cause.detail,
        hint: "the service replaces a revoked certificate within seconds: try again in a " +
          "moment; one that keeps presenting it may be someone who kept the old key (tell " +
          "the admin)",
      },
    );
  }
  return info;
}

/**
 * Checks the issuance log's key certificate: issued by our CA, valid now, named
 * {@linkcode LOG_CN}, an Ed25519 key. Returns it parsed (its `x509.publicKey`
 * verifies checkpoints); throws `ERR_LOG_INVALID`.
 *
 * @example
 * ```ts
 * import { checkLogKey, trustAnchor } from "./tls.ts";
 * const anchor = trustAnchor(await Deno.readTextFile("ca.crt"));
 * const log = checkLogKey(await Deno.readFile("log.der"), anchor);
 * console.log(log.x509.publicKey.asymmetricKeyType); // "ed25519"
 * ```
 */
export function checkLogKey(der: Uint8Array | null, anchor: TrustAnchor): CertificateInfo {
  let info: CertificateInfo;
  try {
    info = verifiedByAnchor(der, anchor).info;
  } catch (e) {
    throw new E2eError("ERR_LOG_INVALID", "The log key certificate was rejected", {
      cause: e,
      detail: e instanceof E2eError ? e.detail : undefined,
    });
  }
  if (
    info.commonName !== LOG_CN || info.x509.ca ||
    info.x509.publicKey.asymmetricKeyType !== "ed25519"
  ) {
    throw new E2eError("ERR_LOG_INVALID", "The log key certificate was rejected", {
      detail: "not the CA's Ed25519 log key",
    });
  }
  return info;
}

/** Certificates kept per anchor once their signature checked out ({@linkcode verifiedByAnchor}). */
const VERIFIED_MAX = 256;
interface Verified {
  info: CertificateInfo;
  // What keeps it from being a member's certificate, if anything (see memberProfileProblem).
  memberProblem?: string;
}
const verified = new WeakMap<TrustAnchor, Map<string, Verified>>();

function verifiedByAnchor(
  der: Uint8Array | null,
  anchor: TrustAnchor,
  now = new Date(),
): Verified {
  if (!der) throw rejected("no certificate was presented");
  // Parsing and the signature check are pure work on the same bytes: a certificate already
  // verified against this anchor is not verified again. Everything that can change — the
  // time, and what callers check after this (names, key, revocation, pins) — runs every time.
  const seen = verified.get(anchor) ?? new Map<string, Verified>();
  const id = Buffer.from(der).toString("base64");
  let entry = seen.get(id);
  if (!entry) {
    let info: CertificateInfo;
    let usage: CertificateUsage;
    try {
      info = parseCertificate(pemEncode(der, "CERTIFICATE"));
      usage = certificateUsage(der);
    } catch (e) {
      throw rejected(`unreadable certificate: ${e instanceof Error ? e.message : e}`);
    }
    if (!info.x509.checkIssued(anchor.x509) || !info.x509.verify(anchor.x509.publicKey)) {
      throw rejected("the certificate was not issued by our CA");
    }
    // RFC 5280 §4.2: a certificate with a critical extension we do not understand is refused.
    if (usage.unknownCritical.length) {
      throw rejected(`unknown critical extension ${usage.unknownCritical.join(", ")}`);
    }
    // Pure work on the same bytes too: decided once (a KeyObject costs microseconds to make).
    entry = { info, memberProblem: memberProfileProblem(usage, info.x509.publicKey) };
    if (seen.size >= VERIFIED_MAX) seen.delete(seen.keys().next().value!);
    seen.set(id, entry);
    verified.set(anchor, seen);
  }
  if (now < entry.info.notBefore || now > entry.info.notAfter) {
    throw rejected("the certificate is not valid now");
  }
  return { info: { ...entry.info }, memberProblem: entry.memberProblem };
}

// What makes a certificate of our CA other than a member's (docs/CERTIFICATES.md): every member
// is both a TLS client and a listener and signs its mailbox items, with a key the CA signs for
// (lib/x509.ts memberKeyProblem). Undefined when there is nothing.
function memberProfileProblem(usage: CertificateUsage, key: KeyObject): string | undefined {
  const ku = usage.keyUsage;
  if (!ku?.has("digitalSignature")) return "no keyUsage digitalSignature";
  if (ku.has("keyCertSign") || ku.has("cRLSign")) return "a keyUsage of a CA";
  const eku = usage.extendedKeyUsage;
  if (!eku?.has(EKU.serverAuth) || !eku.has(EKU.clientAuth)) {
    return "no extendedKeyUsage serverAuth and clientAuth";
  }
  return memberKeyProblem(key);
}

function rejected(detail: string): E2eError {
  return new E2eError("ERR_PEER_REJECTED", "The peer's certificate was rejected", { detail });
}

/**
 * TLS options for the one unauthenticated contact: `join` fetching the CA
 * certificate, which it then accepts only by the invite's fingerprint. Nothing
 * secret is sent on such a connection.
 *
 * @example
 * ```ts
 * import { bootstrapOptions } from "./tls.ts";
 * const options = bootstrapOptions();
 * ```
 */
export function bootstrapOptions(): ConnectionOptions {
  return { rejectUnauthorized: false, minVersion: "TLSv1.2" };
}

/**
 * Connects and resolves once the TLS handshake is done; rejects on an error or
 * after `timeoutMs`, and destroys the socket then.
 *
 * @example
 * ```ts
 * import { clientOptions, connectTls, trustAnchor } from "./tls.ts";
 * const anchor = trustAnchor(await Deno.readTextFile("ca.crt"));
 * const socket = await connectTls({ ...clientOptions(anchor), host: "127.0.0.1", port: 65433 }, 10_000);
 * ```
 */
export function connectTls(options: ConnectionOptions, timeoutMs: number): Promise<TLSSocket> {
  const socket = tls.connect(options);
  return new Promise<TLSSocket>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error("timed out")), timeoutMs);
    function fail(e: Error) {
      clearTimeout(timer);
      socket.destroy();
      reject(e);
    }
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      socket.off("error", fail);
      resolve(socket);
    });
    socket.once("error", fail);
  });
}

// What Deno 2.9.6's node:tls keeps behind a socket (not public API): a TLS socket's handle holds
// the TCP handle it runs on, or — TLS inside another TLS connection — a stream wrapper whose
// `stream` is that outer socket.
interface HandleChain {
  _handle?: { _nativeTcpHandle?: NativeReads; _parentWrap?: { stream?: unknown } } | null;
}
interface NativeReads {
  readStop(): number;
  readStart(): number;
}

// Sockets whose TCP reads pauseReading() stopped (a second readStart() would start a second read).
const stopped = new WeakSet<Socket>();

// The TCP handle under `socket`, through any TLS inside TLS; undefined when there is none to find.
function tcpUnder(socket: Socket): NativeReads | undefined {
  let at: unknown = socket;
  for (let depth = 0; depth < 4 && at; depth++) {
    const handle = (at as HandleChain)._handle;
    const tcp = handle?._nativeTcpHandle;
    if (tcp && typeof tcp.readStop === "function" && typeof tcp.readStart === "function") {
      return tcp;
    }
    at = handle?._parentWrap?.stream;
  }
  return undefined;
}

/**
 * Stops reading from `socket` until {@linkcode resumeReading}: nothing more of what the peer
 * sends is taken into this process. `pause()` alone does not do that in Deno 2.9.6: a paused
 * `node:tls` socket reads on into the process's memory, at whatever rate the peer sends (measured:
 * over 1 GiB in 3 s on loopback), and hands it all over on `resume()`. So this also stops the TCP
 * socket underneath — for TLS inside another TLS connection, the outer one's. What the peer sends
 * meanwhile waits in the kernel's buffers and then in the peer's own process. Writing goes on.
 * Returns false when no TCP socket was found underneath — a plain TCP socket, whose `pause()`
 * does stop its reads, or a Deno whose internals differ: the socket is then only paused. (Measured
 * by the tests in lib/tls_test.ts; the relay's and the service's tests measure it too.)
 *
 * @example
 * ```ts
 * import tls from "node:tls";
 * import { pauseReading, resumeReading } from "./tls.ts";
 * const socket = tls.connect({ host: "127.0.0.1", port: 65433 });
 * socket.on("error", () => {});
 * pauseReading(socket);
 * resumeReading(socket);
 * socket.destroy();
 * ```
 */
export function pauseReading(socket: Socket): boolean {
  socket.pause();
  const tcp = tcpUnder(socket);
  if (!tcp) return false;
  if (stopped.has(socket)) return true;
  try {
    tcp.readStop();
  } catch {
    return false; // a handle closing under us: nothing more comes from it anyway
  }
  stopped.add(socket);
  return true;
}

/** Reads from `socket` again after {@linkcode pauseReading}; what waited arrives in order. */
export function resumeReading(socket: Socket): void {
  if (stopped.delete(socket) && !socket.destroyed) {
    try {
      tcpUnder(socket)?.readStart();
    } catch { /* closed meanwhile: its close reaches the socket as usual */ }
  }
  socket.resume();
}
