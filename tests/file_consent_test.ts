/**
 * Files need consent and fit quotas; sends run in the background (issue #15,
 * findings 2 and 3; docs/PROTOCOL.md §3 "Offers, consent and quotas" and
 * "Sending in the background"). Real CA service, real `client chat --json`
 * processes, and raw mutual-TLS peers that speak the wire protocol by hand.
 *
 * @module
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { encodeFrame } from "../lib/frames.ts";
import { ChatClient, connect, stopAll, waitUntil, within } from "./_harness.ts";
import type { Service } from "./_service_helpers.ts";
import { joinUser, RawPeer, runScenarios, type User } from "./_chat_helpers.ts";

const MiB = 1024 * 1024;
const EMPTY_SHA = createHash("sha256").update(new Uint8Array()).digest("hex");
const OFFER_HELLO = encodeFrame({ type: "hello", v: 1, features: ["bin", "offer"] });

/** A scenario's world: the shared service, its own folder, and what it started. */
class Scene {
  readonly service: Service;
  readonly dir: string;
  #clients: ChatClient[] = [];
  #raw: RawPeer[] = [];

  constructor(service: Service, dir: string) {
    this.service = service;
    this.dir = dir;
  }

  async join(...names: string[]): Promise<User[]> {
    return await Promise.all(names.map((n) => joinUser(this.service, n, join(this.dir, n))));
  }

  async start(user: User, args: string[] = []): Promise<ChatClient> {
    const client = await ChatClient.start(user, { args });
    this.#clients.push(client);
    return client;
  }

  raw(port: number, user: { cert: string; key: string }): RawPeer {
    const peer = RawPeer.connect(port, user);
    this.#raw.push(peer);
    return peer;
  }

  async close(): Promise<void> {
    for (const r of this.#raw) r.destroy();
    await stopAll(this.#clients);
  }
}

async function credentials(user: User): Promise<{ cert: string; key: string }> {
  return {
    cert: await Deno.readTextFile(user.certPath),
    key: await Deno.readTextFile(user.keyPath),
  };
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) names.push(e.name);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return names.sort();
}

async function sparseFile(path: string, bytes: number): Promise<void> {
  using f = await Deno.open(path, { write: true, create: true });
  await f.truncate(bytes);
}

/** alice invites `bob`; bob connects by hand, reads her hello and sends `hello`. */
async function rawBob(
  scene: Scene,
  alice: ChatClient,
  bob: User,
  hello = OFFER_HELLO,
): Promise<RawPeer> {
  await alice.send(`/chat ${bob.name}`);
  await alice.expect({ type: "invited", to: bob.name });
  const peer = scene.raw(alice.port, await credentials(bob));
  await peer.expectFrame({ type: "hello", v: 1 });
  peer.write(hello); // alice says connected once it arrives
  await alice.expect({ type: "connected", peer: bob.name });
  return peer;
}

/** Offers three files of 700 MB as PREFIX0…PREFIX2 (the "three 700 MB sends"). */
function offerHuge(peer: RawPeer, prefix: string): void {
  for (let i = 0; i < 3; i++) {
    peer.write(encodeFrame({
      type: "file",
      id: `${prefix}${i}`,
      name: `huge${i}.iso`,
      size: 700 * 1000 * 1000,
      sha256: "0".repeat(64),
    }));
  }
}

/** Pins bob's key at alice: one connection that only says hello and bye. */
async function pin(scene: Scene, alice: ChatClient, bob: User): Promise<void> {
  const peer = await rawBob(scene, alice, bob);
  peer.write(encodeFrame({ type: "bye" }));
  await peer.expectClosed();
  await alice.expect({ type: "disconnected", peer: bob.name });
}

/** An offer above --auto-accept, or from a key first seen now, waits for /get or /decline. */
async function offerWaitsForTheUser(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-ask", "bob-ask");
  const [alice, bob] = await Promise.all([
    scene.start(aliceUser),
    scene.start(bobUser, ["--auto-accept", "1MiB"]),
  ]);
  await connect(alice, bob);
  const small = join(scene.dir, "small.txt");
  await Deno.writeTextFile(small, "small but from a key first seen now\n");
  const bobDownloads = join(bobUser.home, "downloads");

  // A key first seen on this connection is not pinned: even a small file waits.
  await alice.send(`/file ${small}`);
  const offer = await bob.expect({ type: "file_offer", from: "alice-ask" });
  assert.equal(offer.name, "small.txt");
  assert.equal(offer.bytes, 36);
  await bob.expectNone(bob.mark(), { type: "file" }, 700);
  assert.deepEqual(await listDir(bobDownloads), [], "written before the user accepted");
  await bob.send(`/get ${offer.id}`);
  const got = await bob.expect({ type: "file", from: "alice-ask" });
  assert.equal(got.id, offer.id);
  await alice.expect({ type: "delivered", to: "bob-ask", id: offer.id });

  // /decline: nothing written, and alice is told.
  await alice.send(`/file ${small}`);
  const second = await bob.expect({ type: "file_offer", from: "alice-ask" });
  await bob.send(`/decline alice-ask ${second.id}`);
  const failed = await alice.expect({ type: "file_failed", id: second.id });
  assert.equal(failed.direction, "out");
  assert.match(String(failed.reason), /"bob-ask" declined it: declined by the user/);
  assert.deepEqual(await listDir(bobDownloads), ["small.txt"]);
  // An id nobody offered.
  await bob.send("/get nope");
  assert.match(String((await bob.expect({ type: "error" })).message), /No file offer "nope"/);

  // Once the key is pinned, a small file comes without asking; one above --auto-accept waits.
  await bob.send("/close alice-ask");
  await alice.expect({ type: "disconnected", peer: "bob-ask" });
  const again = await connect(alice, bob);
  assert.equal(again.atTo.trust, "known");
  await alice.send(`/file ${small}`);
  const auto = await bob.expect((e) => e.type === "file" || e.type === "file_offer");
  assert.equal(auto.type, "file", JSON.stringify(auto));
  const big = join(scene.dir, "big.bin");
  await sparseFile(big, 2 * MiB);
  const mark = bob.mark();
  await alice.send(`/file ${big}`);
  const bigOffer = await bob.expect({ type: "file_offer", name: "big.bin" });
  assert.equal(bigOffer.bytes, 2 * MiB);
  assert.deepEqual(bob.since(mark, { type: "file" }), []);
  await bob.send(`/get ${bigOffer.id}`);
  const bigFile = await bob.expect({ type: "file", name: "big.bin" });
  assert.equal(bigFile.bytes, 2 * MiB);
}

/**
 * A pinned peer that offers 50 empty files named ../../../etc/passwd and then 3
 * huge ones: the per-peer file quota takes 5, declines the rest with the
 * reason on both sides; the huge ones wait for consent and the byte quota
 * refuses what would pass it; nothing is written outside the quota.
 */
async function quotasAndConsent(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-quota", "bob-quota");
  const alice = await scene.start(aliceUser, ["--peer-files", "5", "--peer-quota", "1GiB"]);
  await pin(scene, alice, bobUser);
  const downloads = join(aliceUser.home, "downloads");
  const peer = await rawBob(scene, alice, bobUser);
  for (let i = 0; i < 50; i++) {
    peer.write(encodeFrame({
      type: "file",
      id: `p${i}`,
      name: "../../../etc/passwd",
      size: 0,
      sha256: EMPTY_SHA,
    }));
  }
  await peer.expectFrame({ type: "decline", id: "p49" });
  const accepted = peer.frames.filter((f) => f.type === "accept").map((f) => f.id);
  const declined = peer.frames.filter((f) => f.type === "decline");
  assert.deepEqual(accepted, Array.from({ length: 5 }, (_, i) => `p${i}`));
  assert.equal(declined.length, 45);
  for (const d of declined) {
    assert.equal(d.reason, 'refused: the quota of 5 files from "bob-quota" is used up');
  }
  const refusals = () => alice.since(0, { type: "file_failed", direction: "in" });
  await waitUntil(() => refusals().length === 45, "45 refusals at alice");
  const refusedHere = refusals();
  assert.match(String(refusedHere[0].message), /quota of 5 files from "bob-quota" is used up/);
  // The accepted ones come, each as its own safe name; the declined ones were never written.
  for (const id of accepted) peer.write(encodeFrame({ type: "end", id: String(id) }));
  await alice.expectCount("file", 5);
  const names = await listDir(downloads);
  assert.equal(names.length, 5);
  assert.ok(names.every((n) => /^passwd( \(\d\))?$/.test(n)), JSON.stringify(names));

  // Three huge files: the file quota is used up, so they are declined at once.
  const mark = alice.mark();
  offerHuge(peer, "h");
  for (let i = 0; i < 3; i++) {
    const d = await peer.expectFrame({ type: "decline", id: `h${i}` });
    assert.match(String(d.reason), /quota of 5 files from "bob-quota" is used up/);
    await alice.expect({ type: "file_failed", id: `h${i}`, direction: "in" });
  }
  assert.deepEqual(alice.since(mark, { type: "file_offer" }), []);
  peer.destroy();
  await alice.expect({ type: "disconnected", peer: "bob-quota" });
  assert.equal((await listDir(downloads)).length, 5);

  // A restart does not reset the quotas: the five files still count, until the user deletes one.
  await alice.stop();
  const again = await scene.start(aliceUser, ["--peer-files", "5"]);
  const peerAgain = await rawBob(scene, again, bobUser);
  const empty = (id: string) =>
    encodeFrame({ type: "file", id, name: "again.txt", size: 0, sha256: EMPTY_SHA });
  peerAgain.write(empty("r0"));
  const stillFull = await peerAgain.expectFrame({ type: "decline", id: "r0" });
  assert.equal(stillFull.reason, 'refused: the quota of 5 files from "bob-quota" is used up');
  await Deno.remove(join(downloads, names[0]));
  peerAgain.write(empty("r1"));
  await peerAgain.expectFrame({ type: "accept", id: "r1" });
  peerAgain.write(encodeFrame({ type: "end", id: "r1" }));
  await again.expect({ type: "file", id: "r1" });
  peerAgain.destroy();
  await again.expect({ type: "disconnected", peer: "bob-quota" });
  await again.stop();

  // A fresh run with 1 GiB from one peer: three files of 700 MB are
  // above --auto-accept, so they wait for the user and nothing is written meanwhile; the first
  // accepted fits, the second would pass the byte quota, the third is declined by hand.
  const alice2 = await scene.start(aliceUser, ["--peer-quota", "1GiB"]);
  const peer2 = await rawBob(scene, alice2, bobUser);
  offerHuge(peer2, "g");
  const offers = [];
  for (let i = 0; i < 3; i++) offers.push(await alice2.expect({ type: "file_offer", id: `g${i}` }));
  assert.deepEqual(offers.map((o) => [o.name, o.bytes]), [
    ["huge0.iso", 7e8],
    ["huge1.iso", 7e8],
    ["huge2.iso", 7e8],
  ]);
  await alice2.expectNone(alice2.mark(), { type: "file" }, 300);
  assert.ok(!peer2.frames.some((f) => f.type === "accept" || f.type === "decline"));
  assert.equal((await listDir(downloads)).length, 5, "written before consent");
  await alice2.send("/get g0");
  await peer2.expectFrame({ type: "accept", id: "g0" });
  await alice2.send("/get bob-quota g1");
  const refused = await alice2.expect({ type: "error" });
  assert.match(
    String(refused.message),
    /File refused: it would pass the quota of 1 GiB from "bob-quota"/,
  );
  const d2 = await peer2.expectFrame({ type: "decline", id: "g1" });
  assert.match(String(d2.reason), /would pass the quota of 1 GiB/);
  await alice2.send("/decline g2");
  assert.equal(
    (await peer2.expectFrame({ type: "decline", id: "g2" })).reason,
    "declined by the user",
  );
  peer2.destroy();
  await alice2.expect({ type: "disconnected", peer: "bob-quota" });
  await alice2.expect({ type: "file_failed", id: "g0", direction: "in" });
  assert.equal((await listDir(downloads)).length, 5, "a partial file was left");

  // The free-space floor: no disk has this much free.
  await alice2.stop();
  const alice3 = await scene.start(aliceUser, ["--free-floor", "1000TiB"]);
  const peer3 = await rawBob(scene, alice3, bobUser);
  peer3.write(encodeFrame({ type: "file", id: "e", name: "e.txt", size: 0, sha256: EMPTY_SHA }));
  const floor = await peer3.expectFrame({ type: "decline", id: "e" });
  assert.match(String(floor.reason), /would leave less than 1000 TiB free on the disk/);
  await alice3.expect({ type: "file_failed", id: "e", direction: "in" });
}

/** A peer that streams without asking ("offer" not in its hello) is refused beyond the old rules. */
async function oldPeerRefused(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-old", "bob-old");
  const alice = await scene.start(aliceUser);
  const downloads = join(aliceUser.home, "downloads");
  const hello = encodeFrame({ type: "hello", v: 1, features: ["bin"] });
  // A key first seen now: even a small file is refused (it cannot be asked about).
  let peer = await rawBob(scene, alice, bobUser, hello);
  peer.write(encodeFrame({ type: "file", id: "s", name: "s.txt", size: 0, sha256: EMPTY_SHA }));
  let error = await peer.expectFrame({ type: "error" });
  assert.match(String(error.message), /^File refused: "bob-old" sends files without asking/);
  assert.match(String(error.message), /a peer that lists "offer" waits for the user to accept/);
  assert.match(String(error.message), /from a key first seen now/);
  await peer.expectClosed();
  await alice.expect({ type: "file_failed", id: "s", direction: "in" });
  // Pinned now (seen before): a small file still comes; 700 MB does not.
  peer = await rawBob(scene, alice, bobUser, hello);
  peer.write(encodeFrame({ type: "file", id: "s", name: "s.txt", size: 0, sha256: EMPTY_SHA }));
  peer.write(encodeFrame({ type: "end", id: "s" }));
  await peer.expectFrame({ type: "ack", id: "s" });
  peer.write(encodeFrame({
    type: "file",
    id: "h",
    name: "huge.iso",
    size: 700 * 1000 * 1000,
    sha256: "0".repeat(64),
  }));
  error = await peer.expectFrame({ type: "error" });
  assert.match(String(error.message), /only up to 25 MiB from a pinned key, and this one is/);
  await peer.expectClosed();
  assert.deepEqual(await listDir(downloads), ["s.txt"]);
}

/**
 * A receiver that accepts and then never reads: alice's /peers, /help and
 * /quit answer within a second, and the send is aborted after --send-stall.
 */
async function receiverThatNeverReads(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-stall", "bob-stall");
  const alice = await scene.start(aliceUser, ["--send-stall", "3"]);
  const big = join(scene.dir, "big.bin");
  await sparseFile(big, 256 * MiB);

  const jam = async () => {
    const peer = await rawBob(scene, alice, bobUser);
    // alice has read our hello once she acknowledged this.
    peer.write(encodeFrame({ type: "msg", id: "m", text: "ready" }));
    await peer.expectFrame({ type: "ack", id: "m" });
    await alice.send(`/file ${big}`);
    const offer = await peer.expectFrame({ type: "file" });
    peer.pause();
    peer.write(encodeFrame({ type: "accept", id: String(offer.id) }));
    await alice.expect({ type: "progress", direction: "out" });
    return { peer, id: offer.id };
  };

  const { id } = await jam();
  for (const [command, type] of [["/peers", "peers"], ["/help", "help"]]) {
    const t0 = await alice.send(command);
    const { t } = await alice.expectTimed({ type });
    assert.ok(t - t0 < 1_000, `${command} took ${Math.round(t - t0)} ms`);
  }
  const failed = await alice.expect({ type: "file_failed", id }, 10_000);
  assert.equal(failed.direction, "out");
  assert.match(String(failed.reason), /no progress for 3 s: "bob-stall" reads nothing/);
  await alice.expect({ type: "disconnected", peer: "bob-stall" });

  // /quit with a jammed send: the client exits at once.
  await jam();
  const t0 = performance.now();
  await alice.send("/quit");
  const status = await within(alice.status, 3_000, null);
  assert.ok(status, `/quit did not exit within 3 s`);
  assert.ok(performance.now() - t0 < 3_000);
}

const SCENARIOS: Array<[string, (scene: Scene) => Promise<void>]> = [
  [
    "an offer above --auto-accept or from a key first seen now waits for /get; /decline tells the sender; a pinned key's small file comes at once",
    offerWaitsForTheUser,
  ],
  [
    "50 offered files and 3 huge ones are refused by the file quota, consent, the byte quota and the free-space floor, with the reason on both sides and nothing written",
    quotasAndConsent,
  ],
  [
    'a peer whose hello does not list "offer" is refused any file outside the auto-accept rule, with an error naming both behaviours',
    oldPeerRefused,
  ],
  [
    "a receiver that never reads: /peers and /help answer within a second, the send is aborted after --send-stall, and /quit exits at once",
    receiverThatNeverReads,
  ],
];

Deno.test("files need consent and fit quotas, and sends never block the client (issue #15)", async (t) => {
  await runScenarios(t, SCENARIOS, (service, dir) => new Scene(service, dir));
});
