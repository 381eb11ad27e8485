/**
 * What the two entry points share: argument parsing that reports mistakes in
 * our own words, output helpers, and the one place that turns an error into
 * `e2e-chat: error: …` and an exit code.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { E2eError } from "./errors.ts";

const encoder = new TextEncoder();

/** Writes `text` to stdout, whole. */
export async function out(text: string): Promise<void> {
  await writeAll(Deno.stdout, encoder.encode(text));
}

/** Writes `text` to stderr, whole. */
export async function err(text: string): Promise<void> {
  await writeAll(Deno.stderr, encoder.encode(text));
}

async function writeAll(w: { write(p: Uint8Array): Promise<number> }, bytes: Uint8Array) {
  let n = 0;
  while (n < bytes.length) n += await w.write(bytes.subarray(n));
}

/** Options understood by {@linkcode parseCommand}. */
export type Options = NonNullable<ParseArgsConfig["options"]>;

/**
 * Parses `args` strictly; unknown options and missing values become `ERR_USAGE`.
 *
 * @example
 * ```ts
 * import { parseCommand } from "./cli.ts";
 * const { values, positionals } = parseCommand(["--days", "3", "x.csr"], { days: { type: "string" } });
 * ```
 */
export function parseCommand<O extends Options>(
  args: string[],
  options: O,
): {
  values: ReturnType<typeof parseArgs<{ options: O; allowPositionals: true }>>["values"];
  positionals: string[];
} {
  try {
    const parsed = parseArgs({ args, options, allowPositionals: true, strict: true });
    return { values: parsed.values, positionals: parsed.positionals };
  } catch (e) {
    // node's parseArgs explains in several sentences and lines; the first says it.
    const message = e instanceof Error ? e.message.split(/\.(?:\s|$)/)[0] : String(e);
    throw new E2eError("ERR_USAGE", message, { hint: "see --help" });
  }
}

/**
 * Splits `args` into a command and its arguments. Options without a command
 * (`--home DIR`) belong to the default command, which is `command: undefined`.
 *
 * @example
 * ```ts
 * import { splitCommand } from "./cli.ts";
 * splitCommand(["--port", "0"]); // { command: undefined, rest: ["--port", "0"] }
 * ```
 */
export function splitCommand(args: string[]): { command?: string; rest: string[] } {
  const defaulted = args.length > 0 && args[0].startsWith("-") &&
    !["-h", "--help"].includes(args[0]);
  return defaulted ? { rest: args } : { command: args[0], rest: args.slice(1) };
}

/**
 * Refuses positional arguments a command does not take.
 *
 * @example
 * ```ts
 * import { noPositionals } from "./cli.ts";
 * noPositionals([]);
 * ```
 */
export function noPositionals(positionals: string[]): void {
  if (positionals.length) {
    throw new E2eError("ERR_USAGE", `Unexpected argument ${JSON.stringify(positionals[0])}`);
  }
}

/**
 * Parses a whole number option, or returns undefined when absent.
 *
 * @example
 * ```ts
 * import { intOption } from "./cli.ts";
 * intOption("7", "--days"); // 7
 * ```
 */
export function intOption(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d{1,9}$/.test(value)) {
    throw new E2eError("ERR_USAGE", `${flag} takes a whole number, not ${JSON.stringify(value)}`);
  }
  return Number(value);
}

/**
 * Runs an entry point: prints a failure as `e2e-chat: error: …` (and a hint),
 * and exits with its status: 0 done, 1 failed, 2 usage.
 *
 * @example
 * ```ts
 * import { runMain } from "./cli.ts";
 * await runMain(async () => 0);
 * ```
 */
export async function runMain(main: () => Promise<number>): Promise<never> {
  let code: number;
  try {
    code = await main();
  } catch (e) {
    code = await report(e);
  }
  Deno.exit(code);
}

function isDenoError(e: unknown): e is Error {
  return e instanceof Error &&
    (Object.values(Deno.errors).some((kind) => e instanceof (kind as typeof Error)) ||
      /\(os error \d+\)/.test(e.message)); // e.g. ENOSPC, which has no class of its own
}

async function report(e: unknown): Promise<number> {
  if (e instanceof E2eError) {
    await err(`e2e-chat: error: ${e.message}\n`);
    if (e.hint) await err(`e2e-chat: hint: ${e.hint}\n`);
    if (e.detail && Deno.env.get("E2E_CHAT_DEBUG")) await err(`${e.detail}\n`);
    return e.code === "ERR_USAGE" ? 2 : 1;
  }
  if (e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.NotCapable) {
    await err(`e2e-chat: error: ${e.message}\n`);
    return 1;
  }
  // File system and network failures (a folder given as a file, a full disk…) say what
  // happened in one line; a stack trace would only hide it.
  if (isDenoError(e)) {
    await err(`e2e-chat: error: ${e.message}\n`);
    return 1;
  }
  await err(
    `e2e-chat: error: unexpected failure: ${
      e instanceof Error ? e.stack ?? e.message : String(e)
    }\n`,
  );
  return 1;
}
