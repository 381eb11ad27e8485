/**
 * The client end of the PeerConnection breakdowns, run as its own process so
 * that product code never runs on the benchmark's own event loop (a hang in
 * it then fails one section by timeout instead of freezing the run).
 *
 * `deno run _peer_driver.ts PORT KEY CERT CA PEER_CERT DOWNLOADS` connects to
 * the raw peer's PeerConnection port (tests/bench/_raw_peer.ts) with mutual
 * TLS, wraps the socket in client/peer.ts's PeerConnection, prints `ready`,
 * then runs one command per stdin line and prints one JSON line for each:
 *
 * - `ping N`: N messages one at a time, each until its ack → `[µs, …]`;
 * - `msgs N`: N 100-character messages, then "sync" until the peer's
 *   "synced" (it has read them all) → `{"rate": msg/s}`;
 * - `file PATH`: sendFile() until the peer's ack → `{"ms": …}`.
 *
 * @module
 */
import tls from "node:tls";
import { PeerConnection } from "../../client/peer.ts";
import { readLines } from "../../lib/lines.ts";
import { parseCertificate } from "../../lib/x509.ts";

const encoder = new TextEncoder();

function print(value: unknown): void {
  const bytes = encoder.encode(JSON.stringify(value) + "\n");
  let n = 0;
  while (n < bytes.length) n += Deno.stdout.writeSync(bytes.subarray(n));
}

async function main(args: string[]): Promise<void> {
  const [port, keyPath, certPath, caPath, peerCertPath, downloads] = args;
  const socket = tls.connect({
    host: "127.0.0.1",
    port: Number(port),
    key: await Deno.readTextFile(keyPath),
    cert: await Deno.readTextFile(certPath),
    ca: [await Deno.readTextFile(caPath)],
    minVersion: "TLSv1.3",
    ALPNProtocols: ["e2e-chat/1"],
    rejectUnauthorized: true,
    checkServerIdentity: () => undefined,
  });
  await new Promise<void>((resolve, reject) => {
    socket.once("secureConnect", () => resolve());
    socket.once("error", reject);
  });
  const certificate = parseCertificate(await Deno.readTextFile(peerCertPath));
  const acks = new Map<string, (t: number) => void>();
  let synced: ((t: number) => void) | undefined;
  const conn: PeerConnection = new PeerConnection(socket, certificate.commonName, certificate, {
    downloads,
    events: {
      message: (_p, _id, text) => {
        if (text === "synced") synced?.(performance.now());
      },
      delivered: (_p, id) => {
        const t = performance.now();
        acks.get(id)?.(t);
        acks.delete(id);
      },
      file: () => {},
      progress: () => {},
      fileFailed: () => {},
      held: () => {},
      closed: () => Deno.exit(0),
    },
  });
  conn.start();
  const ack = (id: string) => new Promise<number>((r) => acks.set(id, r));
  print("ready");

  for await (const line of readLines(Deno.stdin.readable)) {
    const space = line.indexOf(" ");
    const [command, arg] = [line.slice(0, space), line.slice(space + 1)];
    if (command === "ping") {
      const out: number[] = [];
      for (let i = 0; i < Number(arg); i++) {
        const t0 = performance.now();
        const id = conn.sendMessage(`p${i}`);
        out.push(((await ack(id)) - t0) * 1000);
      }
      print(out);
    } else if (command === "msgs") {
      const count = Number(arg);
      const done = new Promise<number>((r) => (synced = r));
      const t0 = performance.now();
      for (let i = 0; i < count; i++) conn.sendMessage(`m${i}-`.padEnd(100, "x"));
      conn.sendMessage("sync");
      print({ rate: count / ((await done) - t0) * 1000 });
    } else if (command === "file") {
      const t0 = performance.now();
      const { id } = await conn.sendFile(arg);
      print({ ms: (await ack(id)) - t0 });
    }
  }
  conn.close();
  Deno.exit(0);
}

if (import.meta.main) await main(Deno.args);
