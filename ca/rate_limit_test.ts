import assert from "node:assert/strict";
import { RateLimiter } from "./rate_limit.ts";

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

Deno.test("RateLimiter allows `limit` hits per window, then says how long to wait", () => {
  const limiter = new RateLimiter(3, 60_000);
  for (let i = 0; i < 3; i++) assert.equal(limiter.hit("10.0.0.1"), 0, `hit ${i + 1}`);
  const wait = limiter.hit("10.0.0.1");
  assert.ok(wait > 59_000 && wait <= 60_000, `${wait} ms`);
  // Still limited, and the wait only shrinks.
  const again = limiter.hit("10.0.0.1");
  assert.ok(again > 0 && again <= wait, `${again} ms`);
});

Deno.test("RateLimiter counts each key on its own", () => {
  const limiter = new RateLimiter(2, 60_000);
  assert.equal(limiter.hit("a"), 0);
  assert.equal(limiter.hit("a"), 0);
  assert.ok(limiter.hit("a") > 0);
  assert.equal(limiter.hit("b"), 0, "another key is not limited by a's hits");
  assert.equal(limiter.hit("b"), 0);
  assert.ok(limiter.hit("b") > 0);
  assert.equal(limiter.hit("::1"), 0);
});

Deno.test("RateLimiter starts a fresh window once the last one is over", async () => {
  const limiter = new RateLimiter(2, 40);
  assert.equal(limiter.hit("a"), 0);
  assert.equal(limiter.hit("a"), 0);
  const wait = limiter.hit("a");
  assert.ok(wait > 0 && wait <= 40, `${wait} ms`);
  await sleep(wait + 10);
  assert.equal(limiter.hit("a"), 0);
  assert.equal(limiter.hit("a"), 0);
  assert.ok(limiter.hit("a") > 0);
});

Deno.test("RateLimiter with a limit of 1 allows one hit per window", async () => {
  const limiter = new RateLimiter(1, 30);
  assert.equal(limiter.hit("k"), 0);
  assert.ok(limiter.hit("k") > 0);
  await sleep(40);
  assert.equal(limiter.hit("k"), 0);
});

Deno.test("RateLimiter keeps limiting a key while it prunes thousands of stale ones", async () => {
  const limiter = new RateLimiter(1, 30);
  for (let i = 0; i < 10_001; i++) limiter.hit(`stale-${i}`);
  await sleep(40);
  assert.equal(limiter.hit("busy"), 0);
  assert.ok(limiter.hit("busy") > 0, "the prune of stale keys keeps the current window");
  assert.equal(limiter.hit("stale-0"), 0, "a pruned key starts afresh");
});

Deno.test("RateLimiter.hit() costs the same past 10,000 fresh keys: no sweep of the whole table per request", () => {
  // Before: with more than 10,000 keys every hit walked the whole table (50,000 hits × 10,000+).
  const limiter = new RateLimiter(10, 60_000);
  for (let i = 0; i < 10_000; i++) limiter.hit(`10.0.${i >> 8}.${i & 255}`);
  const started = performance.now();
  for (let i = 0; i < 50_000; i++) limiter.hit(`fresh-${i}`);
  const ms = performance.now() - started;
  assert.ok(ms < 2_000, `50,000 hits past 10,000 keys took ${ms.toFixed(0)} ms`);
});

Deno.test("RateLimiter forgets the oldest window past its key limit, and expired windows from the front", async () => {
  const limiter = new RateLimiter(1, 60_000, 3);
  for (const k of ["a", "b", "c"]) assert.equal(limiter.hit(k), 0);
  assert.ok(limiter.hit("a") > 0, "a is limited");
  limiter.hit("d"); // a's window started first: forgotten
  assert.equal(limiter.size, 3);
  assert.equal(limiter.hit("a"), 0, "a starts afresh once forgotten");
  const short = new RateLimiter(1, 30);
  for (let i = 0; i < 100; i++) short.hit(`k${i}`);
  await sleep(50);
  short.hit("new");
  assert.equal(short.size, 1, "expired windows were not dropped");
});

Deno.test("RateLimiter counts the addresses of one IPv6 /64 as one: 11 attempts from addresses within one /64 get a 429", () => {
  const limiter = new RateLimiter(10, 60_000);
  // A host that takes a fresh address for each attempt (privacy addresses, or any it likes).
  for (let i = 1; i <= 10; i++) {
    assert.equal(limiter.hit(`2001:db8:1:2:${i.toString(16)}::${i}`), 0, `attempt ${i}`);
  }
  assert.ok(limiter.hit("2001:db8:1:2:ffff:ffff:ffff:fffe") > 0, "the 11th attempt waits");
  // However the address is written.
  assert.ok(limiter.hit("2001:0DB8:0001:0002:0:0:0:1") > 0, "uncompressed, upper case");
  assert.ok(limiter.hit("fe80::1%eth0") === 0, "another /64 (with a zone) is not limited");
  assert.ok(limiter.hit("2001:db8:1:3::1") === 0, "the next /64 is not limited");
  assert.equal(limiter.size, 3);
});

Deno.test("RateLimiter counts an IPv4-mapped IPv6 address as its IPv4 address, and keys that are no address as they are", () => {
  const limiter = new RateLimiter(2, 60_000);
  assert.equal(limiter.hit("192.0.2.7"), 0);
  assert.equal(limiter.hit("::ffff:192.0.2.7"), 0);
  assert.ok(limiter.hit("::FFFF:c000:0207") > 0, "the same IPv4 address, in hex");
  assert.equal(limiter.hit("192.0.2.8"), 0, "the next IPv4 address is not limited");
  // Names and pairs of names (ca/rendezvous.ts) are keys of their own, as is anything malformed.
  for (const key of ["alice", "alice bob", "1:2:3", "1::2::3", "::1:2:3:4:5:6:7:8"]) {
    assert.equal(limiter.hit(key), 0, key);
    assert.equal(limiter.hit(key), 0, key);
    assert.ok(limiter.hit(key) > 0, key);
  }
});
