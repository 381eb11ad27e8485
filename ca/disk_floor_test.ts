import assert from "node:assert/strict";
import { join } from "node:path";
import { e2eError, withTempDir } from "../lib/_test_util.ts";
import { freeBytes } from "../lib/fs.ts";
import { DiskFloor } from "./disk_floor.ts";

const MiB = 1024 * 1024;

Deno.test("DiskFloor.reserve() refuses a write that would leave less than the floor free, counting the writes under way, and logs it once", async () => {
  await withTempDir((dir) => {
    const logs: string[] = [];
    // The real disk: a floor 1 GiB under what is free now leaves room for one 600 MiB write.
    const floorBytes = freeBytes(dir) - 1024 * MiB;
    const floor = new DiskFloor(dir, floorBytes, { log: (l) => logs.push(l) });
    assert.ok(floor.check() > floorBytes);
    const first = floor.reserve(600 * MiB);
    const full =
      `The CA's disk is full: it keeps ${floorBytes} bytes free for revocations and the CRL`;
    assert.throws(() => floor.reserve(600 * MiB), e2eError("ERR_QUOTA", full));
    assert.throws(() => floor.reserve(600 * MiB), e2eError("ERR_QUOTA", full));
    assert.equal(logs.length, 1, logs.join("\n"));
    assert.match(
      logs[0],
      new RegExp(
        `^e2e-chat-ca: disk floor reached: the disk of ${dir} keeps ${floorBytes} bytes free ` +
          `\\(--free-floor-mib\\), \\d+ bytes free, ${600 * MiB} of them being written, and ` +
          `${600 * MiB} more asked; refused 1 member write since the last report$`,
      ),
    );
    // Written (or failed): its bytes no longer count as under way.
    first();
    first();
    floor.reserve(600 * MiB)();
    return Promise.resolve();
  });
});

Deno.test("DiskFloor with a floor of 0 never refuses, and reads the disk of a folder not made yet from its parent", async () => {
  await withTempDir((dir) => {
    const none = new DiskFloor(join(dir, "ca"), 0);
    assert.equal(none.check(), Infinity);
    none.reserve(Number.MAX_SAFE_INTEGER)();
    const some = new DiskFloor(join(dir, "not", "yet"), 1);
    assert.ok(some.check() > 0);
    some.reserve(1)();
    return Promise.resolve();
  });
});

Deno.test("DiskFloor takes only a whole number of bytes, 0 or more", () => {
  for (const bad of [-1, 1.5, NaN]) assert.throws(() => new DiskFloor(".", bad), RangeError);
});
