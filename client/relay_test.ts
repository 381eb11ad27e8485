/**
 * Reaching a peer through the CA's relay, in process: two Chat objects
 * enrolled with a real CA service process, the inviter naming an address that
 * does not answer (as behind a NAT), so the accepter falls back to the relay.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { join } from "node:path";
import tls from "node:tls";
import { CaPaths } from "../ca/home.ts";
import { e2eError } from "../lib/_test_util.ts";
import { parseInvite } from "../lib/invite.ts";
import { serverOptions, trustAnchor } from "../lib/tls.ts";
import { makeInvite, type Service, withService } from "../tests/_service_helpers.ts";
import { Chat, type ChatOptions } from "./chat.ts";
import type { CoreEvent } from "./events.ts";
import { enroll, type Identity } from "./identity.ts";
import { dialRelay } from "./relay.ts";

async function member(service: Service, dir: string, name: string): Promise<Identity> {
  return await enroll(join(dir, name), parseInvite(await makeInvite(service.home, name)));
}

async function start(id: Identity, events: CoreEvent[], options: ChatOptions = {}): Promise<Chat> {
  return await Chat.start(id, { onEvent: (e) => events.push(e), ...options });
}

async function until(what: string, ok: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) assert.fail(`not within ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A port nothing listens on (connections are refused). */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

Deno.test("accept() with relay auto falls back to the relay when the direct connection fails or times out, and both sides say via relay", async (t) => {
  await withService(async (service, dir) => {
    // Each step has its own pair: an invitation of one step is not seen by the next.
    const pair = async (i: number) =>
      await Promise.all([
        member(service, dir, `alice${i}`),
        member(service, dir, `bob${i}`),
      ]);
    // Accepts and never answers: the TLS handshake times out.
    const hole = net.createServer((socket) => socket.on("error", () => {}));
    await new Promise<void>((resolve) => hole.listen(0, "127.0.0.1", resolve));
    const held: net.Socket[] = [];
    hole.on("connection", (s) => held.push(s));
    const scenarios: Array<[string, number]> = [
      ["a refused connection", await closedPort()],
      ["a connection that never completes its handshake", (hole.address() as net.AddressInfo).port],
    ];
    try {
      for (const [i, [what, port]] of scenarios.entries()) {
        await t.step(what, async () => {
          const [aliceId, bobId] = await pair(i);
          const aliceEvents: CoreEvent[] = [];
          const bobEvents: CoreEvent[] = [];
          const alice = await start(aliceId, aliceEvents, {
            advertise: { host: "127.0.0.1", port },
          });
          const bob = await start(bobId, bobEvents);
          try {
            await alice.invite(bobId.name);
            await until("bob has the invitation", () => bob.invitations().includes(aliceId.name));
            const peer = await bob.accept(aliceId.name);
            assert.equal(peer.via, "relay");
            assert.deepEqual(bob.peers().map((p) => [p.name, p.via]), [[aliceId.name, "relay"]]);
            await until("alice connected", () => alice.isConnected(bobId.name));
            const atAlice = aliceEvents.find((e) => e.type === "connected");
            assert.equal(atAlice?.type === "connected" && atAlice.via, "relay");
            const id = bob.send(aliceId.name, "through the relay");
            await until(
              "alice got it",
              () => aliceEvents.some((e) => e.type === "message" && e.id === id),
            );
            await until("delivered", () => bobEvents.some((e) => e.type === "delivered"));
          } finally {
            await Promise.all([alice.stop(), bob.stop()]);
          }
        });
      }
      await t.step("with relay never, the same failure is an ERR_NETWORK", async () => {
        const [aliceId, bobId] = await pair(2);
        const port = scenarios[0][1];
        const alice = await start(aliceId, [], { advertise: { host: "127.0.0.1", port } });
        const bob = await start(bobId, [], { relay: "never" });
        try {
          await alice.invite(bobId.name);
          await until("bob has the invitation", () => bob.invitations().includes(aliceId.name));
          await assert.rejects(
            bob.accept(aliceId.name),
            e2eError(
              "ERR_NETWORK",
              new RegExp(`^Cannot connect to "alice2" at 127\\.0\\.0\\.1:${port}: `),
            ),
          );
          assert.equal(alice.isConnected(bobId.name), false);
        } finally {
          await Promise.all([alice.stop(), bob.stop()]);
        }
      });
    } finally {
      for (const s of held) s.destroy();
      await new Promise<void>((resolve) => hole.close(() => resolve()));
    }
  });
});

Deno.test("accept() with relay always goes through the relay even when the inviter listens", async () => {
  await withService(async (service, dir) => {
    const [aliceId, bobId] = await Promise.all([
      member(service, dir, "alice"),
      member(service, dir, "bob"),
    ]);
    const aliceEvents: CoreEvent[] = [];
    const alice = await start(aliceId, aliceEvents);
    const bob = await start(bobId, [], { relay: "always" });
    try {
      assert.notEqual(alice.listen, "");
      await alice.invite("bob");
      await until("bob has the invitation", () => bob.invitations().includes("alice"));
      assert.equal((await bob.accept("alice")).via, "relay");
      await until("alice connected", () => alice.isConnected("bob"));
      assert.deepEqual(alice.peers().map((p) => p.via), ["relay"]);
    } finally {
      await Promise.all([alice.stop(), bob.stop()]);
    }
  });
});

Deno.test("Chat.start() refuses noListen with relay never: such a client could never be reached", async () => {
  await withService(async (service, dir) => {
    const id = await member(service, dir, "alice");
    await assert.rejects(
      Chat.start(id, { noListen: true, relay: "never" }),
      e2eError("ERR_USAGE", "A client that does not listen needs the relay"),
    );
  });
});

Deno.test("dialRelay() refuses a TLS server that is not our CA service with ERR_PEER_REJECTED", async () => {
  await withService(async (service, dir) => {
    const id = await member(service, dir, "alice");
    // The CRL listener is ours but plain HTTP; a TLS server of someone else: a chat listener.
    const events: CoreEvent[] = [];
    const other = await start(await member(service, dir, "bob"), events);
    try {
      await assert.rejects(
        dialRelay(`https://${other.listen}`, trustAnchor(id.anchor.pem), 1, {
          own: id.credentials,
          timeoutMs: 5_000,
        }),
        e2eError(
          "ERR_PEER_REJECTED",
          `The server at https://${other.listen} is not our CA service`,
        ),
      );
    } finally {
      await other.stop();
    }
  });
});

Deno.test("dialRelay() stops reading a refusal whose body does not end, with ERR_NETWORK", async () => {
  await withService(async (service, dir) => {
    const id = await member(service, dir, "alice");
    // The service's own certificate, answering with a body that never ends (a CA gone bad).
    const paths = new CaPaths(service.home);
    const own = {
      cert: await Deno.readTextFile(paths.serviceCert),
      key: await Deno.readTextFile(paths.serviceKey),
    };
    const endless = tls.createServer(serverOptions(own, trustAnchor(service.caPem)), (socket) => {
      socket.on("error", () => {});
      socket.write("HTTP/1.1 500 Internal Server Error\r\n\r\n");
      const more = () => {
        while (!socket.destroyed && socket.write(new Uint8Array(64 * 1024).fill(0x20)));
        if (!socket.destroyed) socket.once("drain", more);
      };
      more();
    });
    await new Promise<void>((resolve) => endless.listen(0, "127.0.0.1", resolve));
    const port = (endless.address() as net.AddressInfo).port;
    try {
      await assert.rejects(
        dialRelay(`https://127.0.0.1:${port}`, trustAnchor(id.anchor.pem), 1, {
          own: id.credentials,
          timeoutMs: 10_000,
        }),
        e2eError("ERR_NETWORK", "The relay sent too long a reply"),
      );
    } finally {
      await new Promise<void>((resolve) => endless.close(() => resolve()));
    }
  });
});
