/**
 * Attacker's review r122 (repros only): the mailbox fixes of this session, tried against real
 * CA service processes, real `client chat --json` processes, the real openssl (and strace to
 * kill a chat at one exact system call). Each test fails on main at 9dad99c.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ChatClient, sleep, stopAll, waitUntil } from "./_harness.ts";
import { joinUser, type User } from "./_chat_helpers.ts";
import {
  assertSuccess,
  initCa,
  runClient,
  type Service,
  startService,
} from "./_service_helpers.ts";
import { stracePath } from "./_syscalls.ts";

const MAILBOX_MS = 30_000;
const ROOM = "#team";

/** A CA with its service in a temporary folder, and the chats started there. */
class World {
  readonly dir: string;
  service: Service;
  #clients: ChatClient[] = [];

  private constructor(dir: string, service: Service) {
    this.dir = dir;
    this.service = service;
  }

  static async start(): Promise<World> {
    const dir = await Deno.makeTempDir({ prefix: "e2e-chat-r122-" });
    const home = join(dir, "ca-home");
    await initCa(home);
    return new World(dir, await startService(home, { args: ["--crl-port", "0"] }));
  }

  async join(name: string): Promise<User> {
    return await joinUser(this.service, name, join(this.dir, name));
  }

  async chat(user: User): Promise<ChatClient> {
    const client = await ChatClient.start(user);
    this.#clients.push(client);
    return client;
  }

  /** How many items wait for `name` at the CA. */
  stored(name: string): number {
    try {
      return [...Deno.readDirSync(join(this.service.caDir, "mailbox", name))]
        .filter((e) => e.name.endsWith(".cms")).length;
    } catch {
      return 0;
    }
  }

  async close(): Promise<void> {
    await stopAll(this.#clients);
    await this.service.stop();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

async function withWorld(fn: (world: World) => Promise<void>) {
  const world = await World.start();
  try {
    await fn(world);
  } finally {
    await world.close();
  }
}

Deno.test("r122: a mailbox message alice sealed before she renewed her certificate is still shown to bob, not refused and deleted as signed by a revoked certificate", async () => {
  await withWorld(async (world) => {
    const aliceUser = await world.join("alice");
    const bobUser = await world.join("bob");
    const alice = await world.chat(aliceUser);
    await alice.send("/msg bob sent before my renewal");
    await alice.expect({ type: "queued", to: "bob" });
    await waitUntil(() => world.stored("bob") === 1, "the item at the CA", MAILBOX_MS);
    await alice.stop();
    // alice renews (same key; the CA revokes her old certificate as superseded), as her chat
    // does by itself near her certificate's end.
    assertSuccess(await runClient(aliceUser.home, ["renew"]), "client renew (alice)");

    const bob = await world.chat(bobUser);
    await waitUntil(
      () => bob.count("message") > 0 || bob.warnings.some((w) => /mailbox item/.test(w)),
      "bob to handle alice's item",
      MAILBOX_MS,
    );
    assert.deepEqual(
      bob.warnings.filter((w) => /Refused a mailbox item/.test(w)),
      [],
      "an honest item signed before a renewal is refused (and deleted at the CA)",
    );
    const shown = await bob.expect({ type: "message", from: "alice" }, MAILBOX_MS);
    assert.equal(shown.text, "sent before my renewal");
  });
});
