/**
 * `room`: one message to a room of ten real `client chat --json` processes
 * (joined, invited and meshed by the real flow) — the time until all nine
 * other members have it (p50, p99), and sustained room messages per second —
 * beside the same author sending the same text as 1:1 messages to each of the
 * nine, over the same connections, in the same run.
 *
 * @module
 */
import { ChatClient } from "../_harness.ts";
import { runDeno } from "./_procs.ts";
import type { Report } from "./_report.ts";
import { spreadOverRounds } from "./_stats.ts";
import type { Service, Workspace } from "./_world.ts";

/** Sizes of the room benchmarks. */
export interface RoomSizes {
  /** Members of the room, the author included. */
  members: number;
  /** Timed single messages per round (room, then 1:1 fan-out). */
  sendsPerRound: number;
  /** Rounds of single messages. */
  rounds: number;
  /** Messages of one sustained burst. */
  burst: number;
  /** How long any one step may take before the section fails, ms. */
  waitMs: number;
}

const ROOM = "#bench";

/** Whether `c` is connected to `peer` now, as its last connected/disconnected event says. */
function connected(c: ChatClient, peer: string): boolean {
  const last = c.events.findLast((e) =>
    (e.type === "connected" || e.type === "disconnected") && e.peer === peer
  );
  return last?.type === "connected";
}

/** Runs the room section. */
export async function benchRoom(
  ws: Workspace,
  report: Report,
  sizes: RoomSizes,
  service: Service,
): Promise<void> {
  const wait = sizes.waitMs;
  const names = Array.from({ length: sizes.members }, (_, i) => `room${i}`);
  ws.log(`room: ${names.length} members join, start their clients, and meet in ${ROOM}`);
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
  try {
    for (const name of names) {
      clients.push(
        await ChatClient.start({ name, home: ws.path(name) }, { readyMs: wait, failOnError: true }),
      );
    }
    const [author, ...others] = clients;
    await author.send(`/room create ${ROOM}`);
    await author.expect({ type: "room_joined", room: ROOM }, wait);
    for (const member of others) {
      await author.send(`/room invite ${ROOM} ${member.name}`);
      await member.expect({ type: "invite", from: author.name }, wait);
      await member.send(`/accept ${author.name}`);
      await member.expect({ type: "room_invite", room: ROOM }, wait);
      await member.send(`/room join ${ROOM}`);
      await member.expect({ type: "room_joined", room: ROOM }, wait);
    }
    const until = Date.now() + wait * 2;
    while (!clients.every((c) => clients.every((o) => o === c || connected(c, o.name)))) {
      if (Date.now() > until) throw new Error(`The ${names.length} members did not all connect`);
      await new Promise((r) => setTimeout(r, 50));
    }

    // One message at a time: until the last of the nine has it.
    const room: number[][] = [];
    const fanout: number[][] = [];
    let n = 0;
    for (let round = 0; round < sizes.rounds; round++) {
      const r: number[] = [];
      const f: number[] = [];
      for (let i = 0; i < sizes.sendsPerRound; i++) {
        const text = `r${n++}`;
        const t0 = await author.send(`/msg ${ROOM} ${text}`);
        const got = await Promise.all(
          others.map((c) => c.expectTimed({ type: "room_message", text }, wait)),
        );
        r.push((Math.max(...got.map((g) => g.t)) - t0) * 1000);
        const one = `f${n++}`;
        const t1 = await author.write(others.map((c) => `/msg ${c.name} ${one}\n`).join(""));
        const each = await Promise.all(
          others.map((c) => c.expectTimed({ type: "message", text: one }, wait)),
        );
        f.push((Math.max(...each.map((g) => g.t)) - t1) * 1000);
      }
      room.push(r);
      fanout.push(f);
    }
    const roomSpread = spreadOverRounds(room);
    const fanSpread = spreadOverRounds(fanout);
    report.section(`room (${names.length} members, µs until all ${others.length} others have it)`);
    report.add("room_all_p50", roomSpread.p50, "µs", {
      baseline: [`${others.length}x 1:1 p50`, fanSpread.p50],
      rounds: roomSpread.rounds.map((x) => x.p50),
      note: `one signed room message vs the same text as ${others.length} 1:1 messages, ` +
        `one to each other member, written at once; ${sizes.sendsPerRound} per round`,
    });
    report.add("room_all_p99", roomSpread.p99, "µs", {
      baseline: [`${others.length}x 1:1 p99`, fanSpread.p99],
      rounds: roomSpread.rounds.map((x) => x.p99),
    });

    // Sustained: a burst written at once, until every member has all of it.
    for (const c of clients) c.clear();
    const burst = Array.from({ length: sizes.burst }, (_, i) => `b${i}`);
    const tb = await author.write(burst.map((t) => `/msg ${ROOM} ${t}\n`).join(""));
    const roomDone = await Promise.all(
      others.map((c) => c.expectTimed({ type: "room_message", text: burst.at(-1) }, wait * 2)),
    );
    const roomRate = sizes.burst / ((Math.max(...roomDone.map((d) => d.t)) - tb) / 1000);
    const lines = burst.flatMap((t) => others.map((c) => `/msg ${c.name} 1${t}\n`));
    const tf = await author.write(lines.join(""));
    const fanDone = await Promise.all(
      others.map((c) => c.expectTimed({ type: "message", text: `1${burst.at(-1)}` }, wait * 2)),
    );
    const fanRate = sizes.burst / ((Math.max(...fanDone.map((d) => d.t)) - tf) / 1000);
    report.add("room_msgs_per_s", roomRate, "msg/s", {
      baseline: [`${others.length}x 1:1 msg/s`, fanRate],
      note: `${sizes.burst} room messages written at once, until all ${others.length} others ` +
        `have the last; baseline: each as ${others.length} 1:1 messages`,
    });
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
  }
}
