/**
 * `enroll` and `enroll_at_scale`: certificates issued through the real CA
 * service (HTTPS POST /v1/enroll, real CSRs, real invites), against a plain
 * bash loop of `openssl ca -batch` with the same CA key, configuration and
 * leaf profile, measured in the same run, in interleaved rounds.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import https from "node:https";
import { join } from "node:path";
import { bash, cpuTimes, runDeno } from "./_procs.ts";
import type { Report } from "./_report.ts";
import { median, percentile, spreadOverRounds } from "./_stats.ts";
import {
  copyDir,
  inviteToken,
  type Service,
  syntheticCertificates,
  syntheticIndex,
  type Workspace,
} from "./_world.ts";

/** Sizes of the enrollment benchmarks. */
export interface EnrollSizes {
  /** Sequential enrollments before the measured rounds. */
  warmSeq: number;
  /** Concurrent enrollments before the measured rounds. */
  warmConc: number;
  /** Sequential enrollments per round (also the openssl loop's length). */
  seqPerRound: number;
  /** Enrollments per round with 8 concurrent enrollers. */
  concPerRound: number;
  /** Measured rounds. */
  rounds: number;
  /** Synthetic index lines for enroll_at_scale. */
  scaleLines: number;
  /** Sequential enrollments per round at scale. */
  scalePerRound: number;
  /** Rounds at scale. */
  scaleRounds: number;
}

const CONCURRENCY = 8;
/** Permissions of tests/bench/_probe.ts. */
export const PROBE_FLAGS = [
  "--allow-read",
  "--allow-write",
  "--allow-run=openssl",
  "--allow-env",
  "--allow-net=127.0.0.1",
  "--allow-sys=uid", // a CA home must be the user's own (ca/authority.ts)
];

/** A small HTTPS client for POST /v1/enroll, pinned to the CA; connections are kept alive. */
class EnrollClient {
  #agent: https.Agent;
  #port: number;
  #ca: string;

  constructor(service: Service) {
    this.#port = service.port;
    this.#ca = service.caPem;
    this.#agent = new https.Agent({ keepAlive: true, maxSockets: 2 * CONCURRENCY });
  }

  /** Enrolls; resolves with the latency in ms; rejects unless a certificate came back. */
  enroll(token: string, csr: string): Promise<number> {
    const body = JSON.stringify({ token, csr });
    const started = performance.now();
    return new Promise<number>((resolve, reject) => {
      const req = https.request({
        host: "127.0.0.1",
        port: this.#port,
        path: "/v1/enroll",
        method: "POST",
        agent: this.#agent,
        ca: [this.#ca],
        headers: {
          "content-type": "application/json",
          "content-length": String(Buffer.byteLength(body)),
        },
      }, (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (text += c));
        res.on("end", () => {
          const ms = performance.now() - started;
          if (res.statusCode !== 200 || !text.includes("BEGIN CERTIFICATE")) {
            reject(new Error(`POST /v1/enroll answered ${res.statusCode}: ${text.slice(0, 300)}`));
          } else resolve(ms);
        });
        res.on("error", reject);
      });
      req.setTimeout(60_000, () => req.destroy(new Error("POST /v1/enroll timed out")));
      req.on("error", reject);
      req.end(body);
    });
  }

  close(): void {
    this.#agent.destroy();
  }
}

/** What one enrollment needs. */
interface Job {
  name: string;
  token: string;
  csr: string;
}

async function jobs(
  csrDir: string,
  names: string[],
  invites: Map<string, string>,
): Promise<Job[]> {
  return await Promise.all(names.map(async (name) => ({
    name,
    token: inviteToken(invites.get(name)!),
    csr: await Deno.readTextFile(join(csrDir, `${name}.csr`)),
  })));
}

/** Runs `items` with `concurrency` enrollers; the wall time and each latency, ms. */
async function enrollAll(
  client: EnrollClient,
  items: Job[],
  concurrency: number,
): Promise<{ ms: number; latencies: number[] }> {
  let next = 0;
  const latencies: number[] = [];
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < items.length) {
      const job = items[next++];
      latencies.push(await client.enroll(job.token, job.csr));
    }
  }));
  return { ms: performance.now() - started, latencies };
}

/**
 * The baseline: `openssl ca -batch` in a bash loop inside a copy of the CA
 * folder, with the CA's own openssl.cnf and the leaf profile of each name.
 * Times come from bash's $EPOCHREALTIME around each openssl run (no extra
 * process); the round's time is from the first start to the last end.
 */
async function opensslSign(
  ws: Workspace,
  caCopy: string,
  csrDir: string,
  names: string[],
): Promise<{ ms: number; latencies: number[] }> {
  const out = join(caCopy, "bench-out");
  await Deno.mkdir(out, { recursive: true });
  const { stdout } = await bash(
    `cd "$1"; csrs=$2; out=$3; shift 3
     for n in "$@"; do
       s=$EPOCHREALTIME
       openssl ca -config openssl.cnf -keyfile ca.key -cert ca.crt -passin env:E2E_BENCH_PASSIN \\
         -batch -in "$csrs/$n.csr" -notext -out "$out/$n.pem" -subj "/CN=$n" -utf8 -days 7 \\
         -extfile "$csrs/$n.cnf" -extensions leaf 2>>"$out/openssl.log" \\
         || { tail -n 5 "$out/openssl.log" >&2; exit 1; }
       echo "$s $EPOCHREALTIME"
     done`,
    [caCopy, csrDir, out, ...names],
    { env: { E2E_BENCH_PASSIN: ws.passphrase }, timeoutMs: 300_000 },
  );
  const spans = stdout.trim().split("\n").map((l) => l.split(" ").map(Number));
  if (spans.length !== names.length) throw new Error("The openssl loop signed too few");
  return {
    ms: (spans.at(-1)![1] - spans[0][0]) * 1000,
    latencies: spans.map(([s, e]) => (e - s) * 1000),
  };
}

function names(prefix: string, count: number): string[] {
  return Array.from({ length: count }, (_, i) => `${prefix}-${i}`);
}

/** Rotates `steps` by `r`, so no step always runs first. */
function rotated<T>(steps: T[], r: number): T[] {
  const k = r % steps.length;
  return [...steps.slice(k), ...steps.slice(0, k)];
}

/** `enroll` for a CA of `keyType`: sequential and 8 concurrent, vs the openssl loop. */
export async function benchEnroll(
  ws: Workspace,
  report: Report,
  sizes: EnrollSizes,
  keyType: "rsa-4096" | "ec-p256",
): Promise<void> {
  const tag = keyType === "rsa-4096" ? "r" : "e";
  report.section(`enroll, ${keyType} CA`);
  ws.log(`enroll (${keyType}): creating the CA, requests and invites`);
  const home = await ws.initCa(`ca-${tag}`, keyType);
  const service = await ws.serve(home, `ca serve (${keyType})`);
  const client = new EnrollClient(service);
  try {
    const warmSeq = names(`${tag}ws`, sizes.warmSeq);
    const warmConc = names(`${tag}wc`, sizes.warmConc);
    const seq = Array.from(
      { length: sizes.rounds },
      (_, r) => names(`${tag}s${r}`, sizes.seqPerRound),
    );
    const conc = Array.from(
      { length: sizes.rounds },
      (_, r) => names(`${tag}c${r}`, sizes.concPerRound),
    );
    const probe = Array.from({ length: Math.min(3, sizes.rounds) }, (_, r) => ({
      seq: names(`${tag}ps${r}`, sizes.seqPerRound + 2),
      conc: names(`${tag}pc${r}`, sizes.concPerRound),
    }));
    const enrolled = [warmSeq, warmConc, ...seq, ...conc].flat();
    const csrDir = ws.path(`csr-${tag}`);
    await ws.csrs(csrDir, [...enrolled, ...probe.flatMap((r) => [...r.seq, ...r.conc])]);
    const invites = await ws.invites(home, enrolled);
    const caCopy = ws.path(`openssl-${tag}`);
    await copyDir(join(home, "ca"), caCopy);

    ws.log(`enroll (${keyType}): warm-up`);
    await enrollAll(client, await jobs(csrDir, warmSeq, invites), 1);
    await enrollAll(client, await jobs(csrDir, warmConc, invites), CONCURRENCY);
    await opensslSign(ws, caCopy, csrDir, warmSeq);

    const rate = { seq: [] as number[], conc: [] as number[], openssl: [] as number[] };
    // CPU per certificate (ms), from /proc: openssl run by the service, the service itself,
    // the 8 enrollers (this process), and the openssl loop (bash and its openssl runs).
    const cpu = {
      openssl: [] as number[],
      service: [] as number[],
      client: [] as number[],
      loop: [] as number[],
    };
    const lat = { seq: [] as number[][], conc: [] as number[][], openssl: [] as number[][] };
    for (let r = 0; r < sizes.rounds; r++) {
      ws.log(`enroll (${keyType}): round ${r + 1}/${sizes.rounds}`);
      const steps = [
        async () => {
          const { ms, latencies } = await enrollAll(client, await jobs(csrDir, seq[r], invites), 1);
          rate.seq.push(seq[r].length / ms * 1000);
          lat.seq.push(latencies);
        },
        async () => {
          const items = await jobs(csrDir, conc[r], invites);
          const before = await Promise.all([cpuTimes(service.proc.pid), cpuTimes(Deno.pid)]);
          const { ms, latencies } = await enrollAll(client, items, CONCURRENCY);
          const after = await Promise.all([cpuTimes(service.proc.pid), cpuTimes(Deno.pid)]);
          const n = conc[r].length;
          cpu.openssl.push((after[0].children - before[0].children) / n);
          cpu.service.push((after[0].self - before[0].self) / n);
          cpu.client.push((after[1].self - before[1].self) / n);
          rate.conc.push(conc[r].length / ms * 1000);
          lat.conc.push(latencies);
        },
        async () => {
          const before = await cpuTimes(Deno.pid);
          const { ms, latencies } = await opensslSign(ws, caCopy, csrDir, seq[r]);
          const after = await cpuTimes(Deno.pid);
          cpu.loop.push((after.children - before.children) / seq[r].length);
          rate.openssl.push(seq[r].length / ms * 1000);
          lat.openssl.push(latencies);
        },
      ];
      for (const step of rotated(steps, r)) await step();
    }

    const base = median(rate.openssl);
    const baseLat = spreadOverRounds(lat.openssl);
    const seqLat = spreadOverRounds(lat.seq);
    const concLat = spreadOverRounds(lat.conc);
    const k = `[${keyType}]`;
    report.add(`openssl_sign${k}`, base, "cert/s", {
      rounds: rate.openssl,
      note: `bash loop of ${sizes.seqPerRound} \`openssl ca -batch\` per round in a copy of ` +
        "HOME/ca (its openssl.cnf, key, leaf profile); first start to last end",
    });
    report.add(`enroll_seq${k}`, median(rate.seq), "cert/s", {
      baseline: [`openssl_sign${k}`, base],
      target: { op: ">=", ratio: 0.9 },
      breakdown: [
        `sign_probe_seq${k}`,
        `enroll_seq_server_p50${k}`,
        `openssl_ca_from_deno${k}`,
        `openssl_ca_warm_from_deno${k}`,
        `invite_redeem${k}`,
        `transaction_overhead${k}`,
        `fsync_append${k}`,
        `csr_and_cert_parse${k}`,
      ],
      rounds: rate.seq,
      note: `${sizes.seqPerRound} POST /v1/enroll one after another per round (node:https, ` +
        "keep-alive, CA pinned); median of round throughputs",
    });
    report.add(`enroll_conc8${k}`, median(rate.conc), "cert/s", {
      baseline: [`openssl_sign${k}`, base],
      target: { op: ">=", ratio: 1.5 },
      breakdown: [
        `enroll_conc8_ceiling${k}`,
        `enroll_conc8_cpu${k}`,
        `enroll_conc8_cpu_openssl${k}`,
        `enroll_conc8_cpu_service${k}`,
        `enroll_conc8_cpu_client${k}`,
        `sign_probe_conc8${k}`,
        `enroll_conc8_server_p50${k}`,
        `enroll_conc8_p50${k}`,
      ],
      rounds: rate.conc,
      note: `${sizes.concPerRound} enrollments per round by 8 concurrent enrollers`,
    });
    // What the machine allows: its cores kept busy with nothing but this CPU per certificate.
    const cores = navigator.hardwareConcurrency;
    const perCert = median(cpu.openssl) + median(cpu.service) + median(cpu.client);
    const loopCpu = median(cpu.loop);
    report.add(`enroll_conc8_cpu${k}`, perCert, "ms/cert", {
      baseline: [`openssl_sign_cpu${k}`, loopCpu],
      note: "breakdown: CPU per enrollment over a round, all processes (the three below); " +
        "baseline: CPU per certificate of the openssl loop (bash and openssl)",
    });
    report.add(`enroll_conc8_ceiling${k}`, cores * 1000 / perCert, "cert/s", {
      baseline: [`openssl_sign${k}`, base],
      note: `breakdown: the most the ${cores} cores could issue at enroll_conc8_cpu per ` +
        "certificate, every core busy all the time: its ratio is the best this CPU cost allows",
    });
    report.add(`enroll_conc8_cpu_openssl${k}`, median(cpu.openssl), "ms/cert", {
      baseline: [`openssl_sign_cpu${k}`, loopCpu],
      rounds: cpu.openssl,
      note: "breakdown: CPU of the `openssl ca` runs the service started (its reaped children)",
    });
    report.add(`enroll_conc8_cpu_service${k}`, median(cpu.service), "ms/cert", {
      baseline: [`enroll_conc8_cpu${k}`, perCert],
      rounds: cpu.service,
      note:
        "breakdown: CPU of the service process itself (TLS, HTTP, checks, invites, commit, log)",
    });
    report.add(`enroll_conc8_cpu_client${k}`, median(cpu.client), "ms/cert", {
      baseline: [`enroll_conc8_cpu${k}`, perCert],
      rounds: cpu.client,
      note: "breakdown: CPU of the 8 enrollers (node:https in this benchmark process)",
    });
    report.add(`enroll_seq_p50${k}`, seqLat.p50, "ms", {
      baseline: [`openssl_sign_p50${k}`, baseLat.p50],
      note: "client-side latency of one enrollment; baseline: one `openssl ca` run in the loop",
    });
    report.add(`enroll_seq_p99${k}`, seqLat.p99, "ms", {
      baseline: [`openssl_sign_p99${k}`, baseLat.p99],
    });
    report.add(`enroll_conc8_p50${k}`, concLat.p50, "ms", {
      baseline: [`openssl_sign_p50${k}`, baseLat.p50],
    });
    report.add(`enroll_conc8_p99${k}`, concLat.p99, "ms", {
      baseline: [`openssl_sign_p99${k}`, baseLat.p99],
    });
    const server = (list: string[][]) =>
      percentile(list.flat().map((n) => service.enrollMs.get(n) ?? NaN).filter(isFinite), 50);
    report.add(`enroll_seq_server_p50${k}`, server(seq), "ms", {
      baseline: [`enroll_seq_p50${k}`, seqLat.p50],
      note: "breakdown: the service's own time per request (its log), vs what the client saw",
    });
    report.add(`enroll_conc8_server_p50${k}`, server(conc), "ms", {
      baseline: [`enroll_conc8_p50${k}`, concLat.p50],
    });

    // Breakdown: where a signing's time goes, in a probe process on a copy of the CA.
    const probes: Array<Record<string, number>> = [];
    for (let r = 0; r < Math.min(3, sizes.rounds); r++) {
      ws.log(`enroll (${keyType}): breakdown probe ${r + 1}`);
      const copyHome = ws.path(`probe-${tag}${r}`);
      await copyDir(home, copyHome);
      const { stdout } = await runDeno("tests/bench/_probe.ts", PROBE_FLAGS, [
        "sign",
        copyHome,
        csrDir,
        probe[r].seq.join(","),
        probe[r].conc.join(","),
      ], { env: ws.caEnv(), timeoutMs: 300_000 });
      probes.push(JSON.parse(stdout));
      await Deno.remove(copyHome, { recursive: true });
    }
    const p = (key: string) => median(probes.map((x) => x[key]));
    const serverSeq = server(seq);
    report.add(`sign_probe_seq${k}`, p("signSeq"), "cert/s", {
      baseline: [`openssl_sign${k}`, base],
      rounds: probes.map((x) => x.signSeq),
      note: "breakdown (tests/bench/_probe.ts, its own process, on a copy of the CA): " +
        "CertificateAuthority.sign() one at a time, no HTTP, no invite",
    });
    report.add(`sign_probe_conc8${k}`, p("signConc8"), "cert/s", {
      baseline: [`openssl_sign${k}`, base],
      rounds: probes.map((x) => x.signConc8),
      note: "breakdown: 8 concurrent sign() calls, which the authority batches",
    });
    const parts: Array<[string, string, string]> = [
      [
        "opensslMs",
        "openssl_ca_from_deno",
        "the `openssl ca` run of a signing, spawned " +
        "through lib/openssl.ts with the encrypted ca.key (authority.ts pipes the key it " +
        "decrypted once instead, which openssl loads faster) (vs openssl_sign_p50: from bash)",
      ],
      [
        "opensslWarmMs",
        "openssl_ca_warm_from_deno",
        "the same run started ahead, as the service keeps two (authority.ts keepOpensslWarm): " +
        "from handing it the request's extensions on stdin to its exit; its start-up overlaps " +
        "the previous request",
      ],
      [
        "transactionMs",
        "transaction_overhead",
        "transaction() with one sign folder and " +
        "nothing to commit: lock, leftovers, repair, folders, removal",
      ],
      [
        "fsyncMs",
        "fsync_append",
        "append one index line and fsync (the commit does this for the index, and once " +
        "more for the invites journal's claims of a whole batch, alongside the certificates')",
      ],
      [
        "redeemMs",
        "invite_redeem",
        "InviteStore.redeem() with a no-op signing that claims " +
        "no serial: a reserve line, then a fsynced used line in invites.journal (an enrollment " +
        "fsyncs its claim in the commit instead)",
      ],
      ["parseMs", "csr_and_cert_parse", "parseCsr() with the key check + parseCertificate()"],
    ];
    for (const [key, name, note] of parts) {
      report.add(`${name}${k}`, p(key), "ms", {
        baseline: [`enroll_seq_server_p50${k}`, serverSeq],
        note: `breakdown: ${note}${key === "redeemMs" ? ` (${p("records")} records)` : ""}`,
      });
    }
  } finally {
    client.close();
    await service.stop();
  }
}

/** `enroll_at_scale`: sequential enrollment with N certificates already issued vs none. */
export async function benchEnrollAtScale(
  ws: Workspace,
  report: Report,
  sizes: EnrollSizes,
): Promise<void> {
  const lines = sizes.scaleLines;
  report.section(`enroll_at_scale, rsa-4096 CA, ${lines.toLocaleString("en-US")} issued`);
  ws.log(`enroll_at_scale: two copies of one CA, one with ${lines} index lines`);
  const base = await ws.initCa("scale-base", "rsa-4096");
  const homes = { empty: ws.path("scale-empty"), full: ws.path("scale-full") };
  const copies = { empty: ws.path("openssl-scale-empty"), full: ws.path("openssl-scale-full") };
  const filler = syntheticIndex(lines);
  for (const which of ["empty", "full"] as const) {
    await copyDir(base, homes[which]);
    await copyDir(join(base, "ca"), copies[which]);
    if (which === "full") {
      await Deno.writeTextFile(join(homes.full, "ca", "index.txt"), filler.index, { append: true });
      await Deno.writeTextFile(join(copies.full, "index.txt"), filler.index, { append: true });
      // (the service's issuance log reads each certificate the index names)
      await syntheticCertificates(join(homes.full, "ca", "certs"), filler.serials);
    }
  }
  const services = {
    empty: await ws.serve(homes.empty, "ca serve (empty)"),
    full: await ws.serve(homes.full, "ca serve (at scale)"),
  };
  const clients = {
    empty: new EnrollClient(services.empty),
    full: new EnrollClient(services.full),
  };
  try {
    const plan = (w: string) => ({
      warm: names(`z${w}w`, Math.max(2, sizes.warmSeq >> 1)),
      rounds: Array.from(
        { length: sizes.scaleRounds },
        (_, r) => names(`z${w}${r}`, sizes.scalePerRound),
      ),
    });
    const plans = { empty: plan("e"), full: plan("f") };
    const csrDir = ws.path("csr-scale");
    const all = (w: "empty" | "full") => [plans[w].warm, ...plans[w].rounds].flat();
    await ws.csrs(csrDir, [...all("empty"), ...all("full")]);
    const invites = {
      empty: await ws.invites(homes.empty, all("empty")),
      full: await ws.invites(homes.full, all("full")),
    };
    ws.log("enroll_at_scale: warm-up");
    for (const w of ["empty", "full"] as const) {
      await enrollAll(clients[w], await jobs(csrDir, plans[w].warm, invites[w]), 1);
      await opensslSign(ws, copies[w], csrDir, plans[w].warm);
    }
    const per = {
      enroll: { empty: [] as number[], full: [] as number[] },
      openssl: { empty: [] as number[], full: [] as number[] },
    };
    for (let r = 0; r < sizes.scaleRounds; r++) {
      ws.log(`enroll_at_scale: round ${r + 1}/${sizes.scaleRounds}`);
      const steps = (["empty", "full"] as const).flatMap((w) => [
        async () => {
          const list = plans[w].rounds[r];
          const { ms } = await enrollAll(clients[w], await jobs(csrDir, list, invites[w]), 1);
          per.enroll[w].push(ms / list.length);
        },
        async () => {
          const list = plans[w].rounds[r];
          const { ms } = await opensslSign(ws, copies[w], csrDir, list);
          per.openssl[w].push(ms / list.length);
        },
      ]);
      for (const step of rotated(steps, r)) await step();
    }
    const n = lines.toLocaleString("en-US");
    report.add("enroll_empty", median(per.enroll.empty), "ms/cert", {
      rounds: per.enroll.empty,
      note: `${sizes.scalePerRound} sequential enrollments per round, CA with no certificates`,
    });
    report.add("enroll_at_scale", median(per.enroll.full), "ms/cert", {
      baseline: ["enroll_empty", median(per.enroll.empty)],
      target: { op: "<=", ratio: 1.2 },
      rounds: per.enroll.full,
      note: `the same CA copy with ${n} synthetic index lines (status V, /CN=userN)`,
    });
    report.add("openssl_sign_empty", median(per.openssl.empty), "ms/cert", {
      rounds: per.openssl.empty,
      note: "the bash `openssl ca` loop in a copy of the CA folder with an empty index",
    });
    report.add("openssl_sign_at_scale", median(per.openssl.full), "ms/cert", {
      baseline: ["openssl_sign_empty", median(per.openssl.empty)],
      rounds: per.openssl.full,
      note: `the same loop with ${n} index lines: openssl's own slowdown (it rereads and ` +
        "rewrites the whole index per run)",
    });
    report.add("enroll_at_scale_vs_openssl", median(per.enroll.full), "ms/cert", {
      baseline: ["openssl_sign_at_scale", median(per.openssl.full)],
      note: "both with the full index",
    });

    // Breakdown: the per-request revocation check of auth routes (isCurrent) scans the index.
    const serialsFile = ws.path("scale-serials.txt");
    await Deno.writeTextFile(
      serialsFile,
      filler.serials.join("\n") + "\n",
    );
    const check = async (home: string) => {
      const { stdout } = await runDeno("tests/bench/_probe.ts", PROBE_FLAGS, [
        "auth",
        home,
        serialsFile,
      ]);
      return (JSON.parse(stdout) as { us: number }).us;
    };
    const emptyUs = await check(homes.empty);
    report.add("auth_check_at_scale", await check(homes.full), "µs", {
      baseline: ["auth_check_empty", emptyUs],
      note: "breakdown: CertificateAuthority.isCurrent() (run on every authenticated request: " +
        "renew, lookup, rendezvous) with the full index vs the empty one",
    });
  } finally {
    clients.empty.close();
    clients.full.close();
    await services.empty.stop();
    await services.full.stop();
  }
}
