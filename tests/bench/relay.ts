/**
 * `relay`: file throughput and round trips through the CA service's relay,
 * beside the same through a direct connection, in the same run: two pairs of
 * real `client chat --json` processes — one connected directly, one whose
 * inviter runs `--no-listen` so the pair meets at the relay — measured in
 * alternating rounds (targets: file ≥ 0.5× direct, RTT p50 ≤ 2× direct).
 *
 * @module
 */
import { randomFillSync } from "node:crypto";
import { join } from "node:path";
import { runDeno } from "./_procs.ts";
import { ChatClient } from "../_harness.ts";
import type { Report } from "./_report.ts";
import { median, spreadOverRounds } from "./_stats.ts";
import type { Service, Workspace } from "./_world.ts";
import type { ChatSizes } from "./chat.ts";

const MB = 1e6;
const MiB = 1 << 20;

/** One connected pair: the inviter and the accepter, and how they are connected. */
interface Pair {
  via: "direct" | "relay";
  alice: ChatClient;
  bob: ChatClient;
  connectMs: number;
}

/** The relay benchmarks, on `service` (a CA served by `ca serve`). */
export async function benchRelay(
  ws: Workspace,
  report: Report,
  sizes: ChatSizes,
  service: Service,
): Promise<void> {
  const wait = sizes.waitMs;
  report.section("relay");
  ws.log("relay: two pairs join (one direct, one through the relay) and connect");
  const names = ["rd-alice", "rd-bob", "rr-alice", "rr-bob"];
  const invites = await ws.invites(service.home, names);
  for (const name of names) {
    await runDeno("client/main.ts", ws.clientFlags, [
      "join",
      invites.get(name)!,
      "--home",
      ws.path(name),
    ]);
  }
  const clients: ChatClient[] = [];
  const start = async (name: string, args: string[] = []) => {
    const client = await ChatClient.start({ name, home: ws.path(name) }, {
      args,
      readyMs: wait,
      failOnError: true,
    });
    clients.push(client);
    return client;
  };
  try {
    const connect = async (
      via: Pair["via"],
      alice: ChatClient,
      bob: ChatClient,
    ): Promise<Pair> => {
      await alice.send(`/chat ${bob.name}`);
      await alice.expectTimed({ type: "invited" }, wait);
      await bob.expectTimed((e) => e.type === "invite" && e.from === alice.name, wait);
      const t0 = await bob.send(`/accept ${alice.name}`);
      const [atBob] = await Promise.all([
        bob.expectTimed((e) => e.type === "connected" && e.peer === alice.name, wait),
        alice.expectTimed((e) => e.type === "connected" && e.peer === bob.name, wait),
      ]);
      if (atBob.event.via !== via) {
        throw new Error(`the ${via} pair connected via ${String(atBob.event.via)}`);
      }
      return { via, alice, bob, connectMs: atBob.t - t0 };
    };
    // The receivers take more than a run's default quota of 1 GiB per peer.
    const receiver = ["--peer-quota", "1TiB", "--total-quota", "1TiB"];
    const direct = await connect(
      "direct",
      await start("rd-alice"),
      await start("rd-bob", receiver),
    );
    const relayed = await connect(
      "relay",
      await start("rr-alice", ["--no-listen"]),
      await start("rr-bob", receiver),
    );

    const ping = async (p: Pair, i: number) => {
      p.alice.clear();
      p.bob.clear();
      const delivered = p.alice.expectTimed({ type: "delivered" }, wait);
      const t0 = await p.alice.send(`/msg ${p.bob.name} p${i}`);
      return ((await delivered).t - t0) * 1000;
    };
    const files = ws.path("relay-files");
    await Deno.mkdir(files, { recursive: true });
    const path = join(files, "relay.bin");
    await makeFile(path, sizes.fileBytes);
    const send = async (p: Pair) => {
      p.alice.clear();
      p.bob.clear();
      const t0 = await p.alice.send(`/file ${p.bob.name} ${path}`);
      const first = await p.bob.expectTimed(
        (e) => e.type === "file" || e.type === "file_offer",
        wait * 5,
      );
      if (first.event.type === "file_offer") {
        await p.bob.send(`/get ${p.alice.name} ${first.event.id}`);
      }
      const got = first.event.type === "file"
        ? first
        : await p.bob.expectTimed({ type: "file" }, wait * 5);
      await p.alice.expectTimed({ type: "delivered" }, wait * 5);
      await Deno.remove(String(got.event.path)).catch(() => {});
      if (got.event.bytes !== sizes.fileBytes) throw new Error("a file of another size arrived");
      return sizes.fileBytes / (got.t - t0) * 1000 / MB;
    };

    ws.log("relay: warm-up");
    for (let i = 0; i < sizes.warmPings; i++) {
      await ping(direct, i);
      await ping(relayed, i);
    }
    const rtt = { direct: [] as number[][], relay: [] as number[][] };
    const rate = { direct: [] as number[], relay: [] as number[] };
    const rounds = Math.max(sizes.pingRounds, sizes.fileRounds);
    for (let r = 0; r < rounds; r++) {
      ws.log(`relay: round ${r + 1}/${rounds}`);
      // Alternate which goes first, so neither always runs on a warmer machine.
      const order = r % 2 ? [relayed, direct] : [direct, relayed];
      for (const p of order) {
        if (r < sizes.pingRounds) {
          const round: number[] = [];
          for (let i = 0; i < sizes.pingsPerRound; i++) round.push(await ping(p, i));
          rtt[p.via].push(round);
        }
        if (r < sizes.fileRounds) rate[p.via].push(await send(p));
      }
    }
    const d = spreadOverRounds(rtt.direct);
    const rl = spreadOverRounds(rtt.relay);
    const fileName = `${sizes.fileBytes / MiB} MiB`;
    report.add("relay_direct_file", median(rate.direct), "MB/s", {
      rounds: rate.direct,
      note: `\`/file\` (${fileName}) between two clients connected directly, in this section ` +
        "(alice's stdin → bob's `file` event, as `file`)",
    });
    report.add("relay_file", median(rate.relay), "MB/s", {
      baseline: ["relay_direct_file", median(rate.direct)],
      target: { op: ">=", ratio: 0.5 },
      rounds: rate.relay,
      note: `the same ${fileName} between two clients joined by the CA service's relay ` +
        "(the inviter runs --no-listen): the peers' TLS inside the service's TLS, spliced",
    });
    report.add("relay_direct_rtt_p50", d.p50, "µs", {
      rounds: d.rounds.map((x) => x.p50),
      note: "`/msg` to alice's stdin → her `delivered` event, two clients connected directly",
    });
    report.add("relay_rtt_p50", rl.p50, "µs", {
      baseline: ["relay_direct_rtt_p50", d.p50],
      target: { op: "<=", ratio: 2 },
      rounds: rl.rounds.map((x) => x.p50),
      note: "the same round trip between two clients joined by the relay",
    });
    report.add("relay_direct_rtt_p99", d.p99, "µs", { rounds: d.rounds.map((x) => x.p99) });
    report.add("relay_rtt_p99", rl.p99, "µs", {
      baseline: ["relay_direct_rtt_p99", d.p99],
      rounds: rl.rounds.map((x) => x.p99),
    });
    report.add("relay_connect", relayed.connectMs, "ms", {
      baseline: ["relay_direct_connect", direct.connectMs],
      note: "info: bob's `/accept` → his `connected` event, once: through the relay (the " +
        "inviter learns of it in its long poll and comes) vs directly",
    });
    for (const c of clients) await c.send("/quit").catch(() => {});
  } finally {
    for (const c of clients) await c.stop();
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
