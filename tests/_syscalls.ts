/**
 * What a process asks of the file system, seen from outside: the command runs
 * under `strace -f`, and its file calls (open, mkdir, rename, link, unlink,
 * fsync) come back in the order they started. Durability tests read them: a
 * name is durable only if its folder was opened and fsynced after it changed.
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
        "-f",
        "-qq",
        "-s",
        "4096",
        "-e",
        `trace=${Object.keys(CALLS).join(",")}`,
        "-o",
        log,
        program,
        ...args,
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

/** Parses `strace -f` lines: a call split by another thread's is joined to its result. */
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
    const paths = [...m[3].matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((p) => p[1]);
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

/**
 * Whether `path`'s folder was opened and then fsynced after call number `after`
 * (the rename, link or mkdir that changed the name).
 */
export function folderSyncedAfter(calls: FileCall[], after: number, path: string): boolean {
  if (after < 0) return false;
  const folder = dirname(path);
  const open = calls.findIndex((c, i) =>
    i > after && c.ok && c.call === "openat" && c.paths[0] === folder
  );
  return open >= 0 && calls.some((c, i) => i > open && c.ok && c.call === "fsync");
}
