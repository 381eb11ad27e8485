/**
 * A peer that reads nothing while we write to it (acks of its messages, declines of its offers,
 * room traffic we forward): PeerConnection over real mutual TLS on 127.0.0.1, with certificates
 * of a real CA (openssl), on each side a peer connection runs on — the side that accepted, the
 * side that dialed, and both sides of peer TLS inside another TLS connection (the relay's
 * envelope). The hostile end is node:tls with a certificate of the test CA that completes the
 * handshake, says hello, then never reads: a TCP proxy between the two stops reading alice's side
 * (Deno's node:tls reads on while paused, into its own memory, so pause() alone reads).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import tls from "node:tls";
import { CertificateAuthority } from "../ca/authority.ts";
import { encodeFrame } from "../lib/frames.ts";
import { clientOptions, type Credentials, serverOptions, trustAnchor } from "../lib/tls.ts";
import { makeCsr, PASSPHRASE, withTempDir } from "../tests/_helpers.ts";
import { HOLD_READ_BYTES, MAX_UNREAD_BYTES, PeerConnection, type PeerEvents } from "./peer.ts";

type Seen = Array<[string, ...unknown[]]>;

/** Which end of the connection alice's PeerConnection runs on. */
type Side = "accepted" | "dialed" | "relay-accepted" | "relay-dialed";
const SIDES: Side[] = ["accepted", "dialed", "relay-accepted", "relay-dialed"];

function recorder(seen: Seen): PeerEvents {
  return {
    message: (_p, id, text) => seen.push(["message", id, text]),
    delivered: (_p, id) => seen.push(["delivered", id]),
    file: (_p, info) => void seen.push(["file", info.name]),
    progress: () => {},
    fileFailed: (_p, info) => seen.push(["fileFailed", info.direction, info.reason]),
    held: () => seen.push(["held"]),
    closed: (_p, reason) => seen.push(["closed", reason]),
  };
}

async function until(what: string, test: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!test()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function once(socket: tls.TLSSocket, event: string): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.once(event, () => resolve());
    socket.once("error", reject);
  });
}

/** Alice's and bob's credentials from a fresh CA, and its trust anchor. */
async function world(dir: string) {
  const ca = await CertificateAuthority.init(join(dir, "ca"), PASSPHRASE, { keyType: "ec-p256" });
  const anchor = trustAnchor(ca.certificate.pem);
  const own = async (name: string): Promise<Credentials> => {
    const { csr, key } = await makeCsr(name);
    return { key, cert: (await ca.sign(csr, name)).certificate.pem };
  };
  const [alice, bob] = await Promise.all([own("alice"), own("bob")]);
  return { anchor, alice, bob };
}

/**
 * A TCP proxy to 127.0.0.1:`port` for one connection. Once {@linkcode deafen}ed it reads nothing
 * more of alice's side (alice dials the proxy when `aliceDials`), so bob reads nothing at the TCP
 * level, whatever his TLS does (Deno's node:tls reads on while paused: pause() alone is no
 * peer that reads nothing); bob's bytes still reach alice.
 */
function proxy(port: number, aliceDials: boolean) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  let deaf = false;
  const pump = async (from: Deno.Conn, to: Deno.Conn, stopped: () => boolean) => {
    const buffer = new Uint8Array(64 * 1024);
    try {
      while (!stopped()) {
        const n = await from.read(buffer);
        if (n === null) break;
        // A write may take part of it: the rest goes after.
        for (let at = 0; at < n;) at += await to.write(buffer.subarray(at, n));
      }
    } catch { /* one side closed */ }
  };
  (async () => {
    const dialer = await listener.accept();
    listener.close();
    const target = await Deno.connect({ hostname: "127.0.0.1", port });
    conns.push(dialer, target);
    const [alice, bob] = aliceDials ? [dialer, target] : [target, dialer];
    pump(alice, bob, () => deaf);
    pump(bob, alice, () => false);
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    deafen: () => (deaf = true),
    close: () => {
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed already */ }
      }
    },
  };
}

/**
 * A connected pair through a {@linkcode proxy}: alice's socket on `side`, bob's at the other
 * end. Through a "relay", the peer TLS runs inside an outer TLS connection that alice dialed
 * and bob accepted, as the relay's splice hands it on.
 */
async function connectPair(w: Awaited<ReturnType<typeof world>>, side: Side) {
  const relayed = side.startsWith("relay-");
  const aliceAccepts = side === "accepted" || side === "relay-accepted";
  // Who listens: alice when she accepts a direct connection; else bob (as peer or as relay).
  const aliceListens = !relayed && aliceAccepts;
  const server = tls.createServer(
    serverOptions(aliceListens ? w.alice : w.bob, w.anchor, { requireCert: true }),
  );
  const accepted = new Promise<tls.TLSSocket>((r) => server.once("secureConnection", r));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const via = proxy((server.address() as { port: number }).port, !aliceListens);
  const dialed = tls.connect({
    ...clientOptions(w.anchor, { own: aliceListens ? w.bob : w.alice }),
    host: "127.0.0.1",
    port: via.port,
  });
  await once(dialed, "secureConnect");
  const outerAccepted = await accepted;
  const stop = () => {
    via.close();
    server.close();
  };
  const all = [outerAccepted, dialed];
  if (!relayed) {
    return aliceAccepts
      ? { alice: outerAccepted, bob: dialed, all, deafen: via.deafen, stop }
      : { alice: dialed, bob: outerAccepted, all, deafen: via.deafen, stop };
  }
  const inner = (outer: tls.TLSSocket, own: Credentials, isServer: boolean) =>
    isServer
      ? new tls.TLSSocket(outer, {
        isServer: true,
        ...serverOptions(own, w.anchor, { requireCert: true }),
      })
      : tls.connect({ ...clientOptions(w.anchor, { own }), socket: outer });
  const alice = inner(dialed, w.alice, aliceAccepts);
  const bob = inner(outerAccepted, w.bob, !aliceAccepts);
  await Promise.all([
    once(alice, aliceAccepts ? "secure" : "secureConnect"),
    once(bob, aliceAccepts ? "secureConnect" : "secure"),
  ]);
  return { alice, bob, all: [alice, bob, ...all], deafen: via.deafen, stop };
}

/** Bob says hello with `features`, reads alice's hello, then reads nothing more. */
async function deafen(pair: Awaited<ReturnType<typeof connectPair>>, features: string[]) {
  const heard = new Promise<void>((resolve) => pair.bob.once("data", () => resolve()));
  pair.bob.on("error", () => {});
  pair.bob.write(encodeFrame({ type: "hello", v: 1, features }));
  await heard;
  pair.deafen();
}

/**
 * Runs `attack` against alice's PeerConnection on `side` of a connection whose peer reads
 * nothing, sampling what alice's socket holds unsent after each step, until the connection
 * closes or `attack` gives up; meanwhile an honest pair chats on another connection. Returns
 * the most alice held and the reason her connection closed.
 */
async function againstDeafBob(
  side: Side,
  features: string[],
  attack: (
    alice: PeerConnection,
    bob: tls.TLSSocket,
    step: () => Promise<boolean>,
  ) => Promise<void>,
  files?: ConstructorParameters<typeof PeerConnection>[3]["files"],
): Promise<{ held: number; reason: unknown; read: number }> {
  return await withTempDir(async (dir) => {
    const w = await world(dir);
    const pair = await connectPair(w, side);
    const honest = await connectPair(w, "accepted");
    const seen: Seen = [];
    try {
      const alice = new PeerConnection(pair.alice, "bob", undefined!, {
        downloads: dir,
        events: recorder(seen),
        ...(files ? { files } : {}),
      });
      alice.start();
      await deafen(pair, features);
      let held = 0;
      const closed = () => seen.some((e) => e[0] === "closed");
      // One step a turn: what waits unsent is measured from one turn to the next.
      const step = async () => {
        held = Math.max(held, pair.alice.writableLength);
        await new Promise((r) => setTimeout(r, 0));
        held = Math.max(held, pair.alice.writableLength);
        return !closed();
      };
      // An honest pair chats on another connection meanwhile.
      const [carolSeen, daveSeen]: Seen[] = [[], []];
      const carol = new PeerConnection(honest.alice, "dave", undefined!, {
        downloads: dir,
        events: recorder(carolSeen),
      });
      const dave = new PeerConnection(honest.bob, "carol", undefined!, {
        downloads: dir,
        events: recorder(daveSeen),
      });
      carol.start();
      dave.start();
      dave.sendMessage("before");
      await attack(alice, pair.bob, step);
      await until("alice to close the connection", closed);
      // Nothing more is sent to bob.
      assert.equal(alice.sendRoom({ op: "leave", roomId: "0".repeat(32) }), false);
      await until("the message before", () => carolSeen.some((e) => e[2] === "before"));
      const id = carol.sendMessage("still here");
      await until("the honest message", () => daveSeen.some((e) => e[2] === "still here"));
      await until("its ack", () => carolSeen.some((e) => e[0] === "delivered" && e[1] === id));
      carol.close();
      return {
        held,
        reason: seen.find((e) => e[0] === "closed")![1],
        read: pair.alice.bytesRead,
      };
    } finally {
      for (const s of [...pair.all, ...honest.all]) s.destroy();
      pair.stop();
      honest.stop();
    }
  });
}

const UNREAD = /^"bob" reads nothing: closed with [\d.]+ [KM]iB unsent to it$/;
/** A frame more than the bound: what one write may add before the check. */
const SLACK = 128 * 1024;

for (const side of SIDES) {
  Deno.test(`PeerConnection closes a connection (${side}) whose peer reads none of the room traffic forwarded to it once MAX_UNREAD_BYTES wait unsent, and an honest connection chats on`, async () => {
    const m = {
      roomId: "0".repeat(32),
      room: "#team",
      author: "carol",
      seq: 1,
      version: 1,
      text: "x".repeat(65_536),
      sig: "AAAA",
    };
    const { held, reason } = await againstDeafBob(side, ["rooms"], async (alice, _bob, step) => {
      await until("bob's hello", () => alice.rooms);
      for (let i = 0; i < (3 * MAX_UNREAD_BYTES) / 65_536; i++) {
        if (!alice.sendRoom({ op: "msg", m: { ...m, seq: i + 1 } })) break;
        if (!await step()) break;
      }
    });
    assert.ok(held <= MAX_UNREAD_BYTES + SLACK, `alice held ${held} bytes`);
    assert.match(String(reason), UNREAD);
  });
}

/** Bob's messages, `count` of them with ids of 64 characters, from `from` on. */
function messages(from: number, count: number): string {
  let out = "";
  for (let i = from; i < from + count; i++) {
    out += encodeFrame({ type: "msg", id: String(i).padStart(64, "0"), text: "x" });
  }
  return out;
}

// The 5 s stall closes these (reading was paused at 1 MiB unsent): two sides each, to keep the
// gate fast; the room traffic above, which nothing paused, runs on all four.
for (const side of ["accepted", "relay-dialed"] as const) {
  for (const features of side === "accepted" ? [["acks"], []] : [["acks"]]) {
    Deno.test(
      `PeerConnection holds at most MAX_UNREAD_BYTES of acks for a peer (${side}, ${
        features.length ? '"acks"' : "an older peer, one ack a message"
      }) that sends messages and reads nothing, and closes its connection`,
      async () => {
        let wrote = 0;
        const { held, reason, read } = await againstDeafBob(
          side,
          features,
          async (_alice, bob, step) => {
            const BATCH = 2_000;
            for (let i = 0; i < (3 * MAX_UNREAD_BYTES) / 72; i += BATCH) {
              // Bob writes on; what alice does not read piles up in bob's own process.
              const batch = messages(i, BATCH);
              bob.write(batch);
              wrote += batch.length;
              if (!await step()) break;
            }
          },
        );
        assert.ok(held <= MAX_UNREAD_BYTES + SLACK, `alice held ${held} bytes`);
        assert.match(String(reason), UNREAD);
        // Her hold began at 1 MiB of acks unsent: she read on, unhandled, HOLD_READ_BYTES more (a
        // peer holding her for the same reason drains meanwhile), and stopped. The rest of what
        // bob wrote stayed out of her process (a paused node:tls socket in Deno reads on unless
        // its TCP socket is stopped).
        assert.ok(
          read < HOLD_READ_BYTES + 16 * 1024 * 1024,
          `alice read ${read} of the ${wrote} bytes bob wrote`,
        );
      },
    );
  }
}

for (const side of ["dialed", "relay-accepted"] as const) {
  Deno.test(`PeerConnection holds at most MAX_UNREAD_BYTES of declines for a peer (${side}) that offers files it knows are refused and reads nothing, and closes its connection`, async () => {
    const why = "r".repeat(400);
    const { held, reason } = await againstDeafBob(
      side,
      ["offer"],
      async (_alice, bob, step) => {
        const BATCH = 500;
        for (let i = 0; i < (1.5 * MAX_UNREAD_BYTES) / 400; i += BATCH) {
          let out = "";
          for (let j = i; j < i + BATCH; j++) {
            out += encodeFrame({
              type: "file",
              id: `f${j}`,
              name: "a.bin",
              size: 1,
              sha256: "0".repeat(64),
            });
          }
          bob.write(out);
          if (!await step()) break;
        }
      },
      { decide: () => ({ refuse: why }), take: () => ({ refuse: why }) },
    );
    assert.ok(held <= MAX_UNREAD_BYTES + SLACK, `alice held ${held} bytes`);
    assert.match(String(reason), UNREAD);
  });
}

Deno.test("two PeerConnections that each write 12 MiB of messages at once, holding the other's while their own acks wait unread, both deliver every message and stay connected", async () => {
  await withTempDir(async (dir) => {
    const w = await world(dir);
    // Connected directly: nothing in between buffers for them.
    const server = tls.createServer(serverOptions(w.bob, w.anchor, { requireCert: true }));
    const accepted = new Promise<tls.TLSSocket>((r) => server.once("secureConnection", r));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const dialed = tls.connect({
      ...clientOptions(w.anchor, { own: w.alice }),
      host: "127.0.0.1",
      port: (server.address() as { port: number }).port,
    });
    await once(dialed, "secureConnect");
    const theirs = await accepted;
    server.close();
    const [aliceSeen, bobSeen]: Seen[] = [[], []];
    try {
      const alice = new PeerConnection(dialed, "bob", undefined!, {
        downloads: dir,
        events: recorder(aliceSeen),
      });
      const bob = new PeerConnection(theirs, "alice", undefined!, {
        downloads: dir,
        events: recorder(bobSeen),
      });
      alice.start();
      bob.start();
      // Past what the kernel's buffers take: each side's acks wait behind its own messages, so
      // each holds the other; had either stopped reading at once, both would wait for the stall.
      const count = 60_000;
      const text = "x".repeat(200);
      for (let i = 0; i < count; i++) {
        alice.sendMessage(text);
        bob.sendMessage(text);
      }
      const delivered = (seen: Seen) => seen.filter((e) => e[0] === "delivered").length;
      await until(
        "every message delivered",
        () => delivered(aliceSeen) === count && delivered(bobSeen) === count,
        60_000,
      );
      assert.deepEqual([...aliceSeen, ...bobSeen].filter((e) => e[0] === "closed"), []);
      alice.close();
    } finally {
      dialed.destroy();
      theirs.destroy();
    }
  });
});
