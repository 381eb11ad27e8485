/**
 * The one place the benchmarks start processes: the real CLI (`ca/main.ts`,
 * `client/main.ts`) with the permissions of its `deno task`, the raw-TLS peer,
 * openssl and bash. Every child is registered, so {@linkcode stopAll} ends
 * whatever is still running, even after a failure.
 *
 * @module
 */
import { join } from "node:path";
import { readLines } from "../../lib/lines.ts";
import { childEnv, deadline, ROOT, taskFlags, within } from "../_harness.ts";

export { deadline, ROOT, taskFlags };

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const live = new Set<Proc>();

/** A line a child printed and when it arrived (performance.now(), ms). */
export interface TimedLine {
  /** The line, without its newline. */
  text: string;
  /** When the chunk that finished it was read. */
  t: number;
}

/** Options of {@linkcode spawn}. */
export interface SpawnOptions {
  /** Extra environment. Default: none. */
  env?: Record<string, string>;
  /** Working directory. Default: the repository root. */
  cwd?: string;
  /** Called for every stderr line (e.g. the CA service's request log). Default: keep the tail. */
  onStderrLine?: (line: string) => void;
}

/** A running child with piped stdin/stdout/stderr and a line reader on stdout. */
export class Proc {
  /** What it is, for messages. */
  readonly label: string;
  /** The child. */
  readonly child: Deno.ChildProcess;
  /** Resolves with the exit status. */
  readonly status: Promise<Deno.CommandStatus>;
  /** The last stderr lines, for error messages. */
  readonly stderrTail: string[] = [];
  /** Called for every stdout line; when unset, lines queue for {@linkcode Proc.nextLine}. */
  onLine?: (line: TimedLine) => void;
  #queue: TimedLine[] = [];
  #wake?: () => void;
  #ended = false;
  #writer: WritableStreamDefaultWriter<Uint8Array>;

  /** Wraps a spawned child. */
  constructor(label: string, child: Deno.ChildProcess, onStderrLine?: (line: string) => void) {
    this.label = label;
    this.child = child;
    this.status = child.status;
    this.#writer = child.stdin.getWriter();
    this.#writer.closed.catch(() => {});
    this.#readLines(child.stdout, (line) => {
      if (this.onLine) this.onLine(line);
      else {
        this.#queue.push(line);
        this.#wake?.();
      }
    }).finally(() => {
      this.#ended = true;
      this.#wake?.();
    });
    this.#readLines(child.stderr, ({ text }) => {
      onStderrLine?.(text);
      this.stderrTail.push(text);
      if (this.stderrTail.length > 40) this.stderrTail.shift();
    });
  }

  /** The process id. */
  get pid(): number {
    return this.child.pid;
  }

  /** The next stdout line (when no `onLine` is set), or an error after `ms`. */
  async nextLine(ms: number): Promise<TimedLine> {
    const until = performance.now() + ms;
    while (!this.#queue.length) {
      if (this.#ended) throw new Error(`${this.label} exited\n${this.stderrTail.join("\n")}`);
      const left = until - performance.now();
      if (left <= 0) {
        throw new Error(`${this.label} printed nothing in time\n${this.stderrTail.join("\n")}`);
      }
      await within(new Promise<void>((r) => (this.#wake = r)), left, undefined);
      this.#wake = undefined;
    }
    return this.#queue.shift()!;
  }

  /** Writes text to the child's stdin. */
  async write(text: string | Uint8Array): Promise<void> {
    await this.#writer.write(typeof text === "string" ? encoder.encode(text) : text);
  }

  /** Closes stdin, waits up to `ms` for the exit, then SIGTERM, then SIGKILL. */
  async stop(ms = 3_000): Promise<void> {
    await this.#writer.close().catch(() => {});
    let exited = await deadline(this.status, ms, this.label).then(() => true, () => false);
    for (const signal of ["SIGTERM", "SIGKILL"] as const) {
      if (exited) break;
      try {
        this.child.kill(signal);
      } catch { /* already gone */ }
      exited = await deadline(this.status, 2_000, this.label).then(() => true, () => false);
    }
    live.delete(this);
  }

  async #readLines(
    stream: ReadableStream<Uint8Array>,
    each: (line: TimedLine) => void,
  ): Promise<void> {
    try {
      for await (const text of readLines(stream)) each({ text, t: performance.now() });
    } catch { /* the child went away */ }
  }
}

/** Starts `deno run --quiet FLAGS script ARGS` with piped stdio. */
export function spawnDeno(
  label: string,
  script: string,
  flags: string[],
  args: string[],
  options: SpawnOptions = {},
): Proc {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", ...flags, entry(script), ...args],
    cwd: options.cwd ?? ROOT,
    clearEnv: true,
    env: childEnv(options.env),
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const proc = new Proc(label, child, options.onStderrLine);
  live.add(proc);
  return proc;
}

/** What a finished command printed, and how long it ran (ms, wall clock). */
export interface RunResult {
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
  /** Wall time from spawn to exit, ms. */
  ms: number;
}

/** Options of {@linkcode run}. */
export interface RunOptions {
  /** Extra environment. Default: none. */
  env?: Record<string, string>;
  /** Working directory. Default: the repository root. */
  cwd?: string;
  /** Kill the child after this many ms. Default: 120000. */
  timeoutMs?: number;
}

/** Runs `program ARGS` to completion; throws with its stderr when it fails. */
export async function run(
  program: string,
  args: string[],
  options: RunOptions = {},
): Promise<RunResult> {
  const started = performance.now();
  const out = await new Deno.Command(program, {
    args,
    cwd: options.cwd ?? ROOT,
    clearEnv: true,
    env: childEnv(options.env),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(options.timeoutMs ?? 120_000),
  }).output();
  const ms = performance.now() - started;
  const result = { stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr), ms };
  if (!out.success) {
    const script = args.findIndex((a) => a.endsWith(".ts"));
    const shown = program === Deno.execPath() && script > 0
      ? `deno run ${args.slice(script, script + 2).join(" ").replace(ROOT, "")}`
      : program;
    throw new Error(`${shown} failed (exit ${out.code}):\n${result.stderr.slice(-2000)}`);
  }
  return result;
}

/** Runs `deno run --quiet FLAGS script ARGS` to completion (see {@linkcode run}). */
export function runDeno(
  script: string,
  flags: string[],
  args: string[],
  options: RunOptions = {},
): Promise<RunResult> {
  return run(Deno.execPath(), ["run", "--quiet", ...flags, entry(script), ...args], options);
}

/** Runs a bash script (`bash -c SCRIPT bash ARGS…`) to completion (see {@linkcode run}). */
export function bash(script: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  return run("bash", ["-c", script, "bash", ...args], options);
}

/**
 * Reads a file under /proc. Deno lets only --allow-all read /proc, and the
 * benchmark runs with narrower permissions, so `cat` reads it for us.
 */
export async function readProc(path: string): Promise<string> {
  return (await run("cat", [path], { timeoutMs: 10_000 })).stdout;
}

/**
 * CPU time (user + system) process `pid` used so far, and the CPU time of the
 * children it waited for (theirs and their own children's), ms, from
 * /proc/PID/stat in clock ticks of 10 ms.
 */
export async function cpuTimes(pid: number): Promise<{ self: number; children: number }> {
  const stat = await readProc(`/proc/${pid}/stat`);
  // The fields after the command name, which is in parentheses and may hold spaces.
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ").map(Number);
  return { self: (f[11] + f[12]) * 10, children: (f[13] + f[14]) * 10 };
}

/** Writes a file under /proc (see {@linkcode readProc}); the path comes as an argument, not code. */
export async function writeProc(path: string, text: string): Promise<void> {
  await bash('printf %s "$2" > "$1"', [path, text], { timeoutMs: 10_000 });
}

/** A script path: relative to the repository root unless absolute. */
function entry(script: string): string {
  return script.startsWith("/") ? script : join(ROOT, script);
}

/** Stops every child still running (stdin closed, then SIGTERM, then SIGKILL). */
export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((p) => p.stop(1_000)));
}
