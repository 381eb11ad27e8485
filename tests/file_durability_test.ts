/**
 * A direct file is acknowledged to its sender only once the receiver's records
 * of it are on disk: the quota ledger (HOME/received.json) and its history
 * line, both synced (docs/PROTOCOL.md §3). A record that cannot be written
 * stands in for a crash between the file landing and the record: the sender
 * must hear no `ack` then, and the receiver keep nothing it has no record of.
 * Real CA service, real `client chat --json` receivers killed with SIGKILL and
 * started again, and raw mutual-TLS senders that speak the wire protocol by hand.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { encodeFrame } from "../lib/frames.ts";
import { ChatClient, stopAll } from "./_harness.ts";
import type { Service } from "./_service_helpers.ts";
import { joinUser, RawPeer, runScenarios, type User } from "./_chat_helpers.ts";

const OFFER_HELLO = encodeFrame({ type: "hello", v: 1, features: ["offer"] });

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

  /** `receiver` invites `sender`, who connects by hand and says hello (with "offer"). */
  async connectRaw(receiver: ChatClient, sender: User): Promise<RawPeer> {
    await receiver.send(`/chat ${sender.name}`);
    await receiver.expect({ type: "invited", to: sender.name });
    const peer = RawPeer.connect(receiver.port, {
      cert: await Deno.readTextFile(sender.certPath),
      key: await Deno.readTextFile(sender.keyPath),
    });
    this.#raw.push(peer);
    await peer.expectFrame({ type: "hello", v: 1 });
    peer.write(OFFER_HELLO);
    await receiver.expect({ type: "connected", peer: sender.name });
    return peer;
  }

  async close(): Promise<void> {
    for (const r of this.#raw) r.destroy();
    await stopAll(this.#clients);
  }
}

/** Pins `sender`'s key at `receiver` (one connection that says hello and bye): small files then come without asking. */
async function pin(scene: Scene, receiver: ChatClient, sender: User): Promise<void> {
  const peer = await scene.connectRaw(receiver, sender);
  peer.write(encodeFrame({ type: "bye" }));
  await peer.expectClosed();
  await receiver.expect({ type: "disconnected", peer: sender.name });
}

/** Offers `text` as the file `name` (id `id`), waits for the accept, then sends it and its end. */
async function sendFile(peer: RawPeer, id: string, name: string, text: string): Promise<void> {
  const bytes = new TextEncoder().encode(text);
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  peer.write(encodeFrame({ type: "file", id, name, size: bytes.length, sha256 }));
  await peer.expectFrame({ type: "accept", id });
  peer.write(encodeFrame({ type: "chunk", id, data: Buffer.from(bytes).toString("base64") }));
  peer.write(encodeFrame({ type: "end", id }));
}

/** Asserts that the receiver answered the file `id` with an error frame and no `ack`. */
async function assertNotAcknowledged(peer: RawPeer, id: string): Promise<void> {
  const error = await peer.expectFrame({ type: "error" });
  assert.equal(error.message, "The receiver could not keep the file");
  await peer.expectClosed();
  assert.ok(
    !peer.frames.some((f) => f.type === "ack" && f.id === id),
    `the sender heard the file arrived: ${JSON.stringify(peer.lines)}`,
  );
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
}

async function fileEntries(client: ChatClient, peer: string): Promise<Array<{ name: string }>> {
  await client.send(`/history ${peer}`);
  const history = await client.expect({ type: "history", peer });
  const entries = history.entries as Array<{ kind: string; file?: { name: string } }>;
  return entries.filter((e) => e.kind === "file").map((e) => ({ name: e.file!.name }));
}

/**
 * bob's history of alice cannot be written (a folder where its file goes, as root too): before
 * the fix bob acknowledged the file and then failed to write its line, so a crash there left
 * alice told it arrived and bob with no record of it. Now alice hears no ack, bob keeps nothing;
 * killed and started again with the disk fixed, bob takes her file again and records it once.
 */
async function historyLineBeforeAck(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-h", "bob-h");
  let bob = await scene.start(bobUser);
  await pin(scene, bob, aliceUser);
  const downloads = join(bobUser.home, "downloads");
  const history = join(bobUser.home, "history");
  const blocked = join(history, "alice-h.jsonl");
  await Deno.mkdir(blocked, { recursive: true, mode: 0o700 });
  await Deno.chmod(history, 0o700);

  let peer = await scene.connectRaw(bob, aliceUser);
  await sendFile(peer, "f1", "notes.txt", "kept only with its history line\n");
  await assertNotAcknowledged(peer, "f1");
  const failed = await bob.expect({ type: "file_failed", id: "f1", direction: "in" });
  assert.match(
    String(failed.reason),
    /^Cannot write the history of "alice-h" in ".*": Is a directory$/,
  );
  assert.equal(bob.count("file"), 0, bob.describe());
  assert.deepEqual(await listDir(downloads), [], "a file kept with no history line");

  // The receiver dies (SIGKILL), the disk is fixed, it starts again: alice sends again.
  await bob.kill("SIGKILL");
  await Deno.remove(blocked);
  bob = await scene.start(bobUser);
  peer = await scene.connectRaw(bob, aliceUser);
  await sendFile(peer, "f2", "notes.txt", "kept only with its history line\n");
  await peer.expectFrame({ type: "ack", id: "f2" });
  await bob.kill("SIGKILL"); // at once after the ack: the line must already be on disk
  bob = await scene.start(bobUser);
  assert.deepEqual(await fileEntries(bob, "alice-h"), [{ name: "notes.txt" }]);
  assert.deepEqual(await listDir(downloads), ["notes.txt"]);
}

/**
 * bob's quota ledger cannot be written (a folder in place of received.json): before the fix the
 * file was acknowledged and the ledger written after, in the background, so a crash there let
 * the file go uncounted by the quotas of the next run. Now alice hears no ack, bob keeps nothing;
 * once it can be written, a file acknowledged counts after a SIGKILL that follows the ack at once.
 */
async function ledgerBeforeAck(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-q", "bob-q");
  const quota = ["--peer-files", "1"];
  let bob = await scene.start(bobUser, quota);
  await pin(scene, bob, aliceUser);
  const downloads = join(bobUser.home, "downloads");
  const ledger = join(bobUser.home, "received.json");
  await Deno.mkdir(ledger, { mode: 0o700 });

  let peer = await scene.connectRaw(bob, aliceUser);
  await sendFile(peer, "f1", "a.txt", "counted before it is acknowledged\n");
  await assertNotAcknowledged(peer, "f1");
  const failed = await bob.expect({ type: "file_failed", id: "f1", direction: "in" });
  assert.match(
    String(failed.reason),
    /^Cannot record "a\.txt" for the file quotas in ".*received\.json": Is a directory$/,
  );
  assert.equal(bob.count("file"), 0, bob.describe());
  assert.deepEqual(await listDir(downloads), [], "a file kept that the quotas do not count");
  assert.deepEqual(await fileEntries(bob, "alice-q"), [], "a history line for a file not kept");

  // The quota was given back: with the ledger fixed, the one file allowed is taken; a SIGKILL
  // right after its ack does not free its share.
  await Deno.remove(ledger);
  peer = await scene.connectRaw(bob, aliceUser);
  await sendFile(peer, "f2", "a.txt", "counted before it is acknowledged\n");
  await peer.expectFrame({ type: "ack", id: "f2" });
  await bob.kill("SIGKILL");
  bob = await scene.start(bobUser, quota);
  peer = await scene.connectRaw(bob, aliceUser);
  peer.write(
    encodeFrame({ type: "file", id: "f3", name: "b.txt", size: 1, sha256: "0".repeat(64) }),
  );
  const refused = await peer.expectFrame({ type: "decline", id: "f3" });
  assert.equal(refused.reason, 'refused: the quota of 1 files from "alice-q" is used up');
  assert.deepEqual(await listDir(downloads), ["a.txt"]);
}

const SCENARIOS: Array<[string, (scene: Scene) => Promise<void>]> = [
  [
    "a direct file whose history line cannot be written is not acknowledged nor kept, and is recorded once when sent again after the receiver is killed and started again",
    historyLineBeforeAck,
  ],
  [
    "a direct file whose quota record cannot be written is not acknowledged nor kept, and one acknowledged still counts after the receiver is killed right after its ack",
    ledgerBeforeAck,
  ],
];

Deno.test("a direct file is acknowledged only once its history line and quota record are on disk", async (t) => {
  await runScenarios(t, SCENARIOS, (service, dir) => new Scene(service, dir));
});
