/**
 * Helpers shared by unit tests (lib/, ca/, client/) and by tests/_harness.ts:
 * a temporary folder removed afterwards, and the assertion that an error is
 * an E2eError with a given code and message. Private to tests.
 *
 * @module
 */
import assert from "node:assert/strict";
import { E2eError, type ErrorCode } from "./errors.ts";

/** Runs `fn` with a fresh temporary folder, removed afterwards. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-test-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Options of {@linkcode e2eError}. */
export interface E2eErrorOptions {
  /** Texts the message must not contain (passphrases, tokens). Default: none. */
  never?: string[];
}

/**
 * A check for `assert.throws`/`assert.rejects`: the error is an E2eError with
 * `code` and a message equal to `message` (a string) or matching it (a RegExp).
 */
export function e2eError(
  code: ErrorCode,
  message: string | RegExp,
  options: E2eErrorOptions = {},
): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
    assert.equal(e.code, code);
    if (typeof message === "string") assert.equal(e.message, message);
    else assert.match(e.message, message);
    for (const secret of options.never ?? []) {
      assert.ok(!e.message.includes(secret), "the message never shows a secret");
    }
    return true;
  };
}
