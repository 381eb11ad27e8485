/**
 * `connect`, `rtt`, `msgs` and `file`: two real `client chat --json`
 * processes connected by the real flow (CA, invites, join, /chat, /accept),
 * driven through their stdin and stdout, against minimal node:tls mutual-TLS
 * baselines with the same certificates and line framing (tests/bench/_raw_peer.ts).
 *
 * @module
 */
import { Buffer } from "node:buffer";
import https from "node:https";
import tls from "node:tls";
import { join } from "node:path";
import { randomFillSync } from "node:crypto";
import { hashFile } from "../../client/files.ts";
import { pemDecode } from "../../lib/pem.ts";
import { checkPeer, trustAnchor } from "../../lib/tls.ts";
import {
  cpuTimes,
  deadline,
  type Proc,
  readProc,
  runDeno,
  spawnDeno,
  type TimedLine,
} from "./_procs.ts";
import { ChatClient } from "../_harness.ts";
import type { Report } from "./_report.ts";
import { median, percentile, spreadOverRounds } from "./_stats.ts";
import type { Service, Workspace } from "./_world.ts";

/** Sizes of the chat benchmarks. */
export interface ChatSizes {
  /** Timed reconnections. */
  connectRounds: number;
  /** Pings before the measured rounds. */
  warmPings: number;
  /** Pings per round. */
  pingsPerRound: number;
  /** Ping rounds. */
  pingRounds: number;
  /** Messages per round. */
  msgsPerRound: number;
  /** Message rounds. */
  msgRounds: number;
  /** The large file. */
  fileBytes: number;
  /** The small file (peak RSS must not grow from it to the large one). */
  fileSmallBytes: number;
  /** File rounds. */
  fileRounds: number;
  /** Fresh-receiver peak RSS measurements per size. */
  rssRounds: number;
  /** How long any one step may take before the section fails, ms. */
  waitMs: number;
}

/** Set from ChatSizes.waitMs when the benchmarks start. */
let WAIT_MS = 60_000;
const RAW_PEER_FLAGS = ["--allow-net=127.0.0.1", "--allow-read", "--allow-write"];
const ALPN = "e2e-chat/1";

/** Peak RSS (VmHWM) of a process, MiB. */
async function peakMiB(pid: number): Promise<number> {
  const status = await readProc(`/proc/${pid}/status`);
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? NaN) / 1024;
}

/** CPU time (user + system) a process used so far, ms. */
async function cpuMs(pid: number): Promise<number> {
  return (await cpuTimes(pid)).self;
}

/** Current RSS (VmRSS) of a process, MiB. */
async function rssMiB(pid: number): Promise<number> {
  const status = await readProc(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? NaN) / 1024;
}

/** MB/s of writing `bytes` to `path` in 512 KiB writes and fsyncing, and the fsync's ms. */
async function timedWriteSync(
  path: string,
  bytes: number,
): Promise<{ mbps: number; fsyncMs: number }> {
  const chunk = new Uint8Array(512 * 1024);
  randomFillSync(chunk);
  const t0 = performance.now();
  using file = await Deno.open(path, { write: true, create: true, truncate: true });
  for (let left = bytes; left > 0; left -= chunk.length) {
    const part = chunk.subarray(0, Math.min(left, chunk.length));
    let n = 0;
    while (n < part.length) n += await file.write(part.subarray(n));
  }
  const t1 = performance.now();
  await file.sync();
  const t2 = performance.now();
  await Deno.remove(path);
  return { mbps: bytes / (t2 - t0) * 1000 / MB, fsyncMs: t2 - t1 };
}

/** MB/s of reading `path` with hashFile()'s buffer size, with or without hashFile() itself. */
async function timedRead(path: string, hash: boolean): Promise<number> {
  const t0 = performance.now();
  let size = 0;
  if (hash) size = (await hashFile(path)).size;
  else {
    using file = await Deno.open(path);
    const buffer = new Uint8Array(256 * 1024);
    for (let n = await file.read(buffer); n !== null; n = await file.read(buffer)) size += n;
  }
  return size / (performance.now() - t0) * 1000 / MB;
}

/** Our key, certificate and the CA, PEM. */
interface Creds {
  key: string;
  cert: string;
  ca: string;
}

async function credsOf(home: string): Promise<Creds> {
  const read = (f: string) => Deno.readTextFile(join(home, "id", f));
  return { key: await read("key.pem"), cert: await read("cert.pem"), ca: await read("ca.crt") };
}

/** A bare mutual-TLS connection (TLS 1.3, ALPN, CA pinned), as minimal as node:tls allows. */
async function rawConnect(port: number, creds: Creds): Promise<tls.TLSSocket> {
  const socket = tls.connect({
    host: "127.0.0.1",
    port,
    key: creds.key,
    cert: creds.cert,
    ca: [creds.ca],
    minVersion: "TLSv1.3",
    ALPNProtocols: [ALPN],
    rejectUnauthorized: true,
    checkServerIdentity: () => undefined,
  });
  await deadline(
    new Promise<void>((resolve, reject) => {
      socket.once("secureConnect", () => resolve());
      socket.once("error", reject);
    }),
    WAIT_MS,
    "a raw TLS handshake",
  );
  socket.setNoDelay(true);
  return socket;
}

/** Lines read from a raw socket. */
class LineSocket {
  readonly socket: tls.TLSSocket;
  #pending = "";
  #lines: TimedLine[] = [];
  #wake?: () => void;

  constructor(socket: tls.TLSSocket) {
    this.socket = socket;
    const decoder = new TextDecoder();
    socket.on("data", (chunk: Uint8Array) => {
      const t = performance.now();
      this.#pending += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = this.#pending.indexOf("\n")) >= 0) {
        this.#lines.push({ text: this.#pending.slice(0, nl), t });
        this.#pending = this.#pending.slice(nl + 1);
      }
      this.#wake?.();
    });
  }

  /** Opens a connection to the raw peer in `mode` (see _raw_peer.ts). */
  static async open(port: number, creds: Creds, mode: string): Promise<LineSocket> {
    const conn = new LineSocket(await rawConnect(port, creds));
    conn.socket.write(mode + "\n");
    const ok = await conn.next();
    if (ok.text !== "ok") throw new Error(`The raw peer answered ${JSON.stringify(ok.text)}`);
    return conn;
  }

  async next(ms = WAIT_MS): Promise<TimedLine> {
    while (!this.#lines.length) {
      await deadline(new Promise<void>((r) => (this.#wake = r)), ms, "a line from the raw peer");
    }
    return this.#lines.shift()!;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A file of `bytes` random bytes. */
async function makeFile(path: string, bytes: number): Promise<void> {
  using file = await Deno.open(path, { write: true, create: true, truncate: true });
  const chunk = new Uint8Array(1 << 20);
  for (let left = bytes; left > 0; left -= chunk.length) {
    randomFillSync(chunk);
    const part = chunk.subarray(0, Math.min(left, chunk.length));
    let n = 0;
    while (n < part.length) n += await file.write(part.subarray(n));
  }
}

function text100(i: number): string {
  return `m${i}-`.padEnd(100, "x");
}

function rotated<T>(steps: T[], r: number): T[] {
  const k = r % steps.length;
  return [...steps.slice(k), ...steps.slice(0, k)];
}

const MB = 1e6;
const MiB = 1 << 20;

/** Everything the chat benchmarks share: the two clients, the raw peer, the pipe process. */
class Rig {
  readonly ws: Workspace;
  readonly report: Report;
  readonly sizes: ChatSizes;
  readonly service: Service;
  readonly homes: { alice: string; bob: string };
  readonly procs: Proc[] = [];
  readonly clients: ChatClient[] = [];
  creds!: { alice: Creds; bob: Creds };
  alice!: ChatClient;
  bob!: ChatClient;
  pipe!: Proc;
  rawPort = 0;
  /** tests/bench/_peer_driver.ts: PeerConnection ↔ PeerConnection, commands on its stdin. */
  peerDriver!: Proc;

  private constructor(ws: Workspace, report: Report, sizes: ChatSizes, service: Service) {
    this.ws = ws;
    this.report = report;
    this.sizes = sizes;
    this.service = service;
    this.homes = { alice: ws.path("alice"), bob: ws.path("bob") };
  }

  /** alice and bob join, start `client chat --json` and connect; the raw peers start. */
  static async start(
    ws: Workspace,
    report: Report,
    sizes: ChatSizes,
    service: Service,
  ): Promise<Rig> {
    const rig = new Rig(ws, report, sizes, service);
    ws.log("chat: alice and bob join, start their clients and connect");
    const invites = await ws.invites(service.home, ["alice", "bob"]);
    for (const name of ["alice", "bob"] as const) {
      await runDeno("client/main.ts", ws.clientFlags, [
        "join",
        invites.get(name)!,
        "--home",
        rig.homes[name],
      ]);
    }
    rig.creds = { alice: await credsOf(rig.homes.alice), bob: await credsOf(rig.homes.bob) };
    [rig.alice, rig.bob] = await Promise.all([rig.client("alice"), rig.client("bob")]);
    await Deno.mkdir(ws.path("raw-downloads"), { recursive: true });
    const raw = rig.rawPeer("raw peer");
    rig.pipe = spawnDeno("pipe echo", "tests/bench/_raw_peer.ts", [], ["--pipe"]);
    rig.procs.push(rig.pipe);
    const [rawPort, peerPort] = (await raw.nextLine(WAIT_MS)).text.split(" ").slice(1)
      .map(Number);
    rig.rawPort = rawPort;
    const alice = join(rig.homes.alice, "id");
    await Deno.mkdir(ws.path("driver-downloads"), { recursive: true });
    rig.peerDriver = spawnDeno("peer driver", "tests/bench/_peer_driver.ts", RAW_PEER_FLAGS, [
      String(peerPort),
      join(alice, "key.pem"),
      join(alice, "cert.pem"),
      join(alice, "ca.crt"),
      join(rig.homes.bob, "id", "cert.pem"),
      ws.path("driver-downloads"),
    ]);
    rig.procs.push(rig.peerDriver);
    await rig.peerDriver.nextLine(WAIT_MS);
    await rig.connectOnce(); // warm-up, and the first key seen
    return rig;
  }

  /** Starts `client chat --json` for `name` (the harness's driver) and waits for `ready`. */
  async client(name: "alice" | "bob"): Promise<ChatClient> {
    const client = await ChatClient.start({ name, home: this.homes[name] }, {
      readyMs: WAIT_MS,
      failOnError: true,
      // E2E_BENCH_PROFILE=DIR: each client writes a V8 CPU profile there as it exits.
      ...(Deno.env.get("E2E_BENCH_PROFILE")
        ? { denoFlags: ["--cpu-prof", `--cpu-prof-dir=${Deno.env.get("E2E_BENCH_PROFILE")}`] }
        : {}),
    });
    this.clients.push(client);
    return client;
  }

  /** Starts a raw peer process (tests/bench/_raw_peer.ts) with bob's certificate. */
  rawPeer(label: string): Proc {
    const id = join(this.homes.bob, "id");
    const proc = spawnDeno(label, "tests/bench/_raw_peer.ts", RAW_PEER_FLAGS, [
      join(id, "key.pem"),
      join(id, "cert.pem"),
      join(id, "ca.crt"),
      this.ws.path("raw-downloads"),
    ]);
    this.procs.push(proc);
    return proc;
  }

  /** The original's flow: alice `/chat bob`, bob `/accept alice`; ms to each `connected`. */
  async connectOnce(): Promise<{ bob: number; alice: number }> {
    const { alice, bob } = this;
    alice.clear();
    bob.clear();
    await alice.send("/chat bob");
    await alice.expectTimed({ type: "invited" }, WAIT_MS);
    await bob.expectTimed((e) => e.type === "invite" && e.from === "alice", WAIT_MS);
    const t0 = await bob.send("/accept alice");
    const [atBob, atAlice] = await Promise.all([
      bob.expectTimed((e) => e.type === "connected" && e.peer === "alice", WAIT_MS),
      alice.expectTimed((e) => e.type === "connected" && e.peer === "bob", WAIT_MS),
    ]);
    return { bob: atBob.t - t0, alice: atAlice.t - t0 };
  }

  /** A new bob process, connected again (to measure a fresh process). */
  async restartBob(): Promise<void> {
    await this.bob.stop();
    await this.alice.expectTimed({ type: "disconnected" }, WAIT_MS);
    this.bob = await this.client("bob");
    await this.connectOnce();
  }

  /** Runs one command of the peer driver; returns its JSON answer. */
  async peer<T>(command: string, ms = WAIT_MS * 3): Promise<T> {
    await this.peerDriver.write(command + "\n");
    return JSON.parse((await this.peerDriver.nextLine(ms)).text) as T;
  }

  /** Stops every process it started. */
  async stop(): Promise<void> {
    for (const c of this.clients) await c.stop();
    for (const p of this.procs) await p.stop(3_000);
  }
}

/** The chat benchmarks, on `service` (a CA served by `ca serve`). */
export async function benchChat(
  ws: Workspace,
  report: Report,
  sizes: ChatSizes,
  service: Service,
): Promise<void> {
  WAIT_MS = sizes.waitMs;
  const rig = await Rig.start(ws, report, sizes, service);
  try {
    // E2E_BENCH_CHAT=rtt,msgs runs only those parts (while working on one of them).
    const parts = (Deno.env.get("E2E_BENCH_CHAT") ?? "connect,rtt,msgs,file").split(",");
    if (parts.includes("connect")) await benchConnect(rig);
    if (parts.includes("rtt")) await benchRtt(rig);
    if (parts.includes("msgs")) await benchMsgs(rig);
    if (parts.includes("file")) await benchFile(rig);
    const warned = [...rig.alice.warnings, ...rig.bob.warnings];
    if (warned.length) {
      report.notes.push(`chat clients printed ${warned.length} warnings: ${warned.slice(0, 3)}`);
    }
    await rig.alice.send("/quit").catch(() => {});
    await rig.bob.send("/quit").catch(() => {});
  } finally {
    await rig.stop();
  }
}

/** `connect`: `/accept` → `connected` on both sides, vs a bare handshake plus an HTTPS request. */
async function benchConnect(rig: Rig): Promise<void> {
  const { ws, report, sizes, creds } = rig;
  report.section("connect");
  const connect = { bob: [] as number[], alice: [] as number[], both: [] as number[] };
  const handshake = { tls: [] as number[], https: [] as number[], both: [] as number[] };
  for (let r = 0; r < sizes.connectRounds; r++) {
    ws.log(`connect: round ${r + 1}/${sizes.connectRounds}`);
    await rig.alice.send("/close bob");
    await rig.alice.expectTimed({ type: "disconnected" }, WAIT_MS);
    await rig.bob.expectTimed({ type: "disconnected" }, WAIT_MS);
    const c = await rig.connectOnce();
    connect.bob.push(c.bob);
    connect.alice.push(c.alice);
    connect.both.push(Math.max(c.bob, c.alice));
    const t0 = performance.now();
    (await rawConnect(rig.rawPort, creds.bob)).destroy();
    const t1 = performance.now();
    await httpsGet(rig.service, "/v1/crl", creds.bob);
    const t2 = performance.now();
    handshake.tls.push(t1 - t0);
    handshake.https.push(t2 - t1);
    handshake.both.push(t2 - t0);
  }
  const baseHs = median(handshake.both);
  report.add("raw_handshake", baseHs, "ms", {
    rounds: handshake.both,
    note: "one bare mutual-TLS handshake to a raw node:tls peer (same certificates, TLS 1.3) " +
      "plus one HTTPS GET /v1/crl to the CA with a client certificate, new connections",
  });
  report.add("raw_handshake_tls_only", median(handshake.tls), "ms", {
    baseline: ["raw_handshake", baseHs],
  });
  report.add("connect", median(connect.both), "ms", {
    baseline: ["raw_handshake", baseHs],
    target: { op: "<=", ratio: 1.3 },
    breakdown: ["connect_alice", "connect_bob", "raw_handshake_tls_only", "check_peer_call"],
    rounds: connect.both,
    note: "`/accept alice` written to bob's stdin → `connected` on both stdouts (the later " +
      "of the two), after `/close` and a fresh `/chat bob` each round",
  });
  report.add("connect_bob", median(connect.bob), "ms", { baseline: ["raw_handshake", baseHs] });
  const bobDer = pemDecode(creds.bob.cert, "CERTIFICATE");
  // A fresh anchor each time: checkPeer() keeps what it verified per anchor.
  const anchors = Array.from({ length: 60 }, () => trustAnchor(creds.alice.ca));
  for (let i = 0; i < 10; i++) checkPeer(bobDer, anchors[i], { name: "bob" });
  const c0 = performance.now();
  for (let i = 10; i < 60; i++) checkPeer(bobDer, anchors[i], { name: "bob" });
  const checkMs = (performance.now() - c0) / 50;
  const c1 = performance.now();
  for (let i = 0; i < 50; i++) checkPeer(bobDer, anchors[0], { name: "bob" });
  const cachedMs = (performance.now() - c1) / 50;
  report.add("connect_alice", median(connect.alice), "ms", {
    baseline: ["raw_handshake", baseHs],
  });
  report.add("check_peer_call", checkMs, "ms", {
    baseline: ["connect", median(connect.both)],
    note: "breakdown: one lib/tls.ts checkPeer() of a certificate not seen before (parse, " +
      "our-CA signature, names, key) in this process",
  });
  report.add("check_peer_cached", cachedMs, "ms", {
    baseline: ["check_peer_call", checkMs],
    note: "breakdown: checkPeer() of a certificate already verified under that anchor (time, " +
      "names, key, revocation checked again; parse and signature not); a connect checks the " +
      "peer's certificate twice on each side, the second (or every, once seen) this way",
  });
}

/** `rtt`: ping-pongs through the clients, vs raw node:tls; pipes and PeerConnection alone. */
async function benchRtt(rig: Rig): Promise<void> {
  const { ws, report, sizes, creds, alice, bob, pipe } = rig;
  report.section("rtt (µs)");
  alice.clear();
  bob.clear();
  const echo = await LineSocket.open(rig.rawPort, creds.alice, "echo");
  const pingProduct = async (i: number) => {
    const wait = [
      alice.expectTimed({ type: "delivered" }, WAIT_MS),
      bob.expectTimed({ type: "message" }, WAIT_MS),
    ];
    const t0 = await alice.send(`p${i}`);
    const [delivered, message] = await Promise.all(wait);
    return {
      rtt: (delivered.t - t0) * 1000,
      oneway: (message.t - t0) * 1000,
      inClient: typeof delivered.event.ms === "number" ? delivered.event.ms * 1000 : NaN,
    };
  };
  const line = `${JSON.stringify({ type: "msg", id: "0", text: "p0" })}`;
  const pingRaw = async () => {
    const t0 = performance.now();
    echo.socket.write(line + "\n");
    return ((await echo.next()).t - t0) * 1000;
  };
  const pingPipe = async (i: number) => {
    const t0 = performance.now();
    await pipe.write(`p${i}\n`);
    return ((await pipe.nextLine(WAIT_MS)).t - t0) * 1000;
  };
  ws.log("rtt: warm-up");
  for (let i = 0; i < sizes.warmPings; i++) {
    await pingProduct(i);
    await pingRaw();
    await pingPipe(i);
  }
  await rig.peer(`ping ${sizes.warmPings}`);
  const rtt = { product: [] as number[][], oneway: [] as number[][], inClient: [] as number[][] };
  const rawRtt: number[][] = [];
  const pipeRtt: number[][] = [];
  const peerRtt: number[][] = [];
  for (let r = 0; r < sizes.pingRounds; r++) {
    ws.log(`rtt: round ${r + 1}/${sizes.pingRounds}`);
    const steps = [
      async () => {
        const a: number[] = [];
        const b: number[] = [];
        const c: number[] = [];
        for (let i = 0; i < sizes.pingsPerRound; i++) {
          const p = await pingProduct(i);
          a.push(p.rtt);
          b.push(p.oneway);
          if (Number.isFinite(p.inClient)) c.push(p.inClient);
        }
        rtt.product.push(a);
        rtt.oneway.push(b);
        if (c.length) rtt.inClient.push(c);
        alice.clear();
        bob.clear();
      },
      async () => {
        const a: number[] = [];
        for (let i = 0; i < sizes.pingsPerRound; i++) a.push(await pingRaw());
        rawRtt.push(a);
      },
      async () => {
        const a: number[] = [];
        for (let i = 0; i < sizes.pingsPerRound; i++) a.push(await pingPipe(i));
        pipeRtt.push(a);
      },
      async () => peerRtt.push(await rig.peer<number[]>(`ping ${sizes.pingsPerRound}`)),
    ];
    for (const step of rotated(steps, r)) await step();
  }
  const s = {
    product: spreadOverRounds(rtt.product),
    oneway: spreadOverRounds(rtt.oneway),
    raw: spreadOverRounds(rawRtt),
    pipe: spreadOverRounds(pipeRtt),
    peer: spreadOverRounds(peerRtt),
  };
  const pings = sizes.pingRounds * sizes.pingsPerRound;
  report.add("raw_rtt_p50", s.raw.p50, "µs", {
    rounds: s.raw.rounds.map((x) => x.p50),
    note: `node:tls mutual TLS, one line out, the raw peer process echoes it back; ${pings} ` +
      "pings; p50/p99 per round, median over rounds",
  });
  report.add("raw_rtt_p99", s.raw.p99, "µs", { rounds: s.raw.rounds.map((x) => x.p99) });
  report.add("rtt_p50", s.product.p50, "µs", {
    baseline: ["raw_rtt_p50", s.raw.p50],
    rounds: s.product.rounds.map((x) => x.p50),
    note: `a ping = a message line written to alice's stdin → alice's \`delivered\` event on ` +
      `her stdout (bob's ack came back); ${pings} pings; includes one stdin/stdout pipe ` +
      "round trip (see pipe_rtt)",
  });
  report.add("rtt_p99", s.product.p99, "µs", {
    baseline: ["raw_rtt_p99", s.raw.p99],
    rounds: s.product.rounds.map((x) => x.p99),
  });
  report.add("pipe_rtt_p50", s.pipe.p50, "µs", {
    baseline: ["rtt_p50", s.product.p50],
    note: "breakdown: a deno child that reads stdin lines and writes a JSON line per line " +
      "to stdout as client/ui.ts does: the cost of driving a client through pipes",
  });
  report.add("pipe_rtt_p99", s.pipe.p99, "µs", { baseline: ["rtt_p99", s.product.p99] });
  report.add("rtt_peer_p50", s.peer.p50, "µs", {
    baseline: ["raw_rtt_p50", s.raw.p50],
    target: { op: "<=", ratio: 1.2 },
    breakdown: ["rtt_peer_p99"],
    note: "breakdown: the product's PeerConnection (client/peer.ts) at both ends, no chat " +
      "process and no pipes: msg → ack, timed in tests/bench/_peer_driver.ts",
  });
  report.add("rtt_peer_p99", s.peer.p99, "µs", { baseline: ["raw_rtt_p99", s.raw.p99] });
  report.add("oneway_to_peer_stdout_p50", s.oneway.p50, "µs", {
    baseline: ["rtt_p50", s.product.p50],
    note: "the same pings: alice's stdin → bob's `message` event on bob's stdout " +
      "(two pipes, one network hop)",
  });
  if (rtt.inClient.length) {
    const c = spreadOverRounds(rtt.inClient);
    report.add("rtt_in_client_p50", c.p50, "µs", {
      baseline: ["raw_rtt_p50", s.raw.p50],
      target: { op: "<=", ratio: 2 },
      breakdown: ["rtt_peer_p50", "rtt_p50", "pipe_rtt_p50", "oneway_to_peer_stdout_p50"],
      note: "breakdown: the `ms` field of the same `delivered` events: alice's own time from " +
        "sending the msg to handling bob's ack, without the pipes",
    });
    report.add("rtt_in_client_p99", c.p99, "µs", {
      baseline: ["raw_rtt_p99", s.raw.p99],
      target: { op: "<=", ratio: 3 },
      breakdown: ["rtt_peer_p99", "rtt_p99", "pipe_rtt_p99"],
    });
  }
  const tail = (label: string, rounds: number[][]) => {
    const all = rounds.flat();
    const q = [50, 90, 99, 99.9].map((x) => Math.round(percentile(all, x)));
    return `${label} ${q.join("/")}/${Math.round(Math.max(...all))}`;
  };
  report.notes.push(
    "rtt distributions over all pings, µs, p50/p90/p99/p99.9/max: " + [
      tail("rtt", rtt.product),
      tail("raw_rtt", rawRtt),
      tail("pipe_rtt", pipeRtt),
      tail("rtt_peer", peerRtt),
      ...(rtt.inClient.length ? [tail("rtt_in_client", rtt.inClient)] : []),
    ].join("; "),
  );
  echo.close();
}

/** `msgs`: one-way 100-byte messages through the clients, vs raw node:tls. */
async function benchMsgs(rig: Rig): Promise<void> {
  const { ws, report, sizes, creds, alice, bob, pipe } = rig;
  report.section("msgs (100-byte messages, one way)");
  const n = sizes.msgsPerRound;
  const cpu = { alice: [] as number[], bob: [] as number[], bench: [] as number[] };
  const sendProduct = async () => {
    const c0 = await Promise.all([cpuMs(alice.pid), cpuMs(bob.pid), cpuMs(Deno.pid)]);
    const target = bob.count("message") + n;
    const delivered = alice.count("delivered") + n;
    let input = "";
    for (let i = 0; i < n; i++) input += text100(i) + "\n";
    const t0 = performance.now();
    await alice.write(input);
    const t1 = await bob.expectCount("message", target, WAIT_MS * 3);
    await alice.expectCount("delivered", delivered, WAIT_MS * 3);
    const c1 = await Promise.all([cpuMs(alice.pid), cpuMs(bob.pid), cpuMs(Deno.pid)]);
    cpu.alice.push((c1[0] - c0[0]) * 1000 / n);
    cpu.bob.push((c1[1] - c0[1]) * 1000 / n);
    cpu.bench.push((c1[2] - c0[2]) * 1000 / n);
    alice.clear();
    bob.clear();
    return n / (t1 - t0) * 1000;
  };
  const sendRaw = async (batched: boolean) => {
    const conn = await LineSocket.open(rig.rawPort, creds.alice, `lines ${n}`);
    const t0 = performance.now();
    if (batched) {
      let all = "";
      for (let i = 0; i < n; i++) all += text100(i) + "\n";
      conn.socket.write(all);
    } else {
      for (let i = 0; i < n; i++) conn.socket.write(text100(i) + "\n");
    }
    const done = await conn.next(WAIT_MS * 3);
    conn.close();
    return n / (done.t - t0) * 1000;
  };
  const sendPeer = async () => (await rig.peer<{ rate: number }>(`msgs ${n}`)).rate;
  ws.log("msgs: warm-up");
  await sendProduct();
  await sendRaw(false);
  await sendPeer();
  const rate = { product: [] as number[], raw: [] as number[], batched: [] as number[] };
  const peerRate: number[] = [];
  for (let r = 0; r < sizes.msgRounds; r++) {
    ws.log(`msgs: round ${r + 1}/${sizes.msgRounds}`);
    const steps = [
      async () => rate.product.push(await sendProduct()),
      async () => rate.raw.push(await sendRaw(false)),
      async () => rate.batched.push(await sendRaw(true)),
      async () => peerRate.push(await sendPeer()),
    ];
    for (const step of rotated(steps, r)) await step();
  }
  // What writing one stdout line per event costs (client/ui.ts): the pipe process emits them.
  const emitted = async (command: string) => {
    let seen = 0;
    const last = new Promise<number>((resolve) => {
      pipe.onLine = ({ t }) => {
        if (++seen === n) resolve(t);
      };
    });
    const t0 = performance.now();
    await pipe.write(`${command} ${n}\n`);
    const t1 = await deadline(last, WAIT_MS * 3, `${n} lines from the pipe process`);
    pipe.onLine = undefined;
    return n / (t1 - t0) * 1000;
  };
  const emitRate = { each: [] as number[], batched: [] as number[] };
  for (let r = 0; r < sizes.msgRounds; r++) {
    emitRate.each.push(await emitted("emit"));
    emitRate.batched.push(await emitted("emitb"));
  }
  const baseMsgs = median(rate.raw);
  report.add("raw_msgs", baseMsgs, "msg/s", {
    rounds: rate.raw,
    note: `${n} lines of 100 bytes per round, one socket.write each, over raw node:tls; ` +
      "the peer answers `done` after the last",
  });
  report.add("msgs", median(rate.product), "msg/s", {
    baseline: ["raw_msgs", baseMsgs],
    target: { op: ">=", ratio: 0.5 },
    breakdown: [
      "msgs_peer",
      "msgs_cpu_sender",
      "msgs_cpu_receiver",
      "msgs_cpu_bench",
      "stdout_events",
      "raw_msgs_batched",
    ],
    rounds: rate.product,
    note: `${n} 100-character message lines written to alice's stdin → the ${n}th \`message\` ` +
      "event on bob's stdout",
  });
  const rawUs = 1e6 / baseMsgs;
  report.add("msgs_cpu_sender", median(cpu.alice), "µs/msg", {
    baseline: ["raw_msgs_us", rawUs],
    rounds: cpu.alice,
    note: "breakdown: CPU time (user + system, /proc) alice's process spent per message over " +
      "a round (reading stdin, sending, its `sent` and `delivered` events, history); baseline: " +
      "the wall time per message of raw_msgs",
  });
  report.add("msgs_cpu_receiver", median(cpu.bob), "µs/msg", {
    baseline: ["raw_msgs_us", rawUs],
    rounds: cpu.bob,
    note: "breakdown: the same for bob (parsing, acknowledging, its `message` events, history)",
  });
  report.add("msgs_cpu_bench", median(cpu.bench), "µs/msg", {
    baseline: ["raw_msgs_us", rawUs],
    rounds: cpu.bench,
    note: "breakdown: the same for this benchmark process (writing alice's stdin, reading " +
      "three events per message); the three processes share the machine's cores",
  });
  report.add("msgs_peer", median(peerRate), "msg/s", {
    baseline: ["raw_msgs", baseMsgs],
    rounds: peerRate,
    note: "breakdown: PeerConnection.sendMessage() × N in tests/bench/_peer_driver.ts to a " +
      "PeerConnection in the raw peer process, until its answer to a final sync message",
  });
  report.add("stdout_events", median(emitRate.each), "event/s", {
    baseline: ["stdout_events_batched", median(emitRate.batched)],
    rounds: emitRate.each,
    note: "breakdown: a deno process printing message events one write(2) each, read by " +
      "this process (per message a client prints `sent` and `delivered` at the sender, " +
      "`message` at the receiver); baseline: all in one write, as client/faces/json.ts " +
      "writes the events of one turn",
  });
  report.add("raw_msgs_batched", median(rate.batched), "msg/s", {
    baseline: ["raw_msgs", baseMsgs],
    rounds: rate.batched,
    note: "info: the same lines in one socket.write (what coalescing writes would buy)",
  });
}

/** `file`: a large file through the clients, vs raw node:tls; the receiver's peak RSS. */
async function benchFile(rig: Rig): Promise<void> {
  const { ws, report, sizes, creds, alice } = rig;
  report.section("file");
  const files = ws.path("files");
  await Deno.mkdir(files, { recursive: true });
  const big = join(files, "big.bin");
  const small = join(files, "small.bin");
  const bigName = `${sizes.fileBytes / MiB} MiB`;
  const smallName = `${sizes.fileSmallBytes / MiB} MiB`;
  ws.log(`file: writing ${bigName} and ${smallName} files`);
  await makeFile(big, sizes.fileBytes);
  await makeFile(small, sizes.fileSmallBytes);
  const fileProduct = async (path: string, bytes: number) => {
    alice.clear();
    rig.bob.clear();
    const t0 = await alice.send(`/file ${path}`);
    // A file above --auto-accept, or from a key not pinned yet, is an offer bob accepts with /get
    // (docs/PROTOCOL.md §3, "Offers"): that round trip is part of what a user waits for, too.
    const first = await rig.bob.expectTimed(
      (e) => e.type === "file" || e.type === "file_offer",
      WAIT_MS * 5,
    );
    if (first.event.type === "file_offer") await rig.bob.send(`/get alice ${first.event.id}`);
    const got = first.event.type === "file"
      ? first
      : await rig.bob.expectTimed({ type: "file" }, WAIT_MS * 5);
    const peak = await peakMiB(rig.bob.pid);
    await alice.expectTimed({ type: "delivered" }, WAIT_MS * 5);
    await Deno.remove(String(got.event.path)).catch(() => {});
    if (got.event.bytes !== bytes) throw new Error("bob received a file of another size");
    return { rate: bytes / (got.t - t0) * 1000 / MB, peak };
  };
  const fileRaw = async (path: string, bytes: number, port = rig.rawPort) => {
    const conn = await LineSocket.open(port, creds.alice, `bulk ${bytes}`);
    const t0 = performance.now();
    using file = await Deno.open(path);
    const buffer = new Uint8Array(512 * 1024);
    while (true) {
      const got = await file.read(buffer);
      if (got === null) break;
      // A copy: the socket may still hold the previous chunk when we read the next.
      if (!conn.socket.write(Buffer.from(buffer.subarray(0, got)))) {
        await new Promise((r) => conn.socket.once("drain", r));
      }
    }
    const done = await conn.next(WAIT_MS * 5);
    conn.close();
    return bytes / (done.t - t0) * 1000 / MB;
  };
  const filePeer = async (path: string, bytes: number) => {
    const { ms } = await rig.peer<{ ms: number }>(`file ${path}`, WAIT_MS * 5);
    return bytes / ms * 1000 / MB;
  };
  ws.log("file: warm-up");
  await fileProduct(small, sizes.fileSmallBytes);
  await fileRaw(small, sizes.fileSmallBytes);
  await filePeer(small, sizes.fileSmallBytes);
  const fr = { product: [] as number[], raw: [] as number[], peer: [] as number[] };
  for (let r = 0; r < sizes.fileRounds; r++) {
    ws.log(`file: round ${r + 1}/${sizes.fileRounds}`);
    const steps = [
      async () => fr.product.push((await fileProduct(big, sizes.fileBytes)).rate),
      async () => fr.raw.push(await fileRaw(big, sizes.fileBytes)),
      async () => fr.peer.push(await filePeer(big, sizes.fileBytes)),
    ];
    for (const step of rotated(steps, r)) await step();
  }
  // What SHA-256 costs: each side hashes the data as it streams (sha256-at-end, docs/PROTOCOL.md §3).
  const readRate = await timedRead(big, false);
  const hashRate = await timedRead(big, true);

  const disk = await timedWriteSync(join(files, "write-test.bin"), sizes.fileBytes);

  // Peak RSS of a fresh receiving process over one transfer, per size: the client, and
  // the raw node:tls receiver (which keeps nothing).
  const rss = { big: [] as number[], small: [] as number[], idle: [] as number[] };
  const rawRss = { big: [] as number[], small: [] as number[] };
  for (let r = 0; r < sizes.rssRounds; r++) {
    for (
      const [path, bytes, into] of [
        [small, sizes.fileSmallBytes, rss.small],
        [big, sizes.fileBytes, rss.big],
      ] as const
    ) {
      ws.log(
        `file: peak RSS of a fresh receiver, ${bytes / MiB} MiB (${r + 1}/${sizes.rssRounds})`,
      );
      await rig.restartBob();
      rss.idle.push(await rssMiB(rig.bob.pid));
      into.push((await fileProduct(path, bytes)).peak);
      const fresh = rig.rawPeer("raw peer (fresh)");
      const port = Number((await fresh.nextLine(WAIT_MS)).text.split(" ")[1]);
      await fileRaw(path, bytes, port);
      (bytes === sizes.fileBytes ? rawRss.big : rawRss.small).push(await peakMiB(fresh.pid));
      await fresh.stop();
    }
  }
  const baseBulk = median(fr.raw);
  report.add("raw_bulk", baseBulk, "MB/s", {
    rounds: fr.raw,
    note: `${bigName} read from disk in 512 KiB chunks and written to a raw node:tls socket ` +
      "(back-pressure honoured) until the peer process counted every byte",
  });
  report.add("file", median(fr.product), "MB/s", {
    baseline: ["raw_bulk", baseBulk],
    target: { op: ">=", ratio: 0.7 },
    breakdown: ["file_peer", "file_prehash", "file_write_fsync"],
    rounds: fr.product,
    note: `\`/file PATH\` (${bigName}) written to alice's stdin → bob's \`file\` event ` +
      "(bytes written, SHA-256 checked); MB = 10^6 bytes",
  });
  report.add("file_peer", median(fr.peer), "MB/s", {
    baseline: ["raw_bulk", baseBulk],
    rounds: fr.peer,
    note: "breakdown: PeerConnection.sendFile() in tests/bench/_peer_driver.ts → " +
      "PeerConnection in the raw peer process, until its ack (no chat process, no pipes)",
  });
  report.add("file_prehash", hashRate, "MB/s", {
    baseline: ["file_read", readRate],
    note: `breakdown: client/files.ts hashFile() over the ${bigName} file (what each side's ` +
      "hashing as the data streams costs; a whole pass before the first byte only to a peer " +
      "without sha256-at-end), vs reading it with the same buffer; both from the page cache",
  });
  const rssSmall = median(rss.small);
  report.add(`file_rss_${sizes.fileBytes / MiB}MiB`, median(rss.big), "MiB", {
    baseline: [`raw_bulk_rss_${sizes.fileBytes / MiB}MiB`, median(rawRss.big)],
    target: { op: "<=", ratio: 1 },
    rounds: rss.big,
    note: `peak RSS (VmHWM) of a freshly started and connected receiving client (bob) over ` +
      `one ${bigName} transfer vs a fresh raw node:tls receiver's over the same bytes`,
  });
  report.add(`file_rss_${sizes.fileSmallBytes / MiB}MiB`, rssSmall, "MiB", {
    baseline: [`file_rss_${sizes.fileBytes / MiB}MiB`, median(rss.big)],
    rounds: rss.small,
    note: `breakdown: the same receiver over one ${smallName} transfer`,
  });
  report.add(`raw_bulk_rss_${sizes.fileBytes / MiB}MiB`, median(rawRss.big), "MiB", {
    baseline: [`raw_bulk_rss_${sizes.fileSmallBytes / MiB}MiB`, median(rawRss.small)],
    rounds: rawRss.big,
    note: "breakdown: the same for a fresh raw node:tls receiver that only counts the bytes",
  });
  report.add("file_write_fsync", disk.mbps, "MB/s", {
    baseline: ["raw_bulk", baseBulk],
    note: `breakdown: writing ${bigName} to a file in 512 KiB writes, then fsync (the ` +
      `receiver's disk work; the fsync alone took ${disk.fsyncMs.toFixed(0)} ms)`,
  });
  report.add("file_rss_idle", median(rss.idle), "MiB", {
    baseline: [`file_rss_${sizes.fileSmallBytes / MiB}MiB`, rssSmall],
    note: "info: VmRSS of that fresh client, connected, before the transfer",
  });
}

/** GET `path` from the service over a fresh connection with our client certificate. */
function httpsGet(service: Service, path: string, creds: Creds): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const req = https.request({
      host: "127.0.0.1",
      port: service.port,
      path,
      method: "GET",
      agent: false,
      ca: [service.caPem],
      key: creds.key,
      cert: creds.cert,
    }, (res) => {
      res.resume();
      res.on("end", () => (res.statusCode === 200 ? resolve() : reject(new Error(`${path}`))));
      res.on("error", reject);
    });
    req.setTimeout(WAIT_MS, () => req.destroy(new Error(`GET ${path} timed out`)));
    req.on("error", reject);
    req.end();
  });
}
