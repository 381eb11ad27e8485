import assert from "node:assert/strict";
import { join } from "node:path";
import { withTempDir } from "../tests/_helpers.ts";
import { safetyNumber, TrustStore } from "./trust.ts";

const KEY_A = "aa".repeat(32);
const KEY_B = "bb".repeat(32);
const KEY_C = "cc".repeat(32);

async function peersFile(home: string): Promise<{ peers: Record<string, unknown> }> {
  return JSON.parse(await Deno.readTextFile(join(home, "peers.json")));
}

// ---------------------------------------------------------------------------
// TrustStore

Deno.test("TrustStore.observe() says new the first time, then known for the same key", async () => {
  await withTempDir(async (home) => {
    const store = await TrustStore.load(home);
    assert.equal(store.get("bob"), undefined);
    const before = Date.now();
    assert.equal(await store.observe("bob", KEY_B), "new");
    const record = store.get("bob");
    assert.equal(record?.keyFingerprint, KEY_B);
    assert.equal(record?.verified, false);
    assert.ok(Date.parse(record!.firstSeen) >= before - 1000);
    assert.equal(await store.observe("bob", KEY_B), "known");
    assert.equal(await store.observe("bob", KEY_B), "known");
  });
});

Deno.test("TrustStore.observe() says changed for another key, and keeps the first one until trust()", async () => {
  await withTempDir(async (home) => {
    const store = await TrustStore.load(home);
    await store.observe("bob", KEY_B);
    assert.equal(await store.observe("bob", KEY_C), "changed");
    assert.equal(
      await store.observe("bob", KEY_C),
      "changed",
      "still changed: nothing was accepted",
    );
    assert.equal(store.get("bob")?.keyFingerprint, KEY_B);
    assert.ok((await peersFile(home)).peers.bob);
    assert.equal(await store.observe("bob", KEY_B), "known", "the old key is still the known one");
  });
});

Deno.test("TrustStore.trust() accepts a new key, unverified; the old key is then the changed one", async () => {
  await withTempDir(async (home) => {
    const store = await TrustStore.load(home);
    await store.observe("bob", KEY_B);
    await store.verify("bob");
    assert.equal(await store.observe("bob", KEY_C), "changed");
    await store.trust("bob", KEY_C);
    assert.equal(store.get("bob")?.keyFingerprint, KEY_C);
    assert.equal(store.get("bob")?.verified, false, "a trusted key still needs verifying");
    assert.equal(await store.observe("bob", KEY_C), "known");
    assert.equal(await store.observe("bob", KEY_B), "changed");
  });
});

Deno.test("TrustStore.trust() works for a name never seen", async () => {
  await withTempDir(async (home) => {
    const store = await TrustStore.load(home);
    await store.trust("carol", KEY_C);
    assert.equal(await store.observe("carol", KEY_C), "known");
  });
});

Deno.test("TrustStore.verify() marks the current key verified; observe() then says verified", async () => {
  await withTempDir(async (home) => {
    const store = await TrustStore.load(home);
    await store.observe("bob", KEY_B);
    assert.equal(await store.verify("bob"), true);
    assert.equal(store.get("bob")?.verified, true);
    assert.equal(await store.observe("bob", KEY_B), "verified");
    assert.equal(
      await store.observe("bob", KEY_C),
      "changed",
      "verification does not cover another key",
    );
  });
});

Deno.test("TrustStore.verify() returns false for a name it knows no key for, and records nothing", async () => {
  await withTempDir(async (home) => {
    const store = await TrustStore.load(home);
    assert.equal(await store.verify("nobody"), false);
    assert.equal(store.get("nobody"), undefined);
    assert.equal(await store.observe("nobody", KEY_A), "new");
  });
});

Deno.test("TrustStore keeps peers apart", async () => {
  await withTempDir(async (home) => {
    const store = await TrustStore.load(home);
    assert.equal(await store.observe("bob", KEY_B), "new");
    assert.equal(
      await store.observe("carol", KEY_B),
      "new",
      "the same key under another name is new",
    );
    await store.verify("bob");
    assert.equal(await store.observe("carol", KEY_B), "known");
    assert.equal(await store.observe("bob", KEY_B), "verified");
  });
});

Deno.test("TrustStore saves peers.json with mode 0600 and reloads it", async () => {
  await withTempDir(async (home) => {
    const store = await TrustStore.load(home);
    await store.observe("bob", KEY_B);
    await store.observe("carol", KEY_C);
    await store.verify("carol");
    const path = join(home, "peers.json");
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    const saved = await peersFile(home);
    assert.deepEqual(Object.keys(saved.peers).sort(), ["bob", "carol"]);

    const again = await TrustStore.load(home);
    assert.equal(await again.observe("bob", KEY_B), "known");
    assert.equal(await again.observe("carol", KEY_C), "verified");
    assert.equal(await again.observe("carol", KEY_A), "changed");
    assert.deepEqual(again.get("bob"), store.get("bob"));
    // Only peers.json is in the home: no temp file left.
    const names = [];
    for await (const entry of Deno.readDir(home)) names.push(entry.name);
    assert.deepEqual(names, ["peers.json"]);
  });
});

Deno.test("TrustStore.load() starts empty without a peers.json and writes nothing until it learns a key", async () => {
  await withTempDir(async (home) => {
    const store = await TrustStore.load(home);
    assert.equal(store.get("bob"), undefined);
    await assert.rejects(Deno.stat(join(home, "peers.json")), Deno.errors.NotFound);
  });
});

Deno.test("TrustStore treats a user named like an Object property as any other user", async () => {
  // "constructor" is a valid user name (NAME_PATTERN); it must not hit Object.prototype.
  await withTempDir(async (home) => {
    const store = await TrustStore.load(home);
    assert.equal(await store.observe("constructor", KEY_A), "new");
    assert.equal(await store.observe("constructor", KEY_A), "known");
    assert.equal(store.get("constructor")?.keyFingerprint, KEY_A);
    assert.equal(await store.verify("constructor"), true);
    assert.equal(await store.observe("constructor", KEY_A), "verified");
    const fresh = await TrustStore.load(await Deno.makeTempDir({ dir: home }));
    assert.equal(fresh.get("constructor"), undefined);
    assert.equal(await fresh.verify("constructor"), false);
    assert.equal(await store.observe("tostring", KEY_A), "new");
  });
});

// ---------------------------------------------------------------------------
// safetyNumber

const alice = { name: "alice", key: KEY_A };
const bob = { name: "bob", key: KEY_B };

Deno.test("safetyNumber() is 60 digits in 12 groups of five", () => {
  const number = safetyNumber(alice, bob);
  assert.match(number, /^\d{5}( \d{5}){11}$/);
  assert.equal(number.replace(/ /g, "").length, 60);
});

Deno.test("safetyNumber() is the same on both sides", () => {
  assert.equal(safetyNumber(alice, bob), safetyNumber(bob, alice));
  const carol = { name: "carol", key: KEY_C };
  assert.equal(safetyNumber(carol, bob), safetyNumber(bob, carol));
});

Deno.test("safetyNumber() differs when either key changes", () => {
  const number = safetyNumber(alice, bob);
  assert.notEqual(safetyNumber({ ...alice, key: KEY_C }, bob), number);
  assert.notEqual(safetyNumber(alice, { ...bob, key: KEY_C }), number);
  // One hex digit is enough.
  assert.notEqual(safetyNumber(alice, { ...bob, key: "bb".repeat(31) + "bc" }), number);
});

Deno.test("safetyNumber() differs when a name changes or the keys swap owners", () => {
  const number = safetyNumber(alice, bob);
  assert.notEqual(safetyNumber({ ...alice, name: "alicia" }, bob), number);
  assert.notEqual(safetyNumber({ name: "alice", key: KEY_B }, { name: "bob", key: KEY_A }), number);
});

Deno.test("safetyNumber() keeps the value earlier versions computed (a regression vector)", () => {
  // Two clients of different versions must show the same number: freeze one value
  // (checked independently: SHA-512 of the labelled names and keys, 5 bytes per group, mod 10^5).
  assert.equal(
    safetyNumber(alice, bob),
    "02400 02341 21826 99157 14786 92335 17692 53449 22901 50464 03558 52387",
  );
});
