/**
 * What the two entry points share: argument parsing that reports mistakes in
 * our own words, output helpers, and the one place that turns an error into
 * `e2e-chat: error: …` and an exit code.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { E2eError, type ErrorCode } from "./errors.ts";

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
  // Up to 15 digits: every such number is exact as a JavaScript number (a byte count of a
  // terabyte fits; `--mailbox-total 1073741824` did not, with 9).
  if (!/^\d{1,15}$/.test(value)) {
    throw new E2eError("ERR_USAGE", `${flag} takes a whole number, not ${JSON.stringify(value)}`);
  }
  return Number(value);
}

/** Options of {@linkcode oneOf}. */
export interface OneOfOptions {
  /** What the value is, for the message: `Unknown key type "x"`. */
  what: string;
  /** The code to throw. Default: "ERR_USAGE". */
  code?: ErrorCode;
}

/**
 * Returns `value` if it is one of `allowed`; otherwise throws
 * `Unknown WHAT "value"` with the hint `use one of A, B, C`.
 *
 * @example
 * ```ts
 * import { oneOf } from "./cli.ts";
 * const type = oneOf("ed25519", ["ec-p256", "ed25519"] as const, { what: "key type" });
 * ```
 */
export function oneOf<T extends string>(
  value: string,
  allowed: readonly T[],
  options: OneOfOptions,
): T {
  if ((allowed as readonly string[]).includes(value)) return value as T;
  throw new E2eError(
    options.code ?? "ERR_USAGE",
    `Unknown ${options.what} ${JSON.stringify(value)}`,
    { hint: `use one of ${allowed.join(", ")}` },
  );
}

/** Something to read bytes from, like `Deno.stdin` or a `Deno.FsFile`. */
export interface ByteReader {
  /** Reads into `p`; null at the end. */
  read(p: Uint8Array): Promise<number | null>;
}

/**
 * Reads from `reader` until its end or `maxBytes`, whichever comes first, so a
 * huge or endless input costs at most `maxBytes`. With `untilNewline` it also
 * stops once a newline has been read.
 *
 * @example
 * ```ts
 * import { readBounded } from "./cli.ts";
 * const bytes = await readBounded(Deno.stdin, 64 * 1024 + 1); // one byte more tells "too large"
 * ```
 */
export async function readBounded(
  reader: ByteReader,
  maxBytes: number,
  options: { untilNewline?: boolean } = {},
): Promise<Uint8Array> {
  const buffer = new Uint8Array(maxBytes);
  let n = 0;
  while (n < buffer.length) {
    const read = await reader.read(buffer.subarray(n));
    if (read === null) break;
    n += read;
    if (options.untilNewline && buffer.subarray(n - read, n).includes(0x0a)) break;
  }
  return buffer.subarray(0, n);
}

/**
 * The first line of stdin (without `\n` or `\r\n`), reading at most 4 KiB: enough for
 * an invite (about 150 bytes) or a passphrase, and bounded for anything else.
 *
 * @example
 * ```ts
 * import { readStdinLine } from "./cli.ts";
 * const line = await readStdinLine();
 * ```
 */
export async function readStdinLine(): Promise<string> {
  const bytes = await readBounded(Deno.stdin, 4096, { untilNewline: true });
  return new TextDecoder().decode(bytes).split(/\r?\n/, 1)[0];
}

/** A command of an entry point: takes the arguments after its name, returns the exit status. */
export type CommandHandler = (args: string[]) => Promise<number>;

/** Options of {@linkcode dispatch}. */
export interface DispatchOptions {
  /** The program's name in hints: `run \`deno task PROGRAM --help\``. */
  program: string;
  /** The help text printed by `help`, `-h` and `--help`. */
  usage: string;
  /** The command table; names are matched exactly (own properties only). */
  commands: Record<string, CommandHandler>;
  /** Runs when there is no command (no arguments, or options only). */
  fallback: CommandHandler;
}

/**
 * Runs the command `args` names: the handler from the table, the help text for
 * `help`, `-h` or `--help`, the fallback when there is no command, and
 * `ERR_USAGE` (exit status 2) for an unknown one.
 *
 * @example
 * ```ts
 * import { dispatch, out } from "./cli.ts";
 * const status = await dispatch(["hello"], {
 *   program: "demo",
 *   usage: "Usage: demo hello\n",
 *   commands: { hello: async () => (await out("hello\n"), 0) },
 *   fallback: async () => 0,
 * });
 * ```
 */
export async function dispatch(args: string[], options: DispatchOptions): Promise<number> {
  const { command, rest } = splitCommand(args);
  if (command === undefined) return await options.fallback(rest);
  if (command === "help" || command === "-h" || command === "--help") {
    await out(options.usage);
    return 0;
  }
  if (Object.hasOwn(options.commands, command)) return await options.commands[command](rest);
  throw new E2eError("ERR_USAGE", `Unknown command ${JSON.stringify(command)}`, {
    hint: `run \`deno task ${options.program} --help\``,
  });
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
    // ENOSPC and EDQUOT name no file of ours: say what to do about them.
    if (/\(os error (28|122)\)/.test(e.message)) {
      await err(
        "e2e-chat: hint: the disk is full: free some space on it, then run the command again\n",
      );
    }
    return 1;
  }
  await err(
    `e2e-chat: error: unexpected failure: ${
      e instanceof Error ? e.stack ?? e.message : String(e)
    }\n`,
  );
  return 1;
}
