/**
 * The CA service restarted under running clients, as an admin does for an upgrade or a reboot:
 * `ca serve` stopped with SIGTERM or killed with SIGKILL, then the same home served again on the
 * same port and --crl-port. What the service held in memory only (the rendezvous, the relay) is
 * gone; what users expect is that nothing else is, and that their clients recover on their own.
 * Real service processes, real `client chat --json` processes, the real openssl.
 *
 * @module
 */
import assert from "node:assert/strict";
import net from "node:net";
import { join } from "node:path";
import { ChatClient, stopAll, withTempDir } from "./_harness.ts";
import { joinUser, type User } from "./_chat_helpers.ts";
import { initCa, type Service, startService } from "./_service_helpers.ts";

/** Longer than the poll's pause after its first failures (client/poll.ts), and a restart. */
const RECOVERY_MS = 30_000;

/** A port free now on 127.0.0.1. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A CA service, its users joined, and their chats; restarted on the same address. */
class World {
  readonly dir: string;
  service: Service;
  readonly #crlPort: number;
  #clients: ChatClient[] = [];

  private constructor(dir: string, service: Service, crlPort: number) {
    this.dir = dir;
    this.service = service;
    this.#crlPort = crlPort;
  }

  static async start(dir: string): Promise<World> {
    const home = join(dir, "ca-home");
    await initCa(home);
    const crlPort = await freePort();
    const service = await startService(home, { args: ["--crl-port", String(crlPort)] });
    return new World(dir, service, crlPort);
  }

  async join(...names: string[]): Promise<User[]> {
    return await Promise.all(names.map((n) => joinUser(this.service, n, join(this.dir, n))));
  }

  async chat(user: User, args: string[] = []): Promise<ChatClient> {
    const client = await ChatClient.start(user, { args });
    this.#clients.push(client);
    return client;
  }

  /** Ends the service with `signal`, then serves the same home on the same ports again. */
  async restart(signal: "SIGTERM" | "SIGKILL"): Promise<void> {
    const { home, port } = this.service;
    this.service.proc.kill(signal);
    const status = await this.service.proc.status;
    assert.ok(signal === "SIGKILL" ? status.signal === "SIGKILL" : status.code === 0);
    this.service = await startService(home, {
      args: ["--port", String(port), "--crl-port", String(this.#crlPort)],
    });
  }

  async close(): Promise<void> {
    await stopAll(this.#clients);
    await this.service.stop();
  }
}

async function withWorld(fn: (world: World) => Promise<void>): Promise<void> {
  await withTempDir(async (dir) => {
    const world = await World.start(dir);
    try {
      await fn(world);
    } finally {
      await world.close();
    }
  });
}

Deno.test("an invitation pending when the service restarts is made again once it answers, and reaches a client started after the restart", async () => {
  await withWorld(async (world) => {
    const [aliceUser, carolUser] = await world.join("alice", "carol");
    const alice = await world.chat(aliceUser);
    await alice.send("/chat carol");
    await alice.expect({ type: "invited", to: "carol" });

    await world.restart("SIGTERM");
    // The service lost the invitation with its memory; alice's client, once it hears from the
    // service again, invites carol again and says so.
    const carol = await world.chat(carolUser);
    await carol.expect({ type: "invite", from: "alice" }, RECOVERY_MS);
    await alice.expect({
      type: "warning",
      message:
        'Invited "carol" again: the CA service did not answer for a while, and may have lost the invitation',
    });
    await carol.send("/accept alice");
    await carol.expect({ type: "connected", peer: "alice", via: "direct" });
    await alice.expect({ type: "connected", peer: "carol" });
    await carol.send("/msg alice after the restart");
    await alice.expect({ type: "message", from: "carol", text: "after the restart" });
  });
});

Deno.test("an invitation held when the service is killed and restarted still leads through the relay to an inviter that does not listen", async () => {
  await withWorld(async (world) => {
    const [aliceUser, bobUser] = await world.join("alice", "bob");
    const alice = await world.chat(aliceUser, ["--no-listen"]);
    const bob = await world.chat(bobUser);
    await alice.send("/chat bob");
    await bob.expect({ type: "invite", from: "alice" });

    await world.restart("SIGKILL");
    await alice.expect({
      type: "warning",
      message:
        'Invited "bob" again: the CA service did not answer for a while, and may have lost the invitation',
    }, RECOVERY_MS);
    // Bob holds the invitation he was shown: the one made again replaces it, not shown twice.
    const mark = bob.mark();
    await bob.send("/accept alice");
    await bob.expect({ type: "connected", peer: "alice", via: "relay" });
    await alice.expect({ type: "connected", peer: "bob", via: "relay" });
    assert.deepEqual(bob.since(mark, { type: "invite" }), []);
    await alice.send("/msg bob through the new relay");
    await bob.expect({ type: "message", from: "alice", text: "through the new relay" });
  });
});
