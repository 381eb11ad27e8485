import assert from "node:assert/strict";
import { join } from "node:path";
import { e2eError, withTempDir } from "../lib/_test_util.ts";
import { CaPaths } from "./home.ts";
import { Mailbox, RECENTLY_MS } from "./mailbox.ts";

const item = (n: number, fill = 1) => new Uint8Array(n).fill(fill);

Deno.test("Mailbox keeps an item for its recipient only, in 0600 files in 0700 folders, until it is removed", async () => {
  await withTempDir(async (home) => {
    const paths = new CaPaths(home);
    const mailbox = await Mailbox.open(paths);
    try {
      const record = await mailbox.post("alice", "bob", item(10));
      assert.match(record.id, /^[0-9a-f]{32}$/);
      assert.deepEqual(
        { from: record.from, to: record.to, size: record.size },
        { from: "alice", to: "bob", size: 10 },
      );
      assert.deepEqual(mailbox.list("bob"), [record]);
      assert.deepEqual(mailbox.list("carol"), []);
      assert.deepEqual(await mailbox.read("bob", record.id), item(10));
      await assert.rejects(
        mailbox.read("carol", record.id),
        e2eError("ERR_NOT_FOUND", `No mailbox item "${record.id}" for you`),
      );
      assert.equal((await Deno.stat(paths.mailbox)).mode! & 0o777, 0o700);
      assert.equal((await Deno.stat(paths.mailboxOf("bob"))).mode! & 0o777, 0o700);
      for (const ext of ["cms", "json"]) {
        const file = join(paths.mailboxOf("bob"), `${record.id}.${ext}`);
        assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
      }
      await mailbox.remove("bob", record.id);
      assert.deepEqual(mailbox.list("bob"), []);
      assert.deepEqual([...Deno.readDirSync(paths.mailboxOf("bob"))], []);
      await assert.rejects(
        mailbox.remove("bob", record.id),
        e2eError("ERR_NOT_FOUND", /No mailbox item/),
      );
    } finally {
      mailbox.close();
    }
  });
});

Deno.test("Mailbox reopened finds every posted item and removes what a crash left half-written", async () => {
  await withTempDir(async (home) => {
    const paths = new CaPaths(home);
    const first = await Mailbox.open(paths);
    const a = await first.post("alice", "bob", item(5));
    first.close();
    const dir = paths.mailboxOf("bob");
    const orphan = join(dir, `${"0".repeat(32)}.cms`);
    const tmp = join(dir, ".leftover.tmp");
    await Deno.writeFile(orphan, item(3));
    await Deno.writeFile(tmp, item(3));
    const second = await Mailbox.open(paths);
    try {
      assert.deepEqual(second.list("bob"), [a]);
      assert.deepEqual(await second.read("bob", a.id), item(5));
      const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
      assert.deepEqual(left, [`${a.id}.cms`, `${a.id}.json`]);
    } finally {
      second.close();
    }
  });
});

Deno.test("Mailbox.post() refuses an item over the cap, and items over the recipient's quota of items or bytes", async () => {
  await withTempDir(async (home) => {
    const mailbox = await Mailbox.open(new CaPaths(home), {
      maxItemBytes: 100,
      maxItems: 2,
      maxBytes: 150,
    });
    try {
      await assert.rejects(
        mailbox.post("alice", "bob", item(101)),
        e2eError("ERR_TOO_LARGE", "The mailbox item is 101 bytes; the mailbox takes at most 100"),
      );
      await mailbox.post("alice", "bob", item(100));
      await assert.rejects(
        mailbox.post("alice", "bob", item(51)),
        e2eError(
          "ERR_QUOTA",
          'The mailbox of "bob" is full: 100 bytes wait, and 51 more would exceed 150',
        ),
      );
      await mailbox.post("alice", "bob", item(50));
      await assert.rejects(
        mailbox.post("alice", "bob", item(1)),
        e2eError("ERR_QUOTA", 'The mailbox of "bob" is full: 2 items wait, at most 2'),
      );
      // Another recipient has its own quota.
      await mailbox.post("alice", "carol", item(100));
    } finally {
      mailbox.close();
    }
  });
});

Deno.test("Mailbox deletes an item once its time to live has passed, and never hands it out", async () => {
  await withTempDir(async (home) => {
    let now = Date.parse("2026-01-01T00:00:00Z");
    const paths = new CaPaths(home);
    const mailbox = await Mailbox.open(paths, { ttlMs: 1_000, now: () => now });
    try {
      const record = await mailbox.post("alice", "bob", item(4));
      assert.equal(record.expiresAt, "2026-01-01T00:00:01.000Z");
      now += 1_000;
      assert.deepEqual(mailbox.list("bob"), []);
      await assert.rejects(
        mailbox.read("bob", record.id),
        e2eError("ERR_NOT_FOUND", /No mailbox item/),
      );
      await mailbox.sweep();
      assert.deepEqual([...Deno.readDirSync(paths.mailboxOf("bob"))], []);
    } finally {
      mailbox.close();
    }
  });
});

Deno.test("Mailbox.wait() returns as soon as an item arrives for that recipient", async () => {
  await withTempDir(async (home) => {
    const mailbox = await Mailbox.open(new CaPaths(home));
    try {
      const waiting = mailbox.wait("bob", 30_000);
      await mailbox.post("alice", "carol", item(1));
      const record = await mailbox.post("alice", "bob", item(2));
      assert.deepEqual(await waiting, [record]);
      const stop = new AbortController();
      const aborted = mailbox.wait("dave", 30_000, stop.signal);
      stop.abort();
      assert.deepEqual(await aborted, []);
    } finally {
      mailbox.close();
    }
  });
});

Deno.test("Mailbox.post() holds to the recipient's quota when posts come at once", async () => {
  await withTempDir(async (home) => {
    const mailbox = await Mailbox.open(new CaPaths(home), { maxItems: 3, maxBytes: 1000 });
    try {
      const posts = await Promise.allSettled(
        // Each its own bytes: the same bytes posted again are one item (the next test).
        Array.from({ length: 8 }, (_, i) => mailbox.post("alice", "bob", item(100, i))),
      );
      assert.equal(posts.filter((p) => p.status === "fulfilled").length, 3);
      for (const p of posts) {
        if (p.status === "rejected") {
          assert.ok(e2eError("ERR_QUOTA", /^The mailbox of "bob" is full: 3 items wait/)(p.reason));
        }
      }
      assert.equal(mailbox.list("bob").length, 3);
      const big = await Promise.allSettled(
        Array.from({ length: 4 }, (_, i) => mailbox.post("alice", "carol", item(400, i))),
      );
      assert.equal(big.filter((p) => p.status === "fulfilled").length, 2);
      assert.equal(mailbox.list("carol").reduce((n, r) => n + r.size, 0), 800);
    } finally {
      mailbox.close();
    }
  });
});

Deno.test("Mailbox.post() of the same bytes again by the same sender (a retry) gets the first record back, not a second item, also at once, after a reopen, and lately after the recipient fetched it", async () => {
  await withTempDir(async (home) => {
    const paths = new CaPaths(home);
    let now = Date.parse("2026-12-01T00:00:00Z");
    const first = await Mailbox.open(paths, { now: () => now });
    const record = await first.post("alice", "bob", item(10, 7));
    assert.match(record.sha256 ?? "", /^[0-9a-f]{64}$/);
    first.close();
    const mailbox = await Mailbox.open(paths, { now: () => now });
    try {
      // Kept (and reopened): the same record, one item.
      assert.deepEqual(await mailbox.post("alice", "bob", item(10, 7)), record);
      // Posts at once: one is stored, and all get its record.
      const atOnce = await Promise.all(
        Array.from({ length: 3 }, () => mailbox.post("alice", "carol", item(10, 7))),
      );
      assert.equal(new Set(atOnce.map((r) => r.id)).size, 1);
      assert.equal(mailbox.list("carol").length, 1);
      // Other bytes, another sender or another recipient: items of their own.
      assert.notEqual((await mailbox.post("alice", "bob", item(10, 8))).id, record.id);
      assert.notEqual((await mailbox.post("carol", "bob", item(10, 7))).id, record.id);
      assert.equal(mailbox.list("bob").length, 3);
      // Fetched: a retry within RECENTLY_MS still gets its record, and nothing is stored again.
      await mailbox.remove("bob", record.id);
      now += RECENTLY_MS - 1_000;
      assert.deepEqual(await mailbox.post("alice", "bob", item(10, 7)), record);
      assert.equal(mailbox.list("bob").length, 2);
      // After it, the bytes are an item again (the recipient drops its id as seen).
      now += 2_000;
      assert.notEqual((await mailbox.post("alice", "bob", item(10, 7))).id, record.id);
      assert.equal(mailbox.list("bob").length, 3);
    } finally {
      mailbox.close();
    }
  });
});

Deno.test("Mailbox.post() of a retry still gets its record after two colluding members (one posts, the other fetches) go past the bound of what the service remembers: they push out only their own", async () => {
  await withTempDir(async (home) => {
    const mailbox = await Mailbox.open(new CaPaths(home), { maxRecent: 4 });
    try {
      const record = await mailbox.post("alice", "bob", item(10, 7));
      await mailbox.remove("bob", record.id); // bob fetched it; alice's answer was lost
      // mallory and eve: ten items fetched at once, more than the service remembers.
      const flood = [];
      for (let i = 0; i < 10; i++) {
        const r = await mailbox.post("mallory", "eve", item(10, 100 + i));
        await mailbox.remove("eve", r.id);
        flood.push(r);
      }
      // alice's retry: the same record, nothing stored twice.
      assert.deepEqual(await mailbox.post("alice", "bob", item(10, 7)), record);
      assert.deepEqual(mailbox.list("bob"), []);
      // The bound held: mallory's oldest went, the newest are remembered.
      assert.notEqual((await mailbox.post("mallory", "eve", item(10, 100))).id, flood[0].id);
      assert.deepEqual(await mailbox.post("mallory", "eve", item(10, 109)), flood[9]);
    } finally {
      mailbox.close();
    }
  });
});

Deno.test("Mailbox.post() holds to the total for all recipients, posts at once included, counts what it reopens, and frees what is removed", async () => {
  await withTempDir(async (home) => {
    const limits = {
      maxItemBytes: 100,
      maxItems: 10,
      maxBytes: 1000,
      maxTotalBytes: 250,
      maxSenderBytes: 250,
    };
    let mailbox = await Mailbox.open(new CaPaths(home), limits);
    try {
      const posts = await Promise.allSettled(
        ["bob", "carol", "dave", "erin"].map((to) => mailbox.post("alice", to, item(100))),
      );
      assert.equal(posts.filter((p) => p.status === "fulfilled").length, 2);
      await assert.rejects(
        mailbox.post("alice", "frank", item(51)),
        e2eError(
          "ERR_QUOTA",
          "The mailbox is full: 200 bytes wait for all members, and 51 more would exceed 250",
        ),
      );
      await mailbox.post("alice", "frank", item(50));
    } finally {
      mailbox.close();
    }
    // Reopened (a restart): what waits on disk counts.
    mailbox = await Mailbox.open(new CaPaths(home), limits);
    try {
      await assert.rejects(
        mailbox.post("alice", "grace", item(1)),
        e2eError("ERR_QUOTA", /^The mailbox is full: 250 bytes wait/),
      );
      const [first] = mailbox.list("frank");
      await mailbox.remove("frank", first.id);
      await mailbox.remove("frank", first.id).catch(() => {}); // twice: counted once
      await mailbox.post("alice", "grace", item(50));
      await assert.rejects(
        mailbox.post("alice", "grace", item(1)),
        e2eError("ERR_QUOTA", /^The mailbox is full: 250 bytes wait/),
      );
    } finally {
      mailbox.close();
    }
  });
});

Deno.test("Mailbox.post() holds one sender to a quarter of the total, posts at once and what it reopens included, so one member cannot fill the mailbox for everyone", async () => {
  await withTempDir(async (home) => {
    const limits = { maxItemBytes: 100, maxItems: 10, maxBytes: 1000, maxTotalBytes: 400 };
    let mailbox = await Mailbox.open(new CaPaths(home), limits);
    try {
      // mallory posts to one offline member after another: a quarter of the total, no more.
      const posts = await Promise.allSettled(
        ["bob", "carol", "dave"].map((to) => mailbox.post("mallory", to, item(40))),
      );
      assert.equal(posts.filter((p) => p.status === "fulfilled").length, 2);
      await assert.rejects(
        mailbox.post("mallory", "erin", item(21)),
        e2eError(
          "ERR_QUOTA",
          "Your items waiting in the mailbox take 80 bytes, and 21 more would exceed 100",
        ),
      );
      await mailbox.post("mallory", "erin", item(20));
      // Everyone else still has the rest.
      await mailbox.post("alice", "bob", item(100));
      await mailbox.post("carol", "bob", item(100));
    } finally {
      mailbox.close();
    }
    // Reopened (a restart): what waits on disk counts for its sender.
    mailbox = await Mailbox.open(new CaPaths(home), limits);
    try {
      await assert.rejects(
        mailbox.post("mallory", "frank", item(1)),
        e2eError("ERR_QUOTA", /^Your items waiting in the mailbox take 100 bytes/),
      );
      const [first] = mailbox.list("erin");
      await mailbox.remove("erin", first.id);
      await mailbox.post("mallory", "frank", item(20));
    } finally {
      mailbox.close();
    }
  });
});
