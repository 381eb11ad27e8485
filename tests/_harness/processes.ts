/**
 * The one place tests, bench and demo start the product: `ca/main.ts` or
 * `client/main.ts` run as its own process with exactly the permissions its
 * `deno task` has in deno.json (read once), in a child environment of ours
 * (nothing of the caller's leaks in), with its output read line by line.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Wakeup, within } from "./deadlines.ts";

/** The repository root. */
export const ROOT: string = fileURLToPath(new URL("../..", import.meta.url));

/** The tasks of deno.json that run an entry point of ours. */
export type Task = "ca" | "client";

const encoder = new TextEncoder();
let config: Promise<Record<string, string>> | undefined;

/**
 * The `deno run` flags of `task` in deno.json (`--allow-*` and the like), read
 * once per process, so children get exactly what `deno task ca|client` grants.
 */
export async function taskFlags(task: Task): Promise<string[]> {
  config ??= Deno.readTextFile(join(ROOT, "deno.json")).then((t) => JSON.parse(t).tasks);
  const words = String((await config)[task]).trim().split(/\s+/);
  assert.deepEqual(words.slice(0, 2), ["deno", "run"], `task ${task} is not "deno run …"`);
  assert.equal(words.at(-1), `${task}/main.ts`, `task ${task} does not end with its entry point`);
  return words.slice(2, -1);
}

/**
 * The environment of every child: PATH, HOME (it keeps Deno's cache warm;
 * E2E_CHAT_HOME keeps e2e-chat out of it), DENO_DIR when set, INIT_CWD (the
 * repository root), NO_COLOR, then `extra`.
 */
export function childEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {
    PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
    HOME: Deno.env.get("HOME") ?? "/root",
    INIT_CWD: ROOT,
    NO_COLOR: "1",
  };
  const denoDir = Deno.env.get("DENO_DIR");
  if (denoDir) env.DENO_DIR = denoDir;
  return { ...env, ...extra };
}

/** Options of {@linkcode TaskProcess.start}. */
export interface TaskOptions {
  /** Variables added to {@linkcode childEnv}. Default: none. */
  env?: Record<string, string>;
  /** Working directory (also INIT_CWD). Default: the repository root. */
  cwd?: string;
  /** Keep stdin open for {@linkcode TaskProcess.send}. Default: false (no stdin). */
  stdin?: boolean;
  /** Called with each stdout line as it arrives (besides keeping it). Default: none. */
  onLine?: (line: string) => void;
  /** Run it under `ulimit -n` of this many open files (flood tests). Default: the inherited limit. */
  ulimitFiles?: number;
  /** Run it under this umask (`0o000`: files made with no mode of ours are 0666). Default: ours. */
  umask?: number;
  /** `deno run` flags after the task's own (`--deny-net=…` for an unreachable peer). Default: none. */
  denoFlags?: string[];
}

/** `ca/main.ts` or `client/main.ts` run as its own process with its task's permissions. */
export class TaskProcess {
  /** Every JSON object printed on stdout, in order (unless `onLine` takes the lines). */
  readonly events: Array<Record<string, unknown>> = [];
  #child: Deno.ChildProcess;
  #stdin?: WritableStreamDefaultWriter<Uint8Array>;
  #stdout = "";
  #stderr = "";
  #claimed = new Set<Record<string, unknown>>();
  #wake = new Wakeup();
  #readers: Promise<void>;
  #status: Promise<Deno.CommandStatus>;
  #exited = false;
  #stopped?: Promise<Deno.CommandStatus>;

  private constructor(child: Deno.ChildProcess, options: TaskOptions) {
    this.#child = child;
    if (options.stdin) this.#stdin = child.stdin.getWriter();
    this.#status = child.status.then((s) => {
      this.#exited = true;
      this.#wake.notify();
      return s;
    });
    this.#readers = Promise.all([
      this.#readStdout(child.stdout, options.onLine),
      this.#readStderr(child.stderr),
    ]).then(() => {});
  }

  /** Starts `task`'s entry point with `args`. */
  static async start(task: Task, args: string[], options: TaskOptions = {}): Promise<TaskProcess> {
    const cwd = options.cwd ?? ROOT;
    const [command, argv] = underUmask(
      options.umask,
      ...underUlimit(options.ulimitFiles, Deno.execPath(), [
        "run",
        "--quiet",
        ...await taskFlags(task),
        ...options.denoFlags ?? [],
        join(ROOT, task, "main.ts"),
        ...args,
      ]),
    );
    const child = new Deno.Command(command, {
      args: argv,
      cwd,
      clearEnv: true,
      env: childEnv({ INIT_CWD: cwd, ...options.env }),
      stdin: options.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    return new TaskProcess(child, options);
  }

  /** Its process id. */
  get pid(): number {
    return this.#child.pid;
  }

  /** Everything on stdout so far. */
  get stdout(): string {
    return this.#stdout;
  }

  /** Everything on stderr so far. */
  get stderr(): string {
    return this.#stderr;
  }

  /** Resolves with the exit status. */
  get status(): Promise<Deno.CommandStatus> {
    return this.#status;
  }

  /** Whether it has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** Resolves when stdout and stderr have both ended. */
  get drained(): Promise<void> {
    return this.#readers;
  }

  /** Resolves at the next output or exit (or after `ms`, default 20). */
  changed(ms = 20): Promise<void> {
    return this.#wake.wait(ms);
  }

  /**
   * Re-checks `check` at every output (and every 20 ms) until it returns a
   * value; fails after `ms` (default 15 s) or once the process has ended.
   */
  async waitFor<T>(check: () => T | undefined, what: string, ms = 15_000): Promise<T> {
    const until = Date.now() + ms;
    while (true) {
      const value = check();
      if (value !== undefined) return value;
      if (Date.now() > until || this.#exited) {
        await within(this.#readers, 1_000, undefined);
        const found = check();
        if (found !== undefined) return found;
        throw new assert.AssertionError({
          message: `${what}: not seen${this.#exited ? " (the process exited)" : ""}\nstdout: ${
            this.#stdout.slice(-4000)
          }\nstderr: ${this.#stderr.slice(-4000)}`,
        });
      }
      await this.changed(Math.min(20, Math.max(0, until - Date.now())));
    }
  }

  /** Waits for the first JSON event with these fields (or passing this test) not returned before. */
  expect(
    match: Record<string, unknown> | ((e: Record<string, unknown>) => boolean),
    ms = 15_000,
  ): Promise<Record<string, unknown>> {
    const test = typeof match === "function"
      ? match
      : (e: Record<string, unknown>) => Object.entries(match).every(([k, v]) => e[k] === v);
    return this.waitFor(
      () => {
        const found = this.events.find((e) => !this.#claimed.has(e) && test(e));
        if (found) this.#claimed.add(found);
        return found;
      },
      `event ${typeof match === "function" ? match.toString() : JSON.stringify(match)}`,
      ms,
    );
  }

  /** Writes one line to stdin. */
  async send(line: string): Promise<void> {
    await this.write(line + "\n");
  }

  /** Writes text to stdin as is. */
  async write(text: string): Promise<void> {
    assert.ok(this.#stdin, "started without stdin");
    await this.#stdin.write(encoder.encode(text));
  }

  /** Writes `text` to stdin and closes it. */
  async input(text: string): Promise<void> {
    assert.ok(this.#stdin, "started without stdin");
    await this.#stdin.write(encoder.encode(text)).catch(() => {});
    await this.#stdin.close().catch(() => {});
    this.#stdin = undefined;
  }

  /** Sends `signal` (if it still runs). */
  kill(signal: Deno.Signal = "SIGKILL"): void {
    try {
      this.#child.kill(signal);
    } catch { /* it has exited */ }
  }

  /**
   * Ends it: says `/quit` and closes stdin when it has one (waiting up to 5 s),
   * then SIGTERM, then SIGKILL after `ms` (default 10 s); waits for its output.
   * Safe to call twice.
   */
  stop(ms = 10_000): Promise<Deno.CommandStatus> {
    this.#stopped ??= this.#stop(ms);
    return this.#stopped;
  }

  async #stop(ms: number): Promise<Deno.CommandStatus> {
    if (this.#stdin) {
      await within(this.send("/quit").catch(() => {}), 1_000, undefined);
      await this.#stdin.close().catch(() => {});
      this.#stdin = undefined;
      await within(this.#status, 5_000, undefined);
    }
    if (!this.#exited) {
      this.kill("SIGTERM");
      if (!await within(this.#status, ms, undefined)) this.kill("SIGKILL");
    }
    const status = await this.#status;
    await within(this.#readers, 5_000, undefined);
    return status;
  }

  async #readStdout(
    stream: ReadableStream<Uint8Array>,
    onLine?: (line: string) => void,
  ): Promise<void> {
    // Decoded once: kept as printed, and split into lines a read at a time (a busy client
    // prints tens of thousands of lines a second; the harness must not be what limits it).
    const decoder = new TextDecoder();
    let pending = "";
    const take = (text: string) => {
      this.#stdout += text;
      pending += text;
      const last = pending.lastIndexOf("\n");
      if (last < 0) return;
      const lines = pending.slice(0, last).split("\n");
      pending = pending.slice(last + 1);
      for (const line of lines) this.#line(line, onLine);
      this.#wake.notify();
    };
    try {
      for await (const chunk of stream) take(decoder.decode(chunk, { stream: true }));
    } catch { /* killed */ }
    take(decoder.decode());
    if (pending) this.#line(pending, onLine); // the last line, without its newline
    this.#wake.notify();
  }

  #line(line: string, onLine?: (line: string) => void): void {
    if (!onLine && line.startsWith("{")) {
      try {
        const value = JSON.parse(line);
        if (value && typeof value === "object") this.events.push(value);
      } catch { /* not an event */ }
    }
    onLine?.(line);
  }

  async #readStderr(stream: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of stream) {
        this.#stderr += decoder.decode(chunk, { stream: true });
        this.#wake.notify();
      }
      this.#stderr += decoder.decode();
    } catch { /* killed */ }
  }
}

/** What a run to the end printed and how it ended. */
export interface RunResult {
  /** Exit code. */
  code: number;
  /** The signal that ended it, if any. */
  signal: Deno.Signal | null;
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
}

/** Options of {@linkcode runTask}. */
export interface RunTaskOptions extends Omit<TaskOptions, "stdin" | "onLine"> {
  /** Text written to stdin, which is then closed. Default: no stdin. */
  stdin?: string;
  /** Milliseconds before it is killed. Default: 60000. */
  timeoutMs?: number;
}

/** Runs `task` with `args` to the end (killed after `timeoutMs`) and returns what it printed. */
export async function runTask(
  task: Task,
  args: string[],
  options: RunTaskOptions = {},
): Promise<RunResult> {
  const { stdin, timeoutMs, ...rest } = options;
  const proc = await TaskProcess.start(task, args, { ...rest, stdin: stdin !== undefined });
  if (stdin !== undefined) await proc.input(stdin);
  if (!await within(proc.status, timeoutMs ?? 60_000, undefined)) proc.kill("SIGKILL");
  const status = await proc.stop(1_000);
  return { code: status.code, signal: status.signal, stdout: proc.stdout, stderr: proc.stderr };
}

/** `command args`, or, with `files`, the same run by sh under `ulimit -n files`. */
export function underUlimit(
  files: number | undefined,
  command: string,
  args: string[],
): [string, string[]] {
  if (files === undefined) return [command, args];
  return ["sh", ["-c", `ulimit -n ${files} && exec "$0" "$@"`, command, ...args]];
}

// `command args`, or, with `mask`, the same run by sh under `umask mask`.
function underUmask(mask: number | undefined, command: string, args: string[]): [string, string[]] {
  if (mask === undefined) return [command, args];
  const octal = mask.toString(8).padStart(3, "0");
  return ["sh", ["-c", `umask ${octal} && exec "$0" "$@"`, command, ...args]];
}

/** A free port on 127.0.0.1 for a listener (taken back at once: a tiny race, as with any). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}
