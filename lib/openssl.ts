/**
 * The one place that runs the `openssl` binary.
 *
 * Every process e2e-chat starts goes through {@linkcode openssl}. It builds
 * the environment from scratch (so nothing of ours leaks to the child), hands a
 * passphrase over only through an environment variable that the arguments
 * name as `env:E2E_CHAT_PASSIN` (never argv, which any local user can read in
 * /proc), runs in a private temporary directory unless told otherwise, and
 * stops a child that hangs.
 *
 * @module
 */
import { E2eError } from "./errors.ts";

/** The argument that makes openssl read the passphrase given in {@linkcode OpensslOptions.passphrase}. */
export const PASSPHRASE_ARG = "env:E2E_CHAT_PASSIN";

const PASSPHRASE_ENV = "E2E_CHAT_PASSIN";
const DEFAULT_TIMEOUT_MS = 120_000;

/** Options of {@linkcode openssl}. */
export interface OpensslOptions {
  /** Working directory. Default: a fresh private temporary directory, removed afterwards. */
  cwd?: string;
  /** Bytes written to the child's stdin. Default: no stdin. */
  stdin?: Uint8Array | string;
  /** A passphrase the arguments refer to as {@linkcode PASSPHRASE_ARG}. Default: none. */
  passphrase?: string;
  /** Milliseconds before the child is killed. Default: 120000 (RSA-4096 key generation has a long tail). */
  timeoutMs?: number;
}

/** What a successful openssl run printed. */
export interface OpensslResult {
  /** Standard output, as bytes. */
  stdout: Uint8Array;
  /** Standard error, as text (openssl prints progress and warnings there). */
  stderr: string;
}

/** The failure of an openssl run: the exit code and stderr stay in `detail`, not in the message. */
export class OpensslError extends E2eError {
  /** The child's exit code. */
  readonly exitCode: number;
  /** What the child printed on stderr. */
  readonly stderr: string;
  /** The signal that ended the child (say, `"SIGKILL"` from the OOM killer), if one did. */
  readonly signal?: string;

  /**
   * Makes the error for a run of `openssl <command>` that exited with `exitCode`, or was ended by
   * `signal`.
   */
  constructor(command: string, exitCode: number, stderr: string, signal?: string) {
    super(
      "ERR_OPENSSL",
      signal
        ? `openssl ${command} was killed (${signal})`
        : `openssl ${command} failed with exit code ${exitCode}`,
      { detail: stderr },
    );
    this.exitCode = exitCode;
    this.stderr = stderr;
    this.signal = signal;
  }

  /** Whether openssl failed because it could not decrypt a private key. */
  get badPassphrase(): boolean {
    return /bad decrypt|unable to load .*private key|maybe wrong password|Could not read .*key/i
      .test(this.stderr);
  }
}

/**
 * The openssl program to run: `E2E_CHAT_OPENSSL` when set, else `openssl` from PATH.
 *
 * @example Which program is used
 * ```ts
 * import { opensslProgram } from "./openssl.ts";
 * console.log(opensslProgram()); // "openssl"
 * ```
 */
export function opensslProgram(): string {
  return Deno.env.get("E2E_CHAT_OPENSSL") || "openssl";
}

/**
 * Runs `openssl ...args` and returns what it printed; throws {@linkcode OpensslError} on a non-zero exit.
 *
 * @example Reading the version
 * ```ts
 * import { openssl } from "./openssl.ts";
 * const { stdout } = await openssl(["version"]);
 * console.log(new TextDecoder().decode(stdout));
 * ```
 */
export async function openssl(
  args: string[],
  options: OpensslOptions = {},
): Promise<OpensslResult> {
  const cwd = options.cwd ?? await Deno.makeTempDir({ prefix: "e2e-chat-openssl-" });
  try {
    return await startOpenssl(args, { ...options, cwd }).finish();
  } finally {
    if (options.cwd === undefined) await Deno.remove(cwd, { recursive: true }).catch(() => {});
  }
}

/** An openssl run started ahead of its last input; see {@linkcode startOpenssl}. */
export interface OpensslRun {
  /**
   * Writes `input` to the child's stdin after what it was started with, closes
   * stdin and waits for the child, with the result and errors of {@linkcode openssl}.
   */
  finish(input?: Uint8Array | string): Promise<OpensslResult>;
  /** Stops a run that will not be finished, and waits until the child is gone. */
  cancel(): Promise<void>;
  /** Resolves once the child has exited, whatever ended it (never rejects). */
  readonly exited: Promise<void>;
}

/**
 * Starts `openssl ...args` in `options.cwd` and leaves its stdin open: the
 * child does its start-up (loading the configuration, keys and certificates
 * it was given) while the caller still waits for the input that ends the run.
 * Throws at once only when the program cannot be started.
 *
 * @example Reading the version
 * ```ts
 * import { startOpenssl } from "./openssl.ts";
 * const run = startOpenssl(["version"], { cwd: Deno.cwd() });
 * console.log(new TextDecoder().decode((await run.finish()).stdout));
 * ```
 */
export function startOpenssl(
  args: string[],
  options: OpensslOptions & { cwd: string },
): OpensslRun {
  const { passphrase, stdin } = options;
  // Exact match for short ones, so an ordinary argument is not mistaken for a leak.
  const leaks = (a: string) =>
    a === passphrase ||
    (passphrase !== undefined && passphrase.length >= 8 && a.includes(passphrase));
  if (passphrase !== undefined && args.some(leaks)) {
    throw new TypeError("A passphrase must never be passed as an openssl argument");
  }
  const env: Record<string, string> = {
    PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
    // openssl x509 reads the whole system trust store at start-up; we never need it.
    SSL_CERT_FILE: "/dev/null",
  };
  if (passphrase !== undefined) env[PASSPHRASE_ENV] = passphrase;
  const signal = AbortSignal.timeout(options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  const program = opensslProgram();
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(program, {
      args,
      cwd: options.cwd,
      env,
      clearEnv: true,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      signal,
    }).spawn();
  } catch (e) {
    throw spawnError(program, e);
  }
  const writer = child.stdin.getWriter();
  // A child that exits early closes its stdin; its exit status tells the story.
  const write = (bytes: Uint8Array | string) =>
    writer.write(typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes)
      .catch(() => {});
  const started = stdin === undefined ? Promise.resolve() : write(stdin);
  return {
    async finish(input) {
      await started;
      if (input !== undefined) await write(input);
      await writer.close().catch(() => {});
      const out = await child.output();
      const stderr = new TextDecoder().decode(out.stderr);
      if (signal.aborted) {
        throw new E2eError("ERR_OPENSSL_TIMEOUT", `openssl ${args[0]} did not finish in time`, {
          detail: stderr,
        });
      }
      if (!out.success) {
        throw new OpensslError(args[0] ?? "", out.code, stderr, out.signal ?? undefined);
      }
      return { stdout: out.stdout, stderr };
    },
    async cancel() {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      await writer.close().catch(() => {});
      await child.output().catch(() => {});
    },
    exited: child.status.then(() => {}, () => {}),
  };
}

function spawnError(program: string, e: unknown): E2eError {
  if (e instanceof Deno.errors.NotFound) {
    return new E2eError("ERR_OPENSSL_MISSING", `Cannot find the openssl program "${program}"`, {
      hint: "install openssl 3 and put it on PATH (E2E_CHAT_OPENSSL can name another only " +
        "where --allow-run allows it; the tasks allow `openssl` from PATH)",
      cause: e,
    });
  }
  if (e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.NotCapable) {
    return new E2eError("ERR_OPENSSL_MISSING", `Not allowed to run "${program}"`, {
      hint: "the tasks allow only `openssl` from PATH; put your openssl first on PATH instead",
      cause: e,
    });
  }
  return new E2eError("ERR_OPENSSL", `Cannot start "${program}"`, { cause: e });
}
