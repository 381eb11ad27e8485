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
