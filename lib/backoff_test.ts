import assert from "node:assert/strict";
import { Backoff } from "./backoff.ts";

Deno.test("Backoff waits 10, 20, 40 s … at most 5 min, and starts over after reset()", () => {
  const backoff = new Backoff();
  const waits = Array.from({ length: 7 }, () => backoff.next());
  assert.deepEqual(waits, [10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]);
  assert.equal(backoff.failures, 7);
  backoff.reset();
  assert.equal(backoff.failures, 0);
  assert.equal(backoff.next(), 10_000);
});

Deno.test("Backoff takes its first wait and ceiling from its options", () => {
  const backoff = new Backoff({ firstMs: 1, maxMs: 3 });
  assert.deepEqual([backoff.next(), backoff.next(), backoff.next()], [1, 2, 3]);
});
