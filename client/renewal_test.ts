import assert from "node:assert/strict";
import { lifeLeft, Renewal, type Validity } from "./renewal.ts";

const DAY = 86_400_000;

function week(from = Date.now()): Validity {
  return { notBefore: new Date(from), notAfter: new Date(from + 7 * DAY) };
}

function until(test: () => boolean, ms = 3_000): Promise<void> {
  const end = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const look = () => {
      if (test()) resolve();
      else if (Date.now() > end) reject(new Error("timed out"));
      else setTimeout(look, 5);
    };
    look();
  });
}

Deno.test("lifeLeft() is the fraction of the validity still ahead, 0 once expired", () => {
  const v = { notBefore: new Date(1000), notAfter: new Date(4000) };
  assert.equal(lifeLeft(v, 1000), 1);
  assert.equal(lifeLeft(v, 3000), 1 / 3);
  assert.equal(lifeLeft(v, 9000), 0);
});

Deno.test("Renewal renews only once a third of the life is left, then follows the new certificate", async () => {
  let skew = 0;
  let cert = week();
  const renewedAt: number[] = [];
  const renewal = new Renewal(() => cert, () => {
    renewedAt.push(Date.now());
    cert = week(Date.now() + skew); // the new certificate starts "now" on the skewed clock
    return Promise.resolve();
  }, { clock: () => Date.now() + skew, checkMs: 10 });
  renewal.start();
  try {
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(renewedAt, [], "renewed with all its life ahead");
    skew = 4 * DAY + DAY / 2; // 2.5 of 7 days left: more than a third
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(renewedAt, [], "renewed with more than a third left");
    skew = 5 * DAY; // 2 of 7 days left
    await until(() => renewedAt.length === 1);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(renewedAt.length, 1, "the new certificate was renewed too");
  } finally {
    renewal.stop();
  }
});

Deno.test("Renewal retries with exponential backoff, warns only after 3 failures in a row, and a success resets the count", async () => {
  let cert = week(Date.now() - 5 * DAY);
  let failing = true;
  const attempts: number[] = [];
  const warnings: string[] = [];
  const renewal = new Renewal(() => cert, () => {
    attempts.push(Date.now());
    if (failing) return Promise.reject(new Error("Cannot reach the CA service"));
    cert = week();
    return Promise.resolve();
  }, { retryMs: 40, maxRetryMs: 1_000, onWarning: (m) => warnings.push(m) });
  renewal.start();
  try {
    await until(() => attempts.length === 2);
    assert.deepEqual(warnings, [], "warned after 2 failures");
    await until(() => attempts.length === 5);
    assert.equal(warnings.length, 3, warnings.join("\n"));
    assert.match(
      warnings[0],
      /^Cannot renew your certificate \(3 attempts failed; it expires \d{4}-.*Z\): Cannot reach the CA service$/,
    );
    const gaps = attempts.slice(1).map((t, i) => t - attempts[i]);
    // 40, 80, 160, 320 ms, each less up to a fifth for jitter (and timers a little late).
    for (const [i, gap] of gaps.entries()) {
      assert.ok(gap >= 40 * 2 ** i * 0.8 - 5, `gap ${i}: ${gap} ms`);
    }
    assert.ok(gaps[3] > gaps[0] * 4, `no backoff: ${gaps}`);
    failing = false;
    await until(() => renewal.failures === 0 && attempts.length === 6, 3_000);
    assert.equal(warnings.length, 3);
  } finally {
    renewal.stop();
  }
});

Deno.test("Renewal reports the first failure at once when less than a tenth of the life is left", async () => {
  const cert = week(Date.now() - 6.5 * DAY);
  const warnings: string[] = [];
  const renewal = new Renewal(() => cert, () => Promise.reject(new Error("refused")), {
    retryMs: 10_000,
    onWarning: (m) => warnings.push(m),
  });
  renewal.start();
  try {
    await until(() => warnings.length === 1);
    assert.match(warnings[0], /\(1 attempt failed; it expires .*\): refused$/);
  } finally {
    renewal.stop();
  }
});

Deno.test("Renewal tells a failure marked tellAtOnce at its first time in a row, once, then follows warnAfter; a success resets it", async () => {
  let cert = week(Date.now() - 5 * DAY);
  let failing = true;
  const kept = new Error("kept aside: its log check failed");
  const attempts: number[] = [];
  const warnings: string[] = [];
  const renewal = new Renewal(() => cert, () => {
    attempts.push(Date.now());
    if (failing) return Promise.reject(attempts.length === 1 ? new Error("unreachable") : kept);
    cert = week(Date.now() - 5 * DAY); // renewed, and (on this clock) due again at once
    failing = true;
    return Promise.resolve();
  }, {
    retryMs: 40,
    maxRetryMs: 1_000,
    tellAtOnce: (e) => e === kept,
    onWarning: (m) => warnings.push(m),
  });
  renewal.start();
  try {
    // 1: unreachable, not said; 2: kept, said at once; 3: kept, said (3 in a row); 4: renewed.
    await until(() => attempts.length === 2);
    await until(() => warnings.length === 1);
    assert.match(warnings[0], /\(2 attempts failed; .*\): kept aside: its log check failed$/);
    await until(() => attempts.length === 3);
    assert.equal(warnings.length, 2, "said at the third failure in a row");
    failing = false;
    await until(() => attempts.length === 6);
    // After the success: its first kept failure is said at once again.
    assert.equal(warnings.length, 3, warnings.join("\n"));
    assert.match(warnings[2], /\(1 attempt failed; .*\): kept aside/);
  } finally {
    renewal.stop();
  }
});
