/**
 * The other end of the baselines, run as its own process by the benchmarks.
 *
 * `deno run _raw_peer.ts KEY CERT CA DOWNLOADS` listens for mutual TLS on
 * two ports of 127.0.0.1 (TLS 1.3, ALPN e2e-chat/1, client certificate
 * required, our CA only) and prints `ready PORT PEER_PORT`.
 *
 * On PORT, each connection is served by its first line, answered `ok`:
 *
 * - `echo`: answers every line with that line (raw_rtt, raw_handshake);
 * - `lines N`: reads N lines, then answers `done` (raw_msgs);
 * - `bulk N`: reads N bytes, then answers `done` (raw_bulk).
 *
 * On PEER_PORT, the socket goes to the product's PeerConnection
 * (client/peer.ts): the protocol layer without the chat process around it. A
 * message "sync" is answered with a message "synced". `deno run _raw_peer.ts --pipe` instead echoes
 * stdin lines to stdout as JSON events, the way `client chat --json` reads and
 * writes them (pipe_rtt).
 *
 * @module
 */
import tls from "node:tls";
import type { CertificateInfo } from "../../lib/x509.ts";
import { parseCertificate } from "../../lib/x509.ts";
import { PeerConnection } from "../../client/peer.ts";
import { readLines } from "../../lib/lines.ts";
import { pemEncode } from "../../lib/pem.ts";

const encoder = new TextEncoder();

function writeAllSync(bytes: Uint8Array): void {
  let n = 0;
  while (n < bytes.length) n += Deno.stdout.writeSync(bytes.subarray(n));
}

// `count` events like a received 100-character message, one write each as client/ui.ts does
// (each) or all in one write.
function emit(each: boolean, count: number): void {
  const text = "m".padEnd(100, "x");
  let all = "";
  for (let i = 0; i < count; i++) {
    const line = JSON.stringify({ type: "message", from: "alice", text, id: `id-${i}` }) + "\n";
    if (each) writeAllSync(encoder.encode(line));
    else all += line;
  }
  if (!each) writeAllSync(encoder.encode(all));
}

async function pipe(): Promise<void> {
  for await (const line of readLines(Deno.stdin.readable)) {
    const [command, count] = line.split(" ");
    if (command === "emit" || command === "emitb") emit(command === "emit", Number(count));
    else {writeAllSync(
        encoder.encode(JSON.stringify({ type: "delivered", to: "x", id: line }) + "\n"),
      );}
  }
}

function serve(socket: tls.TLSSocket): void {
  socket.setNoDelay(true);
  let header = "";
  const onHeader = (chunk: Uint8Array) => {
    header += new TextDecoder().decode(chunk);
    const nl = header.indexOf("\n");
    if (nl < 0) return;
    socket.off("data", onHeader);
    const [mode, arg] = header.slice(0, nl).split(" ");
    socket.write("ok\n");
    if (mode === "echo") echo(socket);
    else if (mode === "lines") countLines(socket, Number(arg));
    else if (mode === "bulk") countBytes(socket, Number(arg));
    else socket.destroy();
  };
  socket.on("data", onHeader);
  socket.on("error", () => {});
}

function echo(socket: tls.TLSSocket): void {
  let pending = "";
  socket.on("data", (chunk: Uint8Array) => {
    pending += new TextDecoder().decode(chunk);
    let nl: number;
    while ((nl = pending.indexOf("\n")) >= 0) {
      socket.write(pending.slice(0, nl + 1));
      pending = pending.slice(nl + 1);
    }
  });
}

function countLines(socket: tls.TLSSocket, expected: number): void {
  let seen = 0;
  socket.on("data", (chunk: Uint8Array) => {
    const before = seen;
    for (let i = chunk.indexOf(0x0a); i >= 0; i = chunk.indexOf(0x0a, i + 1)) seen++;
    if (before < expected && seen >= expected) socket.write("done\n");
  });
}

function countBytes(socket: tls.TLSSocket, expected: number): void {
  let seen = 0;
  socket.on("data", (chunk: Uint8Array) => {
    const before = seen;
    seen += chunk.length;
    if (before < expected && seen >= expected) socket.write("done\n");
  });
}

function peer(socket: tls.TLSSocket, downloads: string): void {
  const der = new Uint8Array(socket.getPeerCertificate(false).raw);
  const certificate: CertificateInfo = parseCertificate(pemEncode(der, "CERTIFICATE"));
  const conn: PeerConnection = new PeerConnection(socket, certificate.commonName, certificate, {
    downloads,
    events: {
      message: (_p, _id, text) => {
        if (text === "sync") conn.sendMessage("synced");
      },
      delivered: () => {},
      file: (_p, info) => {
        Deno.remove(info.path).catch(() => {});
      },
      progress: () => {},
      fileFailed: () => {},
      held: () => {},
      closed: () => {},
    },
  });
  conn.start();
}

// Two TLS connections to 127.0.0.1:PORT from this fresh process; prints the ms of each.
async function tlsTwice(port: number): Promise<void> {
  const times: number[] = [];
  for (let i = 0; i < 2; i++) {
    const t0 = performance.now();
    await new Promise<void>((resolve, reject) => {
      const socket = tls.connect({ host: "127.0.0.1", port, rejectUnauthorized: false }, () => {
        socket.destroy();
        resolve();
      });
      socket.once("error", reject);
    });
    times.push(performance.now() - t0);
  }
  writeAllSync(encoder.encode(`${times.join(" ")}\n`));
}

async function main(args: string[]): Promise<void> {
  if (args[0] === "--pipe") return await pipe();
  if (args[0] === "--tls-twice") return await tlsTwice(Number(args[1]));
  const [keyPath, certPath, caPath, downloads] = args;
  const options: tls.TlsOptions = {
    key: await Deno.readTextFile(keyPath),
    cert: await Deno.readTextFile(certPath),
    ca: [await Deno.readTextFile(caPath)],
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: "TLSv1.3",
    ALPNProtocols: ["e2e-chat/1"],
  };
  const ports: number[] = [];
  for (const handler of [serve, (s: tls.TLSSocket) => peer(s, downloads)]) {
    const server = tls.createServer(options, handler);
    server.on("tlsClientError", () => {});
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    ports.push((server.address() as { port: number }).port);
  }
  writeAllSync(encoder.encode(`ready ${ports.join(" ")}\n`));
  // Stop when the benchmark closes our stdin (or goes away).
  for await (const _ of Deno.stdin.readable) { /* nothing is sent on stdin */ }
  Deno.exit(0);
}

if (import.meta.main) await main(Deno.args);
