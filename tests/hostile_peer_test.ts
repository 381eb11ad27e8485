/**
 * A real chat listener under attack (docs/SECURITY.md §2, docs/PROTOCOL.md
 * §2–3): alice runs `client chat --json` and has invited bob with `/chat bob`;
 * her listener then gets random bytes without TLS, handshakes that stop
 * half-way, 500 connection attempts from clients she did not invite or that
 * have no certificate, and — as the invited bob — frames and files built to
 * break her. Afterwards a legitimate bob still connects and messages flow,
 * alice's process is alive, and nothing changed on disk outside her downloads.
 *
 * tests/chat_test.ts already covers, identically, invalid JSON and UTF-8, the
 * unknown type "shout", a chunk or end for a file never announced, more bytes
 * than announced, a SHA-256 that does not match, lines of 1 MiB + 1 and 2 MiB,
 * and the names "../../x", "/etc/passwd", "\0ev\x07il\n.txt" and "..": they
 * are not repeated here. What is here is the volume, the 10 MiB line, and the
 * variants that file does not try.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { basename, dirname, join } from "node:path";
import {
  ChatClient,
  concurrentSteps,
  connect,
  sleep,
  stopAll,
  waitUntil,
  within,
} from "./_harness.ts";
import { snapshot } from "./_helpers.ts";
import { initCa, type Service, startService } from "./_service_helpers.ts";
import { joinUser, RawPeer, type RawPeerOptions, selfSigned, type User } from "./_chat_helpers.ts";
import { assertSameFiles, pool, SeededRandom, tree } from "./_hostile_helpers.ts";
import { captureClientHello, type HeldConnection, holdTcp } from "./_tls_by_hand.ts";

const MiB = 1024 * 1024;
/** A listener closes a connection that never finishes its handshake within this (ms). */
const STALLED_HANDSHAKE_LIMIT_MS = 15_000;

function frame(value: Record<string, unknown>): string {
  return JSON.stringify(value) + "\n";
}

const HELLO = frame({ type: "hello", v: 1 });
const OFFER_HELLO = frame({ type: "hello", v: 1, features: ["bin", "offer"] });
const EMPTY_SHA = createHash("sha256").update(new Uint8Array()).digest("hex");

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

function fileFrames(id: string, name: string, bytes: Uint8Array): string {
  return frame({ type: "file", id, name, size: bytes.length, sha256: sha256(bytes) }) +
    (bytes.length
      ? frame({ type: "chunk", id, data: Buffer.from(bytes).toString("base64") })
      : "") +
    frame({ type: "end", id });
}

async function credentials(user: User): Promise<{ cert: string; key: string }> {
  return {
    cert: await Deno.readTextFile(user.certPath),
    key: await Deno.readTextFile(user.keyPath),
  };
}

Deno.test("a chat listener under attack keeps serving its invited peer, and writes nothing outside its downloads", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-hostile-peer-" });
  let service: Service | undefined;
  const clients: ChatClient[] = [];
  const raws: RawPeer[] = [];
  const held: HeldConnection[] = [];
  try {
    const home = join(dir, "ca-home");
    await initCa(home);
    service = await startService(home, { args: ["--enroll-rate", "1000"] });
    const [aliceUser, bobUser, carolUser] = await Promise.all(
      ["alice", "bob", "carol"].map((n) => joinUser(service!, n, join(dir, n))),
    );
    // downloads is a folder inside another, so that a name escaping it by one level shows.
    const downloads = join(dir, "alice-dl", "inner");
    await Deno.mkdir(downloads, { recursive: true });
    const alice = await ChatClient.start(aliceUser, { args: ["--downloads", downloads] });
    clients.push(alice);
    const [bob, carol] = await Promise.all([credentials(bobUser), credentials(carolUser)]);
    // A certificate that says "bob", made by carol with her own key, not by the CA.
    const forgedBob = { cert: await selfSigned("bob", carolUser.keyPath), key: carol.key };
    const raw = (options: RawPeerOptions) => {
      const peer = RawPeer.connect(alice.port, options);
      raws.push(peer);
      return peer;
    };

    /**
     * alice invites bob; bob connects by hand, gets her hello and writes `first` (his hello
     * first: alice says connected once it arrives).
     */
    const invitedBob = async (first: string, hello = true): Promise<RawPeer> => {
      await alice.send("/chat bob");
      await alice.expect({ type: "invited", to: "bob" });
      const peer = raw(bob);
      await peer.expectFrame({ type: "hello", v: 1 });
      peer.write(first);
      if (hello) await alice.expect({ type: "connected", peer: "bob" });
      return peer;
    };

    // bob has talked to alice once, so her peers.json knows his key before the attack.
    {
      const peer = await invitedBob(HELLO + frame({ type: "bye" }));
      await peer.expectClosed();
      await alice.expect({ type: "disconnected", peer: "bob" });
    }
    const attackStart = alice.mark();
    const aliceBefore = await snapshot(aliceUser.home);
    const caBefore = await snapshot(service.caDir);
    const filesBefore = await tree(dir);

    const steps: Array<[string, () => Promise<void>]> = [
      [
        "20 connections of seeded random bytes (no TLS) are closed within 10 s",
        async () => {
          const rand = new SeededRandom(0x5eed);
          const conns = await Promise.all(
            Array.from(
              { length: 20 },
              () => holdTcp(alice.port, rand.bytes(1 + rand.int(64 * 1024))),
            ),
          );
          held.push(...conns);
          const started = Date.now();
          const closed = await within(Promise.all(conns.map((c) => c.closed)), 10_000, null);
          const open = conns.filter((c) => !c.isClosed()).length;
          assert.ok(closed, `${open} of 20 were still open after ${Date.now() - started} ms`);
        },
      ],
      [
        `20 handshakes stopped half-way and 10 silent TCP connections are closed within ${
          STALLED_HANDSHAKE_LIMIT_MS / 1000
        } s (the steps beside this one run while they are held)`,
        async () => {
          const hello = await captureClientHello();
          const started = Date.now();
          const conns = await Promise.all([
            ...Array.from(
              { length: 20 },
              (_, i) =>
                holdTcp(
                  alice.port,
                  hello.subarray(0, 10 + i * Math.floor((hello.length - 11) / 20)),
                ),
            ),
            ...Array.from({ length: 10 }, () => holdTcp(alice.port)),
          ]);
          held.push(...conns);
          const closed = await within(
            Promise.all(conns.map((c) => c.closed)),
            STALLED_HANDSHAKE_LIMIT_MS + 1_000,
            null,
          );
          const open = conns.filter((c) => !c.isClosed()).length;
          assert.ok(
            closed,
            `${open} of 30 stalled connections were still open after ${Date.now() - started} ms`,
          );
        },
      ],
      [
        "500 connection attempts, 50 at a time, without a certificate, as carol (not invited), with a self-signed bob, without ALPN or over TLS 1.2, get nothing and are closed",
        async () => {
          const kinds: Array<[string, RawPeerOptions]> = [
            ["no certificate", {}],
            ["carol, not invited", carol],
            ["a self-signed bob", forgedBob],
            ["bob without ALPN", { ...bob, alpn: [] }],
            ["carol over TLS 1.2", { ...carol, maxVersion: "TLSv1.2" }],
          ];
          const outcomes = await pool(Array.from({ length: 500 }, (_, i) => i), 50, async (i) => {
            const [what, options] = kinds[i % kinds.length];
            const peer = raw(options);
            peer.write(HELLO + frame({ type: "msg", id: "1", text: `let me in ${i}` }));
            const closed = await within(peer.closed.then(() => true), 10_000, false);
            peer.destroy();
            return { what, closed, received: peer.received };
          });
          const bad = outcomes.filter((o) => !o.closed || o.received > 0);
          assert.deepEqual(bad, [], "attempts that stayed open or got an answer");
        },
      ],
      [
        "as invited bob: a 10 MiB line, frames built to confuse the parser, a short file, too many files and an abandoned huge file each get one error frame or a close, and leave no partial file",
        async () => {
          const payloads: Array<[string, string]> = [
            ["a 10 MiB line without a newline", HELLO + "x".repeat(10 * MiB)],
            ["a type that is an object", HELLO + '{"type":{"toString":1},"id":"1","text":"x"}\n'],
            ["type __proto__", HELLO + frame({ type: "__proto__", id: "1" })],
            ["a __proto__ holding the type", HELLO + '{"__proto__":{"type":"msg"},"id":"1"}\n'],
            ["type constructor", HELLO + frame({ type: "constructor" })],
            ["a type in an array", HELLO + frame({ type: ["msg"], id: "1", text: "x" })],
            ["an empty object", HELLO + "{}\n"],
            ["hello version 2", frame({ type: "hello", v: 2 })],
            [
              "a file that ends 90 bytes short",
              HELLO +
              frame({
                type: "file",
                id: "s",
                name: "short.txt",
                size: 100,
                sha256: "0".repeat(64),
              }) +
              frame({ type: "chunk", id: "s", data: Buffer.alloc(10).toString("base64") }) +
              frame({ type: "end", id: "s" }),
            ],
            [
              "nine files announced at once",
              HELLO +
              Array.from(
                { length: 9 },
                (_, i) =>
                  frame({
                    type: "file",
                    id: `m${i}`,
                    name: `m${i}.txt`,
                    size: 10,
                    sha256: "0".repeat(64),
                  }),
              ).join(""),
            ],
          ];
          for (const [what, payload] of payloads) {
            // Without a hello of version 1 first, bob is never connected: alice says why.
            const hello = payload.startsWith(HELLO);
            const peer = await invitedBob(payload, hello);
            await peer.expectFrame({ type: "error" });
            await peer.expectClosed(10_000);
            assert.deepEqual(peer.frames.map((f) => f.type), ["hello", "error"], what);
            const gone = hello
              ? String((await alice.expect({ type: "disconnected", peer: "bob" })).reason)
              : String(
                (await alice.expect((e) =>
                  e.type === "warning" && String(e.message).startsWith('Not connected to "bob"')
                )).message,
              );
            assert.match(gone, /bad input|malformed/i, what);
          }
          // A file announced as 2^53-1 bytes by a peer that streams without asking: refused
          // before a byte is written (more than --auto-accept, and than every quota).
          {
            const peer = await invitedBob(
              HELLO +
                frame({
                  type: "file",
                  id: "huge",
                  name: "huge.bin",
                  size: Number.MAX_SAFE_INTEGER,
                  sha256: "0".repeat(64),
                }) +
                frame({
                  type: "chunk",
                  id: "huge",
                  data: Buffer.alloc(MiB / 2).toString("base64"),
                }),
            );
            const refused = await peer.expectFrame({ type: "error" });
            assert.match(String(refused.message), /^File refused: .*quota/);
            await peer.expectClosed(10_000);
            await alice.expect({ type: "disconnected", peer: "bob" });
          }
          // A large file offered and accepted, then the sender hangs up in the middle.
          const peer = await invitedBob(
            OFFER_HELLO +
              frame({
                type: "file",
                id: "big",
                name: "big.bin",
                size: 512 * MiB,
                sha256: "0".repeat(64),
              }),
          );
          const offer = await alice.expect({ type: "file_offer", from: "bob", id: "big" });
          await alice.send(`/get ${offer.id}`);
          await peer.expectFrame({ type: "accept", id: "big" });
          peer.write(
            frame({ type: "chunk", id: "big", data: Buffer.alloc(MiB / 2).toString("base64") }),
          );
          await alice.expect({ type: "progress", direction: "in" });
          peer.destroy();
          await alice.expect({ type: "disconnected", peer: "bob" });
          await waitForNoPartials(downloads);
          assert.deepEqual(await tree(downloads), []);
        },
      ],
    ];

    await concurrentSteps(t, steps);

    await t.step(
      "as invited bob: 50 empty files named ../../../etc/passwd and 3 of 700 MB get an answer each, at most 8 are received at once, the large ones wait for consent offered under the names they would be saved under, and nothing is left on disk",
      async () => {
        const mark = alice.mark();
        const peer = await invitedBob(OFFER_HELLO);
        for (let i = 0; i < 50; i++) {
          peer.write(frame({
            type: "file",
            id: `p${i}`,
            name: "../../../etc/passwd",
            size: 0,
            sha256: EMPTY_SHA,
          }));
        }
        for (let i = 0; i < 3; i++) {
          peer.write(frame({
            type: "file",
            id: `h${i}`,
            // The first with its extension pushed out of sight by 60 Braille blanks.
            name: i === 0 ? `invoice.pdf${"\u2800".repeat(60)}.sh` : `huge${i}.iso`,
            size: 700_000_000,
            sha256: "0".repeat(64),
          }));
        }
        await waitUntil(
          () => alice.since(mark, { type: "file_offer" }).length === 3,
          "the three offers of 700 MB",
        );
        // Offered under the name it would be saved under, its extension in sight.
        assert.deepEqual(
          alice.since(mark, { type: "file_offer" }).map((e) => e.name),
          ["invoice.pdf .sh", "huge1.iso", "huge2.iso"],
        );
        await waitUntil(
          () =>
            peer.frames.filter((f) => f.type === "accept" || f.type === "decline").length === 50,
          "an answer to each small file",
        );
        const accepted = peer.frames.filter((f) => f.type === "accept");
        assert.equal(accepted.length, 8, JSON.stringify(peer.frames.slice(0, 12)));
        for (const d of peer.frames.filter((f) => f.type === "decline")) {
          assert.equal(d.reason, 'refused: 8 files are already being received from "bob"');
        }
        assert.equal(alice.since(mark, { type: "file_failed", direction: "in" }).length, 42);
        // Nothing under a real name; the 700 MB offers wrote nothing.
        assert.deepEqual((await tree(downloads)).filter((n) => !n.startsWith(".partial-")), []);
        assert.ok(!peer.frames.some((f) => f.type === "accept" && String(f.id).startsWith("h")));
        peer.destroy();
        await alice.expect({ type: "disconnected", peer: "bob" });
        await waitForNoPartials(downloads);
        assert.deepEqual(await tree(downloads), []);
      },
    );

    await t.step(
      "as invited bob: hostile file names are stored under safe names inside downloads, and nothing is written elsewhere",
      async () => {
        const names = [
          "../",
          "/",
          "\u0000",
          "a\u0000/../../b.txt",
          "..\u0000/x",
          "../inner/../../outside.txt",
          "~/.ssh/authorized_keys",
          "\u001b]0;pwned\u0007name.txt",
          "foo/..",
          ".partial-00000000-0000-0000-0000-000000000000",
          "  ../ spaced.txt ",
          "a".repeat(1024),
          "%2e%2e%2fencoded.txt",
          "CON",
          "\u202etxt.exe",
        ];
        const peer = await invitedBob(HELLO);
        const received: string[] = [];
        for (const [i, name] of names.entries()) {
          const data = new TextEncoder().encode(`file ${i}: ${JSON.stringify(name)}`);
          peer.write(fileFrames(`n${i}`, name, data));
          await peer.expectFrame({ type: "ack", id: `n${i}` });
          const got = await alice.expect({ type: "file", from: "bob" });
          const path = String(got.path);
          const base = basename(path);
          const what = `${JSON.stringify(name)} → ${JSON.stringify(path)}`;
          assert.equal(dirname(path), downloads, what);
          // deno-lint-ignore no-control-regex
          assert.doesNotMatch(base, /[\u0000-\u001f\u007f/\\]/, what);
          assert.ok(!base.startsWith(".") && base !== "..", what);
          assert.ok(new TextEncoder().encode(base).length <= 200, what);
          assert.deepEqual(await Deno.readFile(path), data, what);
          received.push(base);
        }
        peer.write(frame({ type: "bye" }));
        await peer.expectClosed();
        await alice.expect({ type: "disconnected", peer: "bob" });
        assert.deepEqual((await tree(downloads)).sort(), received.sort());
      },
    );

    await t.step(
      "afterwards a legitimate bob connects and messages flow both ways, alice's process is alive, and only her downloads changed",
      async () => {
        const bobClient = await ChatClient.start(bobUser);
        clients.push(bobClient);
        const { atFrom } = await connect(alice, bobClient);
        assert.equal(atFrom.trust, "known");
        await alice.send("still here?");
        await bobClient.expect({ type: "message", from: "alice", text: "still here?" });
        await bobClient.send("yes");
        await alice.expect({ type: "message", from: "bob", text: "yes" });
        assert.equal(await within(alice.status, 0, "running"), "running", "alice's client exited");

        // No one but bob was ever admitted, and nothing he sent as an attacker showed as a message.
        const shown = alice.since(attackStart, (e) => ["connected", "message"].includes(e.type));
        assert.ok(shown.every((e) => e.peer === "bob" || e.from === "bob"), JSON.stringify(shown));
        assert.deepEqual(alice.since(attackStart, { type: "message" }).map((e) => e.text), ["yes"]);

        // Her history holds the legitimate exchange with bob, and nothing the attacks sent.
        const texts = async () =>
          (await Deno.readTextFile(join(aliceUser.home, "history", "bob.jsonl")).catch(() => ""))
            .trim().split("\n").filter(Boolean).map((l) => JSON.parse(l))
            .filter((r) => r.t === "msg").map((r) => r.text);
        // (history is written a moment after the event)
        await waitUntil(async () => (await texts()).length >= 2, "alice's history");
        assert.deepEqual(await texts(), ["still here?", "yes"]);
        assertSameFiles(
          aliceBefore,
          await snapshot(aliceUser.home),
          "alice's home",
          // The history of bob, and the record of received files the quotas count (the attack's
          // files, all inside downloads: checked below); the newest CRL number taken.
          /\/history\/bob\.jsonl$|\/received\.json$|\/crl-number$/,
        );
        const received = JSON.parse(
          await Deno.readTextFile(join(aliceUser.home, "received.json")).catch(() => "[]"),
        ) as Array<{ path: string }>;
        assert.ok(
          received.length > 0 && received.every((r) => dirname(r.path) === downloads),
          JSON.stringify(received),
        );
        assertSameFiles(caBefore, await snapshot(service!.caDir), "the CA");
        const added = (await tree(dir)).filter((p) => !filesBefore.includes(p) && p !== "bob/");
        const unexpected = added.filter((p) =>
          !/^alice-dl\/inner\/[^/]+$/.test(p) && p !== "bob/peers.json" &&
          p !== "bob/crl-number" && // the newest CRL number bob's client took
          // the record of received files (checked above: it names files in downloads only)
          p !== "alice/received.json" &&
          // the two histories of the legitimate conversation (alice's is checked above)
          !["alice/history/", "alice/history/bob.jsonl", "bob/history/", "bob/history/alice.jsonl"]
            .includes(p)
        );
        assert.deepEqual(unexpected, [], "files written outside alice's downloads");
        const now = await tree(dir);
        assert.deepEqual(filesBefore.filter((p) => !now.includes(p)), [], "files disappeared");
      },
    );
  } finally {
    for (const c of held) c.close();
    for (const r of raws) r.destroy();
    await stopAll(clients);
    await service?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

/** Waits until no `.partial-*` file is left in `dir` (a closed connection removes its own). */
async function waitForNoPartials(dir: string): Promise<void> {
  const until = Date.now() + 5_000;
  let partials: string[] = [];
  while (Date.now() < until) {
    partials = (await tree(dir)).filter((n) => n.startsWith(".partial-"));
    if (!partials.length) return;
    await sleep(50);
  }
  assert.deepEqual(partials, [], `partial files left in ${dir}`);
}
