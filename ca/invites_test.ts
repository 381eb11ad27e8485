import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { E2eError } from "../lib/errors.ts";
import { e2eError, withTempDir } from "../lib/_test_util.ts";
import { InviteStore, parseDuration, TOKEN_PATTERN } from "./invites.ts";
import { CaPaths } from "./store.ts";

const HOUR_MS = 3_600_000;
const INVALID = "Invalid, used or expired invite token";

const tokenInvalid = e2eError("ERR_TOKEN_INVALID", INVALID);

/** An invite store in a fresh home with its HOME/ca folder. */
async function withStore(fn: (store: InviteStore, paths: CaPaths) => Promise<void>): Promise<void> {
  await withTempDir(async (home) => {
    const paths = new CaPaths(home);
    await Deno.mkdir(paths.dir, { mode: 0o700 });
    await fn(new InviteStore(paths), paths);
  });
}

function invitesFile(paths: CaPaths): string {
  return join(paths.dir, "invites.json");
}

function journalFile(paths: CaPaths): string {
  return join(paths.dir, "invites.journal");
}

/** The invites as a fresh store (another process) reads them. */
async function records(paths: CaPaths): Promise<Array<Record<string, string>>> {
  return (await new InviteStore(paths).records()) as unknown as Array<Record<string, string>>;
}

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** An enroll callback that records the names it was called with. */
function recorder<T>(result: T): { calls: string[]; enroll: (name: string) => Promise<T> } {
  const calls: string[] = [];
  return {
    calls,
    enroll: (name) => {
      calls.push(name);
      return Promise.resolve(result);
    },
  };
}

// ---------------------------------------------------------------------------
// create

Deno.test("InviteStore.create() returns a fresh 43-character base64url token and its expiry", async () => {
  await withStore(async (store) => {
    const before = Date.now();
    const { token, expiresAt } = await store.create("alice", 24 * HOUR_MS);
    assert.match(token, /^[A-Za-z0-9_-]{43}$/);
    assert.match(token, TOKEN_PATTERN);
    assert.equal(Buffer.from(token, "base64url").length, 32, "256 random bits");
    assert.ok(expiresAt.getTime() >= before + 24 * HOUR_MS);
    assert.ok(expiresAt.getTime() <= Date.now() + 24 * HOUR_MS);
    const second = await store.create("alice", HOUR_MS);
    assert.notEqual(second.token, token);
  });
});

Deno.test("InviteStore.create() stores only the token's SHA-256, in a 0600 invites.json", async () => {
  await withStore(async (store, paths) => {
    const { token, expiresAt } = await store.create("alice", HOUR_MS);
    const text = await Deno.readTextFile(invitesFile(paths));
    assert.equal((await Deno.stat(invitesFile(paths))).mode! & 0o777, 0o600);
    assert.ok(!text.includes(token), "the token is never stored");
    assert.ok(!text.includes(token.slice(0, 16)), "nor a part of it");
    const [record] = await records(paths);
    assert.equal(record.hash, sha256(token));
    assert.equal(record.name, "alice");
    assert.equal(record.expiresAt, expiresAt.toISOString());
    assert.equal(record.usedAt, undefined);
    // Nothing else is left in the folder (no temp file).
    const names = [];
    for await (const entry of Deno.readDir(paths.dir)) names.push(entry.name);
    assert.deepEqual(names.sort(), ["invites.journal", "invites.json"]);
    assert.equal((await Deno.stat(journalFile(paths))).mode! & 0o777, 0o600);
  });
});

Deno.test("InviteStore.create() refuses an invalid name and writes nothing", async () => {
  await withStore(async (store, paths) => {
    for (const name of ["Alice", "", "a b", "../x", "e2e-chat service"]) {
      await assert.rejects(store.create(name, HOUR_MS), e2eError("ERR_NAME_INVALID", /./), name);
    }
    await assert.rejects(Deno.stat(invitesFile(paths)), Deno.errors.NotFound);
  });
});

Deno.test("InviteStore.create() drops invites used or expired over a day ago, and keeps the rest", async () => {
  await withStore(async (store, paths) => {
    const day = 86_400_000;
    const iso = (ms: number) => new Date(Date.now() + ms).toISOString();
    const old = [
      { hash: "1".repeat(64), name: "a", createdAt: iso(-3 * day), expiresAt: iso(-2 * day) },
      {
        hash: "2".repeat(64),
        name: "b",
        createdAt: iso(-3 * day),
        expiresAt: iso(day),
        usedAt: iso(-2 * day),
      },
      { hash: "3".repeat(64), name: "c", createdAt: iso(-2 * day), expiresAt: iso(-HOUR_MS) },
      { hash: "4".repeat(64), name: "d", createdAt: iso(-HOUR_MS), expiresAt: iso(HOUR_MS) },
    ];
    await Deno.writeTextFile(invitesFile(paths), JSON.stringify({ invites: old }), { mode: 0o600 });
    await store.create("e", HOUR_MS);
    assert.deepEqual((await records(paths)).map((r) => r.name), ["c", "d", "e"]);
  });
});

// ---------------------------------------------------------------------------
// redeem

Deno.test("InviteStore.redeem() runs enroll with the invite's name, returns its result and marks the token used", async () => {
  await withStore(async (store, paths) => {
    const { token } = await store.create("alice", HOUR_MS);
    const { calls, enroll } = recorder({ serial: "01" });
    const before = Date.now();
    assert.deepEqual(await store.redeem(token, enroll), { serial: "01" });
    assert.deepEqual(calls, ["alice"]);
    const [record] = await records(paths);
    assert.ok(record.usedAt, "usedAt is recorded");
    assert.ok(Date.parse(record.usedAt) >= before - 1000);
    for (const file of [invitesFile(paths), journalFile(paths)]) {
      assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
      assert.ok(!(await Deno.readTextFile(file)).includes(token));
    }
  });
});

Deno.test("InviteStore.redeem() refuses a used token with the one generic message", async () => {
  await withStore(async (store) => {
    const { token } = await store.create("alice", HOUR_MS);
    const { calls, enroll } = recorder(true);
    await store.redeem(token, enroll);
    await assert.rejects(store.redeem(token, enroll), tokenInvalid);
    assert.deepEqual(calls, ["alice"], "enroll ran once");
  });
});

Deno.test("InviteStore.redeem() refuses an expired token with the same message", async () => {
  await withStore(async (store) => {
    const { token } = await store.create("alice", 1);
    await new Promise((resolve) => setTimeout(resolve, 10));
    const { calls, enroll } = recorder(true);
    await assert.rejects(store.redeem(token, enroll), tokenInvalid);
    assert.deepEqual(calls, []);
  });
});

Deno.test("InviteStore.redeem() refuses an unknown well-formed token with the same message", async () => {
  await withStore(async (store) => {
    await store.create("alice", HOUR_MS);
    const { calls, enroll } = recorder(true);
    await assert.rejects(store.redeem("A".repeat(43), enroll), tokenInvalid);
    assert.deepEqual(calls, []);
  });
});

Deno.test("InviteStore.redeem() refuses a token when no invite was ever made", async () => {
  await withStore(async (store) => {
    await assert.rejects(store.redeem("A".repeat(43), () => Promise.resolve(1)), tokenInvalid);
  });
});

Deno.test("InviteStore.redeem() refuses a malformed token with the same message, and never calls enroll", async () => {
  await withStore(async (store) => {
    const { token } = await store.create("alice", HOUR_MS);
    const { calls, enroll } = recorder(true);
    const malformed: unknown[] = [
      undefined,
      null,
      42,
      { token },
      [token],
      "",
      token.slice(1),
      token + "A",
      ` ${token}`,
      `${token.slice(0, 42)}+`,
      `${token.slice(0, 42)}=`,
      `${token.slice(0, 42)}\n`,
    ];
    for (const bad of malformed) {
      await assert.rejects(store.redeem(bad, enroll), tokenInvalid, JSON.stringify(bad));
    }
    assert.deepEqual(calls, []);
    // The real token is untouched by all that.
    await store.redeem(token, enroll);
    assert.deepEqual(calls, ["alice"]);
  });
});

Deno.test("InviteStore.redeem() leaves the token usable when enroll throws, and passes the error on", async () => {
  await withStore(async (store, paths) => {
    const { token } = await store.create("alice", HOUR_MS);
    const refusal = new E2eError("ERR_CSR_NAME_MISMATCH", "Cannot sign request: it is not alice");
    await assert.rejects(
      store.redeem(token, () => Promise.reject(refusal)),
      (e) => e === refusal,
    );
    assert.equal((await records(paths))[0].usedAt, undefined);
    const { calls, enroll } = recorder("issued");
    assert.equal(await store.redeem(token, enroll), "issued");
    assert.deepEqual(calls, ["alice"]);
  });
});

Deno.test("InviteStore.redeem() lets exactly one of many concurrent redeems of one token succeed", async () => {
  await withStore(async (store, paths) => {
    const { token } = await store.create("alice", HOUR_MS);
    // A second store on the same CA, as the CLI and the service are.
    const other = new InviteStore(paths);
    let running = 0;
    let calls = 0;
    const enroll = async (name: string) => {
      assert.equal(name, "alice");
      calls++;
      running++;
      assert.equal(running, 1, "enrollments never overlap");
      await new Promise((resolve) => setTimeout(resolve, 20));
      running--;
      return "issued";
    };
    const results = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) => (i % 2 ? other : store).redeem(token, enroll)),
    );
    const fulfilled = results.filter((r) => r.status === "fulfilled");
    const rejected = results.filter((r) => r.status === "rejected");
    assert.equal(fulfilled.length, 1);
    assert.equal(calls, 1);
    for (const r of rejected) assert.ok(tokenInvalid((r as PromiseRejectedResult).reason));
  });
});

Deno.test("InviteStore.redeem() renews its reservation while enroll runs: no one else redeems the token, however long it takes", async () => {
  await withTempDir(async (home) => {
    const paths = new CaPaths(home);
    await Deno.mkdir(paths.dir, { mode: 0o700 });
    // Reservations of 600 ms (renewed every 200): the enrollment below outlasts three of them.
    const store = new InviteStore(paths, { reservationMs: 600 });
    const other = new InviteStore(paths, { reservationMs: 600 });
    const { token } = await store.create("alice", HOUR_MS);
    let release!: () => void;
    const slow = store.redeem(token, () => new Promise<string>((r) => release = () => r("first")));
    const tries: PromiseSettledResult<string>[] = [];
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, 650));
      const second = recorder("second");
      tries.push(...await Promise.allSettled([other.redeem(token, second.enroll)]));
      assert.deepEqual(second.calls, [], "a second enrollment never starts");
    }
    for (const t of tries) assert.ok(tokenInvalid((t as PromiseRejectedResult).reason));
    release();
    assert.equal(await slow, "first");
    const [record] = await records(paths);
    assert.ok(record.usedAt, "the token is used");
    // No renewal lands after the used line: the journal ends with it.
    const lines = (await Deno.readTextFile(journalFile(paths))).trim().split("\n");
    assert.equal(JSON.parse(lines.at(-1)!).op, "used");
  });
});

Deno.test("InviteStore.redeem() takes a token whose reservation a dead process left behind, once it lapsed", async () => {
  await withStore(async (store, paths) => {
    const { token } = await store.create("alice", HOUR_MS);
    // A process that reserved the token and died: nothing renews its reservation.
    const until = new Date(Date.now() + 300).toISOString();
    await Deno.writeTextFile(
      journalFile(paths),
      JSON.stringify({ op: "reserve", hash: sha256(token), until }) + "\n",
      { append: true },
    );
    const early = recorder("early");
    await assert.rejects(store.redeem(token, early.enroll), tokenInvalid);
    assert.deepEqual(early.calls, []);
    await new Promise((r) => setTimeout(r, 400));
    const late = recorder("issued");
    assert.equal(await store.redeem(token, late.enroll), "issued");
    assert.deepEqual(late.calls, ["alice"]);
  });
});

Deno.test("InviteStore.redeem() sees an invite another store instance created after it was made", async () => {
  await withStore(async (service, paths) => {
    const cli = new InviteStore(paths);
    const { token } = await cli.create("bob", HOUR_MS);
    const { calls, enroll } = recorder(1);
    await service.redeem(token, enroll);
    assert.deepEqual(calls, ["bob"]);
  });
});

Deno.test("InviteStore.redeem() keeps invites of one name apart: each token enrolls once", async () => {
  await withStore(async (store) => {
    const first = await store.create("alice", HOUR_MS);
    const second = await store.create("alice", HOUR_MS);
    const { calls, enroll } = recorder(1);
    await store.redeem(second.token, enroll);
    await store.redeem(first.token, enroll);
    await assert.rejects(store.redeem(first.token, enroll), tokenInvalid);
    assert.deepEqual(calls, ["alice", "alice"]);
  });
});

// ---------------------------------------------------------------------------
// the journal: claims, crashes, compaction and old homes

/** Writes an index.txt holding `serials` (valid, CN=alice), as the CA would after a commit. */
async function writeIndex(paths: CaPaths, serials: string[]): Promise<void> {
  await Deno.writeTextFile(
    paths.index,
    serials.map((s) => `V\t261202204302Z\t\t${s}\tunknown\t/CN=alice\n`).join(""),
  );
}

/** A promise that never settles: an enrollment the process was killed in. */
const forever = new Promise<never>(() => {});

Deno.test("InviteStore.redeem() records a claimed serial in the journal, fsynced before claim() resolves", async () => {
  await withStore(async (store, paths) => {
    const { token } = await store.create("alice", HOUR_MS);
    await writeIndex(paths, []);
    let journalAtClaim = "";
    await store.redeem(token, async (name, claim) => {
      await claim("00ab12");
      journalAtClaim = await Deno.readTextFile(journalFile(paths));
      await writeIndex(paths, ["AB12"]); // the commit
      return name;
    });
    const lines = journalAtClaim.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(lines.map((l) => l.op), ["begin", "reserve", "claim"]);
    assert.equal(lines[2].serial, "AB12");
    assert.equal(lines[2].hash, sha256(token));
    const [record] = await records(paths);
    assert.ok(record.usedAt);
    await assert.rejects(store.redeem(token, () => Promise.resolve(1)), tokenInvalid);
  });
});

Deno.test("InviteStore: after a crash between claim and commit, a restart frees the token; after the commit, it stays used", async () => {
  await withStore(async (_, paths) => {
    const cli = new InviteStore(paths);
    const lost = await cli.create("alice", HOUR_MS);
    const committed = await cli.create("alice", HOUR_MS);
    await writeIndex(paths, []);
    // The service claims both, commits one of them, and is killed before either returns.
    const service = new InviteStore(paths);
    let claims = 0;
    const claimed = new Promise<void>((resolve) => {
      const enroll =
        (serial: string) => async (_name: string, claim: (s: string) => Promise<void>) => {
          await claim(serial);
          if (++claims === 2) resolve();
          return await forever;
        };
      service.redeem(lost.token, enroll("0A01"));
      service.redeem(committed.token, enroll("0B02"));
    });
    await claimed;
    await writeIndex(paths, ["0B02"]);
    // Meanwhile no other process can redeem either: both are reserved.
    const other = new InviteStore(paths);
    await assert.rejects(other.redeem(lost.token, () => Promise.resolve(1)), tokenInvalid);
    await assert.rejects(other.redeem(committed.token, () => Promise.resolve(1)), tokenInvalid);

    const restarted = new InviteStore(paths);
    await restarted.clearReservations();
    const byHash = new Map((await records(paths)).map((r) => [r.hash, r]));
    assert.equal(byHash.get(sha256(lost.token))?.usedAt, undefined);
    assert.equal(byHash.get(sha256(lost.token))?.serial, undefined);
    assert.ok(byHash.get(sha256(committed.token))?.usedAt, "its certificate is in the index");
    await assert.rejects(restarted.redeem(committed.token, () => Promise.resolve(1)), tokenInvalid);
    const { calls, enroll } = recorder("issued");
    assert.equal(await restarted.redeem(lost.token, enroll), "issued");
    assert.deepEqual(calls, ["alice"]);
  });
});

Deno.test("InviteStore.redeem() keeps a failed enrollment's claim: the index decides whether the token is used", async () => {
  await withStore(async (store, paths) => {
    const { token } = await store.create("alice", HOUR_MS);
    await writeIndex(paths, []);
    const failure = new E2eError(
      "ERR_LOG_INVALID",
      "The issuance log no longer matches its checkpoint",
    );
    // The commit got as far as the index, then the enrollment failed.
    await assert.rejects(
      store.redeem(token, async (_name, claim) => {
        await claim("C0FFEE");
        await writeIndex(paths, ["C0FFEE"]);
        throw failure;
      }),
      (e) => e === failure,
    );
    await assert.rejects(store.redeem(token, () => Promise.resolve(1)), tokenInvalid);
    await assert.rejects(
      new InviteStore(paths).redeem(token, () => Promise.resolve(1)),
      tokenInvalid,
    );
  });
});

Deno.test("InviteStore.redeem() refuses the claim of a stalled redemption whose token another one used meanwhile", async () => {
  await withTempDir(async (home) => {
    const paths = new CaPaths(home);
    await Deno.mkdir(paths.dir, { mode: 0o700 });
    await writeIndex(paths, []);
    // Reservations of 300 ms: a process stalled longer than that (stopped, a suspended VM, a
    // wall clock stepped forward) renews nothing, and its reservation lapses while it lives.
    const stalled = new InviteStore(paths, { reservationMs: 300 });
    const other = new InviteStore(paths, { reservationMs: 300 });
    const { token } = await stalled.create("alice", HOUR_MS);
    let started!: () => void;
    const running = new Promise<void>((r) => started = r);
    let resume!: () => void;
    const first = stalled.redeem(token, async (_name, claim) => {
      started();
      await new Promise<void>((r) => resume = r);
      await claim("0A01"); // the authority's beforeCommit: the commit waits for this
      await writeIndex(paths, ["0B02", "0A01"]); // reached only if the claim was taken
      return "first";
    });
    await running;
    const stalledUntil = Date.now() + 400;
    while (Date.now() < stalledUntil) { /* the process does nothing: no renewal runs */ }
    // Meanwhile another redemption takes the token, and its certificate is committed.
    assert.equal(
      await other.redeem(token, async (_name, claim) => {
        await claim("0B02");
        await writeIndex(paths, ["0B02"]);
        return "second";
      }),
      "second",
    );
    // The stalled one wakes up: its claim is refused, so its certificate is never committed.
    resume();
    await assert.rejects(first, tokenInvalid);
    assert.ok(!(await Deno.readTextFile(paths.index)).includes("0A01"), "one certificate");
    const [record] = await records(paths);
    assert.equal(record.serial, "B02", "the claim that counts is the committed one");
    assert.ok(record.usedAt);
    await assert.rejects(other.redeem(token, () => Promise.resolve(1)), tokenInvalid);
  });
});

Deno.test("InviteStore cuts off a journal line torn by a crash and keeps everything before it", async () => {
  await withStore(async (store, paths) => {
    const first = await store.create("alice", HOUR_MS);
    const second = await store.create("bob", HOUR_MS);
    await store.redeem(first.token, () => Promise.resolve(1));
    const whole = await Deno.readTextFile(journalFile(paths));
    await Deno.writeTextFile(journalFile(paths), '{"op":"reserve","hash":"', { append: true });
    const fresh = new InviteStore(paths);
    await assert.rejects(fresh.redeem(first.token, () => Promise.resolve(1)), tokenInvalid);
    assert.equal(await Deno.readTextFile(journalFile(paths)), whole, "the torn line is gone");
    const { calls, enroll } = recorder(2);
    assert.equal(await fresh.redeem(second.token, enroll), 2);
    assert.deepEqual(calls, ["bob"]);
    assert.deepEqual((await records(paths)).map((r) => Boolean(r.usedAt)), [true, true]);
  });
});

Deno.test("InviteStore ignores a journal left by a compaction killed between its two files", async () => {
  await withStore(async (store, paths) => {
    const first = await store.create("alice", HOUR_MS);
    await store.redeem(first.token, () => Promise.resolve(1));
    const old = await Deno.readTextFile(journalFile(paths));
    // The next compaction wrote its snapshot (with alice used) and died before the new journal.
    const second = await store.create("bob", HOUR_MS);
    await Deno.writeTextFile(journalFile(paths), old);
    const fresh = new InviteStore(paths);
    const state = await fresh.records();
    assert.deepEqual(state.map((r) => [r.name, Boolean(r.usedAt)]), [["alice", true], [
      "bob",
      false,
    ]]);
    await assert.rejects(fresh.redeem(first.token, () => Promise.resolve(1)), tokenInvalid);
    // A change goes into a new journal, which every store follows.
    await fresh.redeem(second.token, () => Promise.resolve(2));
    assert.ok(!(await Deno.readTextFile(journalFile(paths))).startsWith(old.split("\n")[0]));
    assert.ok((await records(paths)).every((r) => r.usedAt));
  });
});

Deno.test("InviteStore sees every invite of many compactions in a row, even where a new file reuses an old inode", async () => {
  await withStore(async (service, paths) => {
    await service.clearReservations();
    for (let round = 0; round < 10; round++) {
      // Each `ca invite` is a process of its own: a fresh store, one compaction. Three files
      // freed and made in turn can come back with the inode numbers the service last saw.
      const made: Array<[string, string]> = [];
      for (let i = 0; i < 3; i++) {
        const name = `user${round}-${i}`;
        made.push([name, (await new InviteStore(paths).create(name, HOUR_MS)).token]);
      }
      for (const [name, token] of made) assert.equal(await service.nameOf(token), name, name);
    }
  });
});

Deno.test("InviteStore opens a home from before the journal: its invites.json keeps working", async () => {
  await withStore(async (_, paths) => {
    const iso = (ms: number) => new Date(Date.now() + ms).toISOString();
    const tokens = ["a", "b", "c"].map((c) => c.repeat(43));
    const old = [
      { hash: sha256(tokens[0]), name: "alice", createdAt: iso(-HOUR_MS), expiresAt: iso(HOUR_MS) },
      {
        hash: sha256(tokens[1]),
        name: "bob",
        createdAt: iso(-HOUR_MS),
        expiresAt: iso(HOUR_MS),
        usedAt: iso(-60_000),
      },
      // A reservation left by an old service killed mid-enrollment.
      {
        hash: sha256(tokens[2]),
        name: "carol",
        createdAt: iso(-HOUR_MS),
        expiresAt: iso(HOUR_MS),
        reservedUntil: iso(60_000),
      },
    ];
    await Deno.writeTextFile(invitesFile(paths), JSON.stringify({ invites: old }, null, 1), {
      mode: 0o600,
    });
    const store = new InviteStore(paths);
    assert.equal(await store.nameOf(tokens[0]), "alice");
    await assert.rejects(store.nameOf(tokens[1]), tokenInvalid);
    await store.clearReservations();
    const { calls, enroll } = recorder(1);
    await store.redeem(tokens[0], enroll);
    await store.redeem(tokens[2], enroll);
    await assert.rejects(store.redeem(tokens[1], enroll), tokenInvalid);
    assert.deepEqual(calls, ["alice", "carol"]);
    assert.deepEqual((await records(paths)).map((r) => [r.name, Boolean(r.usedAt)]), [
      ["alice", true],
      ["bob", true],
      ["carol", true],
    ]);
    assert.equal((await Deno.stat(journalFile(paths))).mode! & 0o777, 0o600);
  });
});

// ---------------------------------------------------------------------------
// issuedWith: a retry of a redemption whose reply was lost

Deno.test("InviteStore.issuedWith() names the certificate a used token issued, from another store too, and writes nothing", async () => {
  await withStore(async (store, paths) => {
    const { token } = await store.create("alice", HOUR_MS);
    await writeIndex(paths, []);
    await store.redeem(token, async (name, claim) => {
      await claim("00c0ffee");
      await writeIndex(paths, ["C0FFEE"]);
      return name;
    });
    const files = [invitesFile(paths), journalFile(paths)];
    const before = await Promise.all(files.map((f) => Deno.readTextFile(f)));
    const found = { name: "alice", serial: "C0FFEE" };
    assert.deepEqual(await store.issuedWith(token), found);
    assert.deepEqual(await new InviteStore(paths).issuedWith(token), found);
    assert.deepEqual(await Promise.all(files.map((f) => Deno.readTextFile(f))), before);
    // Still used: a retry gets the certificate back, never a second one.
    await assert.rejects(store.redeem(token, () => Promise.resolve(1)), tokenInvalid);
  });
});

Deno.test("InviteStore.issuedWith() finds nothing for a token that is unknown, malformed, unused, expired unused, or claimed without a commit", async () => {
  await withStore(async (store, paths) => {
    await writeIndex(paths, []);
    const unused = await store.create("alice", HOUR_MS);
    const expired = await store.create("alice", -1);
    const uncommitted = await store.create("alice", HOUR_MS);
    await assert.rejects(
      store.redeem(uncommitted.token, async (_name, claim) => {
        await claim("0BAD");
        throw new E2eError("ERR_INTERNAL", "killed before the index line");
      }),
      e2eError("ERR_INTERNAL", "killed before the index line"),
    );
    assert.ok((await records(paths)).some((r) => r.serial === "BAD"), "the claim is there");
    for (
      const token of [
        unused.token,
        expired.token,
        uncommitted.token,
        "A".repeat(43),
        "not a token",
        undefined,
      ]
    ) {
      assert.equal(await store.issuedWith(token), undefined, String(token));
    }
  });
});

Deno.test("InviteStore.issuedWith() finds a token's certificate only for retryMs after its use", async () => {
  await withStore(async (store, paths) => {
    const { token } = await store.create("alice", HOUR_MS);
    await writeIndex(paths, []);
    await store.redeem(token, async (name, claim) => {
      await claim("0A01");
      await writeIndex(paths, ["0A01"]);
      return name;
    });
    const soon = new InviteStore(paths, { retryMs: HOUR_MS });
    assert.deepEqual(await soon.issuedWith(token), { name: "alice", serial: "A01" });
    const late = new InviteStore(paths, { retryMs: 1 });
    await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal(await late.issuedWith(token), undefined);
  });
});

Deno.test("InviteStore.redeem() marks a token used when its enroll fails after the commit (the index holds its claim), so its retries end retryMs after that", async () => {
  await withStore(async (store, paths) => {
    const { token } = await store.create("alice", HOUR_MS);
    await writeIndex(paths, []);
    const failure = e2eError("ERR_LOG_INVALID", "the log append after the index line failed");
    await assert.rejects(
      store.redeem(token, async (_name, claim) => {
        await claim("0C03");
        await writeIndex(paths, ["0C03"]);
        throw new E2eError("ERR_LOG_INVALID", "the log append after the index line failed");
      }),
      failure,
    );
    const [record] = await records(paths);
    assert.ok(record.usedAt, "no use recorded");
    assert.equal(record.reservedUntil, undefined);
    assert.deepEqual(await store.issuedWith(token), { name: "alice", serial: "C03" });
    const late = new InviteStore(paths, { retryMs: 1 });
    await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal(await late.issuedWith(token), undefined);
    // An enroll that fails before its commit leaves the token usable, as before.
    const other = await store.create("bob", HOUR_MS);
    await assert.rejects(
      store.redeem(other.token, async (_name, claim) => {
        await claim("0D04");
        throw new E2eError("ERR_INTERNAL", "killed before the index line");
      }),
      e2eError("ERR_INTERNAL", "killed before the index line"),
    );
    assert.equal(await store.nameOf(other.token), "bob");
  });
});

/**
 * Redeems `token` into a commit of `serial` (its claim, then the index line) and never returns,
 * as a redemption whose process died after its commit; resolves once the commit is on disk.
 */
async function committedThenStalled(
  store: InviteStore,
  paths: CaPaths,
  token: string,
  serial: string,
): Promise<void> {
  let committed!: () => void;
  const done = new Promise<void>((resolve) => committed = resolve);
  store.redeem(token, async (_name, claim) => {
    await claim(serial);
    await writeIndex(paths, [serial]);
    committed();
    return await forever;
  });
  await done;
}

Deno.test("InviteStore.issuedWith() finds a token whose commit is done while its redemption has not returned yet", async () => {
  await withStore(async (store, paths) => {
    const { token } = await store.create("alice", HOUR_MS);
    await writeIndex(paths, []);
    await committedThenStalled(store, paths, token, "0B02"); // the reply is still being made
    assert.equal((await records(paths))[0].usedAt, undefined);
    assert.deepEqual(await new InviteStore(paths).issuedWith(token), {
      name: "alice",
      serial: "B02",
    });
  });
});

Deno.test("InviteStore.clearReservations() dates a use it settles by its claim, so a retry's window runs from the commit, not from the restart", async () => {
  await withStore(async (store, paths) => {
    const { token } = await store.create("alice", HOUR_MS);
    await writeIndex(paths, []);
    // Killed after its commit, before its `used` line: the claim and the index line are on disk.
    await committedThenStalled(store, paths, token, "0B03");
    const claimedAt = (await Deno.readTextFile(journalFile(paths))).split("\n")
      .filter(Boolean).map((l) => JSON.parse(l)).find((r) => r.op === "claim").at;
    assert.ok(Date.parse(claimedAt) <= Date.now(), claimedAt);
    await new Promise((resolve) => setTimeout(resolve, 60));
    const restarted = new InviteStore(paths, { retryMs: 40 });
    await restarted.clearReservations();
    assert.equal((await records(paths))[0].usedAt, claimedAt);
    // 60 ms since the commit: past a 40 ms window, though the restart was just now.
    assert.equal(await restarted.issuedWith(token), undefined);
    assert.deepEqual(await new InviteStore(paths).issuedWith(token), {
      name: "alice",
      serial: "B03",
    });
  });
});

// list and cancel

const notOpen = (message: string) => e2eError("ERR_INVITE_NOT_OPEN", message);

/** The store's two files, to prove a refusal changed nothing. */
async function files(paths: CaPaths): Promise<Array<string | null>> {
  const read = (path: string) =>
    Deno.readTextFile(path).catch((e) => {
      if (e instanceof Deno.errors.NotFound) return null;
      throw e;
    });
  return [await read(invitesFile(paths)), await read(journalFile(paths))];
}

/** Writes a snapshot of invites with the given hashes (tokens unknown), as an older store would. */
async function writeInvites(
  paths: CaPaths,
  invites: Array<{ hash: string; name: string } & Record<string, string>>,
): Promise<void> {
  const iso = (ms: number) => new Date(Date.now() + ms).toISOString();
  const full = invites.map((r) => ({ createdAt: iso(-HOUR_MS), expiresAt: iso(HOUR_MS), ...r }));
  await Deno.writeTextFile(invitesFile(paths), JSON.stringify({ invites: full }), { mode: 0o600 });
}

Deno.test("InviteStore.list() gives each invite's short id, name, times and status, open ones first, and never the token", async () => {
  await withStore(async (store, paths) => {
    await writeIndex(paths, []);
    const used = await store.create("bob", HOUR_MS);
    const expired = await store.create("carol", 1);
    const open = await store.create("alice", HOUR_MS);
    const cancelled = await store.create("dave", HOUR_MS);
    const usedNoClaim = await store.create("erin", HOUR_MS);
    await store.redeem(used.token, async (_name, claim) => {
      await claim("0AB1");
      await writeIndex(paths, ["0AB1"]); // the commit: the index writes whole bytes
    });
    await store.redeem(usedNoClaim.token, () => Promise.resolve(1));
    await store.cancel("dave");
    await new Promise((resolve) => setTimeout(resolve, 10)); // carol's 1 ms are over

    const rows = await new InviteStore(paths).list();
    assert.deepEqual(rows.map((r) => [r.name, r.status]), [
      ["alice", "open"],
      ["bob", "used"],
      ["carol", "expired"],
      ["dave", "cancelled"],
      ["erin", "used"],
    ]);
    const byName = new Map(rows.map((r) => [r.name, r]));
    const tokens = { alice: open, bob: used, carol: expired, dave: cancelled, erin: usedNoClaim };
    for (const [name, invite] of Object.entries(tokens)) {
      const row = byName.get(name)!;
      assert.equal(row.id, sha256(invite.token).slice(0, 8), name);
      assert.equal(row.expiresAt, invite.expiresAt.toISOString(), name);
      assert.ok(Date.parse(row.createdAt) <= Date.now(), name);
    }
    assert.equal(byName.get("bob")!.serial, "0AB1", "the serial as the index writes it");
    assert.ok(byName.get("bob")!.usedAt);
    assert.equal(byName.get("erin")!.serial, undefined, "no claim, no serial");
    assert.ok(byName.get("dave")!.cancelledAt);
    for (const name of ["alice", "carol"]) {
      const row = byName.get(name)!;
      assert.deepEqual(Object.keys(row).sort(), ["createdAt", "expiresAt", "id", "name", "status"]);
    }
    const text = JSON.stringify(rows);
    for (const invite of Object.values(tokens)) {
      assert.ok(!text.includes(invite.token), "never a token");
      assert.ok(!text.includes(sha256(invite.token)), "nor its whole hash");
    }
  });
});

Deno.test("InviteStore.cancel() withdraws every open invite for a name, on disk before it returns, and their tokens are refused like used ones", async () => {
  await withStore(async (store, paths) => {
    const first = await store.create("alice", HOUR_MS);
    const second = await store.create("alice", HOUR_MS);
    const bob = await store.create("bob", HOUR_MS);
    const service = new InviteStore(paths);
    assert.equal(await service.nameOf(first.token), "alice"); // the service has read it

    const cancelled = await new InviteStore(paths).cancel("alice");
    assert.deepEqual(cancelled.map((r) => [r.id, r.name, r.status]), [
      [sha256(first.token).slice(0, 8), "alice", "cancelled"],
      [sha256(second.token).slice(0, 8), "alice", "cancelled"],
    ]);
    const lines = (await Deno.readTextFile(journalFile(paths))).trim().split("\n")
      .map((l) => JSON.parse(l));
    assert.deepEqual(lines.slice(1).map((l) => [l.op, l.hash]), [
      ["cancel", sha256(first.token)],
      ["cancel", sha256(second.token)],
    ]);
    assert.equal(lines[1].at, cancelled[0].cancelledAt);

    const { calls, enroll } = recorder("issued");
    for (const token of [first.token, second.token]) {
      // (nameOf() may answer from memory: it is a first check, and redeem() decides.)
      await assert.rejects(service.redeem(token, enroll), tokenInvalid);
      await assert.rejects(new InviteStore(paths).nameOf(token), tokenInvalid);
    }
    assert.deepEqual(calls, []);
    assert.equal(await service.redeem(bob.token, enroll), "issued", "other names keep theirs");
    assert.deepEqual(calls, ["bob"]);
  });
});

Deno.test("InviteStore.cancel() takes an invite's short id, in either case, and cancels that one only; a shorter prefix is read as a name", async () => {
  await withStore(async (store) => {
    const first = await store.create("alice", HOUR_MS);
    const second = await store.create("alice", HOUR_MS);
    const id = sha256(first.token).slice(0, 8);
    await assert.rejects(
      store.cancel(id.slice(0, 7)),
      notOpen(`Cannot cancel: no open invite for "${id.slice(0, 7)}"`),
    );
    const [row] = await store.cancel(id.toUpperCase());
    assert.equal(row.id, id);
    assert.deepEqual((await store.list()).map((r) => [r.id, r.status]), [
      [sha256(second.token).slice(0, 8), "open"],
      [id, "cancelled"],
    ]);
    await assert.rejects(store.redeem(first.token, () => Promise.resolve(1)), tokenInvalid);
    assert.equal(await store.redeem(second.token, () => Promise.resolve(2)), 2);
  });
});

Deno.test("InviteStore.cancel() refuses an id prefix that fits several invites with ERR_INVITE_AMBIGUOUS naming them, and changes nothing", async () => {
  await withStore(async (store, paths) => {
    await writeInvites(paths, [
      { hash: "abcdabcd1" + "1".repeat(55), name: "alice" },
      { hash: "abcdabcd2" + "2".repeat(55), name: "bob", usedAt: new Date().toISOString() },
    ]);
    const before = await files(paths);
    await assert.rejects(
      store.cancel("abcdabcd"),
      e2eError(
        "ERR_INVITE_AMBIGUOUS",
        'Cannot cancel: id "abcdabcd" fits 2 invites: abcdabcd11111111 ("alice"), ' +
          'abcdabcd22222222 ("bob")',
      ),
    );
    assert.deepEqual(await files(paths), before);
    assert.deepEqual((await store.cancel("abcdabcd1")).map((r) => r.name), ["alice"]);
  });
});

Deno.test("InviteStore.cancel() with nothing open refuses with ERR_INVITE_NOT_OPEN and changes nothing", async () => {
  await withStore(async (store, paths) => {
    const used = await store.create("bob", HOUR_MS);
    await store.redeem(used.token, () => Promise.resolve(1));
    const cancelled = await store.create("carol", HOUR_MS);
    await store.cancel("carol");
    await store.create("dave", 1);
    await new Promise((resolve) => setTimeout(resolve, 10));
    const before = await files(paths);
    const carol = sha256(cancelled.token).slice(0, 8);
    const bob = sha256(used.token).slice(0, 8);
    const refusals: Array<[string, string]> = [
      ["alice", 'Cannot cancel: no open invite for "alice"'], // never invited
      ["bob", 'Cannot cancel: no open invite for "bob"'], // used
      ["carol", 'Cannot cancel: no open invite for "carol"'], // cancelled already
      ["dave", 'Cannot cancel: no open invite for "dave"'], // expired
      [carol, `Cannot cancel: invite ${carol} for "carol" is cancelled`],
      [bob, `Cannot cancel: invite ${bob} for "bob" is used`],
      ["ffff0000", 'Cannot cancel: no open invite for "ffff0000"'],
    ];
    for (const [arg, message] of refusals) {
      await assert.rejects(store.cancel(arg), notOpen(message), arg);
    }
    assert.deepEqual(await files(paths), before);
  });
});

Deno.test("InviteStore.cancel() reads the name of any invite it holds as a name, never as another invite's id", async () => {
  await withStore(async (store, paths) => {
    await writeInvites(paths, [
      { hash: "cafecafe" + "1".repeat(56), name: "alice" },
      { hash: "2".repeat(64), name: "cafecafe", usedAt: new Date().toISOString() },
    ]);
    const before = await files(paths);
    await assert.rejects(
      store.cancel("cafecafe"),
      notOpen('Cannot cancel: no open invite for "cafecafe"'),
    );
    assert.deepEqual(await files(paths), before);
    assert.deepEqual((await store.list()).map((r) => [r.name, r.status]), [
      ["alice", "open"],
      ["cafecafe", "used"],
    ]);
    assert.deepEqual((await store.cancel("cafecafe1")).map((r) => r.name), ["alice"]);
  });
});

Deno.test("InviteStore.cancel() during an enrollment makes its claim fail: the token ends cancelled, never used", async () => {
  await withStore(async (store, paths) => {
    await writeIndex(paths, []);
    const { token } = await store.create("alice", HOUR_MS);
    let reserved!: () => void;
    const inEnroll = new Promise<void>((resolve) => reserved = resolve);
    let cancelledNow!: () => void;
    const gate = new Promise<void>((resolve) => cancelledNow = resolve);
    const redemption = store.redeem(token, async (_name, claim) => {
      reserved();
      await gate;
      await claim("C0FFEE");
      await writeIndex(paths, ["C0FFEE"]); // never reached: a refused claim stops the commit
      return "issued";
    });
    await inEnroll;
    // The reservation keeps other enrollments away, not the operator.
    assert.deepEqual((await new InviteStore(paths).cancel("alice")).map((r) => r.status), [
      "cancelled",
    ]);
    cancelledNow();
    await assert.rejects(redemption, tokenInvalid);
    assert.equal(await Deno.readTextFile(paths.index), "");
    assert.deepEqual((await store.list()).map((r) => r.status), ["cancelled"]);
  });
});

Deno.test("InviteStore: a cancelled invite stays refused through compactions and a service start, and goes a day after its cancellation", async () => {
  await withStore(async (store, paths) => {
    const { token } = await store.create("alice", HOUR_MS);
    await store.cancel("alice");
    await store.create("bob", HOUR_MS); // a compaction: the journal is folded into the snapshot
    const snapshot = JSON.parse(await Deno.readTextFile(invitesFile(paths)));
    assert.ok(snapshot.invites.find((r: { name: string }) => r.name === "alice").cancelledAt);
    await new InviteStore(paths).clearReservations(); // a service starting compacts too
    for (const fresh of [store, new InviteStore(paths)]) {
      await assert.rejects(fresh.nameOf(token), tokenInvalid);
      await assert.rejects(fresh.redeem(token, () => Promise.resolve(1)), tokenInvalid);
    }
    assert.deepEqual((await store.list()).map((r) => [r.name, r.status]), [
      ["bob", "open"],
      ["alice", "cancelled"],
    ]);

    // Cancelled over a day ago (its expiry still ahead): dropped like a used one, and a token
    // the store no longer knows is refused all the same.
    const old = "o".repeat(43);
    const iso = (ms: number) => new Date(Date.now() + ms).toISOString();
    await writeInvites(paths, [
      {
        hash: sha256(old),
        name: "olga",
        expiresAt: iso(5 * 86_400_000),
        cancelledAt: iso(-2 * 86_400_000),
      },
    ]);
    await store.create("carol", HOUR_MS);
    assert.deepEqual((await records(paths)).map((r) => r.name), ["carol"]);
    await assert.rejects(store.redeem(old, () => Promise.resolve(1)), tokenInvalid);
  });
});

// ---------------------------------------------------------------------------
// ---------------------------------------------------------------------------
// parseDuration

Deno.test("parseDuration() reads seconds, minutes, hours and days", () => {
  const cases: Array<[string, number]> = [
    ["1s", 1_000],
    ["90s", 90_000],
    ["30m", 1_800_000],
    ["24h", 86_400_000],
    ["7d", 604_800_000],
    ["999999d", 999_999 * 86_400_000],
    ["007m", 420_000],
  ];
  for (const [text, ms] of cases) assert.equal(parseDuration(text), ms, text);
});

Deno.test("parseDuration() refuses anything else with ERR_USAGE and a hint", () => {
  const bad = [
    "",
    "0s",
    "00h",
    "1",
    "h",
    "1.5h",
    "-1h",
    "+1h",
    "1w",
    "1ms",
    " 1h",
    "1h ",
    "1 h",
    "1H",
    "1000000s",
    "1e3s",
    "１h",
    "24h\n",
  ];
  for (const text of bad) {
    assert.throws(
      () => parseDuration(text),
      (e) => {
        assert.ok(e2eError("ERR_USAGE", `Invalid duration ${JSON.stringify(text)}`)(e));
        assert.match((e as E2eError).hint ?? "", /90s, 30m, 24h, 7d/);
        return true;
      },
      JSON.stringify(text),
    );
  }
});
