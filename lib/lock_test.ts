import assert from "node:assert/strict";
import { join } from "node:path";
import { E2eError } from "./errors.ts";
import { holdLock, LOCK_WAIT_NOTICE_MS, withLock } from "./lock.ts";

const LOCK_MODULE = new URL("./lock.ts", import.meta.url).href;

async function withScratch(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-lock-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Another process that takes the lock with withLock() and holds it until `release()`. */
async function holdLockInChild(path: string): Promise<{ release: () => Promise<void> }> {
  const code = `
    const { withLock } = await import(${JSON.stringify(LOCK_MODULE)});
    await withLock(${JSON.stringify(path)}, async () => {
      await Deno.stdout.write(new TextEncoder().encode("locked\\n"));
      const buffer = new Uint8Array(16);
      while ((await Deno.stdin.read(buffer)) !== null) { /* hold until stdin closes */ }
    });
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-config", "--no-lock", code],
    cwd: join(path, ".."),
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.getReader();
  let seen = "";
  while (!seen.includes("locked\n")) {
    const { value, done } = await reader.read();
    if (done) {
      child.stdin.close();
      const { stderr } = await child.output().catch(() => ({ stderr: new Uint8Array() }));
      throw new Error(`The child exited before locking: ${new TextDecoder().decode(stderr)}`);
    }
    seen += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return {
    release: async () => {
      await child.stdin.close();
      const out = await child.output();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    },
  };
}

Deno.test("withLock() returns what the function returns and creates the lock file 0600", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, ".ca.lock");
    assert.equal(await withLock(path, () => Promise.resolve(42)), 42);
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
  });
});

Deno.test("withLock() never lets two callers in one process overlap, and serves them in order", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, ".ca.lock");
    let inside = 0;
    let most = 0;
    const order: number[] = [];
    const callers = Array.from({ length: 6 }, (_, i) =>
      withLock(path, async () => {
        inside++;
        most = Math.max(most, inside);
        await delay(10);
        order.push(i);
        inside--;
        return i;
      }));
    assert.deepEqual(await Promise.all(callers), [0, 1, 2, 3, 4, 5]);
    assert.equal(most, 1);
    assert.deepEqual(order, [0, 1, 2, 3, 4, 5]);
  });
});

Deno.test("withLock() passes a failure on and lets the next caller in", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, ".ca.lock");
    const failing = withLock(path, () => Promise.reject(new Error("boom")));
    const next = withLock(path, () => Promise.resolve("next"));
    await assert.rejects(failing, /^Error: boom$/);
    assert.equal(await next, "next");
  });
});

Deno.test("withLock() keeps locks on different files independent", async () => {
  await withScratch(async (dir) => {
    let bothInside = false;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => release = resolve);
    const first = withLock(join(dir, "a.lock"), () => gate);
    await withLock(join(dir, "b.lock"), () => {
      bothInside = true;
      return Promise.resolve();
    });
    release();
    await first;
    assert.equal(bothInside, true);
  });
});

Deno.test("withLock() waits while another process holds the lock", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, ".ca.lock");
    const holder = await holdLockInChild(path);
    let released = false;
    let ranWhileHeld = false;
    let ran = false;
    try {
      const waiting = withLock(path, () => {
        ran = true;
        ranWhileHeld = !released;
        return Promise.resolve();
      }, { timeoutMs: 30_000 });
      await delay(400);
      assert.equal(ran, false, "the second process must wait");
      released = true;
      await holder.release();
      await waiting;
      assert.equal(ran, true);
      assert.equal(ranWhileHeld, false);
    } finally {
      if (!released) await holder.release();
    }
  });
});

Deno.test({
  name: "withLock() gives up with ERR_LOCK_TIMEOUT when another process keeps the lock",
  // The timed-out flock stays pending (by design) until the other process lets go, and closes
  // its file then; that can finish after the test, so the sanitizers would report it.
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await withScratch(async (dir) => {
      const path = join(dir, ".ca.lock");
      const holder = await holdLockInChild(path);
      let released = false;
      try {
        let ran = false;
        const started = Date.now();
        await assert.rejects(
          () =>
            withLock(path, () => {
              ran = true;
              return Promise.resolve();
            }, { timeoutMs: 200 }),
          (e) => {
            assert.ok(e instanceof E2eError);
            assert.equal(e.code, "ERR_LOCK_TIMEOUT");
            assert.equal(e.message, `Cannot lock "${path}": another process holds it`);
            assert.match(e.hint ?? "", /wait for the other e2e-chat command/);
            return true;
          },
        );
        assert.ok(Date.now() - started < 5_000);
        assert.equal(ran, false);
        released = true;
        await holder.release();
        // Once the other process is gone, the lock can be taken again.
        assert.equal(
          await withLock(path, () => Promise.resolve("free"), { timeoutMs: 10_000 }),
          "free",
        );
        await delay(50);
      } finally {
        if (!released) await holder.release();
      }
    });
  },
});

Deno.test("withLock() calls onWait once while another process holds the lock past a second, then runs fn once it is free", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, ".ca.lock");
    const holder = await holdLockInChild(path);
    let released = false;
    try {
      let waits = 0;
      let ran = false;
      let told!: () => void;
      const notified = new Promise<void>((resolve) => told = resolve);
      const waiting = withLock(path, () => {
        ran = true;
        return Promise.resolve();
      }, {
        timeoutMs: 30_000,
        onWait: () => {
          waits++;
          told();
        },
      });
      // Without a notice, the wait ends in ERR_LOCK_TIMEOUT and fails the test.
      await Promise.race([notified, waiting]);
      assert.equal(ran, false, "told while still waiting");
      await delay(LOCK_WAIT_NOTICE_MS + 200);
      assert.equal(waits, 1, "told once, however long the wait");
      released = true;
      await holder.release();
      await waiting;
      assert.equal(ran, true);
      assert.equal(waits, 1);
    } finally {
      if (!released) await holder.release();
    }
  });
});

Deno.test("withLock() and holdLock() never call onWait when the lock is free", async () => {
  await withScratch(async (dir) => {
    const path = join(dir, ".ca.lock");
    let waits = 0;
    const onWait = () => waits++;
    assert.equal(await withLock(path, () => Promise.resolve(1), { onWait }), 1);
    const release = await holdLock(path, { onWait });
    release();
    // A notice still pending would fire within a second of the call: wait past that.
    await delay(LOCK_WAIT_NOTICE_MS + 200);
    assert.equal(waits, 0);
  });
});

Deno.test("withLock() on a folder locks the folder itself against another process and leaves no file in it", async () => {
  await withScratch(async (dir) => {
    const home = join(dir, "home");
    await Deno.mkdir(home);
    const holder = await holdLockInChild(home);
    try {
      await assert.rejects(
        withLock(home, () => Promise.resolve(), { timeoutMs: 300 }),
        (e: unknown) => e instanceof E2eError && e.code === "ERR_LOCK_TIMEOUT",
      );
    } finally {
      await holder.release();
    }
    assert.equal(await withLock(home, () => Promise.resolve(7), { timeoutMs: 30_000 }), 7);
    assert.deepEqual([...Deno.readDirSync(home)], []);
  });
});
