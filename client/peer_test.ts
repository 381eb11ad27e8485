/**
 * PeerConnection on both ends of a real mutual-TLS connection on 127.0.0.1,
 * with certificates from a real CA (openssl), and on one end a raw TLS socket
 * that writes hostile frames.
 */
import assert from "node:assert/strict";
import { E2eError } from "../lib/errors.ts";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { join } from "node:path";
import tls from "node:tls";
import { CertificateAuthority } from "../ca/authority.ts";
import { encodeFrame, type Frame } from "../lib/frames.ts";
import {
  clientOptions,
  pauseReading,
  resumeReading,
  serverOptions,
  trustAnchor,
} from "../lib/tls.ts";
import { makeCsr, PASSPHRASE, withTempDir } from "../tests/_helpers.ts";
import {
  type FileOffer,
  type FilePolicy,
  MAX_ANSWER_BYTES,
  MAX_UNSENT_FILL,
  PeerConnection,
  type PeerEvents,
  type PeerOptions,
} from "./peer.ts";

type Seen = Array<[string, ...unknown[]]>;

function recorder(seen: Seen): PeerEvents {
  return {
    message: (_p, id, text) => seen.push(["message", id, text]),
    delivered: (_p, id) => seen.push(["delivered", id]),
    file: (_p, info) => void seen.push(["file", info.name, info.bytes, info.sha256, info.path]),
    progress: () => {},
    fileFailed: (_p, info) => seen.push(["fileFailed", info.direction, info.reason]),
    offer: (_p, offer) => seen.push(["offer", offer]),
    fileSent: (_p, info) => seen.push(["fileSent", info.id]),
    held: () => seen.push(["held"]),
    closed: (_p, reason) => seen.push(["closed", reason]),
  };
}

async function until(what: string, seen: Seen, test: (s: Seen) => boolean): Promise<void> {
  const end = Date.now() + 10_000;
  while (!test(seen)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(seen)}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Waits until alice gives up an incoming file, then `stop`s what the sender does meanwhile (also
 * when the wait times out); her fileFailed event.
 */
async function givenUp(seen: Seen, stop: () => void): Promise<Seen[number] | undefined> {
  try {
    await until("the file given up", seen, (s) => s.some((e) => e[0] === "fileFailed"));
  } finally {
    stop();
  }
  return seen.find((e) => e[0] === "fileFailed");
}

/** A TLS server socket (alice's end) and client socket (bob's end), connected. */
async function tlsPair(dir: string): Promise<[tls.TLSSocket, tls.TLSSocket, () => void]> {
  const ca = await CertificateAuthority.init(join(dir, "ca"), PASSPHRASE, { keyType: "ec-p256" });
  const anchor = trustAnchor(ca.certificate.pem);
  const own = async (name: string) => {
    const { csr, key } = await makeCsr(name);
    return { key, cert: (await ca.sign(csr, name)).certificate.pem };
  };
  const [alice, bob] = await Promise.all([own("alice"), own("bob")]);
  const server = tls.createServer(serverOptions(alice, anchor, { requireCert: true }));
  const accepted = new Promise<tls.TLSSocket>((r) => server.once("secureConnection", r));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as { port: number }).port;
  const client = tls.connect({ ...clientOptions(anchor, { own: bob }), host: "127.0.0.1", port });
  await new Promise((r) => client.once("secureConnect", r));
  return [await accepted, client, () => server.close()];
}

/** Runs `fn` with both ends of a fresh mutual-TLS connection; closes everything after. */
async function withPair(
  fn: (alice: tls.TLSSocket, bob: tls.TLSSocket, dir: string) => Promise<void>,
): Promise<void> {
  await withTempDir(async (dir) => {
    const [aliceSocket, bobSocket, stop] = await tlsPair(dir);
    try {
      await fn(aliceSocket, bobSocket, dir);
    } finally {
      aliceSocket.destroy();
      bobSocket.destroy();
      stop();
    }
  });
}

/**
 * Alice's PeerConnection over `aliceSocket`, saving files in `downloads`, started, and the events
 * it reports. With `closeOn`, the user quits on seeing that message.
 */
function startAlice(
  aliceSocket: tls.TLSSocket,
  downloads: string,
  options: Partial<PeerOptions> & { closeOn?: { id: string; reason: string } } = {},
): { alice: PeerConnection; aliceSeen: Seen } {
  const { closeOn, ...rest } = options;
  const aliceSeen: Seen = [];
  const events = recorder(aliceSeen);
  const alice: PeerConnection = new PeerConnection(aliceSocket, "bob", undefined!, {
    downloads,
    events: closeOn === undefined ? events : {
      ...events,
      message: (_p, id, text) => {
        aliceSeen.push(["message", id, text]);
        if (id === closeOn.id) alice.close(closeOn.reason);
      },
    },
    ...rest,
  });
  alice.start();
  return { alice, aliceSeen };
}

/**
 * PeerConnections at both ends, started: alice's saves in `dir`/alice-downloads (with
 * `aliceOptions`), bob's in `dir`/bob-downloads; and the events each reports.
 */
function startBoth(
  aliceSocket: tls.TLSSocket,
  bobSocket: tls.TLSSocket,
  dir: string,
  aliceOptions: Partial<PeerOptions> = {},
) {
  const aliceSeen: Seen = [];
  const bobSeen: Seen = [];
  const downloads = join(dir, "alice-downloads");
  const alice = new PeerConnection(aliceSocket, "bob", undefined!, {
    downloads,
    events: recorder(aliceSeen),
    ...aliceOptions,
  });
  const bob = new PeerConnection(bobSocket, "alice", undefined!, {
    downloads: join(dir, "bob-downloads"),
    events: recorder(bobSeen),
  });
  alice.start();
  bob.start();
  return { alice, bob, aliceSeen, bobSeen, downloads };
}

/**
 * Alice's PeerConnection over `aliceSocket`, started, and what the raw peer at the other end
 * receives (as text).
 */
function aliceAndRawBob(
  aliceSocket: tls.TLSSocket,
  rawBob: tls.TLSSocket,
  dir: string,
  closeOn?: { id: string; reason: string }, // the user quits on seeing this message
): { alice: PeerConnection; aliceSeen: Seen; received: () => string } {
  const { alice, aliceSeen } = startAlice(aliceSocket, dir, { closeOn });
  let received = "";
  rawBob.on("data", (b: Uint8Array) => received += new TextDecoder().decode(b));
  return { alice, aliceSeen, received: () => received };
}

Deno.test("PeerConnection carries a message with its ack and a 3 MiB file intact, and a close reaches both ends", async () => {
  await withPair(async (aliceSocket, bobSocket, dir) => {
    await Deno.mkdir(join(dir, "alice-downloads"));
    const { alice, bob, aliceSeen, bobSeen } = startBoth(aliceSocket, bobSocket, dir);

    const id = bob.sendMessage("hi alice");
    await until("alice's message", aliceSeen, (s) => s.some((e) => e[0] === "message"));
    assert.deepEqual(aliceSeen[0], ["message", id, "hi alice"]);
    await until("bob's ack", bobSeen, (s) => s.some((e) => e[0] === "delivered" && e[1] === id));

    const body = new Uint8Array(3 * 1024 * 1024).map((_, i) => i % 251);
    await Deno.writeFile(join(dir, "data.bin"), body);
    const { id: fileId } = await bob.sendFile(join(dir, "data.bin"));
    await until("the file", aliceSeen, (s) => s.some((e) => e[0] === "file"));
    const [, name, bytes, sha256, path] = aliceSeen.find((e) => e[0] === "file")!;
    assert.equal(name, "data.bin");
    assert.equal(bytes, body.length);
    assert.equal(sha256, createHash("sha256").update(body).digest("hex"));
    assert.deepEqual(await Deno.readFile(path as string), body);
    await until(
      "the file's ack",
      bobSeen,
      (s) => s.some((e) => e[0] === "delivered" && e[1] === fileId),
    );

    alice.close("done");
    await until("both closed", bobSeen, (s) => s.some((e) => e[0] === "closed"));
    await until("alice closed", aliceSeen, (s) => s.some((e) => e[0] === "closed"));
    assert.equal(alice.open, false);
    assert.equal(bob.open, false);
  });
});

Deno.test("PeerConnection holds back a quarantined peer's messages: not shown, not acknowledged", async () => {
  await withPair(async (aliceSocket, bobSocket, dir) => {
    const { alice, bob, aliceSeen, bobSeen } = startBoth(aliceSocket, bobSocket, dir);
    alice.quarantined = true; // before anything arrives
    bob.sendMessage("from a changed key");
    await until("held", aliceSeen, (s) => s.some((e) => e[0] === "held"));
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(aliceSeen.filter((e) => e[0] === "message"), []);
    assert.deepEqual(bobSeen.filter((e) => e[0] === "delivered"), []);
    alice.close();
  });
});

Deno.test("PeerConnection answers a malformed frame after the frames before it, then closes", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { aliceSeen, received } = aliceAndRawBob(aliceSocket, rawBob, dir);
    rawBob.write(
      encodeFrame({ type: "hello", v: 1, features: [] }) +
        encodeFrame({ type: "msg", id: "m1", text: "before" }) +
        '{"type":"msg","id":5}\n',
    );
    await until("closed", aliceSeen, (s) => s.some((e) => e[0] === "closed"));
    assert.deepEqual(aliceSeen[0], ["message", "m1", "before"]);
    assert.match(received(), /"type":"ack","id":"m1"/);
    assert.match(received(), /"type":"error"/);
  });
});

/** Frames a raw socket received, parsed (the peer's hello first). */
function framesOf(text: string): Array<Record<string, unknown>> {
  return text.split("\n").filter((l) => l).map((l) => JSON.parse(l));
}

Deno.test('PeerConnection acknowledges a burst with a few "acks" frames to a peer that lists "acks", each message once', async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { alice, aliceSeen, received } = aliceAndRawBob(aliceSocket, rawBob, dir);
    let burst = encodeFrame({ type: "hello", v: 1, features: ["acks"] });
    for (let i = 0; i < 500; i++) burst += encodeFrame({ type: "msg", id: `m${i}`, text: `${i}` });
    rawBob.write(burst);
    await until("500 messages", aliceSeen, (s) => s.length === 500);
    assert.deepEqual(aliceSeen.map((e) => e[1]), Array.from({ length: 500 }, (_, i) => `m${i}`));
    const end = Date.now() + 10_000;
    const acked = () =>
      framesOf(received()).flatMap((f) => f.type === "acks" ? f.ids as string[] : []);
    while (acked().length < 500 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(acked(), Array.from({ length: 500 }, (_, i) => `m${i}`));
    const frames = framesOf(received());
    assert.deepEqual(frames.filter((f) => f.type === "ack"), []);
    const count = frames.filter((f) => f.type === "acks").length;
    assert.ok(count <= 10, `${count} acks frames for 500 messages`);
    alice.close();
  });
});

Deno.test('PeerConnection acknowledges each message with its own "ack" to a peer whose hello does not list "acks"', async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { alice, aliceSeen, received } = aliceAndRawBob(aliceSocket, rawBob, dir);
    let burst = encodeFrame({ type: "hello", v: 1, features: ["bin", "offer"] });
    for (let i = 0; i < 20; i++) burst += encodeFrame({ type: "msg", id: `m${i}`, text: `${i}` });
    rawBob.write(burst);
    await until("20 messages", aliceSeen, (s) => s.length === 20);
    const end = Date.now() + 10_000;
    const acks = () => framesOf(received()).filter((f) => f.type === "ack").map((f) => f.id);
    while (acks().length < 20 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(acks(), Array.from({ length: 20 }, (_, i) => `m${i}`));
    assert.deepEqual(framesOf(received()).filter((f) => f.type === "acks"), []);
    // Our hello offered acks all the same; this peer just does not use them.
    assert.deepEqual(framesOf(received())[0].features, [
      "bin",
      "offer",
      "rooms",
      "acks",
      "sha256-at-end",
    ]);
    alice.close();
  });
});

Deno.test('PeerConnection reports each id of an "acks" frame as delivered, with its round trip', async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const delivered: Array<[string, number | undefined]> = [];
    const alice = new PeerConnection(aliceSocket, "bob", undefined!, {
      downloads: dir,
      events: { ...recorder([]), delivered: (_p, id, ms) => delivered.push([id, ms]) },
    });
    alice.start();
    rawBob.on("data", () => {});
    rawBob.write(encodeFrame({ type: "hello", v: 1, features: ["acks"] }));
    const ids = [alice.sendMessage("one"), alice.sendMessage("two"), alice.sendMessage("three")];
    assert.equal(new Set(ids).size, 3);
    rawBob.write(encodeFrame({ type: "acks", ids: [ids[0], ids[2]] }));
    rawBob.write(encodeFrame({ type: "ack", id: ids[1] }));
    const end = Date.now() + 10_000;
    while (delivered.length < 3 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(delivered.map(([id]) => id), [ids[0], ids[2], ids[1]]);
    for (const [, ms] of delivered) assert.ok(typeof ms === "number" && ms >= 0);
    alice.close();
  });
});

const ACK_UNKNOWN = "Malformed frame: an ack for an id not sent, or acknowledged already";

for (
  const [what, acks] of [
    ["an id it never sent", (ids: string[]) => [{ type: "acks", ids: [ids[0], "nope-1"] }]],
    [
      "an id it sent on another connection",
      (ids: string[]) => [{ type: "ack", id: ids[0].replace(/^[^-]+/, "0") }],
    ],
    ["an id twice in one frame", (ids: string[]) => [{ type: "acks", ids: [ids[1], ids[1]] }]],
    [
      "an id acknowledged already",
      (ids: string[]) => [{ type: "ack", id: ids[0] }, { type: "acks", ids: [ids[0]] }],
    ],
    ["a file id acknowledged before its end", (ids: string[]) => [{ type: "ack", id: ids[2] }]],
  ] as const
) {
  Deno.test(`PeerConnection reports no delivery for an ack of ${what}: error frame, connection closed`, async () => {
    await withPair(async (aliceSocket, rawBob, dir) => {
      const { alice, aliceSeen } = startAlice(aliceSocket, dir);
      const wire = wireReader(rawBob);
      rawBob.write(encodeFrame({ type: "hello", v: 1, features: ["acks", "offer"] }));
      await until("bob's hello", [], () => wire.frames.length > 0);
      const path = join(dir, "offered.txt");
      await Deno.writeTextFile(path, "offered");
      const ids = [alice.sendMessage("one"), alice.sendMessage("two")];
      ids.push((await alice.sendFile(path)).id); // offered, never accepted
      for (const frame of acks(ids)) rawBob.write(encodeFrame(frame as Frame));
      await until("closed", aliceSeen, (s) => s.some((e) => e[0] === "closed"));
      await until("the error frame", [], () => wire.frames.some((f) => f.type === "error"));
      assert.equal(wire.frames.find((f) => f.type === "error")!.message, ACK_UNKNOWN);
      // An ack that was right before the bad one counts; nothing of the bad one does.
      const delivered = aliceSeen.filter((e) => e[0] === "delivered").map((e) => e[1]);
      assert.deepEqual(delivered, what === "an id acknowledged already" ? [ids[0]] : []);
      assert.deepEqual(
        aliceSeen.find((e) => e[0] === "closed"),
        ["closed", `closed after bad input: ${ACK_UNKNOWN}`],
      );
    });
  });
}

Deno.test("PeerConnection reads frames split anywhere across reads, a character split too, in order", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { alice, aliceSeen } = startAlice(aliceSocket, dir);
    rawBob.on("data", () => {});
    rawBob.setNoDelay(true);
    let text = encodeFrame({ type: "hello", v: 1, features: ["acks"] });
    for (let i = 0; i < 300; i++) text += encodeFrame({ type: "msg", id: `m${i}`, text: `é${i}€` });
    const bytes = new TextEncoder().encode(text);
    // Pieces of 1 to 97 bytes, each its own write (and so mostly its own TLS record).
    for (let at = 0, n = 1; at < bytes.length; at += n, n = n % 97 + 7) {
      rawBob.write(bytes.subarray(at, at + n));
      if (at % 5 === 0) await new Promise((r) => setTimeout(r, 0));
    }
    await until("300 messages", aliceSeen, (s) => s.length === 300);
    assert.deepEqual(
      aliceSeen.map((e) => e[2]),
      Array.from({ length: 300 }, (_, i) => `é${i}€`),
    );
    alice.close();
  });
});

/** A policy that asks for every file and counts what it takes. */
function asking(taken: FileOffer[], refuse?: string): FilePolicy {
  return {
    decide: (_p, _offer, canAsk) => canAsk ? "ask" : { refuse: "it cannot be asked" },
    take: (_p, offer) => {
      if (refuse) return { refuse };
      taken.push(offer);
      return () => taken.splice(taken.indexOf(offer), 1);
    },
  };
}

Deno.test("PeerConnection offers a file and streams it only after acceptOffer(); declineOffer() tells the sender", async () => {
  await withPair(async (aliceSocket, bobSocket, dir) => {
    const taken: FileOffer[] = [];
    const { alice, bob, aliceSeen, bobSeen, downloads } = startBoth(aliceSocket, bobSocket, dir, {
      files: asking(taken),
    });
    const body = new TextEncoder().encode("consent first\n");
    await Deno.writeFile(join(dir, "a.txt"), body);
    const offer = await bob.sendFile(join(dir, "a.txt"));
    await until("the offer", aliceSeen, (s) => s.some((e) => e[0] === "offer"));
    assert.deepEqual(aliceSeen.find((e) => e[0] === "offer")![1], offer);
    assert.deepEqual(alice.offers, [offer]);
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(bobSeen.filter((e) => e[0] === "fileSent"), [], "sent before accept");
    await assert.rejects(() => Deno.readDir(downloads)[Symbol.asyncIterator]().next());
    await alice.acceptOffer(offer.id);
    assert.deepEqual(taken, [offer]);
    await until("the file", aliceSeen, (s) => s.some((e) => e[0] === "file"));
    await until("delivered", bobSeen, (s) => s.some((e) => e[0] === "delivered"));
    assert.deepEqual(bobSeen.filter((e) => e[0] === "fileSent"), [["fileSent", offer.id]]);

    const second = await bob.sendFile(join(dir, "a.txt"));
    await until("the 2nd offer", aliceSeen, (s) => s.filter((e) => e[0] === "offer").length === 2);
    alice.declineOffer(second.id);
    await until("the decline", bobSeen, (s) => s.some((e) => e[0] === "fileFailed"));
    assert.deepEqual(bobSeen.find((e) => e[0] === "fileFailed"), [
      "fileFailed",
      "out",
      '"alice" declined it: declined by the user',
    ]);
    assert.throws(() => alice.declineOffer(second.id), /No file offer/);
    // At most 16 offers wait at once: each holds its file open.
    for (let i = 0; i < 16; i++) await bob.sendFile(join(dir, "a.txt"));
    await assert.rejects(
      () => bob.sendFile(join(dir, "a.txt")),
      /16 files already wait for "alice" to accept them/,
    );
    await assert.rejects(() => alice.acceptOffer("nope"), /No file offer "nope" from "bob"/);
    alice.close();
  });
});

Deno.test("PeerConnection declines an offer its policy refuses, with the reason on both sides, and writes nothing", async () => {
  await withPair(async (aliceSocket, bobSocket, dir) => {
    const { alice, bob, aliceSeen, bobSeen, downloads } = startBoth(aliceSocket, bobSocket, dir, {
      files: {
        decide: () => ({ refuse: "the quota of 0 files is used up" }),
        take: () => ({ refuse: "never" }),
      },
    });
    await Deno.writeFile(join(dir, "a.txt"), new Uint8Array(10));
    await bob.sendFile(join(dir, "a.txt"));
    await until("bob told", bobSeen, (s) => s.some((e) => e[0] === "fileFailed"));
    assert.match(String(bobSeen.find((e) => e[0] === "fileFailed")![2]), /the quota of 0 files/);
    assert.deepEqual(aliceSeen.find((e) => e[0] === "fileFailed"), [
      "fileFailed",
      "in",
      "refused: the quota of 0 files is used up",
    ]);
    await assert.rejects(() => Deno.stat(downloads), Deno.errors.NotFound);
    alice.close();
  });
});

Deno.test("PeerConnection aborts a send the peer reads nothing of after sendStallMs, and closes the connection", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { alice, aliceSeen } = startAlice(aliceSocket, dir, { sendStallMs: 500 });
    let received = "";
    const onData = (b: Uint8Array) => {
      received += new TextDecoder().decode(b.subarray(0, 4096));
      const m = /"type":"file","id":"([^"]+)"/.exec(received);
      if (m) {
        // Accept, then never read again.
        rawBob.off("data", onData);
        rawBob.pause();
        rawBob.write(encodeFrame({ type: "accept", id: m[1] }));
      }
    };
    rawBob.on("data", onData);
    rawBob.write(encodeFrame({ type: "hello", v: 1, features: ["bin", "offer"] }));
    const path = join(dir, "big.bin");
    {
      using f = await Deno.open(path, { write: true, create: true });
      await f.truncate(64 * 1024 * 1024);
    }
    const started = performance.now();
    const offer = await alice.sendFile(path);
    assert.ok(performance.now() - started < 2_000, "sendFile() waited for the transfer");
    await until("the abort", aliceSeen, (s) => s.some((e) => e[0] === "fileFailed"));
    const failed = aliceSeen.find((e) => e[0] === "fileFailed")!;
    assert.equal(failed[1], "out");
    assert.match(String(failed[2]), /no progress for 0.5 s: "bob" reads nothing/);
    await until("closed", aliceSeen, (s) => s.some((e) => e[0] === "closed"));
    assert.match(String(aliceSeen.find((e) => e[0] === "closed")![1]), /reads nothing/);
    assert.ok(!aliceSeen.some((e) => e[0] === "fileSent" && e[1] === offer.id));
  });
});

Deno.test('PeerConnection counts a peer\'s "got" only up to what it sent: a peer that confirms bytes it never got, and reads nothing, still has the send aborted', async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { alice, aliceSeen } = startAlice(aliceSocket, dir, { sendStallMs: 500 });
    let received = "";
    const onData = (b: Uint8Array) => {
      received += new TextDecoder().decode(b.subarray(0, 4096));
      const m = /"type":"file","id":"([^"]+)"/.exec(received);
      if (m) {
        // Accept, claim to have written far more than the file holds, then never read again.
        rawBob.off("data", onData);
        rawBob.pause();
        rawBob.write(encodeFrame({ type: "accept", id: m[1] }));
        // (once the send has begun: a "got" for a file not streaming yet wakes nothing)
        setTimeout(
          () => rawBob.write(encodeFrame({ type: "got", id: m[1], bytes: 2 ** 40 })),
          200,
        );
      }
    };
    rawBob.on("data", onData);
    rawBob.write(encodeFrame({ type: "hello", v: 1, features: ["bin", "offer"] }));
    const path = join(dir, "big.bin");
    {
      using f = await Deno.open(path, { write: true, create: true });
      await f.truncate(64 * 1024 * 1024);
    }
    const offer = await alice.sendFile(path);
    await until("the abort", aliceSeen, (s) => s.some((e) => e[0] === "fileFailed"));
    const failed = aliceSeen.find((e) => e[0] === "fileFailed")!;
    assert.equal(failed[1], "out");
    assert.match(String(failed[2]), /no progress for 0.5 s: "bob" reads nothing/);
    assert.ok(!aliceSeen.some((e) => e[0] === "fileSent" && e[1] === offer.id));
  });
});

Deno.test('PeerConnection sends a peer that does not list "offer" no file larger than its unconfirmed window', async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { alice } = startAlice(aliceSocket, dir);
    rawBob.on("data", () => {});
    rawBob.write(encodeFrame({ type: "hello", v: 1, features: ["bin"] }));
    const path = join(dir, "nine.bin");
    {
      using f = await Deno.open(path, { write: true, create: true });
      await f.truncate(9 * 1024 * 1024);
    }
    await assert.rejects(
      alice.sendFile(path),
      (e: unknown) =>
        e instanceof E2eError && e.code === "ERR_TOO_LARGE" &&
        /"bob" does not confirm what it receives .*limited to 8 MiB, and this one is 9 MiB/
          .test(e.message),
    );
    const small = join(dir, "small.bin");
    await Deno.writeFile(small, new Uint8Array(1024));
    assert.equal((await alice.sendFile(small)).bytes, 1024);
  });
});

/** Alice with a raw bob that sent a hello with rooms and reads nothing after; a big room message. */
async function aliceWithDeafBob(aliceSocket: tls.TLSSocket, rawBob: tls.TLSSocket, dir: string) {
  const { alice } = startAlice(aliceSocket, dir);
  let helloSeen = false;
  rawBob.once("data", () => {
    helloSeen = true;
    rawBob.pause(); // asks and never reads the answers
  });
  rawBob.write(encodeFrame({ type: "hello", v: 1, features: ["rooms"] }));
  const end = Date.now() + 10_000;
  while (!alice.rooms || !helloSeen) {
    if (Date.now() > end) throw new Error("no hello");
    await new Promise((r) => setTimeout(r, 10));
  }
  const m = {
    roomId: "0".repeat(32),
    room: "#team",
    author: "carol",
    seq: 1,
    version: 1,
    text: "x".repeat(65_536),
    sig: "AAAA",
  };
  return { alice, m };
}

Deno.test("PeerConnection drops room gap fills for a peer that reads nothing once MAX_UNSENT_FILL waits unsent", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { alice, m } = await aliceWithDeafBob(aliceSocket, rawBob, dir);
    const frame = { op: "msg" as const, m, fill: true };
    let sent = 0;
    for (let i = 0; i < 2 * MAX_UNSENT_FILL / 65_536; i++) if (alice.sendRoom(frame)) sent++;
    assert.ok(sent < 2 * MAX_UNSENT_FILL / 65_536, "every fill was taken");
    await Promise.resolve(); // the frames of this turn reach the socket as it ends
    assert.ok(
      aliceSocket.writableLength <= MAX_UNSENT_FILL + 70_000,
      `${aliceSocket.writableLength} bytes wait unsent`,
    );
    // What is not a fill still goes.
    assert.ok(alice.sendRoom({ op: "msg", m }));
    alice.close();
  });
});

Deno.test("PeerConnection answers a peer that reads nothing at most MAX_ANSWER_BYTES of fills, lists and states in all, however the writes are spread over turns", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { alice, m } = await aliceWithDeafBob(aliceSocket, rawBob, dir);
    let sent = 0;
    // One fill a turn: the socket's writableLength stays 0 (Deno's TLS takes every write).
    for (let i = 0; i < 2 * MAX_ANSWER_BYTES / 65_536; i++) {
      if (alice.sendRoom({ op: "msg", m, fill: true })) sent++;
      await new Promise((r) => setTimeout(r, 0));
    }
    assert.ok(sent * 65_536 <= MAX_ANSWER_BYTES + 65_536, `${sent} fills of 64 KiB taken`);
    // Answers to a state are counted too; what is neither a fill nor an answer still goes.
    const state = { op: "state" as const, roomId: m.roomId, version: 1, seen: {} };
    assert.equal(alice.sendRoom(state, { answer: true }), false);
    assert.ok(alice.sendRoom(state));
    assert.ok(alice.sendRoom({ op: "msg", m }));
    alice.close();
  });
});

/** The frames a raw socket receives, with each `bin` frame's payload as its `data`. */
function wireReader(socket: tls.TLSSocket): { frames: Array<Record<string, unknown>> } {
  const out = { frames: [] as Array<Record<string, unknown>> };
  let pending = new Uint8Array(0);
  let payload: { frame: Record<string, unknown>; left: number; parts: Uint8Array[] } | undefined;
  socket.on("data", (chunk: Uint8Array) => {
    const all = new Uint8Array(pending.length + chunk.length);
    all.set(pending);
    all.set(chunk, pending.length);
    let at = 0;
    while (at < all.length) {
      if (payload) {
        const take = Math.min(payload.left, all.length - at);
        payload.parts.push(all.slice(at, at + take));
        payload.left -= take;
        at += take;
        if (payload.left === 0) {
          payload.frame.data = Buffer.concat(payload.parts);
          payload = undefined;
        }
        continue;
      }
      const nl = all.indexOf(0x0a, at);
      if (nl < 0) break;
      const frame = JSON.parse(new TextDecoder().decode(all.subarray(at, nl)));
      out.frames.push(frame);
      if (frame.type === "bin") payload = { frame, left: frame.size, parts: [] };
      at = nl + 1;
    }
    pending = all.slice(at);
  });
  return out;
}

function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

async function writeBody(dir: string, size: number): Promise<[string, Uint8Array]> {
  const body = new Uint8Array(size).map((_, i) => (i * 7) % 253);
  const path = join(dir, "body.bin");
  await Deno.writeFile(path, body);
  return [path, body];
}

Deno.test('PeerConnection to a peer that lists "sha256-at-end" offers a file without its SHA-256 and sends it in the end frame, hashed as it streamed', async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { alice } = startAlice(aliceSocket, dir);
    const wire = wireReader(rawBob);
    rawBob.write(encodeFrame({ type: "hello", v: 1, features: ["bin", "offer", "sha256-at-end"] }));
    const [path, body] = await writeBody(dir, 2_500_000);
    const offer = await alice.sendFile(path);
    assert.equal(offer.sha256, undefined);
    const file = () => wire.frames.find((f) => f.type === "file");
    await until("the offer", [], () => file() !== undefined);
    assert.deepEqual(file(), { type: "file", id: offer.id, name: "body.bin", size: body.length });
    rawBob.write(encodeFrame({ type: "accept", id: offer.id }));
    await until("the end", [], () => wire.frames.some((f) => f.type === "end"));
    const data = Buffer.concat(
      wire.frames.filter((f) => f.type === "bin").map((f) => f.data as Uint8Array),
    );
    assert.deepEqual(new Uint8Array(data), body);
    assert.deepEqual(wire.frames.find((f) => f.type === "end"), {
      type: "end",
      id: offer.id,
      sha256: sha256Hex(body),
    });
    // An empty file: no bin frame, the SHA-256 of nothing at the end.
    await Deno.writeFile(path, new Uint8Array());
    const empty = await alice.sendFile(path);
    await until("the 2nd offer", [], () => wire.frames.some((f) => f.id === empty.id));
    rawBob.write(encodeFrame({ type: "accept", id: empty.id }));
    await until("the 2nd end", [], () => wire.frames.filter((f) => f.type === "end").length === 2);
    assert.deepEqual(wire.frames.filter((f) => f.id === empty.id).map((f) => f.type), [
      "file",
      "end",
    ]);
    assert.equal(wire.frames.at(-1)!.sha256, sha256Hex(new Uint8Array()));
    alice.close();
  });
});

Deno.test('PeerConnection to an older peer (no "sha256-at-end") still puts the SHA-256 in the offer and none in the end frame', async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { alice } = startAlice(aliceSocket, dir);
    const wire = wireReader(rawBob);
    rawBob.write(encodeFrame({ type: "hello", v: 1, features: ["bin", "offer"] }));
    const [path, body] = await writeBody(dir, 1_500_000);
    const offer = await alice.sendFile(path);
    assert.equal(offer.sha256, sha256Hex(body));
    await until("the offer", [], () => wire.frames.some((f) => f.type === "file"));
    assert.deepEqual(wire.frames.find((f) => f.type === "file"), {
      type: "file",
      id: offer.id,
      name: "body.bin",
      size: body.length,
      sha256: sha256Hex(body),
    });
    rawBob.write(encodeFrame({ type: "accept", id: offer.id }));
    await until("the end", [], () => wire.frames.some((f) => f.type === "end"));
    assert.deepEqual(wire.frames.find((f) => f.type === "end"), { type: "end", id: offer.id });
    alice.close();
  });
});

/**
 * A raw peer sends `body` as file "f1" the way `atEnd` says (SHA-256 in the end frame, or up
 * front as an older peer does) once alice accepts; `endSha` replaces the end frame's digest
 * (null: none).
 */
async function rawSend(
  rawBob: tls.TLSSocket,
  body: Uint8Array,
  options: { atEnd: boolean; endSha?: string | null },
): Promise<Array<Record<string, unknown>>> {
  const wire = wireReader(rawBob);
  const features = options.atEnd ? ["bin", "offer", "sha256-at-end"] : ["bin", "offer"];
  const upFront = options.atEnd ? undefined : sha256Hex(body);
  rawBob.write(
    encodeFrame({ type: "hello", v: 1, features }) +
      encodeFrame({
        type: "file",
        id: "f1",
        name: "sent.bin",
        size: body.length,
        ...(upFront === undefined ? {} : { sha256: upFront }),
      }),
  );
  await until("the accept", [], () => wire.frames.some((f) => f.type === "accept"));
  for (let at = 0; at < body.length; at += 256 * 1024) {
    const part = body.subarray(at, at + 256 * 1024);
    rawBob.write(encodeFrame({ type: "bin", id: "f1", size: part.length }));
    rawBob.write(part);
  }
  const endSha = options.endSha === undefined
    ? (options.atEnd ? sha256Hex(body) : null)
    : options.endSha;
  rawBob.write(
    encodeFrame({ type: "end", id: "f1", ...(endSha === null ? {} : { sha256: endSha }) }),
  );
  return wire.frames;
}

for (const atEnd of [true, false]) {
  Deno.test(`PeerConnection receives a file whose SHA-256 comes ${atEnd ? "in the end frame" : "in the offer (an older peer)"}, keeps it and reports that SHA-256`, async () => {
    await withPair(async (aliceSocket, rawBob, dir) => {
      const { alice, aliceSeen } = startAlice(aliceSocket, join(dir, "downloads"));
      const body = new Uint8Array(1_000_000).map((_, i) => (i * 13) % 241);
      const frames = await rawSend(rawBob, body, { atEnd });
      await until("the file", aliceSeen, (s) => s.some((e) => e[0] === "file"));
      const [, name, bytes, sha256, path] = aliceSeen.find((e) => e[0] === "file")!;
      assert.deepEqual([name, bytes, sha256], ["sent.bin", body.length, sha256Hex(body)]);
      assert.deepEqual(await Deno.readFile(path as string), body);
      await until("the ack", [], () => frames.some((f) => f.type === "ack" && f.id === "f1"));
      alice.close();
    });
  });
}

Deno.test("PeerConnection acknowledges a received file only once what its file event returned resolves (the owner's records of it on disk)", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const seen: Seen = [];
    let recorded!: () => void;
    const onDisk = new Promise<void>((resolve) => recorded = resolve);
    const { alice } = startAlice(aliceSocket, join(dir, "downloads"), {
      events: {
        ...recorder(seen),
        file: async (_p, info) => {
          seen.push(["file", info.name]);
          await onDisk;
        },
      },
    });
    const frames = await rawSend(rawBob, new Uint8Array(1_000).fill(1), { atEnd: true });
    await until("the file event", seen, (s) => s.some((e) => e[0] === "file"));
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(!frames.some((f) => f.type === "ack"), "acknowledged before its records were kept");
    recorded();
    await until("the ack", [], () => frames.some((f) => f.type === "ack" && f.id === "f1"));
    alice.close();
  });
});

Deno.test("PeerConnection whose file event fails (its history line cannot be written) keeps nothing of the file: no ack, the file removed, the quota given back, error frame", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const downloads = join(dir, "downloads");
    const seen: Seen = [];
    const taken: FileOffer[] = [];
    const reason = 'Cannot write the history of "bob" in "/home/alice/history": Is a directory';
    startAlice(aliceSocket, downloads, {
      files: {
        decide: () => "accept",
        take: (_p, offer) => {
          taken.push(offer);
          return () => taken.splice(taken.indexOf(offer), 1);
        },
      },
      events: {
        ...recorder(seen),
        file: (_p, info) => {
          seen.push(["file", info.name]);
          assert.deepEqual([...Deno.readDirSync(downloads)].map((e) => e.name), ["sent.bin"]);
          return Promise.reject(new E2eError("ERR_FILE", reason));
        },
      },
    });
    const frames = await rawSend(rawBob, new Uint8Array(1_000).fill(2), { atEnd: true });
    await until("closed", seen, (s) => s.some((e) => e[0] === "closed"));
    assert.deepEqual(seen.find((e) => e[0] === "fileFailed"), ["fileFailed", "in", reason]);
    await until("the error frame", [], () => frames.some((f) => f.type === "error"));
    assert.equal(
      frames.find((f) => f.type === "error")!.message,
      "The receiver could not keep the file",
    );
    assert.ok(!frames.some((f) => f.type === "ack"), "acknowledged");
    assert.deepEqual([...Deno.readDirSync(downloads)], [], "the file was kept");
    assert.deepEqual(taken, [], "the quota it took was not given back");
  });
});

for (
  const [what, options, reason] of [
    [
      "an end frame whose SHA-256 does not match",
      { atEnd: true, endSha: "0".repeat(64) },
      "File's SHA-256 does not match what was announced",
    ],
    [
      "an end frame without the SHA-256 the offer left out",
      { atEnd: true, endSha: null },
      "Malformed frame: an end without the sha256 its file frame left out",
    ],
    [
      "a second SHA-256 in the end frame",
      { atEnd: false, endSha: "0".repeat(64) },
      "Malformed frame: an end with a second sha256",
    ],
  ] as const
) {
  Deno.test(`PeerConnection keeps nothing of a file with ${what}: file failed, error frame, connection closed`, async () => {
    await withPair(async (aliceSocket, rawBob, dir) => {
      const downloads = join(dir, "downloads");
      const { aliceSeen } = startAlice(aliceSocket, downloads);
      const body = new Uint8Array(700_000).fill(7);
      const frames = await rawSend(rawBob, body, options);
      await until("closed", aliceSeen, (s) => s.some((e) => e[0] === "closed"));
      assert.deepEqual(aliceSeen.find((e) => e[0] === "fileFailed"), ["fileFailed", "in", reason]);
      assert.ok(!aliceSeen.some((e) => e[0] === "file"));
      await until("the error frame", [], () => frames.some((f) => f.type === "error"));
      assert.equal(frames.find((f) => f.type === "error")!.message, reason);
      assert.ok(!frames.some((f) => f.type === "ack" && f.id === "f1"));
      assert.deepEqual([...Deno.readDirSync(downloads)], [], "a file or partial was kept");
    });
  });
}

Deno.test('PeerConnection acknowledges every message shown before a "bye" in the same read, while frames wait in its queue', async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { aliceSeen, received } = aliceAndRawBob(aliceSocket, rawBob, dir);
    const ended = new Promise((r) => rawBob.once("end", r));
    // The hello waits in the queue, so the messages behind it are handled from the queue too.
    let burst = encodeFrame({ type: "hello", v: 1, features: ["acks"] });
    for (let i = 0; i < 5; i++) burst += encodeFrame({ type: "msg", id: `m${i}`, text: `${i}` });
    rawBob.write(burst + encodeFrame({ type: "bye" }));
    await ended;
    assert.deepEqual(aliceSeen.filter((e) => e[0] === "message").map((e) => e[1]), [
      "m0",
      "m1",
      "m2",
      "m3",
      "m4",
    ]);
    const acked = framesOf(received()).flatMap((f) => f.type === "acks" ? f.ids as string[] : []);
    assert.deepEqual(acked, ["m0", "m1", "m2", "m3", "m4"]);
  });
});

Deno.test("PeerConnection acknowledges every message shown before close() is called in the same turn", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { received } = aliceAndRawBob(aliceSocket, rawBob, dir, {
      id: "m4",
      reason: "quit",
    });
    const ended = new Promise((r) => rawBob.once("end", r));
    let burst = encodeFrame({ type: "hello", v: 1, features: ["acks"] });
    for (let i = 0; i < 5; i++) burst += encodeFrame({ type: "msg", id: `m${i}`, text: `${i}` });
    rawBob.write(burst);
    await ended;
    const frames = framesOf(received());
    const acked = frames.flatMap((f) => f.type === "acks" ? f.ids as string[] : []);
    assert.deepEqual(acked, ["m0", "m1", "m2", "m3", "m4"]);
    assert.equal(frames.at(-1)!.type, "bye");
  });
});

for (
  const where of [
    "at the start of a read",
    "after another line of the same read",
    "split across two reads",
  ]
) {
  Deno.test(`PeerConnection refuses a frame that starts with a byte order mark ${where}`, async () => {
    await withPair(async (aliceSocket, rawBob, dir) => {
      const { aliceSeen } = startAlice(aliceSocket, dir);
      const frames = wireReader(rawBob).frames;
      rawBob.setNoDelay(true);
      rawBob.write(encodeFrame({ type: "hello", v: 1, features: ["acks"] }));
      rawBob.write(encodeFrame({ type: "msg", id: "m0", text: "plain" }));
      await until("the first message", aliceSeen, (s) => s.length === 1);
      const bom = "\uFEFF" + encodeFrame({ type: "msg", id: "m1", text: "after a BOM" });
      if (where === "at the start of a read") rawBob.write(bom);
      else if (where === "after another line of the same read") {
        rawBob.write(encodeFrame({ type: "msg", id: "m2", text: "before" }) + bom);
      } else {
        rawBob.write(bom.slice(0, 5));
        await new Promise((r) => setTimeout(r, 50));
        rawBob.write(bom.slice(5));
      }
      await until("closed", aliceSeen, (s) => s.some((e) => e[0] === "closed"));
      assert.ok(!aliceSeen.some((e) => e[0] === "message" && e[1] === "m1"));
      await until("the error frame", [], () => frames.some((f) => f.type === "error"));
      assert.equal(frames.find((f) => f.type === "error")!.message, "Malformed frame: not JSON");
    });
  });
}

Deno.test("PeerConnection takes a bin payload that is UTF-8 text with newlines, right after its header in the same read, as bytes", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { alice, aliceSeen } = startAlice(aliceSocket, join(dir, "downloads"));
    const frames = wireReader(rawBob).frames;
    // Text that looks like frames, a multi-byte character among it.
    const body = new TextEncoder().encode(
      encodeFrame({ type: "msg", id: "x1", text: "not a frame: é" }).repeat(40),
    );
    rawBob.write(
      encodeFrame({ type: "hello", v: 1, features: ["bin", "offer", "sha256-at-end"] }) +
        encodeFrame({ type: "file", id: "f1", name: "text.txt", size: body.length }),
    );
    await until("the accept", [], () => frames.some((f) => f.type === "accept"));
    const rest = new TextEncoder().encode(
      encodeFrame({ type: "end", id: "f1", sha256: sha256Hex(body) }) +
        encodeFrame({ type: "msg", id: "m1", text: "after the file" }),
    );
    const head = new TextEncoder().encode(
      encodeFrame({ type: "msg", id: "m0", text: "before the file" }) +
        encodeFrame({ type: "bin", id: "f1", size: body.length }),
    );
    rawBob.write(Buffer.concat([head, body, rest]));
    await until("the file and the message after it", aliceSeen, (s) => s.length === 3);
    assert.deepEqual(aliceSeen.map((e) => e[0] === "file" ? e[1] : e[1]), ["m0", "text.txt", "m1"]);
    const file = aliceSeen.find((e) => e[0] === "file")!;
    assert.deepEqual(await Deno.readFile(file[4] as string), body);
    alice.close();
  });
});

Deno.test('PeerConnection to a peer that lists "sha256-at-end" fails a send whose file is changed while it streams, and sends no end frame', async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { alice, aliceSeen } = startAlice(aliceSocket, dir);
    const wire = wireReader(rawBob);
    rawBob.write(encodeFrame({ type: "hello", v: 1, features: ["bin", "offer", "sha256-at-end"] }));
    const [path, body] = await writeBody(dir, 12 * 1024 * 1024);
    // Last modified long ago, so the change below moves the time whatever the clock's grain.
    await Deno.utime(path, 1_000_000, 1_000_000);
    const offer = await alice.sendFile(path);
    await until("the offer", [], () => wire.frames.some((f) => f.type === "file"));
    rawBob.write(encodeFrame({ type: "accept", id: offer.id }));
    // Without a "got", alice stops at its 8 MiB window: the last MiB is not read yet.
    const received = () =>
      wire.frames.filter((f) => f.type === "bin").reduce((n, f) => n + (f.size as number), 0);
    await until("8 MiB", [], () => received() >= 8 * 1024 * 1024);
    {
      using file = await Deno.open(path, { write: true });
      await file.seek(body.length - 10, Deno.SeekMode.Start);
      await file.write(new Uint8Array(10).fill(0xff));
    }
    rawBob.write(encodeFrame({ type: "got", id: offer.id, bytes: body.length }));
    await until("the send's end", aliceSeen, (s) => s.some((e) => e[0] !== "message"));
    assert.deepEqual(aliceSeen, [
      ["fileFailed", "out", "The file changed while it was being sent"],
    ]);
    await new Promise((r) => setTimeout(r, 100));
    assert.ok(!wire.frames.some((f) => f.type === "end"), "an end frame vouched for a torn file");
    alice.close();
  });
});

Deno.test("PeerConnection sets aside no more memory for a burst of tiny bin frames than about their own bytes", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { alice, aliceSeen } = startAlice(aliceSocket, join(dir, "downloads"));
    rawBob.on("data", () => {});
    const count = 4000;
    const body = new Uint8Array(count).map((_, i) => i % 251);
    let burst = encodeFrame({ type: "hello", v: 1, features: ["bin"] }) +
      encodeFrame({ type: "file", id: "f1", name: "tiny.bin", size: count });
    for (const byte of body) {
      burst += encodeFrame({ type: "bin", id: "f1", size: 1 }) + String.fromCharCode(byte);
    }
    const before = Deno.memoryUsage().external;
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, Deno.memoryUsage().external)), 1);
    try {
      // Bytes 128 to 250 are not one byte each in UTF-8: written as latin1, byte for byte.
      rawBob.write(Buffer.from(burst, "latin1"));
      rawBob.write(encodeFrame({ type: "end", id: "f1", sha256: sha256Hex(body) }));
      await until("the file", aliceSeen, (s) => s.some((e) => e[0] !== "progress"));
    } finally {
      clearInterval(sampler);
    }
    assert.equal(aliceSeen[0][0], "file");
    assert.deepEqual(await Deno.readFile(aliceSeen[0][4] as string), body);
    // 4,000 payloads of one byte each: a buffer of 1 MiB for each would be gigabytes.
    const grown = (peak - before) / 1024 / 1024;
    assert.ok(grown < 64, `${grown.toFixed(0)} MiB set aside for ${count} bytes of file data`);
    alice.close();
  });
});

Deno.test("PeerConnection neither shows nor acknowledges what arrives after close(), and reports the reason it was given", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const { aliceSeen, received } = aliceAndRawBob(aliceSocket, rawBob, dir, {
      id: "m1",
      reason: "the user quit",
    });
    let burst = encodeFrame({ type: "hello", v: 1, features: ["acks"] });
    for (let i = 0; i < 4; i++) burst += encodeFrame({ type: "msg", id: `m${i}`, text: `${i}` });
    rawBob.write(burst);
    await until("closed", aliceSeen, (s) => s.some((e) => e[0] === "closed"));
    rawBob.end();
    assert.deepEqual(aliceSeen, [
      ["message", "m0", "0"],
      ["message", "m1", "1"],
      ["closed", "the user quit"],
    ]);
    const acked = framesOf(received()).flatMap((f) => f.type === "acks" ? f.ids as string[] : []);
    assert.deepEqual(acked, ["m0", "m1"]);
  });
});

Deno.test("PeerConnection cut while an accepted offer starts leaves no partial file behind and gives the quota back", async () => {
  await withPair(async (aliceSocket, bobSocket, dir) => {
    const taken: FileOffer[] = [];
    const { alice, bob, aliceSeen, downloads } = startBoth(aliceSocket, bobSocket, dir, {
      files: asking(taken),
    });
    await Deno.writeFile(join(dir, "a.txt"), new Uint8Array(10));
    const offer = await bob.sendFile(join(dir, "a.txt"));
    await until("the offer", aliceSeen, (s) => s.some((e) => e[0] === "offer"));
    // The user accepts as the connection is cut: its close is handled while the partial file
    // is being created.
    const accepting = alice.acceptOffer(offer.id);
    aliceSocket.destroy();
    const accepted = await accepting.then(() => undefined, (e) => e);
    await until("closed", aliceSeen, (s) => s.some((e) => e[0] === "closed"));
    const left: string[] = [];
    for await (const f of Deno.readDir(downloads)) left.push(f.name);
    assert.deepEqual(left, [], "a partial file stayed behind");
    assert.deepEqual(taken, [], "the quota it took was not given back");
    assert.ok(
      accepted instanceof E2eError && accepted.code === "ERR_NETWORK" &&
        accepted.message === 'Cannot receive "a.txt" from "bob": the connection closed',
      String(accepted),
    );
  });
});

Deno.test("PeerConnection stops waiting for a file its sender withdrew after we accepted it: nothing kept, the quota given back, the connection open", async () => {
  await withPair(async (aliceSocket, bobSocket, dir) => {
    const taken: FileOffer[] = [];
    const { alice, bob, aliceSeen, bobSeen, downloads } = startBoth(aliceSocket, bobSocket, dir, {
      files: asking(taken),
    });
    await Deno.writeFile(join(dir, "a.txt"), new Uint8Array(10));
    const offer = await bob.sendFile(join(dir, "a.txt"), { room: "#team" });
    await until("the offer", aliceSeen, (s) => s.some((e) => e[0] === "offer"));
    // alice left #team meanwhile: bob withdraws what he offered her for it, then her accept comes.
    bob.withdrawOffers("#team", '"alice" is not in #team any more');
    assert.deepEqual(bobSeen.find((e) => e[0] === "fileFailed"), [
      "fileFailed",
      "out",
      'withdrawn: "alice" is not in #team any more',
    ]);
    await alice.acceptOffer(offer.id);
    await until("alice told", aliceSeen, (s) => s.some((e) => e[0] === "fileFailed"));
    assert.deepEqual(aliceSeen.find((e) => e[0] === "fileFailed"), [
      "fileFailed",
      "in",
      '"bob" withdrew it: withdrawn: "alice" is not in #team any more',
    ]);
    assert.deepEqual(taken, []);
    assert.deepEqual(await Array.fromAsync(Deno.readDir(downloads)), []);
    bob.sendMessage("still talking");
    await until("the message", aliceSeen, (s) => s.some((e) => e[0] === "message"));
    assert.deepEqual(bobSeen.filter((e) => e[0] === "fileSent"), []);
    alice.close();
  });
});

Deno.test("PeerConnection refuses a second offer with the id of one being accepted (its partial file still opening): error frame, nothing left behind, the quota given back", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const aliceSeen: Seen = [];
    const taken: FileOffer[] = [];
    const downloads = join(dir, "alice-downloads");
    const accepting: Array<Promise<unknown>> = [];
    const alice = new PeerConnection(aliceSocket, "bob", undefined!, {
      downloads,
      // The user accepts every offer the moment it is shown.
      events: {
        ...recorder(aliceSeen),
        offer: (peer, offer) => {
          aliceSeen.push(["offer", offer.id]);
          accepting.push(peer.acceptOffer(offer.id).catch((e) => e));
        },
      },
      files: asking(taken),
    });
    alice.start();
    const wire = wireReader(rawBob);
    // Both offers in one read: the second is handled while the accept of the first waits for
    // its partial file to be made.
    const offer = { type: "file", id: "f1", name: "a.bin", size: 10, sha256: "0".repeat(64) };
    rawBob.write(
      encodeFrame({ type: "hello", v: 1, features: ["bin", "offer"] }) +
        encodeFrame(offer as Frame) + encodeFrame(offer as Frame),
    );
    await until("closed", aliceSeen, (s) => s.some((e) => e[0] === "closed"));
    await Promise.all(accepting);
    assert.deepEqual(await Array.fromAsync(Deno.readDir(downloads)), [], "a partial file was left");
    assert.deepEqual(taken, [], "the quota it took was not given back");
    assert.deepEqual(aliceSeen.filter((e) => e[0] === "offer"), [["offer", "f1"]]);
    assert.ok(
      wire.frames.some((f) =>
        f.type === "error" && f.message === "Malformed frame: a file id used twice"
      ),
      JSON.stringify(wire.frames),
    );
  });
});

/** A policy that takes every file at once and counts what it takes. */
function taking(taken: FileOffer[]): FilePolicy {
  return {
    decide: () => "accept",
    take: (_p, offer) => {
      taken.push(offer);
      return () => taken.splice(taken.indexOf(offer), 1);
    },
  };
}

Deno.test("PeerConnection gives up an accepted file that gets no data while other frames flow: nothing kept, the quota given back, the sender told, the connection open", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const aliceSeen: Seen = [];
    const taken: FileOffer[] = [];
    const downloads = join(dir, "alice-downloads");
    const alice = new PeerConnection(aliceSocket, "bob", undefined!, {
      downloads,
      events: recorder(aliceSeen),
      files: taking(taken),
      receiveStallMs: 1_000,
    });
    alice.start();
    const wire = wireReader(rawBob);
    const body = new Uint8Array(100).fill(7);
    rawBob.write(
      encodeFrame({ type: "hello", v: 1, features: ["bin", "offer"] }) +
        encodeFrame({ type: "file", id: "f1", name: "a.bin", size: 100, sha256: sha256Hex(body) }),
    );
    await until(
      "the answer",
      [],
      () => wire.frames.some((f) => f.type === "accept" || f.type === "decline"),
    );
    rawBob.write(encodeFrame({ type: "bin", id: "f1", size: 10 }));
    rawBob.write(body.subarray(0, 10));
    // Then anything but the file's data, often: "got" for ids never sent, and messages.
    let n = 0;
    const chatter = setInterval(() => {
      rawBob.write(encodeFrame({ type: "got", id: `x${n}`, bytes: 1 }));
      rawBob.write(encodeFrame({ type: "msg", id: `m${n++}`, text: "still here" }));
    }, 200);
    assert.deepEqual(await givenUp(aliceSeen, () => clearInterval(chatter)), [
      "fileFailed",
      "in",
      'no data from "bob" for 1 s: given up',
    ]);
    assert.deepEqual(await Array.fromAsync(Deno.readDir(downloads)), [], "a partial file was left");
    assert.deepEqual(taken, [], "the quota it took was not given back");
    await until("the decline", [], () => wire.frames.some((f) => f.type === "decline"));
    assert.deepEqual(wire.frames.find((f) => f.type === "decline"), {
      type: "decline",
      id: "f1",
      reason: "stalled: no data for 1 s",
    });
    // The rest of it, already on the way when the decline came, is skipped; talk goes on.
    rawBob.write(encodeFrame({ type: "bin", id: "f1", size: 90 }));
    rawBob.write(body.subarray(10));
    rawBob.write(
      encodeFrame({ type: "end", id: "f1" }) +
        encodeFrame({ type: "msg", id: "last", text: "bye now" }),
    );
    await until("the last message", aliceSeen, (s) => s.some((e) => e[1] === "last"));
    assert.ok(alice.open);
    assert.ok(!wire.frames.some((f) => f.type === "error"), JSON.stringify(wire.frames));
    assert.equal(aliceSeen.filter((e) => e[0] === "file").length, 0);
    alice.close();
  });
});

Deno.test("PeerConnection gives up the files of a room under way with abortRoomFiles() and keeps the others; a room's file names the room id noted when it was accepted", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const aliceSeen: Seen = [];
    const files: Array<{ name: string; room?: string; roomId?: string }> = [];
    const taken: FileOffer[] = [];
    const downloads = join(dir, "alice-downloads");
    let roomId = "id-of-bens-team";
    const events = recorder(aliceSeen);
    const alice = new PeerConnection(aliceSocket, "bob", undefined!, {
      downloads,
      events: { ...events, file: (p, info) => (files.push(info), events.file(p, info)) },
      files: { ...taking(taken), roomId: () => roomId },
    });
    alice.start();
    const wire = wireReader(rawBob);
    const body = new Uint8Array(20).fill(7);
    const offer = (id: string, room?: string) =>
      encodeFrame({
        type: "file",
        id,
        name: `${id}.bin`,
        size: 20,
        sha256: sha256Hex(body),
        ...(room ? { room } : {}),
      });
    rawBob.write(
      encodeFrame({ type: "hello", v: 1, features: ["rooms", "offer"] }) +
        offer("t1", "#team") + offer("o1", "#other") + offer("d1"),
    );
    await until(
      "the accepts",
      [],
      () => wire.frames.filter((f) => f.type === "accept").length === 3,
    );
    const chunk = (id: string, b: Uint8Array) =>
      encodeFrame({ type: "chunk", id, data: Buffer.from(b).toString("base64") });
    rawBob.write(chunk("t1", body.subarray(0, 5)) + chunk("o1", body.subarray(0, 5)));
    await until("the data", [], () => taken.length === 3);
    roomId = "id-of-another-team"; // another #other joined meanwhile: o1 stays ben's
    await alice.abortRoomFiles("#team", '"bob" is not in #team any more');
    assert.deepEqual(aliceSeen.find((e) => e[0] === "fileFailed"), [
      "fileFailed",
      "in",
      'given up: "bob" is not in #team any more',
    ]);
    await until("the decline", [], () => wire.frames.some((f) => f.type === "decline"));
    assert.deepEqual(wire.frames.find((f) => f.type === "decline"), {
      type: "decline",
      id: "t1",
      reason: '"bob" is not in #team any more',
    });
    // The rest of it is skipped; the others land.
    rawBob.write(
      chunk("t1", body.subarray(5)) + encodeFrame({ type: "end", id: "t1" }) +
        chunk("o1", body.subarray(5)) + encodeFrame({ type: "end", id: "o1" }) +
        chunk("d1", body) + encodeFrame({ type: "end", id: "d1" }),
    );
    await until("the files", aliceSeen, (s) => s.filter((e) => e[0] === "file").length === 2);
    assert.deepEqual(files.map((f) => [f.name, f.room, f.roomId]), [
      ["o1.bin", "#other", "id-of-bens-team"],
      ["d1.bin", undefined, undefined],
    ]);
    assert.ok(!wire.frames.some((f) => f.type === "error"), JSON.stringify(wire.frames));
    assert.equal(taken.length, 2, "the quota of the file given up was not given back");
    alice.close();
  });
});

/**
 * Alice's PeerConnection that takes every file at once, with a rate floor of `minBytes` per
 * `windowMs`, and a raw bob that offers a file of `size` bytes and, once she accepts it, writes
 * its one `bin` frame's payload `step` bytes every `everyMs`. Stops writing at `stop()`.
 */
async function trickledFile(
  aliceSocket: tls.TLSSocket,
  rawBob: tls.TLSSocket,
  dir: string,
  rate: { windowMs: number; minBytes: number; step: number; everyMs: number; size: number },
) {
  const aliceSeen: Seen = [];
  const taken: FileOffer[] = [];
  const downloads = join(dir, "alice-downloads");
  const alice = new PeerConnection(aliceSocket, "bob", undefined!, {
    downloads,
    events: recorder(aliceSeen),
    files: taking(taken),
    receiveWindowMs: rate.windowMs,
    receiveMinBytes: rate.minBytes,
  });
  alice.start();
  const wire = wireReader(rawBob);
  const body = new Uint8Array(rate.size).map((_, i) => i % 251);
  rawBob.write(
    encodeFrame({ type: "hello", v: 1, features: ["bin", "offer"] }) +
      encodeFrame({ type: "file", id: "f1", name: "a.bin", size: body.length }),
  );
  await until("the accept", [], () => wire.frames.some((f) => f.type === "accept"));
  rawBob.write(encodeFrame({ type: "bin", id: "f1", size: body.length }));
  let sent = 0;
  const writer = setInterval(() => {
    rawBob.write(body.subarray(sent, sent + rate.step));
    sent = Math.min(sent + rate.step, body.length);
    if (sent === body.length) {
      clearInterval(writer);
      rawBob.write(encodeFrame({ type: "end", id: "f1", sha256: sha256Hex(body) }));
    }
  }, rate.everyMs);
  return {
    alice,
    aliceSeen,
    taken,
    downloads,
    wire,
    body,
    sent: () => sent,
    stop: () => clearInterval(writer),
  };
}

Deno.test("PeerConnection gives up an accepted file its sender trickles a byte at a time (under receiveMinBytes in each receiveWindowMs): nothing kept, the quota given back, the sender told, the connection open", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    // A byte every 100 ms: never 5 s without data, so the stall rule alone never ends it.
    const t = await trickledFile(aliceSocket, rawBob, dir, {
      windowMs: 1_000,
      minBytes: 512,
      step: 1,
      everyMs: 100,
      size: 100_000,
    });
    assert.deepEqual(await givenUp(t.aliceSeen, t.stop), [
      "fileFailed",
      "in",
      'too slow: "bob" sent under 512 B in 1 s: given up',
    ]);
    assert.ok(t.sent() < 100, `given up only after ${t.sent()} bytes`);
    assert.deepEqual(
      await Array.fromAsync(Deno.readDir(t.downloads)),
      [],
      "a partial file was left",
    );
    assert.deepEqual(t.taken, [], "the quota it took was not given back");
    await until("the decline", [], () => t.wire.frames.some((f) => f.type === "decline"));
    assert.deepEqual(t.wire.frames.find((f) => f.type === "decline"), {
      type: "decline",
      id: "f1",
      reason: "too slow: under 512 B in 1 s",
    });
    // The rest of it, on the way when the decline came, is skipped; talk goes on.
    rawBob.write(t.body.subarray(t.sent()));
    rawBob.write(
      encodeFrame({ type: "end", id: "f1", sha256: sha256Hex(t.body) }) +
        encodeFrame({ type: "msg", id: "last", text: "bye now" }),
    );
    await until("the last message", t.aliceSeen, (s) => s.some((e) => e[1] === "last"));
    assert.ok(t.alice.open);
    assert.ok(!t.wire.frames.some((f) => f.type === "error"), JSON.stringify(t.wire.frames));
    assert.equal(t.aliceSeen.filter((e) => e[0] === "file").length, 0);
    t.alice.close();
  });
});

Deno.test("PeerConnection keeps a file whose sender is slow but above receiveMinBytes in each receiveWindowMs, however many windows it takes", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    // 256 B every 50 ms: about 2.5 KiB a window, five times the floor, over some 6 windows.
    const t = await trickledFile(aliceSocket, rawBob, dir, {
      windowMs: 500,
      minBytes: 512,
      step: 256,
      everyMs: 50,
      size: 16 * 1024,
    });
    try {
      await until(
        "the file",
        t.aliceSeen,
        (s) => s.some((e) => e[0] === "file" || e[0] === "fileFailed"),
      );
    } finally {
      t.stop();
    }
    assert.deepEqual(t.aliceSeen.filter((e) => e[0] === "fileFailed"), [], "a slow link was cut");
    const [, , bytes, , path] = t.aliceSeen.find((e) => e[0] === "file")!;
    assert.equal(bytes, t.body.length);
    assert.deepEqual(await Deno.readFile(path as string), t.body);
    await until("the ack", [], () => t.wire.frames.some((f) => f.type === "ack"));
    assert.ok(!t.wire.frames.some((f) => f.type === "decline"), JSON.stringify(t.wire.frames));
    t.alice.close();
  });
});

// A sender that reads nothing of what alice writes back (acks of its messages) has her wait on it,
// not on her own disk: that must not pass for her own back-pressure and spare its trickle.
for (const holds of [false, true]) {
  const what = holds
    ? "over 1 MiB of acks waits unsent, so she holds what it sends"
    : "its acks wait unsent, more each turn";
  Deno.test(`PeerConnection gives up a trickled file whose sender reads nothing of what it writes back (${what})`, async () => {
    await withPair(async (aliceSocket, rawBob, dir) => {
      const { alice, aliceSeen } = startAlice(aliceSocket, join(dir, "alice-downloads"), {
        files: taking([]),
        receiveWindowMs: 2_000,
        receiveMinBytes: 8 * 1024, // what she holds unread counts whole: the messages too
      });
      rawBob.on("error", () => {});
      // Bob does not list "offer": his data follows the file frame without waiting for an accept,
      // so he need not read anything of alice's.
      rawBob.write(encodeFrame({ type: "hello", v: 1, features: ["bin"] }));
      pauseReading(rawBob);
      let n = 0;
      const message = () =>
        encodeFrame({ type: "msg", id: String(n++).padStart(64, "0"), text: "x" });
      // Messages until their acks fill what the kernel takes and wait in alice's process.
      const flood = async (unsent: number, settleMs: number) => {
        for (let i = 0; aliceSocket.writableLength < unsent; i++) {
          assert.ok(i < 300, `${aliceSocket.writableLength} bytes unsent after ${n} messages`);
          rawBob.write(Array.from({ length: 2_000 }, message).join(""));
          await new Promise((r) => setTimeout(r, settleMs));
        }
      };
      await flood(64 * 1024, 100);
      rawBob.write(encodeFrame({ type: "file", id: "f1", name: "a.bin", size: 100_000 }));
      if (holds) await flood(1024 * 1024 + 1, 10);
      // A byte of the file and a message (one more ack to wait) every 100 ms: about 2.7 KiB in 2 s.
      const trickle = setInterval(() => {
        rawBob.write(encodeFrame({ type: "bin", id: "f1", size: 1 }));
        rawBob.write(new Uint8Array(1));
        rawBob.write(message());
      }, 100);
      assert.deepEqual(await givenUp(aliceSeen, () => clearInterval(trickle)), [
        "fileFailed",
        "in",
        'too slow: "bob" sent under 8 KiB in 2 s: given up',
      ]);
      alice.close();
    });
  });
}

/**
 * Bob's PeerConnection over `bobSocket`, started and past the hellos, facing a raw alice that
 * takes binary files with consent, and what she receives (as frames).
 */
async function bobToRawAlice(rawAlice: tls.TLSSocket, bobSocket: tls.TLSSocket, dir: string) {
  const bobSeen: Seen = [];
  const bob = new PeerConnection(bobSocket, "alice", undefined!, {
    downloads: join(dir, "bob-downloads"),
    events: recorder(bobSeen),
  });
  const wire = wireReader(rawAlice);
  rawAlice.write(encodeFrame({ type: "hello", v: 1, features: ["bin", "offer"] }));
  bob.start();
  await until("bob's hello", [], () => wire.frames.some((f) => f.type === "hello"));
  return { bob, bobSeen, wire };
}

Deno.test("PeerConnection stops streaming a file its receiver declines midway (it gave up on it), without waiting for the send stall, and keeps the connection", async () => {
  await withPair(async (rawAlice, bobSocket, dir) => {
    const { bob, bobSeen, wire } = await bobToRawAlice(rawAlice, bobSocket, dir);
    await Deno.writeFile(join(dir, "big.bin"), new Uint8Array(20 * 1024 * 1024));
    const offer = await bob.sendFile(join(dir, "big.bin"));
    rawAlice.write(encodeFrame({ type: "accept", id: offer.id }));
    // Alice confirms nothing: bob stops at 8 MiB unconfirmed, and then she gives up on it.
    await until("8 MiB", [], () => wire.frames.filter((f) => f.type === "bin").length >= 8);
    rawAlice.write(encodeFrame({ type: "decline", id: offer.id, reason: "stalled: no data" }));
    await until("bob told", bobSeen, (s) => s.some((e) => e[0] === "fileFailed"));
    assert.deepEqual(bobSeen.find((e) => e[0] === "fileFailed"), [
      "fileFailed",
      "out",
      '"alice" declined it: stalled: no data',
    ]);
    const id = bob.sendMessage("still talking");
    await until("the message", [], () => wire.frames.some((f) => f.id === id));
    assert.ok(!wire.frames.some((f) => f.type === "end"), "the file was finished anyway");
    assert.ok(bob.open);
    bob.close();
  });
});

Deno.test("PeerConnection does not give up a file while it has itself stopped reading (back-pressure): the file arrives once it reads again", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const aliceSeen: Seen = [];
    const taken: FileOffer[] = [];
    const alice = new PeerConnection(aliceSocket, "bob", undefined!, {
      downloads: join(dir, "alice-downloads"),
      events: recorder(aliceSeen),
      files: taking(taken),
      receiveStallMs: 500,
      receiveWindowMs: 500, // the rate floor too: no bytes at all while she does not read
    });
    alice.start();
    const wire = wireReader(rawBob);
    const body = new Uint8Array(100).fill(7);
    rawBob.write(
      encodeFrame({ type: "hello", v: 1, features: ["bin", "offer"] }) +
        encodeFrame({ type: "file", id: "f1", name: "a.bin", size: 100, sha256: sha256Hex(body) }),
    );
    await until(
      "the answer",
      [],
      () => wire.frames.some((f) => f.type === "accept" || f.type === "decline"),
    );
    // Alice stops reading, as when her queue is full (a slow disk): bob's data waits for her.
    pauseReading(aliceSocket);
    rawBob.write(encodeFrame({ type: "bin", id: "f1", size: 100 }));
    rawBob.write(body);
    rawBob.write(encodeFrame({ type: "end", id: "f1" }));
    await new Promise((r) => setTimeout(r, 2_000));
    assert.deepEqual(aliceSeen.filter((e) => e[0] === "fileFailed"), [], "bob was blamed");
    resumeReading(aliceSocket);
    await until("the file", aliceSeen, (s) => s.some((e) => e[0] === "file"));
    assert.deepEqual(aliceSeen.filter((e) => e[0] === "fileFailed"), []);
    alice.close();
  });
});

Deno.test("PeerConnection whose downloads folder is gone when a file ends tells its user ERR_FILE's reason, and the peer only that the file could not be kept", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const downloads = join(dir, "alice-downloads");
    const { aliceSeen } = startAlice(aliceSocket, downloads);
    const wire = wireReader(rawBob);
    const body = new Uint8Array(100).fill(7);
    rawBob.write(
      encodeFrame({ type: "hello", v: 1, features: ["bin", "offer"] }) +
        encodeFrame({ type: "file", id: "f1", name: "a.bin", size: 100, sha256: sha256Hex(body) }),
    );
    await until(
      "the answer",
      [],
      () => wire.frames.some((f) => f.type === "accept" || f.type === "decline"),
    );
    await Deno.remove(downloads, { recursive: true });
    rawBob.write(encodeFrame({ type: "bin", id: "f1", size: 100 }));
    rawBob.write(body);
    rawBob.write(encodeFrame({ type: "end", id: "f1" }));
    await until("the error", [], () => wire.frames.some((f) => f.type === "error"));
    const failed = aliceSeen.find((e) => e[0] === "fileFailed")!;
    assert.match(
      failed[2] as string,
      new RegExp(`^Cannot keep "a\\.bin" in "${downloads}": No such file or directory$`),
    );
    assert.deepEqual(wire.frames.find((f) => f.type === "error"), {
      type: "error",
      message: "The receiver could not keep the file",
    });
  });
});

Deno.test("PeerConnection whose downloads folder is refused when a file starts tells the peer only that the file could not be kept, never our folders", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    // A folder above the downloads folder that every user may write in: receiving is refused.
    const open = join(dir, "open");
    await Deno.mkdir(open);
    await Deno.chmod(open, 0o777);
    const downloads = join(open, "alice-downloads");
    startAlice(aliceSocket, downloads);
    const wire = wireReader(rawBob);
    rawBob.write(
      encodeFrame({ type: "hello", v: 1, features: ["bin", "offer"] }) +
        encodeFrame({ type: "file", id: "f1", name: "a.bin", size: 100 }),
    );
    await until("the error", [], () => wire.frames.some((f) => f.type === "error"));
    assert.deepEqual(wire.frames.find((f) => f.type === "error"), {
      type: "error",
      message: "The receiver could not keep the file",
    });
  });
});

Deno.test("PeerConnection does not stream a file its receiver declined while it waited behind another (the receiver gave up on both): it fails, and none of its data goes", async () => {
  await withPair(async (rawAlice, bobSocket, dir) => {
    const { bob, bobSeen, wire } = await bobToRawAlice(rawAlice, bobSocket, dir);
    await Deno.writeFile(join(dir, "big.bin"), new Uint8Array(20 * 1024 * 1024));
    await Deno.writeFile(join(dir, "next.bin"), new Uint8Array(4 * 1024 * 1024).fill(1));
    const big = await bob.sendFile(join(dir, "big.bin"));
    const next = await bob.sendFile(join(dir, "next.bin"));
    rawAlice.write(encodeFrame({ type: "accept", id: big.id }));
    rawAlice.write(encodeFrame({ type: "accept", id: next.id }));
    // Alice confirms nothing: bob stops at 8 MiB of the first, the second waits its turn. She
    // gives up on both at once, as a receiver that got no data for 5 s does.
    await until("8 MiB", [], () => wire.frames.filter((f) => f.type === "bin").length >= 8);
    rawAlice.write(
      encodeFrame({ type: "decline", id: big.id, reason: "stalled: no data for 5 s" }) +
        encodeFrame({ type: "decline", id: next.id, reason: "stalled: no data for 5 s" }),
    );
    await until(
      "bob told of both (or the second sent)",
      bobSeen,
      (s) =>
        s.filter((e) => e[0] === "fileFailed").length >= 2 || s.some((e) => e[0] === "fileSent"),
    );
    assert.ok(
      !bobSeen.some((e) => e[0] === "fileSent"),
      "a declined file was streamed and said sent",
    );
    assert.deepEqual(bobSeen.filter((e) => e[0] === "fileFailed"), [
      ["fileFailed", "out", '"alice" declined it: stalled: no data for 5 s'],
      ["fileFailed", "out", '"alice" declined it: stalled: no data for 5 s'],
    ]);
    const id = bob.sendMessage("still talking");
    await until("the message", [], () => wire.frames.some((f) => f.id === id));
    assert.ok(!wire.frames.some((f) => f.id === next.id && f.type !== "file"), "the second went");
    assert.ok(!bobSeen.some((e) => e[0] === "fileSent"), "a declined file said sent");
    assert.ok(bob.open);
    bob.close();
  });
});

// A room file accepted is not in the files under way until its partial file
// is made (an await): a leave of the room, or the sender's removal, in that window gives up
// nothing (abortRoomFiles sees only #incoming), and the file lands as one of a room we are no
// longer in (or from a member who is not in it any more). #onClose handles that window; this
// does not.
Deno.test("PeerConnection gives up a room file whose partial file is still being made when abortRoomFiles() comes", async () => {
  await withPair(async (aliceSocket, rawBob, dir) => {
    const aliceSeen: Seen = [];
    const files: Array<{ name: string; room?: string }> = [];
    const taken: FileOffer[] = [];
    const downloads = join(dir, "alice-downloads");
    let aborted: Promise<void> | undefined;
    const events = recorder(aliceSeen);
    const alice: PeerConnection = new PeerConnection(aliceSocket, "bob", undefined!, {
      downloads,
      events: { ...events, file: (p, info) => (files.push(info), events.file(p, info)) },
      files: {
        ...taking(taken),
        // Noted as it is accepted; the leave comes while its partial file is made.
        roomId: () => {
          queueMicrotask(() => {
            aborted = alice.abortRoomFiles("#team", '"bob" is not in #team any more');
          });
          return "id-of-team";
        },
      },
    });
    alice.start();
    const wire = wireReader(rawBob);
    const body = new Uint8Array(20).fill(7);
    rawBob.write(
      encodeFrame({ type: "hello", v: 1, features: ["rooms", "offer"] }) +
        encodeFrame({
          type: "file",
          id: "t1",
          name: "t1.bin",
          size: 20,
          sha256: sha256Hex(body),
          room: "#team",
        }),
    );
    await until(
      "the answer",
      [],
      () => wire.frames.some((f) => f.type === "accept" || f.type === "decline"),
    );
    assert.ok(aborted, "abortRoomFiles was called while the partial file was made");
    await aborted;
    rawBob.write(
      encodeFrame({ type: "chunk", id: "t1", data: Buffer.from(body).toString("base64") }) +
        encodeFrame({ type: "end", id: "t1" }) +
        encodeFrame({ type: "msg", id: "last", text: "bye now" }),
    );
    await until("the last message", aliceSeen, (s) => s.some((e) => e[1] === "last"));
    assert.deepEqual(
      files.map((f) => [f.name, f.room]),
      [],
      "a file of #team landed after #team's files were given up",
    );
    alice.close();
  });
});
