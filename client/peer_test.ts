/**
 * PeerConnection on both ends of a real mutual-TLS connection on 127.0.0.1,
 * with certificates from a real CA (openssl), and on one end a raw TLS socket
 * that writes hostile frames.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import tls from "node:tls";
import { CertificateAuthority } from "../ca/authority.ts";
import { encodeFrame } from "../lib/frames.ts";
import { clientOptions, serverOptions, trustAnchor } from "../lib/tls.ts";
import { makeCsr, PASSPHRASE, withTempDir } from "../tests/_helpers.ts";
import { PeerConnection, type PeerEvents } from "./peer.ts";

type Seen = Array<[string, ...unknown[]]>;

function recorder(seen: Seen): PeerEvents {
  return {
    message: (_p, id, text) => seen.push(["message", id, text]),
    delivered: (_p, id) => seen.push(["delivered", id]),
    file: (_p, info) => seen.push(["file", info.name, info.bytes, info.sha256, info.path]),
    progress: () => {},
    fileFailed: (_p, info) => seen.push(["fileFailed", info.direction]),
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

Deno.test("PeerConnection carries a message with its ack and a 3 MiB file intact, and a close reaches both ends", async () => {
  await withPair(async (aliceSocket, bobSocket, dir) => {
    const aliceSeen: Seen = [];
    const bobSeen: Seen = [];
    const alice = new PeerConnection(aliceSocket, "bob", undefined!, {
      downloads: join(dir, "alice-downloads"),
      events: recorder(aliceSeen),
    });
    const bob = new PeerConnection(bobSocket, "alice", undefined!, {
      downloads: join(dir, "bob-downloads"),
      events: recorder(bobSeen),
    });
    await Deno.mkdir(join(dir, "alice-downloads"));
    alice.start();
    bob.start();

    const id = bob.sendMessage("hi alice");
    await until("alice's message", aliceSeen, (s) => s.some((e) => e[0] === "message"));
    assert.deepEqual(aliceSeen[0], ["message", id, "hi alice"]);
    await until("bob's ack", bobSeen, (s) => s.some((e) => e[0] === "delivered" && e[1] === id));

    const body = new Uint8Array(3 * 1024 * 1024).map((_, i) => i % 251);
    await Deno.writeFile(join(dir, "data.bin"), body);
    const fileId = await bob.sendFile(join(dir, "data.bin"));
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
    const aliceSeen: Seen = [];
    const bobSeen: Seen = [];
    const alice = new PeerConnection(aliceSocket, "bob", undefined!, {
      downloads: dir,
      events: recorder(aliceSeen),
    });
    alice.quarantined = true;
    const bob = new PeerConnection(bobSocket, "alice", undefined!, {
      downloads: dir,
      events: recorder(bobSeen),
    });
    alice.start();
    bob.start();
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
    const aliceSeen: Seen = [];
    const alice = new PeerConnection(aliceSocket, "bob", undefined!, {
      downloads: dir,
      events: recorder(aliceSeen),
    });
    alice.start();
    let received = "";
    rawBob.on("data", (b: Uint8Array) => received += new TextDecoder().decode(b));
    rawBob.write(
      encodeFrame({ type: "hello", v: 1, features: [] }) +
        encodeFrame({ type: "msg", id: "m1", text: "before" }) +
        '{"type":"msg","id":5}\n',
    );
    await until("closed", aliceSeen, (s) => s.some((e) => e[0] === "closed"));
    assert.deepEqual(aliceSeen[0], ["message", "m1", "before"]);
    assert.match(received, /"type":"ack","id":"m1"/);
    assert.match(received, /"type":"error"/);
  });
});
