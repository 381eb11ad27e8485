/**
 * `keygen`/`join`: joining per key type — key, request and enrollment — as the
 * `client join` process's wall time and as the same enroll() call in a warm
 * process, against the same work done by hand with plain tools: the key and
 * request with openssl, the one enrollment request with curl.
 *
 * @module
 */
import { join } from "node:path";
import type { ClientKeyType } from "../../client/keys.ts";
import { PROBE_FLAGS } from "./enroll.ts";
import { bash, runDeno } from "./_procs.ts";
import type { Report } from "./_report.ts";
import { median } from "./_stats.ts";
import { inviteToken, type Service, type Workspace } from "./_world.ts";

const KEY_TYPES: ClientKeyType[] = ["ec-p256", "ed25519", "rsa-2048"];

const GENPKEY: Record<ClientKeyType, string> = {
  "ec-p256": "-algorithm EC -pkeyopt ec_paramgen_curve:P-256",
  "ed25519": "-algorithm ED25519",
  "rsa-2048": "-algorithm RSA -pkeyopt rsa_keygen_bits:2048",
};

/**
 * `join_process`, `join_inproc`, `keygen` and `keygen_plus_enroll` per key type, `rounds` each
 * after a warm-up.
 */
export async function benchJoin(
  ws: Workspace,
  report: Report,
  rounds: number,
  service: Service,
): Promise<void> {
  report.section("keygen / join");
  const names = (kind: string, type: string) =>
    Array.from({ length: rounds + 1 }, (_, r) => `j${kind}-${type.replace("-", "")}-${r}`);
  const all = KEY_TYPES.flatMap((t) => [...names("p", t), ...names("i", t), ...names("c", t)]);
  ws.log(`join: ${all.length} invites`);
  const invites = await ws.invites(service.home, all);
  const scratch = ws.path("keygen");
  await Deno.mkdir(scratch, { recursive: true });
  const caFile = join(scratch, "ca.crt");
  await Deno.writeTextFile(caFile, service.caPem);

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
    const byHand: number[] = [];
    const proc: number[] = [];
    const p = names("p", type);
    const i = names("i", type);
    const c = names("c", type);
    for (let r = 0; r <= rounds; r++) {
      const { stdout } = await bash(
        `cd "$1"; s=$EPOCHREALTIME
         openssl genpkey ${GENPKEY[type]} -out k$2.pem 2>/dev/null &&
         openssl req -new -key k$2.pem -subj /CN=x -config /dev/null -out r$2.csr || exit 1
         echo "$s $EPOCHREALTIME"`,
        [scratch, `${type}-${r}`],
      );
      const [s, e] = stdout.trim().split(" ").map(Number);
      // The same by hand: key and request with openssl, then one POST /v1/enroll with curl,
      // pinned to the CA file (which a user would fetch and compare with the invite first).
      const hand = await bash(
        `cd "$1"; s=$EPOCHREALTIME
         openssl genpkey ${GENPKEY[type]} -out h$2.pem 2>/dev/null &&
         openssl req -new -key h$2.pem -subj "/CN=$3" -config /dev/null -out h$2.csr || exit 1
         printf '{"token":"%s","csr":"%s"}' "$4" "$(awk '{printf "%s\\\\n", $0}' h$2.csr)" |
           curl -sS --fail --cacert "$5" -H 'content-type: application/json' \\
             --data-binary @- -o h$2.json "$6/v1/enroll" || exit 1
         echo "$s $EPOCHREALTIME"`,
        [scratch, `${type}-${r}`, c[r], inviteToken(invites.get(c[r])!), caFile, service.url],
      );
      const [hs, he] = hand.stdout.trim().split(" ").map(Number);
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
      byHand.push((he - hs) * 1000);
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
    const keys = median(keygen);
    report.add(`keygen[${type}]`, keys, "ms", {
      rounds: keygen,
      note: "`openssl genpkey` + `openssl req` in bash: key and request with plain openssl",
    });
    const base = median(byHand);
    report.add(`keygen_plus_enroll[${type}]`, base, "ms", {
      baseline: [`keygen[${type}]`, keys],
      rounds: byHand,
      note: "joining by hand with plain tools, in bash: `openssl genpkey` + `openssl req`, then " +
        "one POST /v1/enroll of that request with `curl --cacert` (the CA file already on disk)",
    });
    report.add(`join_inproc[${type}]`, median(inproc), "ms", {
      baseline: [`keygen_plus_enroll[${type}]`, base],
      rounds: inproc,
      note: "client/identity.ts enroll() in a warm process (tests/bench/_probe.ts): fetch " +
        "and pin the CA, key and request, POST /v1/enroll, check it and its log proof, store",
    });
    report.add(`join_process[${type}]`, median(proc), "ms", {
      baseline: [`keygen_plus_enroll[${type}]`, base],
      target: { op: "<=", ratio: 2 },
      breakdown: [
        `join_inproc[${type}]`,
        "client_cli_startup",
        "deno_empty_script",
        "tls_connect_first_in_process",
      ],
      rounds: proc,
      note: "`client join INVITE --key-type …` process wall time (spawn to exit)",
    });
  }
}
