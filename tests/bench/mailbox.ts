/**
 * `mailbox`: a message to a member who is online but not connected goes
 * through the CA's mailbox (docs/PROTOCOL.md §8) — post → `delivered` (their
 * receipt back through the mailbox) and post → `message` at the recipient,
 * beside the direct message round trip of the same two clients connected.
 *
 * @module
 */
import { ChatClient } from "../_harness.ts";
import { runDeno } from "./_procs.ts";
import type { Report } from "./_report.ts";
import { spreadOverRounds } from "./_stats.ts";
import type { Service, Workspace } from "./_world.ts";

/** Sizes of the mailbox benchmark. */
export interface MailboxSizes {
  /** Messages before measuring. */
  warm: number;
  /** Messages per round. */
  perRound: number;
  /** Rounds. */
  rounds: number;
  /** How long to wait for an event, ms. */
  waitMs: number;
}

/** `mailbox_delivered` and `mailbox_oneway` (p50/p99, ms), against `direct_rtt` of the same clients. */
export async function benchMailbox(
  ws: Workspace,
  report: Report,
  sizes: MailboxSizes,
  service: Service,
): Promise<void> {
  report.section("mailbox (ms)");
  const names = ["mb-alice", "mb-bob"] as const;
  ws.log("mailbox: two members join and start their clients");
  const invites = await ws.invites(service.home, [...names]);
  for (const name of names) {
    await runDeno("client/main.ts", ws.clientFlags, [
      "join",
      invites.get(name)!,
      "--home",
      ws.path(name),
    ]);
  }
  const start = (name: string) =>
    ChatClient.start({ name, home: ws.path(name) }, { readyMs: sizes.waitMs, failOnError: true });
  const alice = await start(names[0]);
  const bob = await start(names[1]);
  try {
    // Baseline: the same two clients connected, a direct message's round trip.
    await alice.send(`/chat ${names[1]}`);
    await bob.expect({ type: "invite", from: names[0] }, sizes.waitMs);
    await bob.send(`/accept ${names[0]}`);
    await alice.expect({ type: "connected", peer: names[1] }, sizes.waitMs);
    const direct = async (i: number) => {
      const delivered = alice.expectTimed({ type: "delivered" }, sizes.waitMs);
      const t0 = await alice.send(`/msg ${names[1]} d${i}`);
      return (await delivered).t - t0;
    };
    const viaMailbox = async (i: number) => {
      const queued = alice.expect({ type: "queued" }, sizes.waitMs);
      const message = bob.expectTimed({ type: "message", via: "mailbox" }, sizes.waitMs);
      const t0 = await alice.send(`/msg ${names[1]} m${i}`);
      const { id } = await queued;
      const delivered = await alice.expectTimed({ type: "delivered", id }, sizes.waitMs);
      return { delivered: delivered.t - t0, oneway: (await message).t - t0 };
    };
    for (let i = 0; i < sizes.warm; i++) await direct(i);
    const rtt: number[][] = [];
    for (let r = 0; r < sizes.rounds; r++) {
      const round: number[] = [];
      for (let i = 0; i < sizes.perRound; i++) round.push(await direct(i));
      rtt.push(round);
    }
    await alice.send(`/close ${names[1]}`);
    await alice.expect({ type: "disconnected", peer: names[1] }, sizes.waitMs);
    await bob.expect({ type: "disconnected", peer: names[0] }, sizes.waitMs);
    ws.log("mailbox: warm-up");
    for (let i = 0; i < sizes.warm; i++) await viaMailbox(i);
    const delivered: number[][] = [];
    const oneway: number[][] = [];
    for (let r = 0; r < sizes.rounds; r++) {
      ws.log(`mailbox: round ${r + 1}/${sizes.rounds}`);
      const d: number[] = [];
      const o: number[] = [];
      for (let i = 0; i < sizes.perRound; i++) {
        const m = await viaMailbox(i);
        d.push(m.delivered);
        o.push(m.oneway);
      }
      delivered.push(d);
      oneway.push(o);
    }
    const base = spreadOverRounds(rtt);
    const s = spreadOverRounds(delivered);
    const one = spreadOverRounds(oneway);
    report.add("direct_rtt_p50", base.p50, "ms", {
      rounds: base.rounds.map((x) => x.p50),
      note: "the same two clients connected: /msg → delivered (the peer's ack)",
    });
    report.add("mailbox_delivered_p50", s.p50, "ms", {
      baseline: ["direct_rtt_p50", base.p50],
      rounds: s.rounds.map((x) => x.p50),
      note: "recipient online, not connected: /msg → queued → fetched, opened, verified, stored " +
        "→ receipt back through the mailbox → delivered (8 openssl cms runs, 6 HTTPS requests)",
    });
    report.add("mailbox_delivered_p99", s.p99, "ms", {
      baseline: ["direct_rtt_p50", base.p50],
      rounds: s.rounds.map((x) => x.p99),
    });
    report.add("mailbox_oneway_p50", one.p50, "ms", {
      baseline: ["mailbox_delivered_p50", s.p50],
      rounds: one.rounds.map((x) => x.p50),
      note: "/msg → the recipient's `message` event (its long poll wakes at once)",
    });
    await alice.send("/quit").catch(() => {});
    await bob.send("/quit").catch(() => {});
  } finally {
    await alice.stop();
    await bob.stop();
  }
}
