import assert from "node:assert/strict";
import { join } from "node:path";
import { CertificateAuthority } from "../ca/authority.ts";
import { makeCsr, PASSPHRASE } from "../tests/_helpers.ts";
import { encodeItem, type MailboxItem, newItemId, seal } from "../lib/cms.ts";
import { pemDecode } from "../lib/pem.ts";
import { checkPeer, trustAnchor } from "../lib/tls.ts";
import { parseCertificate } from "../lib/x509.ts";
import type { MailboxRecord } from "./ca_client.ts";
import { ClientHome } from "./home.ts";
import { waitUntil } from "../tests/_harness.ts";
import { E2eError } from "../lib/errors.ts";
import { openssl } from "../lib/openssl.ts";
import {
  MailboxClient,
  type MailboxHost,
  MAX_HELD_PER_SENDER,
  MAX_ITEM_AGE_MS,
} from "./mailbox.ts";
import type { KeyState } from "./trust.ts";
import { MAX_UNSENT_ITEMS, type UnsentItem, UnsentStore } from "./mailbox_unsent.ts";

// The real openssl and real certificates; only the CA's HTTP transport is kept in memory.

const dir = await Deno.makeTempDir({ prefix: "e2e-chat-client-mailbox-test-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const ca = await CertificateAuthority.init(join(dir, "ca"), PASSPHRASE, { keyType: "ec-p256" });
const anchor = trustAnchor(ca.certificate.pem);

interface Member {
  name: string;
  cert: string;
  keyPath: string;
}

async function member(name: string): Promise<Member> {
  const { csr, key } = await makeCsr(name);
  const { certificate } = await ca.sign(csr, name);
  const keyPath = join(dir, `${name}.key`);
  await Deno.writeTextFile(keyPath, key, { mode: 0o600 });
  return { name, cert: certificate.pem, keyPath };
}

const members = new Map<string, Member>();
for (const name of ["alice", "bob", "carol"]) members.set(name, await member(name));

/** The mailbox routes of the service, in memory: items by id, for their recipient. */
class MemoryService {
  items = new Map<string, { record: MailboxRecord; der: Uint8Array }>();
  failDeletes = 0;
  /** Deletes done, whose answer is then lost (the connection dropped). */
  loseDeleteAnswers = 0;
  failPosts = 0;
  /** Posts stored, whose answer is then lost (the service killed before it answered). */
  loseAnswers = 0;
  /** Posts stored, whose answer never comes (the chat is killed while it waits for it). */
  hangAnswers = 0;
  /** The next post waits for this, then is refused as not answered (the service comes back after). */
  stall?: Promise<void>;
  /** Every post that reached the service: sender, recipient and bytes. */
  posts: Array<{ from: string; to: string; der: Uint8Array }> = [];
  /** Items waiting for one recipient, at most (ca/mailbox.ts's quota, and its refusal). */
  maxItems = Infinity;
  /** Its disk is below its floor: every post is refused (ca/api.ts, ca/disk_floor.ts). */
  diskFull = false;
  /** Item ids whose fetch fails (as a disk error at the service would). */
  failFetches = new Set<string>();
  /** A dishonest service: answers a post as stored, with this `expiresAt`, and drops it. */
  dropWith?: string;
  /** Lists asked for (looks). */
  lists = 0;

  as(user: string): MailboxHost["ca"] {
    return {
      mailboxPost: async (to, der) => {
        const stall = this.stall;
        if (stall) {
          this.stall = undefined;
          await stall;
          throw new E2eError("ERR_NETWORK", "The CA service did not answer");
        }
        if (this.failPosts > 0) {
          this.failPosts--;
          throw new E2eError("ERR_NETWORK", "Cannot reach the CA service");
        }
        if (this.diskFull) {
          throw new E2eError("ERR_QUOTA", "The CA's disk is full: 60 MiB free, at least 64 MiB");
        }
        const waiting = [...this.items.values()].filter((i) => i.record.to === to).length;
        if (waiting >= this.maxItems) {
          throw new E2eError(
            "ERR_QUOTA",
            `The mailbox of "${to}" is full: ${waiting} items wait, at most ${this.maxItems}`,
          );
        }
        this.posts.push({ from: user, to, der });
        if (this.dropWith !== undefined) {
          const postedAt = new Date().toISOString();
          const id = newItemId();
          return { id, from: user, to, size: der.length, postedAt, expiresAt: this.dropWith };
        }
        // As the service does (ca/mailbox.ts): the same bytes from the same sender, kept once.
        const same = [...this.items.values()].find((i) =>
          i.record.from === user && i.record.to === to && equalBytes(i.der, der)
        );
        const record = same?.record ?? {
          id: newItemId(),
          from: user,
          to,
          size: der.length,
          postedAt: new Date().toISOString(),
          expiresAt: new Date(Date.now() + 86_400_000).toISOString(),
        };
        this.items.set(record.id, { record, der });
        if (this.loseAnswers > 0) {
          this.loseAnswers--;
          throw new E2eError("ERR_NETWORK", "The CA service did not answer");
        }
        if (this.hangAnswers > 0) {
          this.hangAnswers--;
          return await new Promise<never>(() => {});
        }
        return record;
      },
      mailboxList: async (wait) => {
        this.lists++;
        const mine = () =>
          [...this.items.values()].filter((i) => i.record.to === user).map((i) => i.record);
        // A long poll with nothing to give waits a little (the real service: up to `wait` s).
        if ((wait ?? 0) > 0 && mine().length === 0) await new Promise((r) => setTimeout(r, 20));
        return mine();
      },
      mailboxFetch: (id) =>
        this.failFetches.has(id)
          ? Promise.reject(new E2eError("ERR_INTERNAL", "The CA service cannot read the item"))
          : Promise.resolve(this.items.get(id)!.der),
      mailboxDelete: (id) => {
        if (this.failDeletes > 0) {
          this.failDeletes--;
          return Promise.reject(new Error("the service was killed"));
        }
        this.items.delete(id);
        if (this.loseDeleteAnswers > 0) {
          this.loseDeleteAnswers--;
          return Promise.reject(new E2eError("ERR_NETWORK", "The CA service did not answer"));
        }
        return Promise.resolve();
      },
    };
  }
}

/** One member's mailbox client and what it reported. */
class Client {
  stored: MailboxItem[] = [];
  shown: MailboxItem[] = [];
  delivered: string[] = [];
  warnings: string[] = [];
  offers: Array<{ from: string; id: string; name: string; bytes: number; sha256: string }> = [];
  pins = new Map<string, string>();
  /** Every file waits for the user (as over `--auto-accept`), not only one from a new key. */
  askAll = false;
  /** Items an earlier run kept for the service, as the load handed them over; how each ended. */
  resumed: UnsentItem[] = [];
  ended: Array<[string, unknown]> = [];
  /** How held items are kept on disk (sealed when the key is encrypted). */
  unsentKey?: { key?: Uint8Array; seal?: boolean };
  /** The directory does not answer (the CA service down before the item could be sealed). */
  directoryDown = false;
  /** How long storing an item takes, ms (history flushed, a file written to downloads). */
  storeMs = 0;
  /** What storing an item throws, if it fails (a full disk, a quota's refusal). */
  storeError?: Error;
  /** The revocation list cannot be made fresh (the CA service does not answer). */
  freshDown = false;
  /** What checking a signer throws, when it fails (the CA busy, its directory's answer refused). */
  signerError?: Error;
  /** How far this client's clock is ahead of the machine's, ms (an item's tries spaced out). */
  ahead = 0;
  mailbox!: MailboxClient;
  readonly me: Member;
  readonly home: ClientHome;
  readonly service: MemoryService;

  constructor(
    name: string,
    service: MemoryService,
    home = join(dir, `${name}-${crypto.randomUUID()}`),
  ) {
    this.me = members.get(name)!;
    this.home = new ClientHome(home);
    this.service = service;
  }

  async load(): Promise<this> {
    const host: MailboxHost = {
      self: this.me.name,
      ca: this.service.as(this.me.name),
      key: () => ({ path: this.me.keyPath }),
      certificate: () => this.me.cert,
      caCertificate: ca.certificate.pem,
      directory: (name) =>
        this.directoryDown
          ? Promise.reject(new E2eError("ERR_NETWORK", "Cannot reach the CA service"))
          : Promise.resolve(parseCertificate(members.get(name)!.cert)),
      checkSigner: (pem, name) =>
        this.signerError
          ? Promise.reject(this.signerError)
          : Promise.resolve(checkPeer(pemDecode(pem, "CERTIFICATE"), anchor, { name })),
      fresh: () =>
        this.freshDown
          ? Promise.reject(new E2eError("ERR_NETWORK", "Cannot reach the CA service"))
          : Promise.resolve(),
      observe: (name, key): Promise<KeyState> => {
        const pinned = this.pins.get(name);
        if (!pinned) this.pins.set(name, key);
        return Promise.resolve(!pinned ? "new" : pinned === key ? "known" : "changed");
      },
      store: async (item) => {
        if (this.storeError) throw this.storeError;
        this.stored.push(item);
        if (this.storeMs) await new Promise((r) => setTimeout(r, this.storeMs));
        return () => this.shown.push(item);
      },
      delivered: (_to, id) => this.delivered.push(id),
      askFirst: (_from, _bytes, state) => this.askAll || state === "new",
      offer: (from, offer) => this.offers.push({ from, ...offer }),
      warning: (message) => this.warnings.push(message),
      unsentKey: this.unsentKey,
      clock: () => Date.now() + this.ahead,
      resume: (item) => {
        this.resumed.push(item);
        return (e) => this.ended.push([item.id, e]);
      },
    };
    this.mailbox = await MailboxClient.load(host, this.home);
    return this;
  }

  /** The same home, as after a restart. */
  async restart(): Promise<Client> {
    const next = new Client(this.me.name, this.service, this.home.root);
    next.pins = this.pins;
    next.unsentKey = this.unsentKey;
    next.ahead = this.ahead;
    return await next.load();
  }
}

async function world() {
  const service = new MemoryService();
  return {
    service,
    alice: await new Client("alice", service).load(),
    bob: await new Client("bob", service).load(),
  };
}

const text = (s: string) => new TextEncoder().encode(s);

/**
 * The files of `client`'s HOME/mailbox/unsent/ (none when it was never made), but the lock file
 * each running chat that holds an item has there.
 */
function unsentFiles(client: Client): string[] {
  try {
    return [...Deno.readDirSync(client.home.mailboxUnsent)].map((e) => e.name).filter((n) =>
      !/^[0-9a-f]{16}\.lock$/.test(n)
    );
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
}

/** The path of the item file numbered `n` in `client`'s HOME/mailbox/unsent/. */
function unsentFile(client: Client, n: number): string {
  const prefix = `${String(n).padStart(10, "0")}.`;
  const names = unsentFiles(client).filter((name) => name.startsWith(prefix));
  assert.equal(names.length, 1, `${prefix}: ${names}`);
  return join(client.home.mailboxUnsent, names[0]);
}

/** A send of the message `body` from `client` to bob, not awaited; its id. */
function newSend(client: Client, body: string, options: { note?: Record<string, unknown> } = {}) {
  const id = newItemId();
  const sent = client.mailbox.send("bob", "message", text(body), {
    id,
    later: () => {},
    ...options,
  });
  return { id, sent };
}

/**
 * `count` messages to bob (ids `id0`…, texts `m0`…) left in `client`'s HOME/mailbox/unsent/ as by
 * a chat that is gone: kept by a store of their own (past the default limits, if asked), let go.
 */
async function leaveUnsent(client: Client, count: number): Promise<void> {
  const { store } = await UnsentStore.open(client.home.mailboxUnsent, client.home.mailbox, {
    maxItems: Math.max(count, MAX_UNSENT_ITEMS),
  });
  for (let i = 0; i < count; i++) {
    await store.keep({
      to: "bob",
      kind: "message",
      id: `id${i}`,
      at: new Date().toISOString(),
      payload: text(`m${i}`),
    });
  }
  store.close();
}

/**
 * An envelope for `to`'s real certificate as `openssl cms -encrypt` makes it with AES-256-CBC (not
 * as seal() does), whose last byte is flipped: its padding fails, and openssl says "bad decrypt",
 * the words it has for a wrong passphrase.
 */
async function badPadding(to: Member): Promise<Uint8Array> {
  const cert = join(dir, `${to.name}-${crypto.randomUUID()}.crt`);
  await Deno.writeTextFile(cert, to.cert);
  const { stdout } = await openssl(
    ["cms", "-encrypt", "-binary", "-aes-256-cbc", "-outform", "DER", cert],
    { stdin: "anything at all" },
  );
  stdout[stdout.length - 1] ^= 1;
  return stdout;
}

/** How many items wait for bob at `service`. */
const forBob = (service: MemoryService) =>
  [...service.items.values()].filter((i) => i.record.to === "bob").length;

const read = (items: MailboxItem[]) => items.map((i) => new TextDecoder().decode(i.payload));

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

Deno.test("MailboxClient: a posted message is stored and shown once, receipted and acknowledged; the sender sees delivered", async () => {
  const { service, alice, bob } = await world();
  const id = await alice.mailbox.post("bob", "message", text("hello"));
  assert.deepEqual(alice.mailbox.pending(), [{ id, to: "bob" }]);
  await bob.mailbox.check();
  assert.equal(bob.shown.length, 1);
  assert.equal(bob.shown[0].id, id);
  assert.equal(new TextDecoder().decode(bob.shown[0].payload), "hello");
  // What remains at the service is bob's receipt for alice.
  assert.deepEqual([...service.items.values()].map((i) => i.record.to), ["alice"]);
  await alice.mailbox.check();
  assert.deepEqual(alice.delivered, [id]);
  assert.deepEqual(alice.mailbox.pending(), []);
  assert.equal(service.items.size, 0);
  assert.deepEqual([...bob.warnings, ...alice.warnings], []);
});

Deno.test("MailboxClient: a crash between storing and acknowledging never shows an item twice, and the receipt still comes", async () => {
  const { service, alice, bob } = await world();
  const id = await alice.mailbox.post("bob", "message", text("once only"));
  service.failDeletes = 1;
  await assert.rejects(bob.mailbox.check(), /killed/);
  assert.equal(bob.shown.length, 1);
  const restarted = await bob.restart();
  await restarted.mailbox.check();
  assert.deepEqual(restarted.stored, []);
  assert.deepEqual(restarted.shown, []);
  await alice.mailbox.check();
  assert.deepEqual(alice.delivered, [id]);
  assert.equal(service.items.size, 0);
});

Deno.test("MailboxClient: a replayed item (the same item under a new id at the service) is dropped with a warning", async () => {
  const { service, alice, bob } = await world();
  await alice.mailbox.post("bob", "message", text("just once"));
  const [{ der }] = [...service.items.values()];
  await bob.mailbox.check();
  await service.as("alice").mailboxPost("bob", der);
  const restarted = await bob.restart();
  await restarted.mailbox.check();
  assert.deepEqual(restarted.shown, []);
  assert.match(
    restarted.warnings[0],
    /^Dropped a replayed mailbox item from "alice" \([0-9a-f]{32}\)$/,
  );
  assert.equal(bob.shown.length, 1);
});

Deno.test("MailboxClient: items addressed to someone else, signed for another name, or too old are refused with a warning and acknowledged", async () => {
  const { service, alice, bob } = await world();
  const sealAs = (from: Member, item: Partial<MailboxItem>) =>
    seal(
      encodeItem({
        id: newItemId(),
        from: from.name,
        to: "bob",
        kind: "message",
        sent: new Date(),
        payload: text("x"),
        ...item,
      }),
      {
        key: { path: from.keyPath },
        signerCert: from.cert,
        recipientCert: members.get("bob")!.cert,
      },
    );
  const alicePost = service.as("alice");
  await alicePost.mailboxPost("bob", await sealAs(alice.me, { to: "carol" }));
  await alicePost.mailboxPost("bob", await sealAs(members.get("carol")!, { from: "alice" }));
  await alicePost.mailboxPost(
    "bob",
    await sealAs(alice.me, { sent: new Date(Date.now() - MAX_ITEM_AGE_MS - 60_000) }),
  );
  await bob.mailbox.check();
  assert.deepEqual(bob.shown, []);
  assert.equal(service.items.size, 0);
  const reasons = bob.warnings.map((w) =>
    w.replace(/^Refused a mailbox item said to be from "alice": /, "")
  );
  assert.equal(reasons.length, 3);
  assert.ok(reasons.includes('it is addressed to "carol"'), reasons.join("\n"));
  assert.ok(
    reasons.some((r) => /the certificate names "carol", not "alice"/.test(r)),
    reasons.join("\n"),
  );
  assert.ok(reasons.some((r) => /^it was sent at /.test(r)), reasons.join("\n"));
});

Deno.test("MailboxClient: an item signed with a key other than the pinned one is held back until released", async () => {
  const { alice, bob } = await world();
  bob.pins.set("alice", "0".repeat(64));
  await alice.mailbox.post("bob", "message", text("after a key change"));
  await bob.mailbox.check();
  assert.deepEqual(bob.shown, []);
  assert.match(bob.warnings[0], /^Held back a mailbox item from "alice": its key changed/);
  bob.pins.delete("alice"); // the user trusted the new key
  await bob.mailbox.release("alice");
  assert.equal(bob.shown.length, 1);
  assert.deepEqual([...Deno.readDirSync(bob.home.mailboxHeld)], []);
  await alice.mailbox.check();
  assert.equal(alice.delivered.length, 1);
});

Deno.test("MailboxClient: a file from a key first seen waits for the user as an offer, sealed, also across a restart; accepted, it is stored and receipted; declined, it is gone", async () => {
  const { service, alice, bob } = await world();
  const bytes = text("file body");
  const first = await alice.mailbox.post("bob", "file", bytes, "a.txt");
  await bob.mailbox.check();
  assert.deepEqual(bob.stored, []);
  assert.deepEqual(bob.offers.map((o) => [o.from, o.id, o.name, o.bytes]), [
    ["alice", first, "a.txt", bytes.length],
  ]);
  // It left the CA; it waits sealed in bob's home.
  assert.equal(service.items.size, 0);
  const held = [...Deno.readDirSync(bob.home.mailboxHeld)].map((e) => e.name);
  assert.deepEqual(held, [`alice.${first}.offer.cms`]);
  // A replay while it waits is no second offer.
  await alice.mailbox.post("bob", "file", bytes, "a.txt", first);
  await bob.mailbox.check();
  assert.equal(bob.offers.length, 1);

  // After a restart it is offered again, and accepted.
  const again = await bob.restart();
  again.mailbox.start();
  await waitUntil(() => again.offers.length === 1, "the offer again after a restart");
  again.mailbox.stop();
  assert.ok(again.mailbox.hasOffer("alice", first));
  assert.ok(!again.mailbox.hasOffer("carol", first));
  await again.mailbox.acceptOffer(first);
  assert.deepEqual(again.shown.map((i) => i.id), [first]);
  assert.deepEqual(again.mailbox.offers(), []);
  assert.deepEqual([...Deno.readDirSync(bob.home.mailboxHeld)], []);
  await alice.mailbox.check();
  assert.ok(alice.delivered.includes(first));
  await assert.rejects(again.mailbox.acceptOffer(first), /No file offer/);

  // Declined: gone, unread, no receipt.
  const carolBob = await new Client("bob", service).load();
  const second = await alice.mailbox.post("bob", "file", bytes, "b.txt");
  await carolBob.mailbox.check();
  assert.ok(carolBob.mailbox.hasOffer("alice", second));
  await carolBob.mailbox.declineOffer(second);
  assert.deepEqual(carolBob.shown, []);
  assert.deepEqual([...Deno.readDirSync(carolBob.home.mailboxHeld)], []);
  assert.equal(service.items.size, 0);
});

Deno.test("MailboxClient: a receipt that cannot be posted now is posted at the next look, and the item is still shown once", async () => {
  const { service, alice, bob } = await world();
  const id = await alice.mailbox.post("bob", "message", text("receipt later"));
  service.failPosts = 1; // bob's receipt
  await assert.rejects(bob.mailbox.check(), /Cannot reach the CA service/);
  assert.equal(bob.shown.length, 1);
  // The item is acknowledged at the CA all the same; bob owes the receipt, and sends it at the
  // next look (the service away is not the sender's doing: no waiting, no warning).
  assert.equal(service.items.size, 0);
  await bob.mailbox.check();
  assert.equal(bob.shown.length, 1);
  await alice.mailbox.check();
  assert.deepEqual(alice.delivered, [id]);
  assert.equal(service.items.size, 0);
});

Deno.test("MailboxClient: a sender whose own mailbox is full does not keep bob from reading what others sent him: his receipt to them is owed, told once, and sent once they have room; each item is shown once", async () => {
  const { service, alice, bob } = await world();
  const carol = await new Client("carol", service).load();
  service.maxItems = 3;
  // carol fills her own mailbox with bob's receipts, and never fetches them (or is away long).
  for (let i = 0; i < 3; i++) await carol.mailbox.post("bob", "message", text(`m${i}`));
  await bob.mailbox.check();
  // While bob is offline: carol posts one more, first in his list, then alice writes.
  const head = await carol.mailbox.post("bob", "message", text("head of the line"));
  const hello = await alice.mailbox.post("bob", "message", text("hello bob"));
  for (let i = 0; i < 3; i++) await bob.mailbox.check();
  assert.deepEqual(bob.shown.map((i) => i.id).slice(3), [head, hello]);
  assert.deepEqual(bob.warnings, [
    `Cannot send a receipt to "carol" now: The mailbox of "carol" is full: 3 items wait, at most 3. What they sent you is shown; the receipt is sent later, and until then they are not told it arrived`,
  ]);
  // Both acknowledged: nothing waits for bob, and alice hears her message arrived.
  assert.deepEqual([...service.items.values()].filter((i) => i.record.to === "bob"), []);
  await alice.mailbox.check();
  assert.deepEqual(alice.delivered, [hello]);
  // carol fetches hers; bob's next try, a minute on, sends the receipt owed, once.
  await carol.mailbox.check();
  const realNow = Date.now;
  Date.now = () => realNow() + 61_000;
  try {
    await bob.mailbox.check();
    await bob.mailbox.check();
  } finally {
    Date.now = realNow;
  }
  await carol.mailbox.check();
  assert.deepEqual(carol.delivered.slice(3), [head]);
  assert.equal(bob.shown.length, 5);
  assert.equal(bob.warnings.length, 1);
  assert.equal(service.items.size, 0);
});

Deno.test("MailboxClient: while the service's disk refuses every post, received items are shown and acknowledged; their receipts are owed across a restart and go out together once it has room", async () => {
  const { service, alice, bob } = await world();
  const ids = [
    await alice.mailbox.post("bob", "message", text("one")),
    await alice.mailbox.post("bob", "message", text("two")),
  ];
  service.diskFull = true;
  await bob.mailbox.check();
  assert.deepEqual(bob.shown.map((i) => i.id), ids);
  assert.equal(service.items.size, 0);
  assert.deepEqual(bob.warnings, [
    `Cannot send a receipt to "alice" now: The CA's disk is full: 60 MiB free, at least 64 MiB. What they sent you is shown; the receipt is sent later, and until then they are not told it arrived`,
  ]);
  service.diskFull = false;
  const posts = service.posts.length;
  const restarted = await bob.restart();
  await restarted.mailbox.check();
  assert.equal(service.posts.length, posts + 1, "one receipt for both");
  await alice.mailbox.check();
  assert.deepEqual(alice.delivered, ids);
  assert.deepEqual([...restarted.shown, ...restarted.warnings], []);
});

Deno.test("MailboxClient: an item that cannot be fetched now does not stop the others of a look: they are shown, and the look then fails with its error", async () => {
  const { service, alice, bob } = await world();
  await alice.mailbox.post("bob", "message", text("first, unreadable for now"));
  const [stuck] = service.items.keys();
  const second = await alice.mailbox.post("bob", "message", text("second"));
  service.failFetches.add(stuck);
  await assert.rejects(bob.mailbox.check(), (e) => {
    assert.ok(e instanceof E2eError);
    assert.equal(e.code, "ERR_INTERNAL");
    assert.equal(e.message, "The CA service cannot read the item");
    return true;
  });
  assert.deepEqual(bob.shown.map((i) => i.id), [second]);
  assert.deepEqual(
    [...service.items.values()].filter((i) => i.record.to === "bob").map((i) => i.record.id),
    [stuck],
  );
  service.failFetches.clear();
  await bob.mailbox.check();
  assert.equal(bob.shown.length, 2);
});

Deno.test("MailboxClient: a service that answers a post with an expiry far off (or none it can parse) and drops the item does not keep its sender from being told it was not delivered, 8 days on", async () => {
  for (const expiresAt of ["2999-01-01T00:00:00.000Z", "not a date"]) {
    const { service, alice } = await world();
    service.dropWith = expiresAt;
    const id = await alice.mailbox.post("bob", "message", text("hello"));
    const realNow = Date.now;
    try {
      Date.now = () => realNow() + MAX_ITEM_AGE_MS - 3_600_000;
      await alice.mailbox.check();
      assert.deepEqual(alice.warnings, []);
      Date.now = () => realNow() + MAX_ITEM_AGE_MS + 1_000;
      await alice.mailbox.check();
    } finally {
      Date.now = realNow;
    }
    assert.deepEqual(alice.warnings, [
      `Not delivered: the message ${id} to "bob" expired in the mailbox with no receipt`,
    ]);
    assert.deepEqual(alice.mailbox.pending(), []);
  }
});

Deno.test("MailboxClient: an item held back for a key change is stored once when the user trusts the new key twice at once", async () => {
  const { alice, bob } = await world();
  bob.storeMs = 50;
  bob.pins.set("alice", "an older key of alice's");
  const id = await alice.mailbox.post("bob", "message", text("held back"));
  await bob.mailbox.check();
  assert.equal(bob.stored.length, 0);
  bob.pins.delete("alice"); // trusted: client/chat.ts trust() pins the key, then releases
  await Promise.all([bob.mailbox.release("alice"), bob.mailbox.release("alice")]);
  assert.deepEqual(bob.shown.map((i) => i.id), [id]);
  assert.equal(bob.warnings.length, 1); // the key change, and nothing about a replay
  assert.deepEqual([...Deno.readDirSync(bob.home.mailboxHeld)], []);
});

Deno.test("MailboxClient: a file offer the service lists again while the user accepts it is stored once; the copy is dropped as a replay", async () => {
  const { service, alice, bob } = await world();
  bob.storeMs = 50;
  const id = await alice.mailbox.post("bob", "file", text("file body"), "a.txt");
  const [{ der }] = [...service.items.values()];
  await bob.mailbox.check();
  assert.deepEqual(bob.offers.map((o) => o.id), [id]);
  await service.as("alice").mailboxPost("bob", der);
  await Promise.all([bob.mailbox.acceptOffer(id), bob.mailbox.check()]);
  assert.deepEqual(bob.shown.map((i) => i.id), [id]);
  assert.deepEqual(bob.warnings, [`Dropped a replayed mailbox item from "alice" (${id})`]);
  assert.equal(service.items.size, 1); // bob's receipt for alice
});

Deno.test("MailboxClient: direct messages the service hands over in an order other than they were sent are shown with a warning that says so", async () => {
  const { service, alice, bob } = await world();
  await alice.mailbox.post("bob", "message", text("first"));
  await alice.mailbox.post("bob", "message", text("second"));
  service.items = new Map([...service.items].reverse());
  await bob.mailbox.check();
  const [second, first] = bob.shown;
  assert.deepEqual([second, first].map((i) => new TextDecoder().decode(i.payload)), [
    "second",
    "first",
  ]);
  assert.deepEqual(bob.warnings, [
    `A mailbox message from "alice" sent at ${first.sent.toISOString()} came after one they sent later, at ${second.sent.toISOString()}: the CA service may have reordered or held back their items`,
  ]);
});

Deno.test("MailboxClient: a declined file posted again by the CA is dropped as a replay, not offered again", async () => {
  const { service, alice, bob } = await world();
  const id = await alice.mailbox.post("bob", "file", text("unwanted"), "x.bin");
  const [{ der }] = [...service.items.values()];
  await bob.mailbox.check();
  await bob.mailbox.declineOffer(id);
  // The CA kept a copy and posts it again, also after a restart.
  await service.as("alice").mailboxPost("bob", der);
  const restarted = await bob.restart();
  await restarted.mailbox.check();
  assert.deepEqual(restarted.offers, []);
  assert.deepEqual(restarted.warnings, [`Dropped a replayed mailbox item from "alice" (${id})`]);
  assert.equal(bob.offers.length, 1);
  assert.equal(service.items.size, 0);
});

Deno.test("MailboxClient: files that wait for the user are capped per sender; one more is refused with a warning and acknowledged, and not written", async () => {
  const { service, alice, bob } = await world();
  bob.askAll = true;
  for (let i = 0; i <= MAX_HELD_PER_SENDER; i++) {
    await alice.mailbox.post("bob", "file", text(`file ${i}`), `f${i}.txt`);
  }
  await bob.mailbox.check();
  assert.equal(bob.offers.length, MAX_HELD_PER_SENDER);
  assert.equal([...Deno.readDirSync(bob.home.mailboxHeld)].length, MAX_HELD_PER_SENDER);
  assert.deepEqual(bob.warnings, [
    `Refused a mailbox item from "alice": ${MAX_HELD_PER_SENDER} items from them already wait for you, at most ${MAX_HELD_PER_SENDER}`,
  ]);
  assert.equal(service.items.size, 0);
  // Once the user answered one, there is room again.
  await bob.mailbox.declineOffer(bob.offers[0].id);
  await alice.mailbox.post("bob", "file", text("later"), "later.txt");
  await bob.mailbox.check();
  assert.equal(bob.offers.length, MAX_HELD_PER_SENDER + 1);
  assert.equal(bob.warnings.length, 1);
});

Deno.test("MailboxClient.send(): a post the service did not answer is held, and posted again as the same bytes when it answers, before what follows for that recipient; each is shown once", async () => {
  const { service, alice, bob } = await world();
  const ended: Array<[string, unknown]> = [];
  const later = (what: string) => (e?: unknown) => ended.push([what, e]);
  service.loseAnswers = 1; // stored, but its answer lost
  const one = await alice.mailbox.send("bob", "message", text("one"), { later: later("one") });
  assert.equal(one.held, true);
  service.failPosts = 1; // down now: "one" is tried again and refused, and "two" waits behind it
  const two = await alice.mailbox.send("bob", "message", text("two"), { later: later("two") });
  assert.equal(two.held, true);
  assert.equal(alice.mailbox.held, 2);
  // It answers again: "one" goes (the same bytes again), then "two", then "three".
  const three = await alice.mailbox.send("bob", "message", text("three"), {
    later: later("three"),
  });
  assert.equal(three.held, false);
  assert.deepEqual(ended, [["one", undefined], ["two", undefined]]);
  assert.equal(alice.mailbox.held, 0);
  assert.equal(service.posts.length, 4);
  assert.deepEqual(service.posts[1].der, service.posts[0].der);
  await bob.mailbox.check();
  assert.deepEqual(bob.shown.map((i) => new TextDecoder().decode(i.payload)), [
    "one",
    "two",
    "three",
  ]);
  assert.deepEqual(bob.warnings, []);
  await alice.mailbox.check();
  assert.deepEqual(alice.delivered, [one.id, two.id, three.id]);
});

Deno.test("MailboxClient.send(): a held item whose post arrived though its answer was lost ends posted when its receipt comes, and is not posted again", async () => {
  const { service, alice, bob } = await world();
  const ended: unknown[] = [];
  service.loseAnswers = 1;
  const { id, held } = await alice.mailbox.send("bob", "message", text("arrived"), {
    later: (e) => ended.push(e ?? "posted"),
  });
  assert.equal(held, true);
  await bob.mailbox.check();
  assert.equal(bob.shown.length, 1);
  await alice.mailbox.check();
  assert.deepEqual(ended, ["posted"]);
  assert.deepEqual(alice.delivered, [id]);
  assert.equal(alice.mailbox.held, 0);
  assert.equal(service.posts.filter((p) => p.from === "alice").length, 1);
});

Deno.test("MailboxClient.send(): an item still held when the mailbox stops stays on disk, and the next start posts it first, once, as the same bytes, and ends it through resume", async () => {
  const { service, alice, bob } = await world();
  const ended: unknown[] = [];
  service.loseAnswers = 1; // stored, but its answer lost: a next start must post the same bytes
  const { id, held } = await alice.mailbox.send("bob", "message", text("kept"), {
    later: (e) => ended.push(e),
    note: { text: "kept" },
  });
  assert.equal(held, true);
  // On disk before send() resolved: one 0600 file in a 0700 folder, named by its number and the
  // chat that holds it (with its lock file).
  const files = unsentFiles(alice);
  assert.equal(files.length, 1);
  assert.match(files[0], /^0000000001\.[0-9a-f]{16}\.json$/);
  assert.equal(Deno.statSync(alice.home.mailboxUnsent).mode! & 0o777, 0o700);
  assert.equal(Deno.statSync(join(alice.home.mailboxUnsent, files[0])).mode! & 0o777, 0o600);
  alice.mailbox.stop();
  assert.deepEqual([...Deno.readDirSync(alice.home.mailboxUnsent)].map((e) => e.name), files);
  assert.deepEqual(ended, []); // not ended: the next start sends it
  assert.deepEqual(alice.warnings, [
    "1 mailbox item is not sent yet: the CA service did not answer. " +
    "They are sent when the chat starts again and it answers",
  ]);
  // The next start holds it, first, before a newer item for bob.
  const again = await alice.restart();
  assert.deepEqual(again.resumed.map((i) => [i.id, i.to, i.kind, i.note]), [
    [id, "bob", "message", { text: "kept" }],
  ]);
  assert.equal(again.mailbox.held, 1);
  const next = await again.mailbox.send("bob", "message", text("newer"), { later: () => {} });
  assert.equal(next.held, false);
  assert.deepEqual(again.ended, [[id, undefined]]);
  assert.equal(again.mailbox.held, 0);
  assert.deepEqual(unsentFiles(alice), []);
  const mine = service.posts.filter((p) => p.from === "alice");
  assert.equal(mine.length, 3);
  assert.deepEqual(mine[1].der, mine[0].der);
  await bob.mailbox.check();
  assert.deepEqual(bob.shown.map((i) => new TextDecoder().decode(i.payload)), ["kept", "newer"]);
  // A third start has nothing left to post.
  const third = await alice.restart();
  assert.deepEqual(third.resumed, []);
});

Deno.test("MailboxClient.send(): an item is on disk before its first post, so a chat killed while the service's answer is lost posts it again at the next start, once; a posted one leaves nothing behind", async () => {
  const { service, alice, bob } = await world();
  // The normal path: kept before the post, removed once the service answered.
  const first = await alice.mailbox.send("bob", "message", text("first"), { later: () => {} });
  assert.equal(first.held, false);
  assert.deepEqual([...Deno.readDirSync(alice.home.mailboxUnsent)], []); // nor a lock file
  // Stored by the service, but its answer never comes: the chat is killed while it waits.
  service.hangAnswers = 1;
  const { id } = newSend(alice, "lost", { note: { text: "lost" } });
  await waitUntil(() => service.posts.length === 2, "the post reached the service");
  // Killed: the kernel lets go of its files (in this process, stop() does), which no running
  // chat on this home may take up before.
  alice.mailbox.stop();
  const again = await alice.restart();
  assert.deepEqual(again.resumed.map((i) => [i.id, i.to, i.note]), [
    [id, "bob", { text: "lost" }],
  ]);
  assert.deepEqual(again.resumed[0].der, service.posts[1].der); // the bytes posted, not resealed
  await again.mailbox.send("bob", "message", text("after"), { later: () => {} });
  assert.deepEqual(again.ended, [[id, undefined]]);
  assert.deepEqual(service.posts[2].der, service.posts[1].der);
  assert.deepEqual(unsentFiles(alice), []);
  await bob.mailbox.check();
  assert.deepEqual(bob.shown.map((i) => new TextDecoder().decode(i.payload)), [
    "first",
    "lost",
    "after",
  ]);
  assert.deepEqual(bob.warnings, []);
});

Deno.test("MailboxClient.send(): two sends to one recipient racing as the service comes back go out in the order they were made", async () => {
  const { service, alice, bob } = await world();
  const ended: Array<[string, unknown]> = [];
  let back!: () => void;
  // The first post waits, then gets no answer; the service answers the second at once.
  service.stall = new Promise<void>((r) => back = r);
  const one = alice.mailbox.send("bob", "message", text("one"), {
    later: (e) => ended.push(["one", e]),
  });
  await waitUntil(() => service.stall === undefined, "the first post is under way");
  const two = alice.mailbox.send("bob", "message", text("two"), {
    later: (e) => ended.push(["two", e]),
  });
  await new Promise((r) => setTimeout(r, 50));
  back();
  assert.equal((await one).held, true);
  assert.equal((await two).held, true); // behind "one", which waits
  assert.equal(alice.mailbox.held, 2);
  alice.mailbox.start(); // its poll finds the service back: the held items go, in order
  // Each item leaves the count as it is posted, and its sender hears so once it left the disk.
  await waitUntil(() => ended.length === 2, "the held items were posted");
  alice.mailbox.stop();
  assert.equal(alice.mailbox.held, 0);
  assert.deepEqual(ended, [["one", undefined], ["two", undefined]]);
  await bob.mailbox.check();
  assert.deepEqual(bob.shown.map((i) => new TextDecoder().decode(i.payload)), ["one", "two"]);
});

Deno.test("MailboxClient names the items a start leaves past the unsent limits with their own wording, not as unreadable", async () => {
  const { alice } = await world();
  await leaveUnsent(alice, MAX_UNSENT_ITEMS + 1);
  const again = await alice.restart();
  again.mailbox.start();
  again.mailbox.stop();
  assert.equal(again.resumed.length, MAX_UNSENT_ITEMS);
  const last = unsentFile(alice, MAX_UNSENT_ITEMS + 1);
  assert.deepEqual(again.warnings.filter((w) => !w.includes("not sent yet")), [
    `Not kept: too many unsent mailbox items (limit ${MAX_UNSENT_ITEMS}), left in "${last}"`,
  ]);
});

Deno.test("MailboxClient.send(): an item held before it could be sealed is sealed and posted by the next start, and with an encrypted key its file shows neither recipient, id nor text", async () => {
  const service = new MemoryService();
  const alice = new Client("alice", service);
  alice.unsentKey = { key: crypto.getRandomValues(new Uint8Array(32)), seal: true };
  await alice.load();
  const bob = await new Client("bob", service).load();
  alice.directoryDown = true;
  const { id, held } = await alice.mailbox.send("bob", "message", text("secret words"), {
    later: () => {},
    note: { text: "secret words" },
  });
  assert.equal(held, true);
  const [file] = [...Deno.readDirSync(alice.home.mailboxUnsent)].map((e) =>
    join(alice.home.mailboxUnsent, e.name)
  );
  const disk = Deno.readTextFileSync(file);
  for (const secret of ["bob", id, "secret", btoa("secret words")]) {
    assert.ok(!disk.includes(secret), `the file shows ${secret}: ${disk}`);
  }
  alice.mailbox.stop();
  const again = await alice.restart();
  assert.deepEqual(again.resumed.map((i) => [i.note, Boolean(i.payload), Boolean(i.der)]), [
    [{ text: "secret words" }, true, false],
  ]);
  await again.mailbox.send("bob", "message", text("after"), { later: () => {} });
  assert.deepEqual(again.ended, [[id, undefined]]);
  await bob.mailbox.check();
  assert.deepEqual(bob.shown.map((i) => new TextDecoder().decode(i.payload)), [
    "secret words",
    "after",
  ]);
  // Without the key, the file cannot be read: it is named, not posted.
  const keyless = new Client("alice", service, join(dir, `alice-keyless-${crypto.randomUUID()}`));
  Deno.mkdirSync(keyless.home.mailboxUnsent, { recursive: true });
  Deno.writeTextFileSync(join(keyless.home.mailboxUnsent, "0000000001.json"), disk);
  await keyless.load();
  keyless.mailbox.start();
  keyless.mailbox.stop();
  assert.equal(keyless.mailbox.held, 0);
  assert.ok(keyless.warnings.some((w) => w.startsWith("Cannot read a mailbox item that waits")));
});

Deno.test("MailboxClient.send(): a held item is not posted sealed to a key its recipient no longer has: the directory's new key is checked first", async () => {
  const { service, alice } = await world();
  members.set("dave", await member("dave"));
  const ended: unknown[] = [];
  service.failPosts = 1; // sealed to dave's key, then the service did not answer
  const { held } = await alice.mailbox.send("dave", "message", text("one"), {
    later: (e) => ended.push(e ?? "posted"),
  });
  assert.equal(held, true);
  // Meanwhile dave's key is lost (or stolen) and replaced: the directory gives another one.
  const { csr, key } = await makeCsr("dave");
  const { certificate } = await ca.sign(csr, "dave", { replace: true });
  const keyPath = join(dir, "dave-new.key");
  await Deno.writeTextFile(keyPath, key, { mode: 0o600 });
  members.set("dave", { name: "dave", cert: certificate.pem, keyPath });
  // The service answers again; the next send to dave posts what was held first.
  await alice.mailbox.send("dave", "message", text("two"), { later: () => {} }).catch(() => {});
  const dave = await new Client("dave", service).load();
  await dave.mailbox.check();
  // alice is told it was not sent, as a new send is (the key changed); nothing reaches dave.
  assert.ok(ended[0] instanceof E2eError, `held item ended ${String(ended[0])}`);
  assert.equal(ended[0].code, "ERR_FORBIDDEN");
  assert.equal(ended[0].message, 'Not sent: the key of "dave" changed');
  assert.equal(dave.shown.length, 0, dave.warnings.join(" | "));
});

Deno.test("MailboxClient: a second chat on the same home neither resumes nor removes the items the first one holds or has under way; they are the next start's once both quit", async () => {
  const { service, alice, bob } = await world();
  service.loseAnswers = 1;
  const held = await alice.mailbox.send("bob", "message", text("held"), { later: () => {} });
  assert.equal(held.held, true);
  // A web page opened on the same home meanwhile: alice's held item is not its own.
  const web = await new Client("alice", service, alice.home.root).load();
  assert.deepEqual(web.resumed, []);
  service.hangAnswers = 1; // under way: its write-ahead copy is on disk, its answer not back
  newSend(web, "under way");
  await waitUntil(() => service.posts.length === 2, "the post reached the service");
  assert.equal(unsentFiles(alice).length, 2);
  // A third one takes up neither.
  const third = await new Client("alice", service, alice.home.root).load();
  assert.deepEqual(third.resumed, []);
  third.mailbox.stop();
  web.mailbox.stop();
  alice.mailbox.stop();
  const again = await alice.restart();
  assert.equal(again.resumed.length, 2);
  await again.mailbox.send("bob", "message", text("after"), { later: () => {} });
  assert.equal(again.ended.length, 2);
  assert.deepEqual(unsentFiles(alice), []);
  await bob.mailbox.check();
  assert.deepEqual(
    bob.shown.map((i) => new TextDecoder().decode(i.payload)).sort(),
    ["after", "held", "under way"],
  );
});

Deno.test("MailboxClient: a chat running on the same home takes up the items another one left when it quit at its next look, not before, posts them once and ends them through resume", async () => {
  const { service, alice, bob } = await world();
  service.loseAnswers = 1; // stored, but its answer lost: held by alice
  const { id, held } = await alice.mailbox.send("bob", "message", text("left"), {
    later: () => {},
    note: { text: "left" },
  });
  assert.equal(held, true);
  const web = await new Client("alice", service, alice.home.root).load();
  web.mailbox.start();
  try {
    const looks = service.posts.length;
    await new Promise((r) => setTimeout(r, 200)); // looks every 20 ms: alice runs, not taken
    assert.deepEqual([web.resumed, service.posts.length], [[], looks]);
    alice.mailbox.stop(); // quits while the service answers again
    await waitUntil(() => web.ended.length === 1, "the item alice left, posted by the web page");
    assert.deepEqual(web.resumed.map((i) => [i.id, i.note]), [[id, { text: "left" }]]);
    assert.deepEqual(web.ended, [[id, undefined]]);
    assert.deepEqual(unsentFiles(alice), []);
    assert.deepEqual(web.warnings, []);
  } finally {
    web.mailbox.stop();
  }
  await bob.mailbox.check();
  assert.deepEqual(bob.shown.map((i) => new TextDecoder().decode(i.payload)), ["left"]);
  assert.deepEqual(bob.warnings, []);
});

Deno.test("MailboxClient names a mailbox item it cannot read once: it is moved into unreadable/, and the next start says nothing of it", async () => {
  const { alice } = await world();
  Deno.mkdirSync(alice.home.mailboxUnsent, { recursive: true });
  Deno.writeTextFileSync(join(alice.home.mailboxUnsent, "0000000001.json"), ""); // after a power cut
  const first = await alice.restart();
  first.mailbox.start();
  first.mailbox.stop();
  const aside = join(alice.home.mailboxUnsent, "unreadable", "0000000001.json");
  assert.deepEqual(first.warnings, [
    `Cannot read a mailbox item that waits to be sent: "${aside}"`,
  ]);
  const second = await alice.restart();
  second.mailbox.start();
  second.mailbox.stop();
  assert.deepEqual(second.warnings, []);
});

// The test below opens files until this process has none left: only where that is a few
// thousand (client/mailbox_unsent_test covers the store itself in a child under `ulimit -n 64`).
const FILE_LIMIT = Number(
  new TextDecoder().decode(
    new Deno.Command("sh", { args: ["-c", "ulimit -n"] }).outputSync().stdout,
  ).trim(),
);

Deno.test({
  name:
    "MailboxClient out of file handles at its start leaves the items it cannot open in place, warns once, and the next start resumes them all (from an attacker's review)",
  ignore: !(FILE_LIMIT <= 65536),
}, async () => {
  const { alice } = await world();
  await leaveUnsent(alice, 30);
  // This process runs out of file handles, then frees them one by one until a start works at
  // all: it has none to spare for an item (a chat holds one lock, whatever its items).
  const taken: Deno.FsFile[] = [];
  let first: Client | undefined;
  try {
    for (;;) taken.push(Deno.openSync("/dev/null"));
  } catch {
    try {
      while (!first && taken.length) {
        taken.pop()!.close();
        first = await alice.restart().catch(() => undefined);
      }
    } finally {
      for (const f of taken) f.close();
    }
  }
  first!.mailbox.start();
  first!.mailbox.stop();
  const left = 30 - first!.resumed.length;
  assert.ok(left > 1, `${left} left`);
  assert.deepEqual(first!.warnings.filter((w) => !w.includes("not sent yet")), [
    `Cannot open ${left} mailbox items that wait to be sent: Too many open files; they stay in "${alice.home.mailboxUnsent}" and are tried at the next start`,
  ]);
  assert.throws(() => Deno.lstatSync(join(alice.home.mailboxUnsent, "unreadable")));
  const second = await alice.restart();
  second.mailbox.start();
  second.mailbox.stop();
  const now = new Set(second.resumed.map((i) => i.id));
  const before = new Set(first!.resumed.map((i) => i.id));
  for (let i = 0; i < 30; i++) assert.ok(before.has(`id${i}`) || now.has(`id${i}`), `id${i}`);
  assert.deepEqual(second.warnings.filter((w) => !w.includes("not sent yet")), []);
});

Deno.test("MailboxClient: an item from another member that does not decrypt with bob's key (\"bad decrypt\", a broken AES-CBC envelope) is refused with a warning and acknowledged, not taken for bob's wrong passphrase; what follows it is shown (from an attacker's review)", async () => {
  const { service, alice, bob } = await world();
  await service.as("carol").mailboxPost("bob", await badPadding(members.get("bob")!));
  await alice.mailbox.post("bob", "message", text("from alice"));
  for (let look = 0; look < 3; look++) await bob.mailbox.check();
  assert.deepEqual(read(bob.shown), ["from alice"]);
  assert.deepEqual(bob.warnings, [
    `Refused a mailbox item said to be from "carol": The mailbox item does not open with your key (altered, or not for you)`,
  ]);
  assert.deepEqual([...service.items.values()].filter((i) => i.record.to === "bob"), []);
});

Deno.test("MailboxClient: a receipt owed when the answer to the item's acknowledgement was lost is still sent, after a restart, once the service has room (from an attacker's review)", async () => {
  const { service, alice, bob } = await world();
  const id = await alice.mailbox.post("bob", "message", text("hello"));
  service.diskFull = true; // bob's receipt is owed
  service.loseDeleteAnswers = 1; // the service deletes bob's copy, and its answer is lost
  await assert.rejects(bob.mailbox.check(), /did not answer/);
  assert.deepEqual(bob.shown.map((i) => i.id), [id]);
  assert.deepEqual([...service.items.values()], []);
  service.diskFull = false;
  bob.mailbox.stop();
  const again = await bob.restart();
  await again.mailbox.check();
  await alice.mailbox.check();
  assert.deepEqual(alice.delivered, [id]);
  assert.deepEqual(again.shown, []);
});

Deno.test("MailboxClient: an item whose storing fails on a disk error stays at the CA and is shown at a later look, once; one a quota refuses is refused with a warning and acknowledged", async () => {
  const { service, alice, bob } = await world();
  const id = await alice.mailbox.post("bob", "message", text("kept at the CA"));
  bob.storeError = new E2eError("ERR_FILE", "Cannot write the history: No space left on device");
  await assert.rejects(bob.mailbox.check(), /No space left on device/);
  // Told once for the item, not at each look that fails alike.
  await assert.rejects(bob.mailbox.check(), /No space left on device/);
  assert.equal(bob.shown.length, 0);
  assert.deepEqual([...service.items.values()].map((i) => i.record.to), ["bob"]);
  assert.deepEqual(bob.warnings.splice(0), [
    `Cannot write the history: No space left on device. The mailbox message from "alice" is not ` +
    `shown yet: it stays at the CA service and is tried again until it can be stored`,
  ]);
  bob.storeError = undefined;
  await bob.mailbox.check();
  assert.deepEqual(bob.shown.map((i) => i.id), [id]);
  await alice.mailbox.check();
  assert.deepEqual(alice.delivered, [id]);
  await alice.mailbox.post("bob", "file", text("too big"), "big.bin");
  bob.storeError = new E2eError("ERR_FORBIDDEN", "the downloads quota is used up");
  bob.pins.set("alice", bob.pins.get("alice")!); // a key known before: no offer
  await bob.mailbox.check();
  assert.deepEqual(bob.warnings, [
    `Refused a mailbox item from "alice": the downloads quota is used up`,
  ]);
  assert.deepEqual([...service.items.values()].filter((i) => i.record.to === "bob"), []);
});

Deno.test("MailboxClient: a file offer whose accepting fails for now (the CA service does not answer) still waits for the user, and is taken once accepted again", async () => {
  const { alice, bob } = await world();
  const id = await alice.mailbox.post("bob", "file", text("file body"), "a.txt");
  await bob.mailbox.check();
  assert.deepEqual(bob.offers.map((o) => o.id), [id]);
  bob.freshDown = true;
  await assert.rejects(bob.mailbox.acceptOffer(id), /Cannot reach the CA service/);
  assert.deepEqual(bob.mailbox.offers().map((o) => o.id), [id]);
  bob.freshDown = false;
  await bob.mailbox.acceptOffer(id);
  assert.deepEqual(bob.shown.map((i) => i.id), [id]);
  assert.deepEqual(bob.mailbox.offers(), []);
});

Deno.test("MailboxClient: an item of ours the service cannot read does not hold back what we send: the poll still posts the held items", async () => {
  const { service, alice, bob } = await world();
  const carol = await new Client("carol", service).load();
  await carol.mailbox.post("alice", "message", text("unreadable for now"));
  const [stuck] = service.items.keys();
  service.failFetches.add(stuck);
  service.failPosts = 1;
  const ended: unknown[] = [];
  const sent = await alice.mailbox.send("bob", "message", text("held"), {
    later: (e) => ended.push(e),
  });
  assert.equal(sent.held, true);
  alice.mailbox.start();
  try {
    await waitUntil(() => ended.length === 1, "the held item was posted");
  } finally {
    alice.mailbox.stop();
  }
  assert.deepEqual(ended, [undefined]);
  await bob.mailbox.check();
  assert.deepEqual(read(bob.shown), ["held"]);
  assert.match(alice.warnings[0], /^Cannot check the mailbox: The CA service cannot read the item/);
});

// A dishonest CA could make the reorder warning go away by failing the first fetch of the earlier
// item once, were a retried item never compared (from an attacker's review).
Deno.test("MailboxClient: an item whose fetch the service failed once, handed over after a later one of its sender, is shown with a warning that it was held back (from an attacker's review)", async () => {
  const { service, alice, bob } = await world();
  await alice.mailbox.post("bob", "message", text("first"));
  const [held] = service.items.keys();
  await alice.mailbox.post("bob", "message", text("second"));
  service.failFetches.add(held); // the service says it cannot read it, once
  await assert.rejects(bob.mailbox.check(), /cannot read the item/);
  service.failFetches.clear();
  await bob.mailbox.check();
  const [second, first] = bob.shown;
  assert.deepEqual(read([second, first]), ["second", "first"]);
  assert.deepEqual(bob.warnings, [
    `A mailbox message from "alice" sent at ${first.sent.toISOString()} was held back: it ` +
    `failed at an earlier look (said then), and one they sent later, at ` +
    `${second.sent.toISOString()}, came first: the CA service may have reordered or held back ` +
    `their items`,
  ]);
});

// A failure of our own machine while opening an item (openssl killed by the OOM killer, the temp
// folder gone or full) is no fault of the item's: it stays at the CA, not refused and deleted as
// one that "does not open with your key" (from an attacker's review).
Deno.test("MailboxClient: an item whose opening fails on our side (openssl killed, no temp folder) stays at the CA, the look failing with the cause, and is shown at the next look (from an attacker's review)", async () => {
  const dir = await Deno.makeTempDir();
  const wrapper = join(dir, "openssl");
  await Deno.writeTextFile(
    wrapper,
    `#!/bin/sh\ncase "$*" in *-decrypt*) kill -9 $$;; esac\nexec openssl "$@"\n`,
    { mode: 0o755 },
  );
  const stays = `; the mailbox item said to be from "alice" stays at the CA and is tried again`;
  const lost: string[] = [];
  try {
    for (
      const [what, name, value, code, message] of [
        [
          "openssl killed",
          "E2E_CHAT_OPENSSL",
          wrapper,
          "ERR_OPENSSL",
          `Cannot decrypt the mailbox item here: openssl cms was killed (SIGKILL)${stays}`,
        ],
        [
          "no temp folder",
          "TMPDIR",
          join(dir, "gone"),
          "ERR_FILE",
          `Cannot make a temporary folder for openssl: No such file or directory (os error 2): ` +
          `tmpdir${stays}`,
        ],
      ]
    ) {
      const { service, alice, bob } = await world();
      await alice.mailbox.post("bob", "message", text(`hello (${what})`));
      const before = Deno.env.get(name);
      Deno.env.set(name, value);
      try {
        await assert.rejects(bob.mailbox.check(), (e) => {
          assert.ok(e instanceof E2eError, what);
          assert.deepEqual([e.code, e.message], [code, message], what);
          return true;
        });
      } finally {
        if (before === undefined) Deno.env.delete(name);
        else Deno.env.set(name, before);
      }
      if (service.items.size !== 1) {
        lost.push(`${what}: the item was deleted at the CA; ${bob.warnings}`);
        continue;
      }
      // openssl's failure is told, once, with when it is tried again; another isn't put off.
      assert.deepEqual(
        bob.warnings,
        code === "ERR_OPENSSL"
          ? [`${message} in 1 min, then less often (at most hourly) while the CA service keeps it`]
          : [],
        what,
      );
      bob.ahead += 60_000;
      await bob.mailbox.check();
      assert.deepEqual(read(bob.shown), [`hello (${what})`], what);
      assert.equal(forBob(service), 0, what);
    }
    assert.deepEqual(lost, []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// An item that makes openssl crash (or hang until its timeout) is no verdict, so it stays at the
// CA: it was opened again at every look until the CA expired it (7 days), each look paying for it
// (up to openssl's 2-minute timeout), and the poll said so again after each look that went well.
Deno.test("MailboxClient: an item openssl fails on is tried again after 1 min, then 2, 4… (at most hourly, across a restart), not at every look, the user told once; it is shown once openssl opens it", async () => {
  const dir = await Deno.makeTempDir();
  const wrapper = join(dir, "openssl");
  const runs = join(dir, "decrypts");
  await Deno.writeTextFile(
    wrapper,
    `#!/bin/sh\ncase "$*" in *-decrypt*) echo x >> "${runs}"; kill -9 $$;; esac\n` +
      `exec openssl "$@"\n`,
    { mode: 0o755 },
  );
  const decrypts = () => Deno.readTextFile(runs).then((t) => t.length / 2, () => 0);
  const before = Deno.env.get("E2E_CHAT_OPENSSL");
  Deno.env.set("E2E_CHAT_OPENSSL", wrapper);
  try {
    const w = await world();
    const { service, alice } = w;
    let bob = w.bob;
    await alice.mailbox.post("bob", "message", text("opened at last"));
    await assert.rejects(bob.mailbox.check(), /openssl cms was killed/);
    assert.equal(await decrypts(), 1);
    // Due again after 1 min, then 2, then 4: looks before that leave it be.
    for (const [wait, n] of [[60_000, 2], [120_000, 3], [240_000, 4]]) {
      await bob.mailbox.check();
      bob.ahead += wait - 1_000;
      await bob.mailbox.check();
      assert.equal(await decrypts(), n - 1, `not tried before ${wait / 60_000} min`);
      bob.ahead += 1_000;
      await assert.rejects(bob.mailbox.check(), /openssl cms was killed/);
      assert.equal(await decrypts(), n, `tried after ${wait / 60_000} min`);
    }
    assert.equal(bob.warnings.length, 1, bob.warnings.join("\n"));
    assert.match(bob.warnings[0], /in 1 min, then less often \(at most hourly\)/);
    assert.equal(forBob(service), 1, "still at the CA");
    // A restart keeps the spacing (8 min now), and the user is not told again.
    bob = await bob.restart();
    bob.ahead += 7 * 60_000;
    await bob.mailbox.check();
    assert.equal(await decrypts(), 4);
    assert.deepEqual(bob.warnings, []);
    // openssl works again: once due, the item is shown, once, and its spacing forgotten.
    Deno.env.delete("E2E_CHAT_OPENSSL");
    bob.ahead += 3_600_000;
    await bob.mailbox.check();
    await bob.mailbox.check();
    assert.deepEqual(read(bob.shown), ["opened at last"]);
    assert.equal(forBob(service), 0);
    assert.deepEqual(JSON.parse(await Deno.readTextFile(bob.home.mailboxRetry)), { items: {} });
  } finally {
    if (before === undefined) Deno.env.delete("E2E_CHAT_OPENSSL");
    else Deno.env.set("E2E_CHAT_OPENSSL", before);
    await Deno.remove(dir, { recursive: true });
  }
});

// A clock set a month ahead (a dead RTC battery, a bad NTP answer) when openssl failed on an item,
// then put right: the item's next try, kept in HOME/mailbox/retry.json, is a month away, past the
// 7 days the CA keeps it, where the spacing promises at most an hour.
Deno.test("MailboxClient: an item put off while the clock was a month ahead is tried again within an hour of the clock being put right, not hidden until the CA drops it", async () => {
  const dir = await Deno.makeTempDir();
  const wrapper = join(dir, "openssl");
  const runs = join(dir, "decrypts");
  await Deno.writeTextFile(
    wrapper,
    `#!/bin/sh\ncase "$*" in *-decrypt*) echo x >> "${runs}"; kill -9 $$;; esac\n` +
      `exec openssl "$@"\n`,
    { mode: 0o755 },
  );
  const decrypts = () => Deno.readTextFile(runs).then((t) => t.length / 2, () => 0);
  const before = Deno.env.get("E2E_CHAT_OPENSSL");
  Deno.env.set("E2E_CHAT_OPENSSL", wrapper);
  try {
    const w = await world();
    const { service, alice } = w;
    let bob = w.bob;
    await alice.mailbox.post("bob", "message", text("a month late"));
    bob.ahead = 30 * 86_400_000;
    await assert.rejects(bob.mailbox.check(), /openssl cms was killed/);
    assert.equal(await decrypts(), 1);
    // The clock put right, the chat started again; openssl works again.
    Deno.env.delete("E2E_CHAT_OPENSSL");
    bob.ahead = 0;
    bob = await bob.restart();
    bob.ahead = 61 * 60_000;
    await bob.mailbox.check();
    assert.deepEqual(read(bob.shown), ["a month late"], "tried again within the hourly bound");
    assert.equal(forBob(service), 0);
  } finally {
    if (before === undefined) Deno.env.delete("E2E_CHAT_OPENSSL");
    else Deno.env.set("E2E_CHAT_OPENSSL", before);
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * Runs `fn` with `wrapper`, an openssl that is killed whenever it decrypts, and puts
 * E2E_CHAT_OPENSSL back as it was afterwards (`fn` sets it when it wants the wrapper used).
 */
async function withOpensslKilledAtDecrypt(fn: (wrapper: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  const wrapper = join(dir, "openssl");
  await Deno.writeTextFile(
    wrapper,
    `#!/bin/sh\ncase "$*" in *-decrypt*) kill -9 $$;; esac\nexec openssl "$@"\n`,
    { mode: 0o755 },
  );
  const before = Deno.env.get("E2E_CHAT_OPENSSL");
  try {
    await fn(wrapper);
  } finally {
    if (before === undefined) Deno.env.delete("E2E_CHAT_OPENSSL");
    else Deno.env.set("E2E_CHAT_OPENSSL", before);
    await Deno.remove(dir, { recursive: true });
  }
}

// The service answers a long poll at once while an item is listed: one put off must not have the
// poll ask again and again until it is due.
Deno.test("MailboxClient: the poll does not spin while an item openssl failed on is put off: it looks again within a long poll's time", async () => {
  await withOpensslKilledAtDecrypt(async (wrapper) => {
    const { service, alice, bob } = await world();
    await alice.mailbox.post("bob", "message", text("put off"));
    Deno.env.set("E2E_CHAT_OPENSSL", wrapper);
    bob.mailbox.start();
    try {
      await waitUntil(() => bob.warnings.length === 1, "the item put off");
      Deno.env.delete("E2E_CHAT_OPENSSL");
      // The failed look's pause (2 s), then one look, which puts off to a long poll's end.
      await new Promise((r) => setTimeout(r, 3_000));
      const lists = service.lists;
      await new Promise((r) => setTimeout(r, 1_500));
      assert.ok(service.lists - lists <= 1, `${service.lists - lists} looks in 1.5 s`);
      assert.deepEqual(read(bob.shown), []);
    } finally {
      bob.mailbox.stop();
    }
    assert.equal(forBob(service), 1);
  });
});

// The pause that keeps the poll from spinning while an item is put off also keeps it from looking
// at all: for the 7 days the CA keeps that item, every other message comes up to 25 s late (before
// the pause, a look came every 2 s or so).
Deno.test("MailboxClient: while an item openssl failed on is put off, a new message still comes within a few seconds, not a long poll's 25 s later", async () => {
  await withOpensslKilledAtDecrypt(async (wrapper) => {
    const { alice, bob } = await world();
    await alice.mailbox.post("bob", "message", text("put off"));
    Deno.env.set("E2E_CHAT_OPENSSL", wrapper);
    bob.mailbox.start();
    try {
      await waitUntil(() => bob.warnings.length === 1, "the item put off");
      Deno.env.delete("E2E_CHAT_OPENSSL");
      // The failed look's pause (2 s), then the look that puts the poll to sleep.
      await new Promise((r) => setTimeout(r, 3_500));
      await alice.mailbox.post("bob", "message", text("prompt"));
      const posted = Date.now();
      await waitUntil(() => read(bob.shown).includes("prompt"), "the new message", 24_000);
      const late = Date.now() - posted;
      assert.ok(late < 8_000, `the new message came ${late} ms after it was posted`);
    } finally {
      bob.mailbox.stop();
    }
  });
});

Deno.test("MailboxClient: an item whose signer cannot be checked now (the CA busy or failing) stays at the CA and is shown at the next look; one whose signer the CA says is no member is refused", async () => {
  const { service, alice, bob } = await world();
  await alice.mailbox.post("bob", "message", text("hello"));
  for (
    const [code, message] of [["ERR_INTERNAL", "The CA refused: disk error"], [
      "ERR_RATE_LIMITED",
      "The CA refused: too many requests",
    ], ["ERR_LOG_INVALID", "The CA sent no log entries"]]
  ) {
    bob.signerError = new E2eError(code as "ERR_INTERNAL", message);
    await assert.rejects(bob.mailbox.check(), (e) => {
      assert.ok(e instanceof E2eError);
      assert.equal(e.code, code);
      assert.equal(
        e.message,
        `${message}; the mailbox item said to be from "alice" stays at the CA and is tried again`,
      );
      return true;
    });
    assert.equal(forBob(service), 1, code);
  }
  bob.signerError = undefined;
  await bob.mailbox.check();
  assert.deepEqual(read(bob.shown), ["hello"]);
  assert.deepEqual(bob.warnings, []);
  await alice.mailbox.post("bob", "message", text("from a name gone"));
  bob.signerError = new E2eError(
    "ERR_NOT_FOUND",
    'The CA refused: No valid certificate for "alice" in the directory',
  );
  await bob.mailbox.check();
  assert.deepEqual(read(bob.shown), ["hello"]);
  assert.equal(forBob(service), 0);
  assert.deepEqual(bob.warnings, [
    `Refused a mailbox item said to be from "alice": its signer's certificate is refused: ` +
    `The CA refused: No valid certificate for "alice" in the directory`,
  ]);
});

// An item dated ahead (a sender whose clock ran 12 hours fast for a while, or a hostile member: up
// to a day ahead is taken) made every honest item of theirs for the next 12 hours come with a
// warning that the CA service may have reordered or held back their items: a false alarm against
// the service, which did nothing (from an attacker's review).
Deno.test("MailboxClient: an item whose seen id cannot be written is neither shown nor acknowledged, and a later look of the same run stores and shows it, then acknowledges it (from an attacker's review)", async () => {
  const { service, alice, bob } = await world();
  const forBob = () => [...service.items.values()].filter((i) => i.record.to === "bob").length;
  await alice.mailbox.post("bob", "message", text("shown before it goes"));
  // seen.json cannot be replaced: a folder where it goes.
  await Deno.mkdir(bob.home.mailboxSeen, { recursive: true });
  await assert.rejects(bob.mailbox.check());
  assert.equal(bob.stored.length, 1);
  assert.deepEqual(bob.shown, []);
  assert.equal(forBob(), 1, "acknowledged though not shown");
  // Still not writable: the next look fails alike, and shows nothing.
  await assert.rejects(bob.mailbox.check());
  assert.deepEqual(bob.shown, []);
  assert.equal(forBob(), 1);
  await Deno.remove(bob.home.mailboxSeen);
  await bob.mailbox.check();
  assert.deepEqual(read(bob.shown), ["shown before it goes"]);
  assert.equal(forBob(), 0);
  assert.equal(bob.stored.length, 3);
});

Deno.test("MailboxClient: one item from a sender whose clock was ahead comes with a warning about their clock, and does not have their next items blamed on the CA service as reordered; a reorder of those is still told (from an attacker's review)", async () => {
  const { service, alice, bob } = await world();
  const sent = new Date(Date.now() + 12 * 3_600_000);
  const ahead = await seal(
    encodeItem({
      id: newItemId(),
      from: "alice",
      to: "bob",
      kind: "message",
      sent,
      payload: text("clock ahead"),
    }),
    {
      key: { path: alice.me.keyPath },
      signerCert: alice.me.cert,
      recipientCert: members.get("bob")!.cert,
    },
  );
  await service.as("alice").mailboxPost("bob", ahead);
  await bob.mailbox.check();
  assert.deepEqual(bob.warnings, [
    `A mailbox message from "alice" is dated ${sent.toISOString()}, 12 h ahead of this ` +
    `machine's clock: their clock (or this one) is off`,
  ]);
  await alice.mailbox.post("bob", "message", text("clock right again"));
  await alice.mailbox.post("bob", "message", text("and another"));
  await bob.mailbox.check();
  await alice.mailbox.post("bob", "message", text("third"));
  await alice.mailbox.post("bob", "message", text("fourth"));
  service.items = new Map([...service.items].reverse());
  await bob.mailbox.check();
  assert.deepEqual(read(bob.shown), [
    "clock ahead",
    "clock right again",
    "and another",
    "fourth",
    "third",
  ]);
  const [third, fourth] = [bob.shown[4], bob.shown[3]];
  assert.deepEqual(bob.warnings.slice(1), [
    `A mailbox message from "alice" sent at ${third.sent.toISOString()} came after one they ` +
    `sent later, at ${fourth.sent.toISOString()}: the CA service may have reordered or held ` +
    `back their items`,
  ]);
});

Deno.test("MailboxClient: two items of a sender whose clock is 5 minutes ahead (no clock warning) that the service hands over in the reverse order are told as reordered (from an attacker's review)", async () => {
  const { service, alice, bob } = await world();
  const item = async (payload: string, sent: Date) =>
    await seal(
      encodeItem({
        id: newItemId(),
        from: "alice",
        to: "bob",
        kind: "message",
        sent,
        payload: text(payload),
      }),
      {
        key: { path: alice.me.keyPath },
        signerCert: alice.me.cert,
        recipientCert: members.get("bob")!.cert,
      },
    );
  const firstSent = new Date(Date.now() + 5 * 60_000);
  const secondSent = new Date(firstSent.getTime() + 30_000);
  const first = await item("first", firstSent);
  const second = await item("second", secondSent);
  await service.as("alice").mailboxPost("bob", second);
  await service.as("alice").mailboxPost("bob", first);
  await bob.mailbox.check();
  assert.deepEqual(read(bob.shown), ["second", "first"]);
  assert.deepEqual(bob.warnings, [
    `A mailbox message from "alice" sent at ${firstSent.toISOString()} came after one they ` +
    `sent later, at ${secondSent.toISOString()}: the CA service may have reordered or held ` +
    `back their items`,
  ]);
});
