/**
 * `keygen`/`join`: joining per key type — key, request and enrollment — as the
 * `client join` process's wall time and as the same enroll() call in a warm
 * process, against making the key and request with plain openssl.
 *
 * @module
 */
import { join } from "node:path";
import type { ClientKeyType } from "../../client/keys.ts";
import { PROBE_FLAGS } from "./enroll.ts";
import { bash, runDeno } from "./_procs.ts";
import type { Report } from "./_report.ts";
import { median } from "./_stats.ts";
import type { Service, Workspace } from "./_world.ts";

const KEY_TYPES: ClientKeyType[] = ["ec-p256", "ed25519", "rsa-2048"];

const GENPKEY: Record<ClientKeyType, string> = {
  "ec-p256": "-algorithm EC -pkeyopt ec_paramgen_curve:P-256",
  "ed25519": "-algorithm ED25519",
  "rsa-2048": "-algorithm RSA -pkeyopt rsa_keygen_bits:2048",
};

/** `join_process`, `join_inproc` and `keygen` per key type, `rounds` each after a warm-up. */
export async function benchJoin(
  ws: Workspace,
  report: Report,
  rounds: number,
  service: Service,
): Promise<void> {
  report.section("keygen / join");
  const names = (kind: string, type: string) =>
    Array.from({ length: rounds + 1 }, (_, r) => `j${kind}-${type.replace("-", "")}-${r}`);
  const all = KEY_TYPES.flatMap((t) => [...names("p", t), ...names("i", t)]);
  ws.log(`join: ${all.length} invites`);
  const invites = await ws.invites(service.home, all);
  const scratch = ws.path("keygen");
  await Deno.mkdir(scratch, { recursive: true });

  // The CLI's start-up alone: `client --help` loads every module, then exits.
  const startup: number[] = [];
  const bare: number[] = [];
  const empty = join(scratch, "empty.ts");
  await Deno.writeTextFile(empty, "");
  for (let r = 0; r <= rounds; r++) {
    const help = await runDeno("client/main.ts", ws.clientFlags, ["--help"]);
    const none = await runDeno(empty, [], []);
    if (r > 0) {
      startup.push(help.ms);
      bare.push(none.ms);
    }
  }
  report.add("deno_empty_script", median(bare), "ms", {
    note: "`deno run` of an empty script: the runtime's own start-up",
  });
  report.add("client_cli_startup", median(startup), "ms", {
    baseline: ["deno_empty_script", median(bare)],
    note: "`client --help` with the task's flags: start-up and module loading of the CLI",
  });
  // The first node:tls connection of a process costs far more than the next one.
  const cold: number[] = [];
  const warm: number[] = [];
  for (let r = 0; r <= rounds; r++) {
    const { stdout } = await runDeno("tests/bench/_raw_peer.ts", ["--allow-net=127.0.0.1"], [
      "--tls-twice",
      String(service.port),
    ]);
    const [first, second] = stdout.trim().split(" ").map(Number);
    if (r > 0) {
      cold.push(first);
      warm.push(second);
    }
  }
  report.add("tls_connect_first_in_process", median(cold), "ms", {
    baseline: ["tls_connect_second_in_process", median(warm)],
    rounds: cold,
    note: "breakdown: a fresh deno process's first node:tls handshake (to the CA service), " +
      "vs its second one; every `client join`/`lookup`/`renew` process pays the first",
  });

  for (const type of KEY_TYPES) {
    ws.log(`join: ${type}`);
    const keygen: number[] = [];
    const proc: number[] = [];
    const p = names("p", type);
    const i = names("i", type);
    for (let r = 0; r <= rounds; r++) {
      const { stdout } = await bash(
        `cd "$1"; s=$EPOCHREALTIME
         openssl genpkey ${GENPKEY[type]} -out k$2.pem 2>/dev/null &&
         openssl req -new -key k$2.pem -subj /CN=x -config /dev/null -out r$2.csr || exit 1
         echo "$s $EPOCHREALTIME"`,
        [scratch, `${type}-${r}`],
      );
      const [s, e] = stdout.trim().split(" ").map(Number);
      const run = await runDeno("client/main.ts", ws.clientFlags, [
        "join",
        invites.get(p[r])!,
        "--key-type",
        type,
        "--home",
        ws.path("joins", p[r]),
      ]);
      if (r === 0) continue; // warm-up
      keygen.push((e - s) * 1000);
      proc.push(run.ms);
    }
    // The same enroll() the CLI runs, several in one probe process; the first warms it up.
    const { stdout } = await runDeno("tests/bench/_probe.ts", PROBE_FLAGS, [
      "join",
      type,
      ws.path("joins", `i-${type}`),
      ...i.map((n) => invites.get(n)!),
    ], { timeoutMs: 300_000 });
    const inproc = (JSON.parse(stdout) as number[]).slice(1);
    const base = median(keygen);
    report.add(`keygen[${type}]`, base, "ms", {
      rounds: keygen,
      note: "`openssl genpkey` + `openssl req` in bash: key and request with plain openssl",
    });
    report.add(`join_inproc[${type}]`, median(inproc), "ms", {
      baseline: [`keygen[${type}]`, base],
      rounds: inproc,
      note: "client/identity.ts enroll() in a warm process (tests/bench/_probe.ts): fetch " +
        "and pin the CA, key, request, POST /v1/enroll, check, store",
    });
    report.add(`join_process[${type}]`, median(proc), "ms", {
      baseline: [`keygen[${type}]`, base],
      rounds: proc,
      note: "`client join INVITE --key-type …` process wall time (spawn to exit)",
    });
  }
}
