/**
 * File helpers that keep state consistent across crashes: atomic replacement
 * and private directories; and the free space of a disk.
 *
 * @module
 */
import { statfsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";

/** Options of {@linkcode writeFileAtomic}. */
export interface WriteAtomicOptions {
  /** File mode of the new file. Default: 0o644. */
  mode?: number;
  /** Refuse to replace an existing file. Default: false. */
  createNew?: boolean;
  /**
   * fsync the data before the rename. Default: true. Only a file that can be
   * derived again from durable state may skip it (after a power cut it may be
   * the old file or empty, never half of the new one).
   */
  durable?: boolean;
  /**
   * Also fsync the folder after the rename, so that the new name survives a
   * power cut as well (without it the folder may still show the old file, or
   * none). Default: false — for a file someone is told about (a key, a
   * certificate that replaces one the CA revokes, an item that is the only
   * copy), set it, or sync the folder once after writing several files in it.
   */
  syncDir?: boolean;
}

/**
 * Writes `data` to `path` so that readers see either the old file or the whole
 * new one, never a part: write a sibling temp file, fsync, rename (and, with
 * `syncDir`, fsync the folder).
 *
 * @example Replacing a file
 * ```ts
 * import { writeFileAtomic } from "./fs.ts";
 * await writeFileAtomic("/tmp/example.txt", "hello\n", { mode: 0o600 });
 * ```
 */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  options: WriteAtomicOptions = {},
): Promise<void> {
  const tmp = join(dirname(path), `.${crypto.randomUUID()}.tmp`);
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const file = await Deno.open(tmp, { write: true, createNew: true, mode: options.mode ?? 0o644 });
  try {
    await file.write(bytes).then(async (n) => {
      let written = n;
      while (written < bytes.length) written += await file.write(bytes.subarray(written));
    });
    if (options.durable ?? true) await file.sync();
  } catch (e) {
    file.close();
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  file.close();
  try {
    if (options.createNew) {
      // link() fails when the target exists, so this never clobbers.
      await Deno.link(tmp, path);
      await Deno.remove(tmp);
    } else {
      await Deno.rename(tmp, path);
    }
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  if (options.syncDir) await syncDir(dirname(path));
}

/**
 * {@linkcode writeFileAtomic} with synchronous calls: for state that must be
 * durable before the caller goes on, with no await in between (nothing else
 * runs while it is written, so no event or frame can tell of it first).
 *
 * @example A small state file, durable with its name
 * ```ts
 * import { writeFileAtomicSync } from "./fs.ts";
 * writeFileAtomicSync("/tmp/example.txt", "hello\n", { mode: 0o600, syncDir: true });
 * ```
 */
export function writeFileAtomicSync(
  path: string,
  data: string | Uint8Array,
  options: WriteAtomicOptions = {},
): void {
  const tmp = join(dirname(path), `.${crypto.randomUUID()}.tmp`);
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  try {
    {
      using file = Deno.openSync(tmp, {
        write: true,
        createNew: true,
        mode: options.mode ?? 0o644,
      });
      for (let n = 0; n < bytes.length;) n += file.writeSync(bytes.subarray(n));
      if (options.durable ?? true) file.syncSync();
    }
    if (options.createNew) {
      // link() fails when the target exists, so this never clobbers.
      Deno.linkSync(tmp, path);
      Deno.removeSync(tmp);
    } else {
      Deno.renameSync(tmp, path);
    }
  } catch (e) {
    try {
      Deno.removeSync(tmp);
    } catch { /* never made, or already renamed */ }
    throw e;
  }
  if (options.syncDir) syncDirSync(dirname(path));
}

// The names writeFileAtomic gives its temporary files (crypto.randomUUID()), exactly: a file of
// someone else's that merely ends in `.tmp` is never taken for one.
const ATOMIC_TEMP = /^\.[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.tmp$/;

/**
 * Whether `name` is one {@linkcode writeFileAtomic} gives its temporary file: what a write killed
 * between its write and its rename (or link) leaves, never a file of anyone's.
 *
 * @example
 * ```ts
 * import { isAtomicTemp } from "./fs.ts";
 * isAtomicTemp(".0b5e2f4c-3f2a-4d7e-9c1b-5a6f7e8d9c0b.tmp"); // true
 * isAtomicTemp("notes.tmp"); // false
 * ```
 */
export function isAtomicTemp(name: string): boolean {
  return ATOMIC_TEMP.test(name);
}

/** Options of {@linkcode removeStaleTemps}. */
export interface StaleTempOptions {
  /**
   * Only files last modified before this time, ms since the epoch. Default: a minute before this
   * process started — a temporary file lives for one write and fsync; the writers hold no lock,
   * so one of another process of the same home, still being written, is younger.
   */
  before?: number;
}

/**
 * Removes the temporary files {@linkcode writeFileAtomic} left in `dir` when killed between its
 * write and its rename: only regular files named exactly as it names them
 * ({@linkcode isAtomicTemp}) and older than `options.before`. Returns how many it removed; a
 * missing folder holds none.
 *
 * @example At a start, before the files of a folder are counted
 * ```ts
 * import { removeStaleTemps } from "./fs.ts";
 * await removeStaleTemps("/tmp/alice/mailbox");
 * ```
 */
export function removeStaleTemps(
  dir: string,
  options: StaleTempOptions = {},
): Promise<number> {
  return removeStaleEntries(dir, { named: isAtomicTemp }, options);
}

/** Which entries {@linkcode removeStaleEntries} removes. */
export interface StaleEntries {
  /** Whether a name is one the writer gives what it leaves behind. */
  named: (name: string) => boolean;
  /** Folders (removed whole) instead of regular files. Default: false, files. */
  folders?: boolean;
}

/**
 * Removes from `dir` what a writer killed half-way left: the entries `which` names (regular files,
 * or folders with all they hold), last modified before `options.before` (default: a minute
 * before this process started: another process of the same home may be writing one now).
 * Returns how many it removed; a missing folder holds none. {@linkcode removeStaleTemps} and
 * lib/keys.ts `removeStaleKeygens` are this for their own names.
 *
 * @example
 * ```ts
 * import { removeStaleEntries } from "./fs.ts";
 * await removeStaleEntries("/tmp/alice", { named: (n) => n.startsWith(".partial-") });
 * ```
 */
export async function removeStaleEntries(
  dir: string,
  which: StaleEntries,
  options: StaleTempOptions = {},
): Promise<number> {
  const before = options.before ?? performance.timeOrigin - 60_000;
  const kind = (e: { isFile: boolean; isDirectory: boolean }) =>
    which.folders ? e.isDirectory : e.isFile;
  let removed = 0;
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (!kind(entry) || !which.named(entry.name)) continue;
      const path = join(dir, entry.name);
      const info = await Deno.lstat(path).catch(() => undefined);
      if (!info || !kind(info) || (info.mtime?.getTime() ?? Infinity) >= before) continue;
      await Deno.remove(path, { recursive: which.folders }).then(() => removed++, () => {});
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory)) throw e;
  }
  return removed;
}

/** Options of {@linkcode ensurePrivateDir}. */
export interface PrivateDirOptions {
  /**
   * fsync the parent of each folder this call creates, so that the new folders
   * survive a power cut (for a file in them that must). Default: false.
   */
  durable?: boolean;
}

/**
 * Creates `path` (and parents) and makes sure it is mode 0700.
 *
 * @example A private state directory
 * ```ts
 * import { ensurePrivateDir } from "./fs.ts";
 * await ensurePrivateDir("/tmp/e2e-chat-example");
 * ```
 */
export async function ensurePrivateDir(
  path: string,
  options: PrivateDirOptions = {},
): Promise<void> {
  // The folders missing now, deepest first: their parents' fsyncs make them durable.
  const missing: string[] = [];
  if (options.durable) {
    for (let dir = resolve(path); !await exists(dir); dir = dirname(dir)) missing.push(dir);
  }
  await Deno.mkdir(path, { recursive: true, mode: 0o700 });
  await Deno.chmod(path, 0o700);
  for (const dir of missing.reverse()) await syncDir(dirname(dir));
}

/**
 * {@linkcode ensurePrivateDir} with synchronous calls.
 *
 * @example A private state directory, durable
 * ```ts
 * import { ensurePrivateDirSync } from "./fs.ts";
 * ensurePrivateDirSync("/tmp/e2e-chat-example", { durable: true });
 * ```
 */
export function ensurePrivateDirSync(path: string, options: PrivateDirOptions = {}): void {
  // The folders missing now, deepest first: their parents' fsyncs make them durable.
  const missing: string[] = [];
  if (options.durable) {
    for (let dir = resolve(path); !existsSync(dir); dir = dirname(dir)) missing.push(dir);
  }
  Deno.mkdirSync(path, { recursive: true, mode: 0o700 });
  Deno.chmodSync(path, 0o700);
  for (const dir of missing.reverse()) syncDirSync(dirname(dir));
}

/**
 * Runs `fn` with a fresh 0700 directory inside `parent`, removed afterwards whatever happens.
 *
 * @example Scratch space
 * ```ts
 * import { withTempDir } from "./fs.ts";
 * await withTempDir("/tmp", async (dir) => await Deno.writeTextFile(`${dir}/x`, "1"));
 * ```
 */
export async function withTempDir<T>(parent: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ dir: parent, prefix: ".work-" });
  await Deno.chmod(dir, 0o700);
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Whether something exists at `path` (without following a final symlink). */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * {@linkcode exists} with a synchronous call.
 *
 * @example A folder that may be gone
 * ```ts
 * import { existsSync } from "./fs.ts";
 * console.log(existsSync("/tmp"));
 * ```
 */
export function existsSync(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * fsync of a folder: makes the names in it durable (a file created, renamed
 * into it or removed), which POSIX does not promise after the file's own fsync.
 *
 * @example After a rename
 * ```ts
 * import { syncDir } from "./fs.ts";
 * await syncDir("/tmp");
 * ```
 */
export async function syncDir(path: string): Promise<void> {
  using dir = await Deno.open(path, { read: true });
  await dir.sync();
}

/**
 * {@linkcode syncDir} with a synchronous call: for a name that must be durable
 * before the caller goes on, with no await in between.
 *
 * @example After a rename
 * ```ts
 * import { syncDirSync } from "./fs.ts";
 * syncDirSync("/tmp");
 * ```
 */
export function syncDirSync(path: string): void {
  using dir = Deno.openSync(path, { read: true });
  dir.syncSync();
}

/**
 * Reads from `file`'s position until `length` bytes or the end of the file,
 * whichever comes first (a short read does not stop it).
 *
 * @example The first 128 bytes
 * ```ts
 * import { readUpTo } from "./fs.ts";
 * using file = await Deno.open("README.md");
 * const head = await readUpTo(file, 128);
 * ```
 */
export async function readUpTo(file: Deno.FsFile, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let got = 0;
  while (got < length) {
    const n = await file.read(out.subarray(got));
    if (n === null) break;
    got += n;
  }
  return out.subarray(0, got);
}

/**
 * {@linkcode readUpTo} with synchronous reads: for a few bytes of a local file
 * on a hot path, where each asynchronous call costs tens of µs of CPU.
 *
 * @example The first 128 bytes
 * ```ts
 * import { readUpToSync } from "./fs.ts";
 * using file = Deno.openSync("README.md");
 * const head = readUpToSync(file, 128);
 * ```
 */
export function readUpToSync(file: Deno.FsFile, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let got = 0;
  while (got < length) {
    const n = file.readSync(out.subarray(got));
    if (n === null) break;
    got += n;
  }
  return out.subarray(0, got);
}

/**
 * Free bytes for an unprivileged user on the file system of `dir` (or of its nearest parent that
 * exists). Needs `--allow-sys=statfs`; one call costs a few µs (3.4 µs measured on Deno 2.9.6).
 *
 * @example
 * ```ts
 * import { freeBytes } from "./fs.ts";
 * console.log(freeBytes(".") > 0); // true
 * ```
 */
export function freeBytes(dir: string): number {
  let path = dir;
  while (true) {
    try {
      const s = statfsSync(path);
      return Number(s.bavail) * Number(s.bsize);
    } catch (e) {
      // node:fs reports a missing path as an Error with code ENOENT, not Deno.errors.NotFound.
      const missing = e instanceof Deno.errors.NotFound ||
        (e as { code?: string }).code === "ENOENT";
      const parent = join(path, "..");
      if (!missing || parent === path) throw e;
      path = parent;
    }
  }
}

/**
 * Who besides the user `uid` may rename or replace entries in the folder `info` describes:
 * `"owner"` when another user owns it, `"others"` when users other than the owner may write in it
 * (the group too unless `group` allows it; a sticky folder, as `/tmp`, lets a user rename only
 * their own entries, so it passes when `sticky` allows it), else undefined. Undefined as well where
 * files have no owners (Windows).
 *
 * @example
 * ```ts
 * import { othersMayRename } from "./fs.ts";
 * const info = await Deno.stat("/tmp");
 * console.log(othersMayRename(info, 0, { group: true, sticky: true })); // undefined for root
 * ```
 */
export function othersMayRename(
  info: Deno.FileInfo,
  uid: number | null,
  allow: { group: boolean; sticky: boolean },
): "owner" | "others" | undefined {
  if (uid === null || info.uid === null || info.mode === null) return undefined;
  if (info.uid !== uid) return "owner";
  const writers = info.mode & (allow.group ? 0o002 : 0o022);
  if (writers === 0 || (allow.sticky && (info.mode & 0o1000) !== 0)) return undefined;
  return "others";
}

/** Makes a hard link `to` of `from` (tests stand in a file system without them). */
export type Link = (from: string, to: string) => Promise<void>;

/** Options of {@linkcode placeNew}. */
export interface PlaceNewOptions {
  /** Makes the hard link. Default: `Deno.link`. */
  link?: Link;
  /** Holds the empty placeholder of the fallback with a flock until the rename (see there). */
  lockPlaceholder?: boolean;
}

/**
 * Moves the file `from` to the name `to` unless something has that name (then false, and `from`
 * stays). A hard link never overwrites. A file system without them (vfat, exFAT, some network
 * shares) says EPERM or "not supported": there the name is first claimed with O_EXCL, so nothing
 * there is replaced, and `from` renamed over its own empty placeholder — held with a flock
 * meanwhile with `lockPlaceholder`, so that whoever takes an unlocked empty file for a torn one
 * does not take it.
 *
 * @example
 * ```ts ignore
 * if (!await placeNew(partial, "report.pdf")) console.log("taken: try another name");
 * ```
 */
export async function placeNew(
  from: string,
  to: string,
  options: PlaceNewOptions = {},
): Promise<boolean> {
  let linked = true;
  try {
    await (options.link ?? Deno.link)(from, to);
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) return false;
    if (!(e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.NotSupported)) {
      throw e;
    }
    linked = false;
  }
  if (linked) {
    await Deno.remove(from); // its failure is said, not taken for a file system without links
    return true;
  }
  let placeholder: Deno.FsFile;
  try {
    placeholder = await Deno.open(to, { write: true, createNew: true, mode: 0o600 });
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) return false;
    throw e;
  }
  try {
    if (options.lockPlaceholder) await placeholder.tryLock(true);
    else placeholder.close();
    await Deno.rename(from, to);
    return true;
  } catch (e) {
    await Deno.remove(to).catch(() => {});
    throw e;
  } finally {
    try {
      placeholder.close();
    } catch { /* closed already */ }
  }
}

/**
 * The system's words for a file error `e`, without the call and the paths Deno adds: "No such
 * file or directory", "Too many open files".
 */
export function systemReason(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  return e.message.replace(/ \(os error \d+\)/, "").replace(/: \w+ '.*$/s, "");
}
