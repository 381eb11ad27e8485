/**
 * What a process asks of the file system, seen from outside: the command runs
 * under `strace -f`, and its file calls (open, mkdir, rename, link, unlink,
 * fsync) come back in the order they started. Durability tests read them: a
 * name is durable only if its folder was fsynced after it changed.
 *
 * Without strace the tests that use it are skipped with a message, except
 * under CI=true, where they fail (`.ci/run` installs it).
 *
 * @module
 */
import { dirname } from "node:path";

/** One file call: its name, the paths among its arguments, and whether it succeeded. */
export interface FileCall {
  /** The system call: `openat`, `mkdir`, `rename`, `link`, `unlink` or `fsync`. */
  call: string;
  /** Its string arguments, in order (none for fsync). */
  paths: string[];
  /** False when it returned -1. */
  ok: boolean;
}

// Traced as these names (the *at variants and fdatasync counted as the plain call).
const CALLS: Record<string, string> = {
  openat: "openat",
  mkdir: "mkdir",
  mkdirat: "mkdir",
  rename: "rename",
  renameat: "rename",
  renameat2: "rename",
  link: "link",
  linkat: "link",
  unlink: "unlink",
  unlinkat: "unlink",
  fsync: "fsync",
  fdatasync: "fsync",
};

/** Where `strace` is, or undefined. */
export async function stracePath(): Promise<string | undefined> {
  const { stdout, success } = await new Deno.Command("sh", {
    args: ["-c", "command -v strace"],
    stdout: "piped",
    stderr: "null",
  }).output();
  const path = new TextDecoder().decode(stdout).trim();
  return success && path ? path : undefined;
}

/**
 * Runs `program args` under `strace -f` and returns its exit code and its file
 * calls in the order they started (across all its threads).
 */
export async function traceFileCalls(
  strace: string,
  program: string,
  args: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Promise<{ code: number; stderr: string; calls: FileCall[] }> {
  const log = await Deno.makeTempFile({ prefix: "e2e-chat-strace-" });
  try {
    const out = await new Deno.Command(strace, {
      args: [
        ...["-f", "-y", "-qq", "-s", "4096", "-e", `trace=${Object.keys(CALLS).join(",")}`],
        ...["-o", log, program, ...args],
      ],
      cwd: options.cwd,
      env: options.env,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).output();
    return {
      code: out.code,
      stderr: new TextDecoder().decode(out.stderr),
      calls: parseStrace(await Deno.readTextFile(log)),
    };
  } finally {
    await Deno.remove(log).catch(() => {});
  }
}

/**
 * Parses `strace -f -y` lines: a call split by another thread's is joined to its
 * result; an fsync names what it syncs (`-y` prints a descriptor's path).
 */
export function parseStrace(text: string): FileCall[] {
  const calls: FileCall[] = [];
  const pending = new Map<string, FileCall>();
  for (const line of text.split("\n")) {
    const resumed = /^(\d+)\s+<\.\.\. (\w+) resumed>.*= (-?\d+)/.exec(line);
    if (resumed) {
      const call = pending.get(resumed[1]);
      if (call) call.ok = resumed[3] !== "-1";
      pending.delete(resumed[1]);
      continue;
    }
    const m = /^(\d+)\s+(\w+)\((.*)$/.exec(line);
    if (!m || !Object.hasOwn(CALLS, m[2])) continue;
    const paths = CALLS[m[2]] === "fsync"
      ? [/^\d+<([^>]*)>/.exec(m[3])?.[1] ?? ""]
      : [...m[3].matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((p) => p[1]);
    const result = /\) = (-?\d+)/.exec(m[3]);
    const call: FileCall = { call: CALLS[m[2]], paths, ok: result ? result[1] !== "-1" : true };
    if (!result) pending.set(m[1], call);
    calls.push(call);
  }
  return calls;
}

/** The index of the first successful call of `call` that names `path` (at `position`), or -1. */
export function indexOfCall(calls: FileCall[], call: string, path: string, position = 0): number {
  return calls.findIndex((c) => c.ok && c.call === call && c.paths[position] === path);
}

/** Whether `path` itself was fsynced after call number `after`. */
export function syncedAfter(calls: FileCall[], after: number, path: string): boolean {
  return after >= 0 &&
    calls.some((c, i) => i > after && c.ok && c.call === "fsync" && c.paths[0] === path);
}

/**
 * Whether `path`'s folder was fsynced after call number `after` (the rename,
 * link or mkdir that changed the name): only then is the name durable.
 */
export function folderSyncedAfter(calls: FileCall[], after: number, path: string): boolean {
  return syncedAfter(calls, after, dirname(path));
}
