/**
 * The test helpers that other tests' verdicts rest on.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { snapshot } from "./_helpers.ts";
import { concurrentSteps, sleep, withTempDir } from "./_harness.ts";

Deno.test("a snapshot taken while a file is being replaced atomically shows the settled tree, not a vanished temporary file", async () => {
  await withTempDir(async (dir) => {
    const target = join(dir, "peers.json");
    await Deno.writeTextFile(target, "0");
    let writes = 0;
    const writer = (async () => {
      for (; writes < 200; writes++) {
        const temp = join(dir, `.${writes}.tmp`);
        await Deno.writeTextFile(temp, String(writes + 1));
        await Deno.rename(temp, target);
      }
    })();
    // Many files to list, so the listing and the reads interleave with the writer.
    for (let i = 0; i < 50; i++) await Deno.writeTextFile(join(dir, `f${i}`), "x");
    const snap = await snapshot(dir);
    await writer;
    assert.equal(snap.get(target), "200", "the snapshot is of the tree once the writes ended");
    assert.deepEqual([...snap.keys()].filter((p) => p.endsWith(".tmp")), []);
  });
});

Deno.test("concurrentSteps with atOnce runs every step, never more than atOnce of them at a time, and the rest as each ends", async (t) => {
  let running = 0;
  let most = 0;
  const ran: number[] = [];
  await concurrentSteps(
    t,
    Array.from({ length: 7 }, (_, i) =>
      [`step ${i}`, async () => {
        running++;
        most = Math.max(most, running);
        await sleep(20 + (i % 3) * 10);
        ran.push(i);
        running--;
      }] as const),
    { atOnce: 3 },
  );
  assert.equal(most, 3);
  assert.deepEqual(ran.toSorted((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6]);
});
