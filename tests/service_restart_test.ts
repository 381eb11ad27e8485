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
import { join } from "node:path";
import { ChatClient, freePort, stopAll, withTempDir } from "./_harness.ts";
import { joinUser, type User } from "./_chat_helpers.ts";
import {
  assertSuccess,
  initCa,
  makeInvite,
  runClient,
  type Service,
  startService,
} from "./_service_helpers.ts";
import { TcpRelay } from "./_tcp_relay.ts";

/** Longer than the poll's pause after its first failures (client/poll.ts), and a restart. */
const RECOVERY_MS = 30_000;

/** What an inviter says when it invites `name` again after the service was away. */
const AGAIN = (name: string) =>
  `Invited "${name}" again: the CA service did not answer for a while, and may have lost the invitation`;

/** A port free now on 127.0.0.1. */

/** A CA service, its users joined, and their chats; restarted on the same address. */
class World {
  readonly dir: string;
  service: Service;
  readonly crlPort: number;
  #clients: ChatClient[] = [];
  #relays: TcpRelay[] = [];

  private constructor(dir: string, service: Service, crlPort: number) {
    this.dir = dir;
    this.service = service;
    this.crlPort = crlPort;
  }

  static async start(dir: string): Promise<World> {
    const home = join(dir, "ca-home");
    await initCa(home);
    const crlPort = freePort();
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

  /** How many mailbox items for `name` the service holds. */
  stored(name: string): number {
    try {
      return [...Deno.readDirSync(join(this.service.caDir, "mailbox", name))]
        .filter((e) => e.name.endsWith(".json")).length;
    } catch {
      return 0; // no item for them yet
    }
  }

  /**
   * `user` chats through a relay to the service that cuts every answer once an item for `to` is
   * stored, and posts `text` to `to`'s mailbox: the post is done, and they never hear so. Returns
   * their chat, held item's id, and the relay (`mode = "pass"` lets answers through again).
   */
  async postAnswerLost(
    user: User,
    to: string,
    text: string,
  ): Promise<{ chat: ChatClient; id: string; cutter: TcpRelay }> {
    let armed = false;
    const cutter = await TcpRelay.start(this.service.port, {
      after: () => armed && this.stored(to) > 0,
    });
    this.#relays.push(cutter);
    assertSuccess(
      await runClient(user.home, ["move-ca", `127.0.0.1:${cutter.port}`]),
      "client move-ca to the relay",
    );
    const chat = await this.chat(user);
    armed = true;
    cutter.mode = "drop";
    await chat.send(`/msg ${to} ${text}`);
    const { id } = await heldMessage(chat, to);
    assert.equal(this.stored(to), 1);
    return { chat, id, cutter };
  }

  /** Ends the service with `signal`, then serves the same home on the same ports again. */
  async restart(signal: "SIGTERM" | "SIGKILL"): Promise<void> {
    await this.stop(signal);
    await this.serveAgain();
  }

  /** Ends the service with `signal` (it stays down until {@linkcode serveAgain}). */
  async stop(signal: "SIGTERM" | "SIGKILL" = "SIGKILL"): Promise<void> {
    this.service.proc.kill(signal);
    const status = await this.service.proc.status;
    assert.ok(signal === "SIGKILL" ? status.signal === "SIGKILL" : status.code === 0);
  }

  /** Serves the stopped service's home on the same ports again. */
  async serveAgain(): Promise<void> {
    const { home, port } = this.service;
    this.service = await startService(home, {
      args: ["--port", String(port), "--crl-port", String(this.crlPort)],
    });
  }

  async close(): Promise<void> {
    await stopAll(this.#clients);
    for (const relay of this.#relays) await relay.close();
    await this.service.stop();
  }
}

/** The warning that a message of `chat`'s for `to` waits for the CA service; its id and text. */
async function heldMessage(chat: ChatClient, to: string): Promise<{ id: string; message: string }> {
  const waits = await chat.expect((e) =>
    e.type === "warning" && / is not sent yet: /.test(String(e.message))
  );
  const message = String(waits.message);
  const id = new RegExp(`^Message ([0-9a-f]{32}) to "${to}"`).exec(message)?.[1];
  assert.ok(id, message);
  return { id, message };
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
      message: AGAIN("carol"),
    });
    await carol.send("/accept alice");
    await carol.expect({ type: "connected", peer: "alice", via: "direct" });
    await alice.expect({ type: "connected", peer: "carol" });
    await carol.send("/msg alice after the restart");
    await alice.expect({ type: "message", from: "carol", text: "after the restart" });
    assertCalm([alice, carol], [`warning: ${AGAIN("carol")}`]);
  });
});

Deno.test("an invitation held when the service is killed and restarted still leads through the relay to an inviter that does not listen", async () => {
  await withWorld(async (world) => {
    const [aliceUser, bobUser] = await world.join("alice", "bob");
    const alice = await world.chat(aliceUser, ["--no-listen"]);
    const bob = await world.chat(bobUser);
    await alice.send("/chat bob");
    await bob.expect({ type: "invite", from: "alice" });

    const mark = bob.mark();
    await world.restart("SIGKILL");
    await alice.expect({
      type: "warning",
      message: AGAIN("bob"),
    }, RECOVERY_MS);
    // Bob holds the invitation he was shown: the one made again replaces it, not shown twice.
    // His /accept may come before it reaches him: he then asks the service for it.
    assert.deepEqual(bob.since(mark, { type: "invite" }), []);
    await bob.send("/accept alice");
    await bob.expect({ type: "connected", peer: "alice", via: "relay" });
    await alice.expect({ type: "connected", peer: "bob", via: "relay" });
    await alice.send("/msg bob through the new relay");
    await bob.expect({ type: "message", from: "alice", text: "through the new relay" });
    assertCalm([alice, bob], [`warning: ${AGAIN("bob")}`]);
  });
});

Deno.test("peers connected directly keep chatting through a restart of the service, and a relayed chat it cut says so and is made again with /chat", async () => {
  await withWorld(async (world) => {
    const [aliceUser, bobUser, carolUser] = await world.join("alice", "bob", "carol");
    const alice = await world.chat(aliceUser);
    const bob = await world.chat(bobUser);
    const carol = await world.chat(carolUser, ["--no-listen"]);
    await alice.send("/chat bob");
    await bob.expect({ type: "invite", from: "alice" });
    await bob.send("/accept alice");
    await alice.expect({ type: "connected", peer: "bob", via: "direct" });
    await carol.send("/chat alice");
    await alice.expect({ type: "invite", from: "carol" });
    await alice.send("/accept carol");
    await alice.expect({ type: "connected", peer: "carol", via: "relay" });
    await carol.expect({ type: "connected", peer: "alice", via: "relay" });

    await world.restart("SIGKILL");
    const cut = (peer: string) =>
      `the connection through the CA service's relay was cut (the service or "${peer}" went away)`;
    await alice.expect({ type: "disconnected", peer: "carol", reason: cut("carol") });
    await carol.expect({ type: "disconnected", peer: "alice", reason: cut("alice") });
    // alice and bob talk directly: the service's restart is nothing to them.
    await alice.send("/msg bob while the CA restarts");
    await bob.expect({ type: "message", from: "alice", text: "while the CA restarts" });
    await bob.send("/msg alice still here");
    await alice.expect({ type: "message", from: "bob", text: "still here" });
    assert.deepEqual(alice.since(0, { type: "disconnected", peer: "bob" }), []);

    // carol invites alice again, before her own look for invitations has found the service back:
    // that invitation was made to the service that answers now, and is not made a second time.
    const mark = carol.mark();
    await carol.send("/chat alice");
    await carol.expect({ type: "invited", to: "alice" });
    await alice.expect({ type: "invite", from: "carol" }, RECOVERY_MS);
    await alice.send("/accept carol");
    await alice.expect({ type: "connected", peer: "carol", via: "relay" });
    await alice.send("/msg carol back again");
    await carol.expect({ type: "message", from: "alice", text: "back again" });
    await bob.send("/msg alice and the CA is back");
    await alice.expect({ type: "message", from: "bob", text: "and the CA is back" });
    await carol.expectNone(
      mark,
      (e) => e.type === "warning" && /again/.test(String(e.message)),
      3_000,
    );
    assertCalm([alice, bob, carol]);
  });
});

Deno.test("while the service is down a running chat warns once and says when it answers again, and a command run meanwhile is told to wait, not to move the CA", async () => {
  await withWorld(async (world) => {
    const [aliceUser, bobUser] = await world.join("alice", "bob");
    const alice = await world.chat(aliceUser);
    await world.stop();
    const down = Date.now();
    await alice.expect(
      (e) => e.type === "warning" && /^Cannot check for invitations: /.test(String(e.message)),
      RECOVERY_MS,
    );

    // A one-shot command: the error, and a hint that says what is most likely and what to do.
    const lookup = await runClient(bobUser.home, ["lookup", "alice"]);
    assert.equal(lookup.code, 1, lookup.stderr);
    assert.match(lookup.stderr, /^e2e-chat: error: Cannot reach the CA service at https:\/\//m);
    const hint = "the service is most likely restarting or stopped for a while: try again in a " +
      "moment (a running chat keeps looking, and says when it answers again); if it lasts, ask " +
      "your admin. Only if they say the CA moved: deno task client move-ca NEW_HOST:PORT";
    assert.ok(lookup.stderr.includes(`\ne2e-chat: hint: ${hint}\n`), lookup.stderr);
    // A join's first contact: no CA to move yet.
    const joining = await runClient(join(world.dir, "carol"), [
      "join",
      await makeInvite(world.service.home, "carol"),
    ]);
    assert.equal(joining.code, 1, joining.stderr);
    assert.match(
      joining.stderr,
      /^e2e-chat: hint: the service is most likely restarting or stopped for a while: try again in a moment; if it lasts, check the address in the invite with your admin$/m,
    );
    // A command in the running chat: the same words, in its error.
    await alice.send("/chat bob");
    const refused = await alice.expect({ type: "error" });
    assert.ok(String(refused.message).endsWith(`: ${hint}`), String(refused.message));

    await world.serveAgain();
    const back = await alice.expect({ type: "ca_back" }, RECOVERY_MS);
    assert.match(
      String(back.message),
      /^The CA service answers again \(after \d+ s without an answer\)$/,
    );
    const since = Date.parse(String(back.since));
    assert.ok(since >= down - 1_000 && since <= Date.now(), String(back.since));
    // Once, though both polls (invitations, mailbox) failed and came back.
    await alice.expectNone(alice.mark(), { type: "ca_back" }, 3_000);
    assert.equal(alice.events.filter((e) => e.type === "ca_back").length, 1);
    assertCalm([alice], [`error: ${refused.message}`]);
  });
});

/**
 * What each client said of the restart: each failing look once (invitations, mailbox, and the
 * issuance log if a look at it was under way), what `expected` names, and never a `log_alarm`.
 */
function assertCalm(clients: ChatClient[], expected: string[] = []): void {
  const away = "(The CA service at URL did not answer|Cannot reach the CA service at URL)";
  const once = [
    new RegExp(`^warning: Cannot check for invitations: ${away}$`),
    new RegExp(`^warning: Cannot check the mailbox: ${away}$`),
    new RegExp(`^warning: Cannot check the CA's issuance log: ${away}$`),
  ];
  const url = (line: string) => line.replace(/https:\/\/127\.0\.0\.1:\d+/, "URL");
  for (const client of clients) {
    const said = client.events.filter((e) =>
      e.type === "warning" || e.type === "error" || e.type === "log_alarm"
    ).map((e) => url(`${e.type}: ${e.message}`));
    for (const line of said) {
      assert.ok(
        once.some((r) => r.test(line)) || expected.map(url).includes(line),
        `${client.name} said: ${line}\n${client.describe()}`,
      );
    }
    // Once each, not once per retry.
    const what = said.map((line) => line.split(": ").slice(0, 2).join(": "));
    assert.equal(new Set(what).size, what.length, `${client.name} said one thing twice:\n${said}`);
  }
}

Deno.test("mailbox items posted before, during and after a restart of the service arrive exactly once and in order: one posted while it is down waits and goes when it answers, and the recipient's long poll recovers", async () => {
  await withWorld(async (world) => {
    const [aliceUser, bobUser] = await world.join("alice", "bob");
    const alice = await world.chat(aliceUser);
    const bob = await world.chat(bobUser);
    await alice.send("/msg bob before");
    const before = await alice.expect({ type: "queued", to: "bob" });
    // Killed before bob's long poll may have taken it: the service keeps it on disk.
    await world.stop();
    // While it is down, a message for the mailbox waits, and the user is told so.
    await alice.send("/msg bob during");
    const { id: during, message } = await heldMessage(alice, "bob");
    assert.equal(
      message,
      `Message ${during} to "bob" is not sent yet: the CA service does not answer. ` +
        `It is sent when the service answers again`,
    );
    await world.serveAgain();
    await alice.send("/msg bob after");
    await alice.expect({ type: "queued", to: "bob", id: during }, RECOVERY_MS);
    const after = await alice.expect({ type: "queued", to: "bob" }, RECOVERY_MS);
    assert.notEqual(after.id, during);
    for (const text of ["before", "during", "after"]) {
      await bob.expect({ type: "message", from: "alice", text, via: "mailbox" }, RECOVERY_MS);
    }
    for (const id of [before.id, during, after.id]) {
      await alice.expect({ type: "delivered", to: "bob", id }, RECOVERY_MS);
    }
    // Exactly once and in order: nothing more comes in the next long poll, no replay was dropped.
    await bob.expectNone(bob.mark(), { type: "message" }, 2_000);
    const texts = bob.events.filter((e) => e.type === "message").map((e) => e.text);
    assert.deepEqual(texts, ["before", "during", "after"]);
    assertCalm([bob]);
    assertCalm([alice], [`warning: ${message}`]);
  });
});

Deno.test("a mailbox post stored by the service whose answer was lost waits, is posted again before the next message, and is kept and shown once", async () => {
  await withWorld(async (world) => {
    const [aliceUser, bobUser] = await world.join("alice", "bob");
    const { chat: alice, id: first, cutter } = await world.postAnswerLost(
      aliceUser,
      "bob",
      "first",
    );
    cutter.mode = "pass";
    // The next message for bob goes after the held one, which is posted again: the same bytes,
    // which the service keeps once.
    await alice.send("/msg bob second");
    await alice.expect({ type: "queued", to: "bob", id: first });
    const second = await alice.expect({ type: "queued", to: "bob" });
    assert.equal(world.stored("bob"), 2);

    const bob = await world.chat(bobUser);
    for (const text of ["first", "second"]) {
      await bob.expect({ type: "message", from: "alice", text, via: "mailbox" }, RECOVERY_MS);
    }
    for (const id of [first, second.id]) {
      await alice.expect({ type: "delivered", to: "bob", id }, RECOVERY_MS);
    }
    await bob.expectNone(bob.mark(), { type: "message" }, 2_000);
    assert.equal(bob.count("message"), 2);
    assertCalm([bob]);
  });
});

Deno.test("a mailbox message posted while the service is down survives the chat's quit: the next start posts it once the service answers, and it arrives exactly once", async () => {
  await withWorld(async (world) => {
    const [aliceUser, bobUser] = await world.join("alice", "bob");
    const alice = await world.chat(aliceUser);
    await world.stop();
    await alice.send("/msg bob kept across a quit");
    const { id } = await heldMessage(alice, "bob");
    await alice.stop();
    // Not "was not sent … send it again": it waits on disk for the next start.
    assert.ok(
      alice.events.some((e) =>
        e.type === "warning" && /^1 mailbox item is not sent yet: /.test(String(e.message))
      ),
      alice.describe(),
    );
    assert.equal(alice.events.filter((e) => e.type === "queued").length, 0);
    assert.equal(
      [...Deno.readDirSync(join(aliceUser.home, "mailbox", "unsent"))].length,
      1,
      "one item waits in alice's home",
    );
    await world.serveAgain();
    const again = await world.chat(aliceUser);
    await again.expect({ type: "queued", to: "bob", id }, RECOVERY_MS);
    const bob = await world.chat(bobUser);
    await bob.expect({ type: "message", from: "alice", text: "kept across a quit" }, RECOVERY_MS);
    await again.expect({ type: "delivered", to: "bob", id }, RECOVERY_MS);
    await bob.expectNone(bob.mark(), { type: "message" }, 2_000);
    assert.equal(bob.count("message"), 1);
    assert.equal(again.count("queued"), 1);
    assert.deepEqual([...Deno.readDirSync(join(aliceUser.home, "mailbox", "unsent"))], []);
    assertCalm([bob]);
  });
});

Deno.test("a mailbox post stored by the service whose answer was lost, then the chat quit, is posted again by the next start and kept and shown once", async () => {
  await withWorld(async (world) => {
    const [aliceUser, bobUser] = await world.join("alice", "bob");
    const { chat: alice, id, cutter } = await world.postAnswerLost(
      aliceUser,
      "bob",
      "stored, answer lost",
    );
    await alice.stop();
    cutter.mode = "pass";
    const again = await world.chat(aliceUser);
    await again.expect({ type: "queued", to: "bob", id }, RECOVERY_MS);
    // The same bytes again: the service kept one copy.
    assert.equal(world.stored("bob"), 1);
    const bob = await world.chat(bobUser);
    await bob.expect(
      { type: "message", from: "alice", text: "stored, answer lost" },
      RECOVERY_MS,
    );
    await again.expect({ type: "delivered", to: "bob", id }, RECOVERY_MS);
    await bob.expectNone(bob.mark(), { type: "message" }, 2_000);
    assert.equal(bob.count("message"), 1);
    assertCalm([bob]);
  });
});
