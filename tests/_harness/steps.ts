/**
 * Test steps that run at the same time.
 *
 * @module
 */

/**
 * Runs each `[name, fn]` as a step of `t`, all at once. Each step cleans up
 * after itself; the sanitizers, which assume one step at a time, are off.
 *
 * @example
 * ```ts ignore
 * import { concurrentSteps } from "./steps.ts";
 * Deno.test("two things at once", async (t) => {
 *   await concurrentSteps(t, [["one", async () => {}], ["two", async () => {}]]);
 * });
 * ```
 */
export async function concurrentSteps(
  t: Deno.TestContext,
  steps: ReadonlyArray<readonly [string, () => Promise<void>]>,
): Promise<void> {
  await Promise.all(
    steps.map(([name, fn]) =>
      t.step({ name, sanitizeOps: false, sanitizeResources: false, sanitizeExit: false, fn })
    ),
  );
}
