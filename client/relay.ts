/**
 * Dialing the CA service's relay (docs/API.md "Relay"): mutual TLS to the
 * service pinned to our CA with our own certificate, `GET /v1/relay?invitation=ID`
 * with `Upgrade: e2e-chat-relay/1`, and once the service answers 101 (the other
 * side is there) the connection is a byte stream to the peer. The chat runs
 * its peer mutual TLS 1.3 inside it, with every check of a direct connection:
 * the service's TLS is only the outer envelope.
 *
 * @module
 */
import type tls from "node:tls";
import { E2eError, type ErrorCode } from "../lib/errors.ts";
import {
  checkService,
  clientOptions,
  connectTls,
  type Credentials,
  peerCertificateDer,
  type TrustAnchor,
} from "../lib/tls.ts";

/** How the chat reaches a peer: direct first then the relay, the relay only, or never the relay. */
export type RelayMode = "auto" | "always" | "never";

/** The relay modes, for flags. */
export const RELAY_MODES: readonly RelayMode[] = ["auto", "always", "never"];

/** The protocol named in `Upgrade:`. */
export const RELAY_PROTOCOL = "e2e-chat-relay/1";

/** How long we wait for the other side at the relay (the service gives up after 30 s). */
export const RELAY_DIAL_TIMEOUT_MS = 40_000;

/** The most bytes of a reply's headers we read, and of an error reply's body. */
const MAX_HEAD_BYTES = 16 * 1024;

/** Options of {@linkcode dialRelay}. */
export interface DialRelayOptions {
  /** Our certificate and key (the service admits members only). */
  own: Credentials;
  /** Give up after this many ms (the TLS handshake and the wait for the other side). Default: {@linkcode RELAY_DIAL_TIMEOUT_MS}. */
  timeoutMs?: number;
  /** Whether a serial is on the CRL held: a service whose certificate is, is refused. Default: none is. */
  isRevoked?: (serial: string) => boolean;
}

/**
 * Asks the service at `caUrl` to join us to the other party of `invitation`;
 * resolves with the service connection once it is spliced to theirs (the peer
 * TLS goes inside it). Throws the service's refusal (`ERR_UNAUTHENTICATED`,
 * `ERR_FORBIDDEN`, `ERR_NOT_FOUND`, `ERR_RATE_LIMITED`) or `ERR_NETWORK`.
 *
 * @example
 * ```ts
 * import { dialRelay } from "./relay.ts";
 * import { Identity } from "./identity.ts";
 * const id = await Identity.load("/tmp/bob");
 * const socket = await dialRelay("https://127.0.0.1:65433", id.anchor, 7, { own: id.credentials });
 * ```
 */
export async function dialRelay(
  caUrl: string,
  anchor: TrustAnchor,
  invitation: number,
  options: DialRelayOptions,
): Promise<tls.TLSSocket> {
  const url = new URL(`/v1/relay?invitation=${invitation}`, caUrl);
  const host = url.hostname.replace(/^\[|\]$/g, "");
  const port = Number(url.port || 443);
  const timeoutMs = options.timeoutMs ?? RELAY_DIAL_TIMEOUT_MS;
  const started = Date.now();
  let socket: tls.TLSSocket;
  try {
    socket = await connectTls(
      { ...clientOptions(anchor, { own: options.own, servername: host }), host, port },
      timeoutMs,
    );
  } catch (e) {
    throw new E2eError("ERR_NETWORK", `Cannot reach the relay at ${url.origin}`, {
      cause: e,
      detail: e instanceof Error ? e.message : String(e),
    });
  }
  try {
    checkService(peerCertificateDer(socket), anchor, {
      isRevoked: options.isRevoked,
      origin: url.origin,
    });
  } catch (e) {
    socket.destroy();
    throw e;
  }
  socket.write(
    `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n` +
      `Connection: Upgrade\r\nUpgrade: ${RELAY_PROTOCOL}\r\n\r\n`,
  );
  return await switched(socket, Math.max(1, timeoutMs - (Date.now() - started)));
}

// Reads the reply's headers: a 101 leaves the socket paused with any bytes after them put
// back; anything else becomes the service's error.
function switched(socket: tls.TLSSocket, timeoutMs: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    let buffered = new Uint8Array(0);
    let headEnd = -1;
    let status = 0;
    const timer = setTimeout(
      () => fail(new E2eError("ERR_NETWORK", "The peer did not come to the relay in time")),
      timeoutMs,
    );
    const done = () => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("end", onEnd);
      socket.off("close", onEnd);
      socket.off("error", onError);
    };
    const fail = (e: E2eError) => {
      done();
      socket.destroy();
      reject(e);
    };
    const onError = (e: Error) =>
      fail(new E2eError("ERR_NETWORK", `The relay connection failed: ${e.message}`, { cause: e }));
    const onEnd = () => {
      if (headEnd < 0) return fail(new E2eError("ERR_NETWORK", "The relay closed the connection"));
      fail(serviceError(status, buffered.subarray(headEnd)));
    };
    const onData = (chunk: Uint8Array) => {
      const all = new Uint8Array(buffered.length + chunk.length);
      all.set(buffered);
      all.set(chunk, buffered.length);
      buffered = all;
      if (headEnd >= 0) {
        // An error body, read to its end: the service's refusals are small, and one that never
        // ends must not fill our memory until the timeout.
        if (buffered.length - headEnd > MAX_HEAD_BYTES) {
          fail(new E2eError("ERR_NETWORK", "The relay sent too long a reply"));
        }
        return;
      }
      const end = indexOfBlankLine(buffered);
      if (end < 0) {
        if (buffered.length > MAX_HEAD_BYTES) {
          fail(new E2eError("ERR_NETWORK", "The relay sent too long a reply"));
        }
        return;
      }
      headEnd = end;
      const statusLine = new TextDecoder().decode(buffered.subarray(0, end)).split("\r\n")[0];
      status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0);
      if (status !== 101) return;
      done();
      // A failure of this connection reaches the chat as the peer TLS inside closing.
      socket.on("error", () => {});
      socket.setNoDelay(true); // the peer TLS inside sends small records: none is held back
      socket.pause();
      const rest = buffered.subarray(end);
      if (rest.length) socket.unshift(rest);
      resolve(socket);
    };
    socket.on("data", onData);
    socket.on("end", onEnd);
    socket.on("close", onEnd);
    socket.on("error", onError);
  });
}

// The offset just past the first "\r\n\r\n", or -1.
function indexOfBlankLine(bytes: Uint8Array): number {
  for (let i = 3; i < bytes.length; i++) {
    if (bytes[i] === 10 && bytes[i - 1] === 13 && bytes[i - 2] === 10 && bytes[i - 3] === 13) {
      return i + 1;
    }
  }
  return -1;
}

function serviceError(status: number, body: Uint8Array): E2eError {
  try {
    const e = JSON.parse(new TextDecoder().decode(body)).error;
    if (typeof e?.code === "string" && typeof e?.message === "string") {
      return new E2eError(e.code as ErrorCode, `The relay refused: ${e.message}`);
    }
  } catch { /* not JSON: keep the status */ }
  return new E2eError("ERR_NETWORK", `The relay answered ${status}`);
}
