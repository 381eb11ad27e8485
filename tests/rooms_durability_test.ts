/**
 * Room state is durable before anyone is told of it (docs/PROTOCOL.md §9, "State"): a member
 * joined, a list applied or published, an invitation made or withdrawn, a room invitation received
 * or declined, a room forgotten. The
 * first tests watch the real system calls (strace) of three real `Rooms` in one process, linked
 * by stand-in connections that leave a mark in the trace for each frame and event; the last runs
 * real `client chat --json` processes and kills one with SIGKILL right after `room_joined`.
 *
 * Without strace the traced tests are skipped with a message, except under CI=true.
 *
 * @module
 */
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";
import { ChatClient, ROOT, stopAll, withTempDir } from "./_harness.ts";
import { joinUser, runScenarios } from "./_chat_helpers.ts";
import type { Service } from "./_service_helpers.ts";
import { type FileCall, indexOfCall, stracePath, traceFileCalls } from "./_syscalls.ts";

const strace = await stracePath();
const CI = Deno.env.get("CI") === "true";
if (!strace && !CI) {
  // deno-lint-ignore no-console
  console.log("rooms_durability_test.ts: skipping: strace is not on PATH (apt-get install strace)");
}

/**
 * alice creates #team; bob joins; carol is invited while not connected, withdrawn, invited
 * again and joins; bob is removed; carol leaves; alice invites bob to #side, and he declines.
 * Every frame sent and every event leaves a mark file, MARKS/WHO-sends-OP-TO[-vVERSION] and
 * MARKS/WHO-EVENT[-NAME[-CHANGE]] (MARKS/WHO-room_invite-ROOM), and the script leaves
 * MARKS/before-STEP and MARKS/answered-STEP around each command.
 */
const SCRIPT = `
import { createPublicKey, generateKeyPairSync } from "node:crypto";
import { Rooms } from "ROOT/client/rooms.ts";
const [dir] = Deno.args;
const marks = dir + "/marks";
Deno.mkdirSync(marks);
const mark = (what) => Deno.writeTextFileSync(marks + "/" + what, "");
const events = [];
const parties = new Map();
const connected = new Set(["alice:bob", "bob:alice", "bob:carol", "carol:bob"]);
for (const self of ["alice", "bob", "carol"]) {
  const key = generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" });
  Deno.mkdirSync(dir + "/" + self);
  parties.set(self, { key, publicKey: createPublicKey(key) });
}
function conn(from, to) {
  return {
    name: to,
    rooms: true,
    certificate: { x509: { publicKey: parties.get(to).publicKey } },
    sendRoom(body) {
      if (!connected.has(from + ":" + to)) return false;
      mark(from + "-sends-" + body.op + "-" + to + (body.op === "list" ? "-v" + body.list.version : ""));
      const copy = structuredClone(body);
      setTimeout(() => parties.get(to).rooms.receive(conn(to, from), copy), 0);
      return true;
    },
  };
}
for (const [self, p] of parties) {
  p.rooms = new Rooms({
    self,
    privateKey: () => p.key,
    peer: (name) => (connected.has(self + ":" + name) ? conn(self, name) : undefined),
    pinned: () => undefined,
    invite: (name) => {
      mark(self + "-invites-" + name);
      return Promise.resolve();
    },
    accept: () => Promise.resolve(),
    invitations: () => [],
    emit: (e) => {
      events.push({ self, ...e });
      if (e.type === "warning" && e.message !== '"bob" declined the invitation to #side') {
        throw new Error(self + ": " + e.message);
      }
      const room = e.type === "room_invite" ? e.room.slice(1) : undefined;
      mark([self, e.type, e.name, e.change, room].filter((x) => x).join("-"));
    },
    history: { roomMessage() {} },
    dir: dir + "/" + self + "/rooms",
    invitationsFile: dir + "/" + self + "/room-invitations.json",
  });
}
const rooms = (name) => parties.get(name).rooms;
async function until(what, test) {
  for (let i = 0; !test(); i++) {
    if (i > 1000) throw new Error("timed out waiting for " + what);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
const seen = (self, fields) =>
  events.some((e) => e.self === self && Object.entries(fields).every(([k, v]) => e[k] === v));
async function step(name, fn) {
  mark("before-" + name);
  await fn();
  mark("answered-" + name);
}

const info = await rooms("alice").create("#team");
Deno.writeTextFileSync(dir + "/room", info.roomId);
await step("invite-bob", () => rooms("alice").invite("#team", "bob"));
await until("bob's room_invite", () => seen("bob", { type: "room_invite" }));
await step("join-bob", () => rooms("bob").join("#team"));
await until("bob's room_joined", () => seen("bob", { type: "room_joined" }));
await new Promise((resolve) => setTimeout(resolve, 100)); // alice's writes for bob's join are done
await step("invite-carol", () => rooms("alice").invite("#team", "carol"));
await step("withdraw-carol", () => rooms("alice").remove("#team", "carol"));
connected.add("alice:carol").add("carol:alice");
await step("invite-carol-again", () => rooms("alice").invite("#team", "carol"));
await until("carol's room_invite", () => seen("carol", { type: "room_invite" }));
rooms("carol").join("#team");
await until("bob to see carol join", () => seen("bob", { type: "room_member", name: "carol" }));
await step("remove-bob", () => rooms("alice").remove("#team", "bob"));
await until("bob removed", () => seen("bob", { type: "room_member", name: "bob" }));
await step("leave-carol", () => rooms("carol").leave("#team"));
await until("alice to see carol leave", () => seen("alice", { type: "room_member", name: "carol" }));
await rooms("alice").create("#side");
await step("invite-bob-side", () => rooms("alice").invite("#side", "bob"));
await until("bob's room_invite to #side", () => seen("bob", { type: "room_invite", room: "#side" }));
await step("decline-bob-side", () => rooms("bob").decline("#side"));
await until("alice to hear it", () => events.some((e) => e.self === "alice" && e.type === "warning"));
for (const p of parties.values()) await p.rooms.stop();
`;

/** The index of the mark `name` in the trace; fails when there is none. */
// The file calls of `script` run with `dir`, traced; it must succeed.
async function traceScript(script: string, dir: string): Promise<FileCall[]> {
  const { code, stderr, calls } = await traceFileCalls(strace!, Deno.execPath(), [
    "run",
    "--allow-read",
    "--allow-write",
    "--allow-env",
    script,
    dir,
  ]);
  assert.equal(code, 0, stderr);
  return calls;
}

function markAt(calls: FileCall[], dir: string, name: string): number {
  const i = indexOfCall(calls, "openat", join(dir, "marks", name));
  assert.ok(i >= 0, `no mark ${name} in the trace`);
  return i;
}

/**
 * Whether `file` was renamed into place between calls `from` and `to`, its bytes fsynced
 * before the rename and its folder after it, all before `to`.
 */
function durableBetween(calls: FileCall[], from: number, to: number, file: string): boolean {
  for (let i = to - 1; i > from; i--) {
    const c = calls[i];
    if (!c.ok || c.call !== "rename" || c.paths[1] !== file) continue;
    const bytes = calls.slice(from, i).some((s) =>
      s.ok && s.call === "fsync" && s.paths[0] === c.paths[0]
    );
    const name = calls.slice(i + 1, to).some((s) =>
      s.ok && s.call === "fsync" && s.paths[0] === dirname(file)
    );
    return bytes && name; // the last write before `to` is the one that counts
  }
  return false;
}

/** Whether `file` was unlinked between `from` and `to`, and its folder fsynced after it. */
function removedBetween(calls: FileCall[], from: number, to: number, file: string): boolean {
  const i = calls.findIndex((c, k) =>
    k > from && k < to && c.ok && c.call === "unlink" && c.paths.at(-1) === file
  );
  return i >= 0 &&
    calls.slice(i + 1, to).some((c) => c.ok && c.call === "fsync" && c.paths[0] === dirname(file));
}

Deno.test({
  name:
    "Rooms: every change of membership or invitations is durable before any frame, event or answer tells of it, and a forgotten room's file is gone for good first",
  ignore: !strace && !CI,
  fn: async () => {
    assert.ok(strace, "CI=true and strace is not on PATH: the durability tests cannot run");
    await withTempDir(async (dir) => {
      const script = join(dir, "script.ts");
      await Deno.writeTextFile(script, SCRIPT.replaceAll("ROOT/", pathToFileURL(ROOT).href + "/"));
      const calls = await traceScript(script, dir);
      const id = (await Deno.readTextFile(join(dir, "room"))).trim();
      const file = (who: string) => join(dir, who, "rooms", `${id}.json`);
      const at = (name: string) => markAt(calls, dir, name);
      const first = (...names: string[]) => Math.min(...names.map(at));

      // 1. The creator's invitation: before the invitation leaves, and before invite() answers.
      assert.ok(
        durableBetween(
          calls,
          at("before-invite-bob"),
          first("alice-sends-invite-bob", "answered-invite-bob"),
          file("alice"),
        ),
        "alice's invitation of bob durable before it went and before invite() answered",
      );
      // …and of one not connected: before the CA is asked to connect us.
      assert.ok(
        durableBetween(
          calls,
          at("before-invite-carol"),
          first("alice-invites-carol", "answered-invite-carol"),
          file("alice"),
        ),
        "alice's invitation of carol durable before the CA invitation and the answer",
      );
      // An invitation withdrawn: before remove() answers.
      assert.ok(
        durableBetween(
          calls,
          at("before-withdraw-carol"),
          at("answered-withdraw-carol"),
          file("alice"),
        ),
        "the withdrawal durable before remove() answered",
      );
      // A join kept before it goes: back from a restart, it answers the creator's state.
      assert.ok(
        durableBetween(
          calls,
          at("before-join-bob"),
          at("bob-sends-join-alice"),
          join(dir, "bob", "room-invitations.json"),
        ),
        "bob's join kept, durably, before it went to alice",
      );
      // 2. A room joined through a list: before room_joined, and before our state frames.
      const joined = at("bob-room_joined");
      assert.ok(
        durableBetween(calls, at("alice-sends-list-bob-v2"), joined, file("bob")),
        "bob's room (and the creator's key) durable before room_joined",
      );
      // The creator's new list: durable before it goes to anyone, and before its event.
      assert.ok(
        durableBetween(
          calls,
          at("bob-sends-join-alice"),
          first("alice-sends-list-bob-v2", "alice-room_member-bob-joined"),
          file("alice"),
        ),
        "alice's list v2 durable before she sent it and showed bob join",
      );
      assert.ok(
        durableBetween(
          calls,
          at("carol-sends-join-alice"),
          first(
            "alice-sends-list-bob-v3",
            "alice-sends-list-carol-v3",
            "alice-room_member-carol-joined",
          ),
          file("alice"),
        ),
        "alice's list v3 durable before she sent it and showed carol join",
      );
      // A newer list applied by a member: before its room_member event.
      assert.ok(
        durableBetween(
          calls,
          at("alice-sends-list-bob-v3"),
          at("bob-room_member-carol-joined"),
          file("bob"),
        ),
        "bob's list v3 durable before he showed carol join",
      );
      assert.ok(
        durableBetween(
          calls,
          at("before-remove-bob"),
          first(
            "alice-sends-list-bob-v4",
            "alice-sends-list-carol-v4",
            "alice-room_member-bob-removed",
          ),
          file("alice"),
        ),
        "alice's list v4 durable before she sent it and showed bob removed",
      );
      // Removed: the room's file gone for good before the member shows it.
      assert.ok(
        removedBetween(
          calls,
          at("alice-sends-list-bob-v4"),
          at("bob-room_member-bob-removed"),
          file("bob"),
        ),
        "bob's room file removed, durably, before he showed his removal",
      );
      // Left: gone for good before the creator is told.
      assert.ok(
        removedBetween(
          calls,
          at("before-leave-carol"),
          at("carol-sends-leave-alice"),
          file("carol"),
        ),
        "carol's room file removed, durably, before she told alice",
      );
      // The leave kept (to tell a creator away, or tell again one whose leave was lost) before
      // the room's files go: a leave that was never kept is never sent.
      const carolRemoves = calls.findIndex((c, k) =>
        k > at("before-leave-carol") && c.ok && c.call === "unlink" &&
        c.paths.at(-1) === file("carol")
      );
      assert.ok(
        carolRemoves > 0 &&
          durableBetween(
            calls,
            at("before-leave-carol"),
            carolRemoves,
            join(dir, "carol", "room-invitations.json"),
          ),
        "carol's leave kept, durably, before her room file was removed and alice told",
      );
      assert.ok(
        durableBetween(
          calls,
          at("carol-sends-leave-alice"),
          first("alice-sends-list-carol-v5", "alice-room_member-carol-left"),
          file("alice"),
        ),
        "alice's list v5 durable before she sent it and showed carol leave",
      );
      // 3. A room invitation received: kept before it is shown; declined: kept before the
      // creator is told and before decline() answers (back from a restart, neither is lost).
      const invitations = join(dir, "bob", "room-invitations.json");
      assert.ok(
        durableBetween(
          calls,
          at("before-invite-bob-side"),
          at("bob-room_invite-side"),
          invitations,
        ),
        "bob's invitation to #side durable before room_invite",
      );
      assert.ok(
        durableBetween(
          calls,
          at("before-decline-bob-side"),
          first("bob-sends-leave-alice", "answered-decline-bob-side"),
          invitations,
        ),
        "bob's decline of #side durable before alice was told and before decline() answered",
      );
    });
  },
});

Deno.test({
  name:
    "Room messages do not fsync the room's file or its folder: only the sequence number is synced, once a turn",
  ignore: !strace && !CI,
  fn: async () => {
    assert.ok(strace, "CI=true and strace is not on PATH: the durability tests cannot run");
    await withTempDir(async (dir) => {
      const script = join(dir, "script.ts");
      await Deno.writeTextFile(
        script,
        `import { generateKeyPairSync } from "node:crypto";
         import { Rooms } from "ROOT/client/rooms.ts";
         const [dir] = Deno.args;
         const key = generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" });
         const rooms = new Rooms({
           self: "alice", privateKey: () => key, peer: () => undefined, pinned: () => undefined,
           invite: () => Promise.resolve(), accept: () => Promise.resolve(), invitations: () => [],
           emit: (e) => { if (e.type === "warning") throw new Error(e.message); },
           history: { roomMessage() {} }, dir: dir + "/rooms",
         });
         const info = await rooms.create("#team");
         Deno.writeTextFileSync(dir + "/room", info.roomId);
         rooms.send("#team", "the first: its sequence-number file is new, with its folder");
         await new Promise((resolve) => setTimeout(resolve, 30));
         Deno.writeTextFileSync(dir + "/started", "");
         for (let turn = 0; turn < 5; turn++) {
           rooms.send("#team", "hello " + turn);
           await new Promise((resolve) => setTimeout(resolve, 30)); // past the 20 ms save
         }
         await rooms.stop();`.replaceAll("ROOT/", pathToFileURL(ROOT).href + "/"),
      );
      const calls = await traceScript(script, dir);
      const id = (await Deno.readTextFile(join(dir, "room"))).trim();
      const started = indexOfCall(calls, "openat", join(dir, "started"));
      const after = calls.slice(started);
      const renames = after.filter((c) =>
        c.ok && c.call === "rename" && c.paths[1] === join(dir, "rooms", `${id}.json`)
      );
      assert.ok(renames.length >= 5, `the room file written after each turn (${renames.length})`);
      const written = new Set(renames.map((c) => c.paths[0]));
      const syncs = after.filter((c) => c.ok && c.call === "fsync");
      assert.deepEqual(syncs.filter((c) => written.has(c.paths[0])), [], "a room file fsynced");
      assert.deepEqual(
        syncs.filter((c) => c.paths[0] === join(dir, "rooms")).length,
        0,
        "the rooms folder fsynced for a message",
      );
    });
  },
});

// ---------------------------------------------------------------------------

/** A scenario's world: the shared service, its own folder, and the clients it started. */
class Scene {
  readonly service: Service;
  readonly dir: string;
  clients: ChatClient[] = [];
  constructor(service: Service, dir: string) {
    this.service = service;
    this.dir = dir;
  }
  async close(): Promise<void> {
    await stopAll(this.clients);
  }
}

async function killedAfterRoomJoined(s: Scene): Promise<void> {
  const [aliceUser, bobUser] = await Promise.all(
    ["alice", "bob"].map((n) => joinUser(s.service, n, join(s.dir, n))),
  );
  const alice = await ChatClient.start(aliceUser);
  s.clients.push(alice);
  const bob = await ChatClient.start(bobUser);
  s.clients.push(bob);
  await alice.send("/room create #team");
  await alice.expect({ type: "room_joined", room: "#team" });
  await alice.send("/room invite #team bob");
  await bob.expect({ type: "invite", from: "alice" });
  await bob.send("/accept alice");
  await bob.expect({ type: "room_invite", room: "#team", from: "alice" });
  await bob.send("/room join #team");
  await bob.expect({ type: "room_joined", room: "#team" }, 30_000);
  await bob.kill(); // at once: no moment for a write that comes later
  await alice.stop(); // nobody can tell bob again
  const again = await ChatClient.start(bobUser);
  s.clients.push(again);
  await again.send("/rooms");
  const rooms = await again.expect({ type: "rooms" });
  assert.deepEqual(
    rooms.rooms,
    [{ room: "#team", members: 2, version: 2 }],
    `bob came back without the room he was told he joined\n${again.describe()}`,
  );
}

Deno.test("rooms end to end: a member killed right after room_joined comes back in the room", async (t) => {
  await runScenarios(
    t,
    [[
      "a member killed with SIGKILL right after room_joined is in the room after its restart",
      killedAfterRoomJoined,
    ]],
    (service, dir) => new Scene(service, dir),
  );
});
