/**
 * Test steps that run at the same time.
 *
 * @module
 */

/** Options of {@linkcode concurrentSteps}. */
export interface ConcurrentStepsOptions {
  /**
   * Steps that run at once, at most: the others wait for one to end before they start (their
   * own waits and timeouts start then). Default: all of them.
   */
  atOnce?: number;
}

/**
 * Runs each `[name, fn]` as a step of `t`, all at once (or `atOnce` at a time). Each step
 * cleans up after itself; the sanitizers, which assume one step at a time, are off.
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
  options: ConcurrentStepsOptions = {},
): Promise<void> {
  const atOnce = Math.max(1, options.atOnce ?? steps.length);
  let running = 0;
  const waiting: (() => void)[] = [];
  const slot = async () => {
    if (running >= atOnce) await new Promise<void>((r) => waiting.push(r));
    else running++;
  };
  // A slot is handed to the next waiting step as one ends (running stays the same).
  const release = () => {
    const next = waiting.shift();
    if (next) next();
    else running--;
  };
  await Promise.all(
    steps.map(([name, fn]) =>
      t.step({
        name,
        sanitizeOps: false,
        sanitizeResources: false,
        sanitizeExit: false,
        fn: async () => {
          await slot();
          try {
            await fn();
          } finally {
            release();
          }
        },
      })
    ),
  );
}
