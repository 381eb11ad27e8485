/**
 * Attacker's review r122 (repros only): the mailbox fixes of this session, tried against real
 * CA service processes, real `client chat --json` processes, the real openssl (and strace to
 * kill a chat at one exact system call). Each test fails on main at 9dad99c.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ChatClient, stopAll, waitUntil } from "./_harness.ts";
import { joinUser, type User } from "./_chat_helpers.ts";
import { initCa, type Service, startService } from "./_service_helpers.ts";

const MAILBOX_MS = 30_000;

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

/** Sets or clears the immutable attribute of `path` (what even root cannot replace). */
async function immutable(path: string, on: boolean): Promise<boolean> {
  const { success } = await new Deno.Command("chattr", {
    args: [on ? "+i" : "-i", path],
    stdout: "null",
    stderr: "null",
  }).output().catch(() => ({ success: false }));
  return success;
}

Deno.test("r122: a chat that dies after a mailbox message's history line is synced but before its id is marked seen shows the message once in the history after its restart, not twice", async () => {
  await withWorld(async (world) => {
    const aliceUser = await world.join("alice");
    const bobUser = await world.join("bob");
    const alice = await world.chat(aliceUser);
    await alice.send("/msg bob written once, shown once");
    await alice.expect({ type: "queued", to: "bob" });
    await waitUntil(() => world.stored("bob") === 1, "the item at the CA", MAILBOX_MS);

    // bob's seen ids cannot be replaced (immutable, as root too): his chat stores the message
    // (History.persist() syncs its line), then fails to mark it seen, and dies (a crash or a
    // power cut there leaves the same on disk).
    const seen = join(bobUser.home, "mailbox", "seen.json");
    await Deno.mkdir(join(bobUser.home, "mailbox"), { recursive: true, mode: 0o700 });
    await Deno.writeTextFile(seen, '{"seen":{}}\n', { mode: 0o600 });
    assert.ok(await immutable(seen, true), "chattr +i works here");
    try {
      const first = await world.chat(bobUser);
      await waitUntil(
        () => first.warnings.some((w) => /seen\.json|Operation not permitted/.test(w)),
        "the seen write to fail",
        MAILBOX_MS,
      );
      assert.equal(first.count("message"), 0, first.describe());
      await first.kill("SIGKILL");
    } finally {
      await immutable(seen, false);
    }
    const lines = (await Deno.readTextFile(join(bobUser.home, "history", "alice.jsonl")))
      .split("\n").filter((l) => l.includes("written once"));
    assert.equal(lines.length, 1, "the history line was synced before the seen write");
    assert.equal(world.stored("bob"), 1, "not acknowledged: still at the CA");

    // bob starts again: the item is stored, shown and acknowledged.
    const bob = await world.chat(bobUser);
    const shown = await bob.expect({ type: "message", from: "alice" }, MAILBOX_MS);
    assert.equal(shown.text, "written once, shown once");
    await waitUntil(() => world.stored("bob") === 0, "acknowledged", MAILBOX_MS);
    await bob.send("/history alice");
    const read = await bob.expect({ type: "history", peer: "alice" });
    const texts = (read.entries as Array<{ text?: string }>).map((e) => e.text);
    assert.deepEqual(texts, ["written once, shown once"], "the history shows it twice");
  });
});
