/**
 * End-to-end tests of the chat against docs/PROTOCOL.md: one real CA service
 * (`ca/main.ts serve --port 0` on a fresh EC P-256 CA), users joined with real
 * invites through `client join`, and chat clients run as
 * `client/main.ts chat --json` processes with the `client` task's permissions,
 * driven through stdin and read as JSON events. The wire protocol is also
 * spoken by hand, over node:tls and with `openssl s_client`.
 *
 * The scenarios share the service but nothing else (each has its own users and
 * folder), so they run concurrently to keep the file fast.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHash, randomBytes } from "node:crypto";
import { basename, dirname, join } from "node:path";
import tls from "node:tls";
import { safetyNumber } from "../client/trust.ts";
import {
  decodeFrame,
  encodeFrame,
  type Frame,
  LineSplitter,
  MAX_LINE_BYTES,
  PROTOCOL_VERSION,
} from "../lib/frames.ts";
import { openssl } from "../lib/openssl.ts";
import { ChatClient, connect, sleep, stopAll, waitUntil } from "./_harness.ts";
import { makeCsr, runCa } from "./_helpers.ts";
import { assertSuccess, initCa, runClient, type Service } from "./_service_helpers.ts";
import {
  joinUser,
  RawPeer,
  type RawPeerOptions,
  revoke,
  runScenarios,
  sClient,
  selfSigned,
  type User,
  whoami,
} from "./_chat_helpers.ts";

const SAFETY_NUMBER = /^\d{5}( \d{5}){11}$/;
const MiB = 1024 * 1024;
/** The one message of every failed peer check (lib/tls.ts). */
const REJECTED = "The peer's certificate was rejected";

// ---------------------------------------------------------------------------
// Helpers

/** A scenario's world: the shared service, its own folder, and what it started. */
class Scene {
  readonly service: Service;
  readonly dir: string;
  #clients: ChatClient[] = [];
  #raw: RawPeer[] = [];
  #servers: tls.Server[] = [];

  constructor(service: Service, dir: string) {
    this.service = service;
    this.dir = dir;
  }

  /** Joins users (concurrently), each into `dir/NAME`. */
  async join(...names: string[]): Promise<User[]> {
    return await Promise.all(names.map((n) => joinUser(this.service, n, join(this.dir, n))));
  }

  /** Starts chat clients (concurrently), stopped at the end of the scenario. */
  async start(...users: User[]): Promise<ChatClient[]> {
    const started = await Promise.allSettled(users.map((u) => ChatClient.start(u)));
    for (const r of started) if (r.status === "fulfilled") this.#clients.push(r.value);
    const failed = started.find((r) => r.status === "rejected") as PromiseRejectedResult;
    if (failed) throw failed.reason;
    return started.map((r) => (r as PromiseFulfilledResult<ChatClient>).value);
  }

  /** Starts one chat client with more arguments (`--downloads DIR`, `--listen HOST:PORT`). */
  async startWith(user: User, args: string[]): Promise<ChatClient> {
    const client = await ChatClient.start(user, { args });
    this.#clients.push(client);
    return client;
  }

  /** A raw connection to a listener, closed at the end of the scenario. */
  raw(port: number, options: RawPeerOptions = {}): RawPeer {
    const peer = RawPeer.connect(port, options);
    this.#raw.push(peer);
    return peer;
  }

  /** A TLS server of the test's own, closed at the end of the scenario. */
  server(server: tls.Server): tls.Server {
    this.#servers.push(server);
    return server;
  }

  async close(): Promise<void> {
    for (const r of this.#raw) r.destroy();
    for (const s of this.#servers) s.close();
    await stopAll(this.#clients);
  }
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** A line no encoder of ours would write (unknown types, wrong fields): hostile input. */
/** A received item's event without its `ref` (this client's name for it), checked first. */
function withoutRef(event: Record<string, unknown> | undefined): Record<string, unknown> {
  const { ref, ...rest } = event ?? {};
  assert.match(String(ref), /^[A-Za-z0-9_-]{11}[0-9a-z]+$/, `no ref in ${JSON.stringify(event)}`);
  return rest;
}

function rawFrame(value: Record<string, unknown>): string {
  return JSON.stringify(value) + "\n";
}

const HELLO = encodeFrame({ type: "hello", v: PROTOCOL_VERSION });

/** A msg frame padded with an extra field to exactly `bytes` bytes, its "\n" included. */
function paddedMsg(id: string, bytes: number): string {
  const base = rawFrame({ type: "msg", id, text: "padded", pad: "" });
  const line = rawFrame({ type: "msg", id, text: "padded", pad: "p".repeat(bytes - base.length) });
  assert.equal(new TextEncoder().encode(line).length, bytes);
  return line;
}

/** The frames that send `bytes` as file `id` named `name` (announcing `announced` as its SHA-256). */
function fileFrames(id: string, name: string, bytes: Uint8Array, announced = sha256(bytes)) {
  return encodeFrame({ type: "file", id, name, size: bytes.length, sha256: announced }) +
    (bytes.length
      ? encodeFrame({ type: "chunk", id, data: Buffer.from(bytes).toString("base64") })
      : "") +
    encodeFrame({ type: "end", id });
}

/** The frames that send `bytes` as file `id` in raw `bin` frames of at most `piece` bytes. */
function binFileFrames(id: string, name: string, bytes: Uint8Array, piece: number): Uint8Array {
  const parts: Uint8Array[] = [];
  const text = (t: string) => parts.push(new TextEncoder().encode(t));
  text(encodeFrame({ type: "file", id, name, size: bytes.length, sha256: sha256(bytes) }));
  for (let at = 0; at < bytes.length; at += piece) {
    const payload = bytes.subarray(at, at + piece);
    text(encodeFrame({ type: "bin", id, size: payload.length }));
    parts.push(payload);
  }
  text(encodeFrame({ type: "end", id }));
  return Buffer.concat(parts);
}

/** A frame received, with the raw payload that follows a `bin` frame. */
interface WireItem {
  frame: Record<string, unknown>;
  payload?: Uint8Array;
}

/** Splits received bytes into frames (lib/frames.ts decodes them) and `bin` payloads; stops at an incomplete one. */
function parseWire(bytes: Uint8Array): WireItem[] {
  const items: WireItem[] = [];
  const lines = new LineSplitter();
  let at = 0;
  while (at < bytes.length) {
    const { line, used } = lines.pushLine(bytes.subarray(at));
    at += used;
    if (line === null) break;
    const value = decodeFrame(line);
    if (value.type === "bin") {
      if (at + value.size > bytes.length) break;
      items.push({ frame: value, payload: bytes.subarray(at, at + value.size) });
      at += value.size;
    } else {
      items.push({ frame: value });
    }
  }
  return items;
}

/** The file content carried by `items` for file `id`, whether in `chunk` or `bin` frames. */
function fileContent(items: WireItem[], id: unknown): Uint8Array {
  return Buffer.concat(
    items.filter((i) => i.frame.id === id).flatMap((i) =>
      i.frame.type === "chunk"
        ? [Buffer.from(String(i.frame.data), "base64")]
        : i.frame.type === "bin"
        ? [i.payload!]
        : []
    ),
  );
}

/** Names in a folder (none when it does not exist). */
async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) names.push(e.name);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return names.sort();
}

function downloads(user: User): string {
  return join(user.home, "downloads");
}

async function assertNoPartials(user: User): Promise<void> {
  const partials = (await listDir(downloads(user))).filter((n) => n.startsWith(".partial-"));
  assert.deepEqual(partials, [], `partial files left in ${downloads(user)}`);
}

async function readPem(path: string): Promise<string> {
  return await Deno.readTextFile(path);
}

/** Key and certificate of a user, PEM, for a raw connection. */
async function credentials(user: User): Promise<{ cert: string; key: string }> {
  return { cert: await readPem(user.certPath), key: await readPem(user.keyPath) };
}

/**
 * Asserts a connection to a listener was refused: closed within 5 s, nothing
 * received (not even hello), and nothing about it shown at `listener`.
 */
async function assertRefused(
  listener: ChatClient,
  peer: RawPeer,
  mark: number,
  what: string,
): Promise<void> {
  peer.write(HELLO + encodeFrame({ type: "msg", id: "1", text: `let me in (${what})` }));
  const closed = await Promise.race([peer.closed.then(() => true), sleep(5_000).then(() => false)]);
  assert.ok(closed, `${what}: the listener admitted it and sent ${JSON.stringify(peer.lines)}`);
  assert.equal(peer.received, 0, `${what}: the listener sent ${JSON.stringify(peer.lines)}`);
  await listener.expectNone(
    mark,
    (e) => ["connected", "message", "file"].includes(e.type),
    100,
  );
}

// ---------------------------------------------------------------------------
// Scenarios

/** The original's flow, messages both ways, /peers, safety numbers, /verify. */
async function originalFlow(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice", "bob");
  const [aliceId, bobId] = await Promise.all([whoami(aliceUser), whoami(bobUser)]);
  const [alice, bob] = await scene.start(aliceUser, bobUser);

  assert.deepEqual(alice.ready, {
    type: "ready",
    name: "alice",
    listen: `127.0.0.1:${alice.port}`,
    fingerprint: aliceId.fingerprint,
  });
  assert.match(String(alice.ready.listen), /^127\.0\.0\.1:\d+$/);
  assert.equal(bob.ready.fingerprint, bobId.fingerprint);

  // Nobody to accept yet, nobody by that name, and not oneself: errors, and the clients go on.
  await bob.send("/accept alice");
  await bob.expect((e) => e.type === "error" && /No invitation/.test(String(e.message)));
  await alice.send("/chat nobody");
  await alice.expect({ type: "error" });
  await alice.send("/chat alice");
  await alice.expect({ type: "error" });
  await alice.send("hello?");
  await alice.expect({ type: "error" });

  // alice asks the CA for bob; bob learns of it at once (long poll).
  const asked = Date.now();
  await alice.send("/chat bob");
  const invited = await alice.expect({ type: "invited" });
  assert.deepEqual(invited, { type: "invited", to: "bob", fingerprint: bobId.fingerprint });
  const invite = await bob.expect({ type: "invite" });
  assert.deepEqual(invite, { type: "invite", from: "alice" });
  const latency = Date.now() - asked;
  assert.ok(latency < 2_000, `bob learned of the invitation after ${latency} ms`);

  // bob accepts: both sides see the other's certificate, new to them.
  await bob.send("/accept alice");
  const atBob = await bob.expect({ type: "connected" });
  const atAlice = await alice.expect({ type: "connected" });
  assert.deepEqual(atAlice, {
    type: "connected",
    peer: "bob",
    fingerprint: bobId.fingerprint,
    keyFingerprint: bobId.keyFingerprint,
    trust: "new",
    via: "direct",
  });
  assert.deepEqual(atBob, {
    type: "connected",
    peer: "alice",
    fingerprint: aliceId.fingerprint,
    keyFingerprint: aliceId.keyFingerprint,
    trust: "new",
    via: "direct",
  });

  // Messages both ways: sent, message (same id), delivered (same id).
  const exchange = async (from: ChatClient, to: ChatClient, line: string, text = line) => {
    await from.send(line);
    const sent = await from.expect({ type: "sent", to: to.name });
    const got = await to.expect({ type: "message", from: from.name });
    assert.deepEqual(withoutRef(got), { type: "message", from: from.name, text, id: sent.id });
    const delivered = await from.expect({ type: "delivered", to: to.name });
    assert.equal(delivered.id, sent.id);
    assert.ok(typeof delivered.ms === "number" && delivered.ms >= 0, "delivered without ms");
  };
  await exchange(alice, bob, "Hi Bob! Straight to you over mutual TLS.");
  await exchange(bob, alice, "Hi Alice — ünïcödé and emoji 🔐 arrive intact");
  await exchange(alice, bob, "/msg bob at 10:00  (two spaces kept)", "at 10:00  (two spaces kept)");

  await alice.send("/peers");
  assert.deepEqual(await alice.expect({ type: "peers" }), {
    type: "peers",
    peers: [{ name: "bob", trust: "new", current: true }],
  });

  // Safety numbers: equal on both sides, 12 groups of 5 digits, from both keys.
  await alice.send("/fingerprint bob");
  await bob.send("/fingerprint alice");
  const [atA, atB] = [
    await alice.expect({ type: "safety" }),
    await bob.expect({ type: "safety" }),
  ];
  assert.equal(atA.peer, "bob");
  assert.equal(atB.peer, "alice");
  assert.match(String(atA.number), SAFETY_NUMBER);
  assert.equal(atA.number, atB.number);
  assert.equal(
    atA.number,
    safetyNumber(
      { name: "alice", key: aliceId.keyFingerprint },
      { name: "bob", key: bobId.keyFingerprint },
    ),
  );

  // alice verifies bob; after /close and a new /chat + /accept, alice shows "verified".
  await alice.send("/verify bob");
  await alice.expect((e) => e.type === "warning" && /verified/.test(String(e.message)));
  await alice.send("/close bob");
  await alice.expect({ type: "disconnected", peer: "bob" });
  await bob.expect({ type: "disconnected", peer: "alice" });
  const again = await connect(alice, bob);
  assert.equal(again.atFrom.trust, "verified");
  assert.equal(again.atFrom.keyFingerprint, bobId.keyFingerprint);
  assert.equal(again.atTo.trust, "known");
  await alice.send("/peers");
  assert.deepEqual(await alice.expect({ type: "peers" }), {
    type: "peers",
    peers: [{ name: "bob", trust: "verified", current: true }],
  });
  await exchange(bob, alice, "still me");

  // Commands that are not: an error event, and the client goes on.
  await alice.send("/frobnicate");
  await alice.expect((e) => e.type === "error" && /frobnicate/.test(String(e.message)));
  await alice.send("/help");
  await alice.expect((e) => e.type === "help" && String(e.text).includes("/chat NAME"));
  await exchange(alice, bob, "after the errors");
  assert.deepEqual([...alice.junk, ...bob.junk], [], "stdout lines that are not JSON events");
}

/** Files: several MB intact, no overwrite, empty files, both directions. */
async function files(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-files", "bob-files");
  const inbox = join(scene.dir, "alice's inbox");
  const [alice, bob] = await Promise.all([
    scene.startWith(aliceUser, ["--downloads", inbox]),
    scene.startWith(bobUser, ["--listen", "127.0.0.1:0"]),
  ]);
  await connect(alice, bob);

  const outbox = join(scene.dir, "outbox");
  await Deno.mkdir(outbox);
  const big = randomBytes(5 * MiB);
  const bigPath = join(outbox, "report.pdf");
  await Deno.writeFile(bigPath, big);

  const sendFile = async (from: ChatClient, to: ChatClient, line: string) => {
    const mark = to.mark();
    await from.send(line);
    // A key first seen on this connection is not pinned: every file waits for consent.
    const offer = await to.acceptFile(from.name);
    const file = await to.expect({ type: "file", from: from.name });
    // Between current clients the SHA-256 comes at the end (sha256-at-end): the file event has it.
    assert.deepEqual(offer, {
      type: "file_offer",
      from: from.name,
      id: file.id,
      // The offer's name is the one it would be saved under, before a "(1)"; the file's, with it.
      name: file.announced ?? file.name,
      bytes: file.bytes,
    });
    const sent = await from.expect({ type: "sent", to: to.name });
    const delivered = await from.expect({ type: "delivered", to: to.name });
    assert.equal(delivered.id, sent.id);
    // The receiver's file event names the transfer by the sender's id.
    assert.equal(file.id, sent.id);
    return { file, progress: to.since(mark, { type: "progress" }) };
  };

  const first = await sendFile(alice, bob, `/file ${bigPath}`);
  assert.deepEqual(withoutRef(first.file), {
    type: "file",
    from: "alice-files",
    id: first.file.id,
    name: "report.pdf",
    path: join(downloads(bobUser), "report.pdf"),
    bytes: big.length,
    sha256: sha256(big),
  });
  assert.ok(Buffer.from(big).equals(await Deno.readFile(String(first.file.path))));
  assert.ok(first.progress.length >= 1, "no progress event for 5 MiB");
  for (const p of first.progress) {
    assert.equal(p.peer, "alice-files");
    assert.equal(p.direction, "in");
    assert.equal(p.total, big.length);
  }

  // The same name again never overwrites: "report (1).pdf".
  const second = await sendFile(alice, bob, `/file ${bigPath}`);
  assert.equal(second.file.path, join(downloads(bobUser), "report (1).pdf"));
  // Named by the name it was saved under; the announced one comes apart.
  assert.equal(second.file.name, "report (1).pdf");
  assert.equal(second.file.announced, "report.pdf");
  assert.ok(Buffer.from(big).equals(await Deno.readFile(String(second.file.path))));
  assert.ok(Buffer.from(big).equals(await Deno.readFile(String(first.file.path))));

  // An empty file, sent the other way with /file NAME PATH.
  const emptyPath = join(outbox, "empty.txt");
  await Deno.writeFile(emptyPath, new Uint8Array());
  const empty = await sendFile(bob, alice, `/file alice-files ${emptyPath}`);
  assert.equal(empty.file.path, join(inbox, "empty.txt"));
  assert.equal(empty.file.bytes, 0);
  assert.equal((await Deno.readFile(String(empty.file.path))).length, 0);

  assert.deepEqual(await listDir(downloads(bobUser)), ["report (1).pdf", "report.pdf"]);
  assert.deepEqual(await listDir(inbox), ["empty.txt"]);
  assert.deepEqual(await listDir(downloads(aliceUser)), []);
  // A file that does not exist: an error, and the connection stays.
  await alice.send(`/file ${join(outbox, "missing.bin")}`);
  await alice.expect({ type: "error" });
  await alice.send("still here?");
  await bob.expect({ type: "message", text: "still here?" });
}

/** `/file PATH` takes the whole rest of the line as PATH, spaces included. */
async function filePathWithSpaces(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-space", "bob-space");
  const [alice, bob] = await scene.start(aliceUser, bobUser);
  await connect(alice, bob);
  const path = join(scene.dir, "my notes.txt");
  await Deno.writeTextFile(path, "notes with a space in their name\n");
  const sent = async (line: string) => {
    await alice.send(line);
    await bob.acceptFile("alice-space");
    const outcome = await alice.expect((e) => e.type === "sent" || e.type === "error");
    assert.equal(outcome.type, "sent", `${line}: ${outcome.message}`);
    return await bob.expect({ type: "file", from: "alice-space" });
  };
  const file = await sent(`/file ${path}`);
  assert.equal(file.name, "my notes.txt");
  assert.equal(file.path, join(downloads(bobUser), "my notes.txt"));
  const named = await sent(`/file bob-space ${path}`);
  assert.equal(named.path, join(downloads(bobUser), "my notes (1).txt"));
}

/** Frames are handled in order: those before a malformed line count, even in the same read. */
async function framesBeforeMalformed(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-order", "bob-order");
  const bob = await credentials(bobUser);
  const [alice] = await scene.start(aliceUser);
  await alice.send("/chat bob-order");
  await alice.expect({ type: "invited", to: "bob-order" });
  const peer = scene.raw(alice.port, bob);
  await peer.expectFrame({ type: "hello", v: 1 });
  // One write: a good message, then a line that is not JSON.
  peer.write(HELLO + encodeFrame({ type: "msg", id: "before", text: "first" }) + "{not json\n");
  await peer.expectFrame({ type: "error" });
  await peer.expectClosed(10_000);
  await alice.expect({ type: "disconnected", peer: "bob-order" });
  assert.deepEqual(alice.since(0, { type: "message" }).map((e) => e.text), ["first"]);
  assert.deepEqual(peer.frames.map((f) => f.type), ["hello", "ack", "error"]);
}

/** Files on the wire: `bin` frames only to a peer whose hello lists "bin", base64 chunks otherwise. */
async function wireFiles(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-bin", "bob-bin");
  const bob = await credentials(bobUser);
  const [alice] = await scene.start(aliceUser);
  // Binary content with newlines and bytes that are not UTF-8, over several pieces.
  const content = randomBytes(1536 * 1024 + 7);
  content.set(new TextEncoder().encode('\n{"type":"bye"}\n'), 1000);
  const path = join(scene.dir, "blob.bin");
  await Deno.writeFile(path, content);
  // bob talks to alice once first, so that his key is pinned: a peer whose hello does not
  // list "offer" has its files taken without asking only then (and up to --auto-accept).
  {
    await alice.send("/chat bob-bin");
    await alice.expect({ type: "invited", to: "bob-bin" });
    const peer = scene.raw(alice.port, bob);
    await peer.expectFrame({ type: "hello", v: 1 });
    peer.write(HELLO + encodeFrame({ type: "bye" }));
    await peer.expectClosed();
    await alice.expect({ type: "disconnected", peer: "bob-bin" });
  }

  for (const features of [["bin"], [], undefined]) {
    const what = `hello with features ${JSON.stringify(features)}`;
    await alice.send("/chat bob-bin");
    await alice.expect({ type: "invited", to: "bob-bin" });
    const peer = scene.raw(alice.port, bob);
    await peer.expectFrame({ type: "hello", v: 1 });
    peer.write(encodeFrame({ type: "hello", v: 1, ...(features ? { features } : {}) }));
    await alice.expect({ type: "connected", peer: "bob-bin" });
    // Once alice acknowledged a message, she has read our hello.
    peer.write(encodeFrame({ type: "msg", id: "m", text: "ready" }));
    await peer.expectFrame({ type: "ack", id: "m" });
    await alice.send(`/file ${path}`);
    const sent = await alice.expect({ type: "sent", to: "bob-bin" });
    await waitUntil(
      () => parseWire(peer.bytes()).some((i) => i.frame.type === "end" && i.frame.id === sent.id),
      `${what}: the end frame`,
    );
    const items = parseWire(peer.bytes());
    const types = new Set(items.filter((i) => i.frame.id === sent.id).map((i) => i.frame.type));
    const binary = features?.includes("bin") ?? false;
    assert.deepEqual(
      [...types].sort(),
      ["end", "file", binary ? "bin" : "chunk"].sort(),
      `${what}: ${[...types]}`,
    );
    assert.ok(Buffer.from(content).equals(fileContent(items, sent.id)), what);
    peer.write(encodeFrame({ type: "ack", id: String(sent.id) }));
    await alice.expect({ type: "delivered", to: "bob-bin", id: sent.id });

    // bin frames from the peer are stored like chunks, whatever alice listed.
    const id = `up${features?.length ?? "x"}`;
    peer.write(binFileFrames(id, "from-bob.bin", content, 700 * 1024));
    await peer.expectFrame({ type: "ack", id });
    const got = await alice.expect({ type: "file", from: "bob-bin" });
    assert.ok(Buffer.from(content).equals(await Deno.readFile(String(got.path))), what);
    peer.write(encodeFrame({ type: "bye" }));
    await peer.expectClosed();
    await alice.expect({ type: "disconnected", peer: "bob-bin" });
  }
  assert.deepEqual(await listDir(downloads(aliceUser)), [
    "from-bob (1).bin",
    "from-bob (2).bin",
    "from-bob.bin",
  ]);
}

/** A line longer than a msg may carry is not sent as a malformed frame that kills the connection. */
async function longMessage(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-long", "bob-long");
  const [alice, bob] = await scene.start(aliceUser, bobUser);
  await connect(alice, bob);
  const mark = alice.mark();
  const bobMark = bob.mark();
  await alice.send("z".repeat(70_000));
  await alice.send("short one");
  const got = await bob.expect((e) =>
    e.type === "disconnected" || (e.type === "message" && e.text === "short one")
  );
  assert.equal(got.type, "message", `bob was disconnected: ${got.reason}`);
  await alice.expect({ type: "delivered", id: got.id });
  assert.deepEqual(alice.since(mark, { type: "disconnected" }), []);
  assert.deepEqual(bob.since(bobMark, { type: "disconnected" }), []);
  for (const m of bob.since(bobMark, { type: "message" })) {
    assert.ok(String(m.text).length <= 65_536);
  }
}

/** A new key for bob is caught, blocks sending, and /trust accepts it. */
async function keyChange(scene: Scene): Promise<void> {
  const [aliceUser, bobOld] = await scene.join("alice-keys", "bob-keys");
  const [alice, bob] = await scene.start(aliceUser, bobOld);
  const first = await connect(alice, bob);
  assert.equal(first.atFrom.trust, "new");
  const oldKey = String(first.atFrom.keyFingerprint);
  await bob.stop();
  await alice.expect({ type: "disconnected", peer: "bob-keys" });

  // bob lost his key: the admin invites him again and he joins into a new home.
  const bobNew = await joinUser(scene.service, "bob-keys", join(scene.dir, "bob-keys-new"));
  const bobNewId = await whoami(bobNew);
  assert.notEqual(bobNewId.keyFingerprint, oldKey);
  const [bob2] = await scene.start(bobNew);

  await alice.send("/chat bob-keys");
  const invited = await alice.expect({ type: "invited" });
  assert.equal(invited.fingerprint, bobNewId.fingerprint);
  await bob2.expect({ type: "invite", from: "alice-keys" });
  const mark = alice.mark();
  await bob2.send("/accept alice-keys");
  const atAlice = await alice.expect({ type: "connected", peer: "bob-keys" });
  assert.equal(atAlice.trust, "changed");
  assert.equal(atAlice.keyFingerprint, bobNewId.keyFingerprint);
  assert.equal(atAlice.fingerprint, bobNewId.fingerprint);
  await alice.expect((e) => e.type === "warning" && String(e.message).includes("CHANGED"));
  assert.equal((await bob2.expect({ type: "connected" })).trust, "new");

  // Nothing goes to bob until alice says /trust.
  const bobMark = bob2.mark();
  await alice.send("the secret plan");
  await alice.expect({ type: "error" });
  await alice.send("/msg bob-keys the secret plan, again");
  await alice.expect({ type: "error" });
  await alice.send(`/file ${join(aliceUser.home, "id", "cert.pem")}`);
  await alice.expect({ type: "error" });
  await alice.send("/verify bob-keys");
  await alice.expect({ type: "error" });
  await alice.send("/peers");
  assert.deepEqual((await alice.expect({ type: "peers" })).peers, [
    { name: "bob-keys", trust: "changed", current: true },
  ]);
  await bob2.expectNone(bobMark, (e) => e.type === "message" || e.type === "file", 700);
  assert.deepEqual(alice.since(mark, { type: "sent" }), [], "alice sent something to bob");
  const pinned = JSON.parse(await Deno.readTextFile(join(aliceUser.home, "peers.json")));
  assert.equal(pinned.peers["bob-keys"].keyFingerprint, oldKey, "the pin moved without /trust");

  await alice.send("/trust bob-keys");
  await alice.expect((e) => e.type === "warning" && /trust/i.test(String(e.message)));
  await alice.send("now you can read this");
  const got = await bob2.expect({ type: "message" });
  assert.equal(got.text, "now you can read this");
  await alice.expect({ type: "delivered", to: "bob-keys", id: got.id });
  const repinned = JSON.parse(await Deno.readTextFile(join(aliceUser.home, "peers.json")));
  assert.equal(repinned.peers["bob-keys"].keyFingerprint, bobNewId.keyFingerprint);
  assert.equal((await Deno.stat(join(aliceUser.home, "peers.json"))).mode! & 0o777, 0o600);
}

/** The listener admits exactly the invited peer with the directory's key, and nobody else. */
async function listenerRefusals(scene: Scene): Promise<void> {
  const [aliceUser, bobUser, carolUser] = await scene.join("alice-door", "bob-door", "carol-door");
  // bob renews: same key, new certificate; the old one is revoked as superseded.
  const bobOld = await credentials(bobUser);
  assertSuccess(await runClient(bobUser.home, ["renew"]), "client renew");
  const bob = await credentials(bobUser);
  assert.notEqual(bob.cert, bobOld.cert);
  const carol = await credentials(carolUser);

  // Another CA signs a certificate named bob-door for bob's very key.
  const otherCa = join(scene.dir, "other-ca");
  await initCa(otherCa);
  const csrPath = join(scene.dir, "bob-door.csr");
  await Deno.writeTextFile(csrPath, (await makeCsr("bob-door", { keyPem: bob.key })).csr);
  const foreign = await runCa(otherCa, ["sign", "--name", "bob-door", csrPath]);
  assertSuccess(foreign, "ca sign on another CA");
  // And bob signs one himself.
  const self = await selfSigned("bob-door", bobUser.keyPath);

  // alice starts after bob's renewal, so her CRL has bob's old serial.
  const [alice] = await scene.start(aliceUser);
  await alice.send("/chat bob-door");
  await alice.expect({ type: "invited", to: "bob-door" });

  const cases: Array<[string, RawPeerOptions]> = [
    ["carol, who was not invited", carol],
    ["no client certificate", {}],
    ["a self-signed certificate for bob's name and key", { cert: self, key: bob.key }],
    ["another CA's certificate for bob's name and key", { cert: foreign.stdout, key: bob.key }],
    ["bob's revoked (superseded) certificate, same key", bobOld],
    ["bob's valid certificate without ALPN", { ...bob, alpn: [] }],
    ["bob's valid certificate with ALPN http/1.1 only", { ...bob, alpn: ["http/1.1"] }],
    ["bob's valid certificate over TLS 1.2", { ...bob, maxVersion: "TLSv1.2" }],
  ];
  for (const [what, options] of cases) {
    const mark = alice.mark();
    await assertRefused(alice, scene.raw(alice.port, options), mark, what);
  }

  // The invitation still stands for the real bob: his current certificate gets in.
  const peer = scene.raw(alice.port, bob);
  await peer.expectFrame({ type: "hello", v: 1 });
  peer.write(HELLO + encodeFrame({ type: "msg", id: "m1", text: "it is me" }));
  await peer.expectFrame({ type: "ack", id: "m1" });
  assert.equal((await alice.expect({ type: "connected" })).peer, "bob-door");
  assert.deepEqual(withoutRef(await alice.expect({ type: "message" })), {
    type: "message",
    from: "bob-door",
    text: "it is me",
    id: "m1",
  });
  assert.equal(alice.events.filter((e) => e.type === "message").length, 1);
}

/** bob's /accept checks the listener too: our CA, alice's name and key, ALPN, not revoked. */
async function acceptRefusals(scene: Scene): Promise<void> {
  const [aliceUser, bobUser, carolUser] = await scene.join("alice-out", "bob-out", "carol-out");
  const alice = await credentials(aliceUser);
  const carol = await credentials(carolUser);
  const [bob] = await scene.start(bobUser);

  // A listener of our own, announced to the CA as alice's.
  const impostor = async (what: string, expected: RegExp, options: tls.TlsOptions) => {
    let bytes = 0;
    let connections = 0;
    const server = scene.server(tls.createServer({
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: "TLSv1.3",
      ...options,
    }, (socket) => {
      connections++;
      socket.on("data", (b: Uint8Array) => bytes += b.length);
      socket.on("error", () => {});
    }));
    server.on("tlsClientError", () => {});
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as { port: number }).port;
    const offer = await scene.service.request("/v1/rendezvous", {
      method: "POST",
      json: { to: "bob-out", port, host: "127.0.0.1" },
      cert: alice.cert,
      key: alice.key,
    });
    assert.equal(offer.status, 200, offer.body);
    await bob.expect({ type: "invite", from: "alice-out" });
    const mark = bob.mark();
    await bob.send("/accept alice-out");
    const err = await bob.expect({ type: "error" });
    assert.match(String(err.message), expected, what);
    assert.deepEqual(bob.since(mark, { type: "connected" }), [], what);
    await sleep(100);
    assert.equal(bytes, 0, `${what}: bob sent ${bytes} bytes`);
    assert.ok(connections <= 1, what);
    server.close();
  };
  await impostor("carol's certificate", new RegExp(`^${REJECTED}$`), {
    ...carol,
    ALPNProtocols: ["e2e-chat/1"],
  });
  await impostor("a self-signed certificate for alice's name and key", /^Cannot connect/, {
    cert: await selfSigned("alice-out", aliceUser.keyPath),
    key: alice.key,
    ALPNProtocols: ["e2e-chat/1"],
  });
  await impostor("alice's certificate without ALPN", /e2e-chat\/1/, { ...alice });
  await impostor("alice's certificate over TLS 1.2 only", /^Cannot connect/, {
    ...alice,
    ALPNProtocols: ["e2e-chat/1"],
    minVersion: "TLSv1.2",
    maxVersion: "TLSv1.2",
  });

  // The real alice, whose certificate was superseded after she invited bob:
  // her running client still presents the old one, which bob's CRL lists.
  const [aliceClient] = await scene.start(aliceUser);
  await aliceClient.send("/chat bob-out");
  await aliceClient.expect({ type: "invited" });
  await bob.expect({ type: "invite", from: "alice-out" });
  assertSuccess(await runClient(aliceUser.home, ["renew"]), "client renew");
  await bob.stop();
  const [bob2] = await scene.start(bobUser); // a fresh CRL, with alice's old serial
  await bob2.expect({ type: "invite", from: "alice-out" });
  await bob2.send("/accept alice-out");
  assert.equal((await bob2.expect({ type: "error" })).message, REJECTED);
  await bob2.expectNone(0, { type: "connected" }, 300);
}

/** openssl s_client talks to a listener as the spec shows, and only as the invited peer. */
async function sClientInterop(scene: Scene): Promise<void> {
  const [aliceUser, bobUser, carolUser] = await scene.join("alice-sc", "bob-sc", "carol-sc");
  const [alice] = await scene.start(aliceUser);
  const lines = [
    '{"type":"hello","v":1}',
    '{"type":"msg","id":"1","text":"hi from s_client"}',
  ];
  const bobFiles = { cert: bobUser.certPath, key: bobUser.keyPath, caFile: bobUser.caPath };

  // Before alice's /chat bob, even bob is refused.
  const early = await sClient(alice.port, { ...bobFiles, lines, gapMs: 150 });
  assert.ok(!early.stdout.includes('"type"'), `s_client got ${early.stdout}`);
  await alice.expectNone(0, (e) => ["connected", "message"].includes(e.type), 100);

  await alice.send("/chat bob-sc");
  await alice.expect({ type: "invited", to: "bob-sc" });
  const selfPath = join(scene.dir, "self-signed.pem");
  await Deno.writeTextFile(selfPath, await selfSigned("bob-sc", bobUser.keyPath));

  // Refused first (the invitation stands until bob really connects).
  const refused: Array<[string, Parameters<typeof sClient>[1]]> = [
    ["no certificate", { caFile: bobUser.caPath }],
    ["a self-signed certificate", {
      cert: selfPath,
      key: bobUser.keyPath,
      caFile: bobUser.caPath,
    }],
    ["carol, not invited", {
      cert: carolUser.certPath,
      key: carolUser.keyPath,
      caFile: carolUser.caPath,
    }],
  ];
  for (const [what, options] of refused) {
    const mark = alice.mark();
    const result = await sClient(alice.port, { ...options, lines, gapMs: 150 });
    assert.notEqual(result.code, null, `${what}: s_client was not disconnected`);
    assert.ok(!result.stdout.includes('"type"'), `${what}: s_client got ${result.stdout}`);
    await alice.expectNone(mark, (e) => ["connected", "message"].includes(e.type), 100);
  }

  // bob, with his files, as docs/PROTOCOL.md §2 shows. alice sends him a file too: his
  // hello did not list "bin", so it comes as base64 chunks he can read. A bye ends it.
  const notes = new TextEncoder().encode("line one\nline two\n".repeat(1000));
  const notesPath = join(scene.dir, "notes.txt");
  await Deno.writeFile(notesPath, notes);
  const result = await sClient(alice.port, {
    ...bobFiles,
    lines: [
      ...lines,
      async () => {
        await alice.expect({ type: "message", from: "bob-sc" });
        await alice.send(`/file ${notesPath}`);
        await alice.expect({ type: "sent", to: "bob-sc" });
      },
      '{"type":"bye"}',
    ],
  });
  assert.equal(result.code, 0, result.stderr);
  const got = result.stdout.split("\n").filter(Boolean).map((l) => JSON.parse(l));
  assert.equal(got[0].type, "hello");
  assert.equal(got[0].v, 1);
  assert.deepEqual(got[1], { type: "ack", id: "1" });
  const announced = got.find((f) => f.type === "file");
  assert.ok(announced, `no file frame: ${result.stdout.slice(0, 500)}`);
  assert.equal(announced.name, "notes.txt");
  assert.equal(announced.size, notes.length);
  assert.equal(announced.sha256, sha256(notes));
  assert.ok(got.some((f) => f.type === "end" && f.id === announced.id));
  assert.ok(!got.some((f) => f.type === "bin"), "bin frames to a peer that did not list bin");
  assert.deepEqual(
    fileContent(got.map((frame) => ({ frame })), announced.id),
    Buffer.from(notes),
  );
  assert.equal((await alice.expect({ type: "connected" })).peer, "bob-sc");
  const message = alice.events.find((e) => e.type === "message");
  assert.deepEqual(withoutRef(message), {
    type: "message",
    from: "bob-sc",
    text: "hi from s_client",
    id: "1",
  });
  await alice.expect({ type: "disconnected", peer: "bob-sc" });
}

/** Malformed input closes that connection with one error frame; the client and its other peers go on. */
async function malformedInput(scene: Scene): Promise<void> {
  const [aliceUser, bobUser, carolUser] = await scene.join("alice-wire", "bob-wire", "carol-wire");
  const bob = await credentials(bobUser);
  const [alice, carol] = await scene.start(aliceUser, carolUser);
  await connect(alice, carol);

  /**
   * alice invites bob; bob connects by hand, gets alice's hello and writes `first` (his hello
   * first: alice says connected once it arrives).
   */
  const invitedBob = async (first: string | Uint8Array, hello = true) => {
    await alice.send("/chat bob-wire");
    await alice.expect({ type: "invited", to: "bob-wire" });
    const peer = scene.raw(alice.port, bob);
    await peer.expectFrame({ type: "hello", v: 1 });
    peer.write(first);
    if (hello) await alice.expect({ type: "connected", peer: "bob-wire" });
    return peer;
  };

  const bytes = (s: string) => new TextEncoder().encode(s);
  const announce = (size: number) =>
    encodeFrame({ type: "file", id: "f", name: "a.txt", size, sha256: "0".repeat(64) });
  const cases: Array<[string, Uint8Array]> = [
    ["invalid JSON", bytes(HELLO + "{not json\n")],
    ["invalid UTF-8", new Uint8Array([...bytes(HELLO), 0x7b, 0xff, 0xfe, 0x7d, 0x0a])],
    ["a JSON array", bytes(HELLO + "[1,2]\n")],
    ["an unknown frame type", bytes(HELLO + rawFrame({ type: "shout", text: "HI" }))],
    ["a msg whose text is a number", bytes(HELLO + rawFrame({ type: "msg", id: "1", text: 42 }))],
    ["a msg with a bad id", bytes(HELLO + encodeFrame({ type: "msg", id: "../1", text: "x" }))],
    [
      "a msg of 65,537 characters",
      bytes(HELLO + encodeFrame({ type: "msg", id: "1", text: "x".repeat(65_537) })),
    ],
    [
      "a chunk for a file never announced",
      bytes(HELLO + encodeFrame({ type: "chunk", id: "f", data: "aGk=" })),
    ],
    ["an end for a file never announced", bytes(HELLO + encodeFrame({ type: "end", id: "f" }))],
    [
      "more file bytes than announced",
      bytes(HELLO + announce(2) + encodeFrame({ type: "chunk", id: "f", data: "aGVsbG8=" })),
    ],
    [
      "a msg with an id of 65 characters",
      bytes(HELLO + encodeFrame({ type: "msg", id: "i".repeat(65), text: "x" })),
    ],
    ["a line of 1 MiB + 1 byte", bytes(HELLO + paddedMsg("over", MAX_LINE_BYTES + 1))],
    [
      "a bin for a file never announced",
      bytes(HELLO + encodeFrame({ type: "bin", id: "f", size: 3 }) + "abc"),
    ],
    [
      "a bin of size 0",
      bytes(HELLO + announce(1) + encodeFrame({ type: "bin", id: "f", size: 0 })),
    ],
    [
      "a bin over 1 MiB",
      bytes(
        HELLO + announce(2 * MiB) + encodeFrame({ type: "bin", id: "f", size: MAX_LINE_BYTES + 1 }),
      ),
    ],
    [
      "more bin bytes than announced",
      bytes(HELLO + announce(2) + encodeFrame({ type: "bin", id: "f", size: 5 }) + "hello"),
    ],
    ["a second hello", bytes(HELLO + HELLO)],
    ["a msg before hello", bytes(encodeFrame({ type: "msg", id: "1", text: "too early" }))],
    ["a line of 2 MiB without a newline", bytes(HELLO + "a".repeat(2 * MiB))],
  ];
  for (const [what, payload] of cases) {
    const mark = alice.mark();
    // Without a hello first, bob is never connected: alice says why in a warning instead.
    const hello = new TextDecoder().decode(payload.subarray(0, HELLO.length)) === HELLO;
    const peer = await invitedBob(payload, hello);
    await peer.expectFrame({ type: "error" });
    await peer.expectClosed(10_000);
    const types = peer.frames.map((f) => f.type);
    assert.deepEqual(types, ["hello", "error"], `${what}: ${JSON.stringify(peer.lines)}`);
    assert.equal(typeof peer.frames[1].message, "string", what);
    const gone = hello
      ? String((await alice.expect({ type: "disconnected", peer: "bob-wire" })).reason)
      : String(
        (await alice.expect((e) =>
          e.type === "warning" && String(e.message).startsWith('Not connected to "bob-wire"')
        )).message,
      );
    assert.match(gone, /bad input|malformed/i, what);
    assert.deepEqual(alice.since(mark, { type: "message", from: "bob-wire" }), [], what);
    assert.deepEqual(alice.since(mark, { type: "file" }), [], what);
  }
  await assertNoPartials(aliceUser);

  // bye and error frames close the connection without a reply.
  for (
    const last of [
      { type: "bye" },
      { type: "error", message: "your input was bad" },
    ] satisfies Frame[]
  ) {
    const peer = await invitedBob(HELLO + encodeFrame(last));
    await peer.expectClosed();
    const types = peer.frames.map((f) => f.type);
    assert.deepEqual(types, ["hello"], `${last.type}: a reply was sent`);
    await alice.expect({ type: "disconnected", peer: "bob-wire" });
  }

  // A file whose SHA-256 does not match is not kept.
  {
    const data = new TextEncoder().encode("this is not what was announced");
    const peer = await invitedBob(
      HELLO + fileFrames("f1", "bad.bin", data, sha256(new TextEncoder().encode("x"))),
    );
    await peer.expectFrame({ type: "error" });
    await peer.expectClosed(10_000);
    assert.ok(!peer.frames.some((f) => f.type === "ack"), "a bad file was acknowledged");
    await alice.expect({ type: "disconnected", peer: "bob-wire" });
    assert.deepEqual(await listDir(downloads(aliceUser)), []);
  }

  // Hostile names land inside downloads, made safe.
  {
    const peer = await invitedBob(HELLO);
    // Extra fields are ignored, and the sender's name comes from its certificate.
    peer.write(rawFrame({ type: "msg", id: "x1", text: "from whom?", from: "carol-wire", v: 9 }));
    await peer.expectFrame({ type: "ack", id: "x1" });
    assert.deepEqual(withoutRef(await alice.expect({ type: "message", id: "x1" })), {
      type: "message",
      from: "bob-wire",
      text: "from whom?",
      id: "x1",
    });
    // The longest text, and text with line breaks: one event each, intact.
    for (const [id, text] of [["long", "y".repeat(65_536)], ["lines", "one\ntwo\r\n\u2028three"]]) {
      peer.write(encodeFrame({ type: "msg", id, text }));
      await peer.expectFrame({ type: "ack", id });
      assert.equal((await alice.expect({ type: "message", id })).text, text);
    }
    // A line of exactly 1 MiB, its "\n" included, is still a frame.
    peer.write(paddedMsg("max", MAX_LINE_BYTES));
    await peer.expectFrame({ type: "ack", id: "max" });
    await alice.expect({ type: "message", id: "max" });
    const names: Array<[string, string]> = [
      ["../../x", "x"],
      ["a/../../b.txt", "b.txt"],
      ["..\\..\\windows\\c.txt", "c.txt"],
      ["/etc/passwd", "passwd"],
      ["\u0000ev\u0007il\n.txt", "evil.txt"],
      [".bashrc", "bashrc"],
      ["..", "file"],
    ];
    let n = 0;
    for (const [announced, expected] of names) {
      const id = `n${++n}`;
      const data = new TextEncoder().encode(`file ${id}`);
      peer.write(fileFrames(id, announced, data));
      await peer.expectFrame({ type: "ack", id });
      const got = await alice.expect({ type: "file", from: "bob-wire" });
      assert.equal(got.path, join(downloads(aliceUser), expected), JSON.stringify(announced));
      assert.deepEqual(await Deno.readFile(String(got.path)), data);
    }
    // A long name is cut to at most 200 bytes.
    const long = "é".repeat(150) + ".txt";
    peer.write(fileFrames("long", long, new TextEncoder().encode("long")));
    await peer.expectFrame({ type: "ack", id: "long" });
    const got = await alice.expect({ type: "file", from: "bob-wire" });
    assert.equal(dirname(String(got.path)), downloads(aliceUser));
    assert.ok(new TextEncoder().encode(basename(String(got.path))).length <= 200);
    assert.deepEqual(await listDir(scene.dir), ["alice-wire", "bob-wire", "carol-wire"]);
    await assertNoPartials(aliceUser);
    peer.write(encodeFrame({ type: "bye" }));
    await peer.expectClosed();
    await alice.expect({ type: "disconnected", peer: "bob-wire" });
  }

  // alice kept running and kept carol; a legitimate bob still gets in.
  await carol.send("still with you");
  await alice.expect({ type: "message", from: "carol-wire", text: "still with you" });
  await alice.send("/msg carol-wire me too");
  await carol.expect({ type: "message", from: "alice-wire", text: "me too" });
  const [bobClient] = await scene.start(bobUser);
  await connect(alice, bobClient);
  await alice.send("/msg bob-wire welcome back");
  await bobClient.expect({ type: "message", text: "welcome back" });
}

/** A peer killed in the middle of a file: no file under its name, and the survivor says so. */
async function killedMidTransfer(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-kill", "bob-kill");
  const bigPath = join(scene.dir, "big.iso");
  {
    using f = await Deno.open(bigPath, { write: true, create: true });
    await f.truncate(200 * MiB); // sparse: cheap to make, 200 MiB to send
  }

  // The sender dies.
  let [alice, bob] = await scene.start(aliceUser, bobUser);
  await connect(alice, bob);
  await alice.send(`/file ${bigPath}`);
  await bob.acceptFile("alice-kill");
  await bob.expect({ type: "progress", direction: "in" });
  await alice.kill("SIGKILL");
  const gone = await bob.expect({ type: "disconnected", peer: "alice-kill" });
  assert.equal(typeof gone.reason, "string");
  assert.deepEqual(bob.since(0, { type: "file" }), []);
  assert.deepEqual(await listDir(downloads(bobUser)), []);

  // The receiver dies.
  [alice] = await scene.start(aliceUser);
  const again = await connect(alice, bob);
  assert.equal(again.atFrom.trust, "known");
  await alice.send(`/file ${bigPath}`);
  await bob.acceptFile("alice-kill");
  // Wait for this transfer's partial file itself: a progress event could be the first one's.
  let partials: string[] = [];
  for (let i = 0; i < 200 && partials.length === 0; i++) {
    partials = (await listDir(downloads(bobUser))).filter((n) => n.startsWith(".partial-"));
    if (partials.length === 0) await sleep(25);
  }
  await bob.kill("SIGKILL");
  assert.equal(partials.length, 1, "no partial file while receiving");
  const partial = await Deno.stat(join(downloads(bobUser), partials[0]));
  assert.equal(partial.mode! & 0o777, 0o600);
  await alice.expect({ type: "disconnected", peer: "bob-kill" });
  await alice.send("/peers");
  assert.deepEqual((await alice.expect({ type: "peers" })).peers, []);
  // A killed client cannot clean up; it is left as a partial file, never under the final name.
  assert.deepEqual(await listDir(downloads(bobUser)), partials);
  // The killed receiver's partial file is gone once its client starts again.
  [bob] = await scene.start(bobUser);
  assert.deepEqual(await listDir(downloads(bobUser)), []);
}

/**
 * A sender that vanishes while alice is busy writing its file is always
 * noticed: rounds of a raw peer that floods `bin` frames and drops the
 * connection, each reported as `disconnected` with the partial file deleted
 * (at worst after the 5 s stall limit of docs/PROTOCOL.md).
 */
async function vanishingSender(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-vanish", "bob-vanish");
  const bob = await credentials(bobUser);
  const [alice] = await scene.start(aliceUser);
  const payload = new Uint8Array(512 * 1024);
  const binHeader = encodeFrame({ type: "bin", id: "f", size: payload.length });
  for (let round = 1; round <= 4; round++) {
    await alice.send("/chat bob-vanish");
    await alice.expect({ type: "invited", to: "bob-vanish" });
    const peer = scene.raw(alice.port, bob);
    await peer.expectFrame({ type: "hello", v: 1 });
    // An offer, accepted by alice's user: a peer that streams without asking is refused a
    // file this large (more than --auto-accept).
    peer.write(
      encodeFrame({ type: "hello", v: 1, features: ["bin", "offer"] }) +
        encodeFrame({
          type: "file",
          id: "f",
          name: "x.bin",
          size: 256 * MiB,
          sha256: "0".repeat(64),
        }),
    );
    await alice.acceptFile("bob-vanish");
    await peer.expectFrame({ type: "accept", id: "f" });
    for (let i = 0; i < 128; i++) {
      peer.write(binHeader);
      peer.write(payload);
    }
    await alice.expect({ type: "progress", peer: "bob-vanish", direction: "in" });
    peer.destroy();
    const gone = await alice.expect((e) => e.type === "disconnected" || e.type === "file", 10_000)
      .catch(() => null);
    assert.ok(gone, `round ${round}: alice never noticed that bob was gone`);
    assert.equal(gone.type, "disconnected");
    assert.deepEqual(await listDir(downloads(aliceUser)), [], `round ${round}`);
  }
}

/** A dropped peer is reported, and /chat + /accept connect again. */
async function droppedPeer(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-drop", "bob-drop");
  let [alice, bob] = await scene.start(aliceUser, bobUser);
  await connect(alice, bob);

  await bob.kill("SIGKILL");
  const gone = await alice.expect({ type: "disconnected", peer: "bob-drop" });
  assert.equal(typeof gone.reason, "string");
  await alice.send("are you there?");
  await alice.expect({ type: "error" });
  await alice.send("/peers");
  assert.deepEqual((await alice.expect({ type: "peers" })).peers, []);

  [bob] = await scene.start(bobUser);
  const again = await connect(alice, bob);
  assert.equal(again.atFrom.trust, "known");
  assert.equal(again.atTo.trust, "known");
  await alice.send("welcome back");
  await bob.expect({ type: "message", from: "alice-drop", text: "welcome back" });

  // A peer that quits says bye: the other side reports it too.
  await bob.send("/quit");
  await bob.expect({ type: "bye" });
  assert.equal((await bob.status).code, 0);
  const quit = await alice.expect({ type: "disconnected", peer: "bob-drop" });
  assert.match(String(quit.reason), /bye/);

  // SIGTERM: alice says bye to her peers and exits 0.
  [bob] = await scene.start(bobUser);
  await connect(alice, bob);
  await alice.send("/chat bob-drop");
  await bob.expect({ type: "invite", from: "alice-drop" });
  await alice.kill("SIGTERM");
  assert.equal((await alice.status).code, 0);
  await alice.expect({ type: "bye" });
  const termed = await bob.expect({ type: "disconnected", peer: "alice-drop" });
  assert.match(String(termed.reason), /bye/);

  // An invitation whose listener is gone: /accept fails with an error, and the client goes on.
  await bob.send("/accept alice-drop");
  await bob.expect((e) => e.type === "error" && /Cannot connect/.test(String(e.message)));
  await bob.send("/peers");
  assert.deepEqual((await bob.expect({ type: "peers" })).peers, []);
}

/**
 * A certificate revoked while alice's client runs is refused at her listener
 * once her CRL is over a minute old (docs/PROTOCOL.md §1.5: the CRL is
 * refreshed "before each connection when older than a minute").
 */
async function revokedWhileRunning(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-crl", "bob-crl");
  const bob = await credentials(bobUser);
  const [alice] = await scene.start(aliceUser);
  const started = Date.now();
  await alice.send("/chat bob-crl");
  await alice.expect({ type: "invited", to: "bob-crl" });
  await revoke(scene.service, "bob-crl");
  // The CA published the revocation at once.
  const crl = await scene.service.request("/v1/crl");
  const { stdout } = await openssl(["crl", "-noout", "-text"], { stdin: crl.body });
  const serial = (await whoami(bobUser)).serial;
  assert.match(new TextDecoder().decode(stdout), new RegExp(`Serial Number: 0*${serial}`, "i"));
  await waitUntil(() => Date.now() - started > 62_000, "a minute", 70_000);
  const mark = alice.mark();
  await assertRefused(alice, scene.raw(alice.port, bob), mark, "bob, revoked a minute ago");
}

/**
 * bob's /accept refuses alice when she was revoked after inviting him and
 * bob's CRL is over a minute old: it is refreshed before he connects.
 */
async function revokedBeforeAccept(scene: Scene): Promise<void> {
  const [aliceUser, bobUser] = await scene.join("alice-crl2", "bob-crl2");
  const [alice, bob] = await scene.start(aliceUser, bobUser);
  const started = Date.now();
  await alice.send("/chat bob-crl2");
  await alice.expect({ type: "invited", to: "bob-crl2" });
  await bob.expect({ type: "invite", from: "alice-crl2" });
  await revoke(scene.service, "alice-crl2");
  await waitUntil(() => Date.now() - started > 62_000, "a minute", 70_000);
  await bob.send("/accept alice-crl2");
  const refused = await bob.expect((e) => e.type === "error" || e.type === "connected");
  assert.deepEqual(refused, { type: "error", message: REJECTED });
}

// ---------------------------------------------------------------------------

const SCENARIOS: Array<[string, (scene: Scene) => Promise<void>]> = [
  [
    "alice's /chat bob reaches bob at once; /accept connects both with each other's certificate; messages, /msg, /peers, equal safety numbers and /verify work",
    originalFlow,
  ],
  [
    'a 5 MiB file arrives intact under downloads, the same name again becomes "name (1).ext", and an empty file works',
    files,
  ],
  [
    '"/file PATH" sends a file whose path has a space, to the current peer or to NAME',
    filePathWithSpaces,
  ],
  [
    'alice sends files in bin frames only to a peer whose hello lists "bin" and in base64 chunks otherwise, and stores bin frames from a peer',
    wireFiles,
  ],
  [
    "a message and a malformed line in one write: the message is shown and acknowledged, then one error frame",
    framesBeforeMalformed,
  ],
  [
    "a typed line over 65,536 characters is refused or split by the sender, and the connection stays",
    longMessage,
  ],
  [
    'a new key for bob shows "changed" with a CHANGED warning, nothing is sent to him until /trust, then messages flow',
    keyChange,
  ],
  [
    "alice's listener refuses carol, no certificate, self-signed, another CA's, revoked, no ALPN and TLS 1.2, and admits the invited bob",
    listenerRefusals,
  ],
  [
    "bob's /accept refuses a listener with carol's, a self-signed or a revoked certificate, or without ALPN, and sends it nothing",
    acceptRefusals,
  ],
  [
    "openssl s_client as bob talks to alice as docs/PROTOCOL.md §2 shows; without a certificate, self-signed or as carol it gets nothing",
    sClientInterop,
  ],
  [
    "malformed frames get one error frame and a closed connection while the client keeps running; bad files are not kept and hostile names stay inside downloads",
    malformedInput,
  ],
  [
    "a sender or receiver killed in the middle of a 200 MiB file leaves no file and the survivor reports disconnected",
    killedMidTransfer,
  ],
  [
    "a sender that vanishes in the middle of a file is reported as disconnected every time, and its partial file is deleted",
    vanishingSender,
  ],
  [
    "a dropped peer is reported as disconnected and /chat + /accept connect again",
    droppedPeer,
  ],
  [
    "a certificate revoked while alice runs is refused at her listener once her CRL is a minute old",
    revokedWhileRunning,
  ],
  [
    "bob's /accept refuses alice, revoked after she invited him, once his CRL is a minute old",
    revokedBeforeAccept,
  ],
];

Deno.test("chat end to end: real CA service, real clients, mutual TLS between peers", async (t) => {
  await runScenarios(t, SCENARIOS, (service, dir) => new Scene(service, dir));
});
