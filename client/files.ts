/**
 * Files between peers: safe names, hashing, and receiving into a partial file
 * that becomes the real one only after its size and SHA-256 matched.
 *
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { basename, dirname, join, resolve } from "node:path";
import { E2eError } from "../lib/errors.ts";
import {
  freeBytes,
  type Link,
  othersMayRename,
  placeNew,
  syncDir,
  systemReason,
  writeFileAtomic,
} from "../lib/fs.ts";

// Drawn as blanks: braille blank, Hangul fillers (also default-ignorable, but some fonts draw them).
const BLANK_FILLERS = /[\u2800\u3164\u115f\u1160\uffa0]/g;
// deno-lint-ignore no-control-regex
const INVISIBLE = /[\u0000-\u001f\u007f-\u009f]|\p{Default_Ignorable_Code_Point}/gu;

/**
 * Makes an announced file name safe to create in the downloads folder, and to show: no path, no
 * `..`, no NUL, control, bidi or invisible character, no lone surrogate (U+FFFD instead: the name
 * it gets on disk), one space for a run of spaces or blank fillers, no leading dot, no trailing
 * dot or space, at most 200 bytes. Idempotent.
 *
 * @example
 * ```ts
 * import { safeFileName } from "./files.ts";
 * safeFileName("../../etc/passwd"); // "passwd"
 * safeFileName("invoice.pdf" + "\u2800".repeat(60) + ".sh"); // "invoice.pdf .sh"
 * ```
 */
export function safeFileName(name: string): string {
  // The file system stores a lone surrogate as U+FFFD: the name reported must be the one on disk.
  let safe = name.toWellFormed()
    // Characters drawn as blanks (braille blank, Hangul fillers) count as spaces: a run of them
    // could push the real extension off screen, as in "invoice.pdf⠀⠀⠀…⠀.sh".
    .replace(BLANK_FILLERS, " ")
    // Controls; bidi controls ("exe.txt" shown as "txt.exe") and other characters drawn as
    // nothing (zero-width space and joiners, word joiner, BOM, soft hyphen, tags…).
    .replace(INVISIBLE, "")
    .replace(/\s+/g, " ")
    .replace(/\\/g, "/");
  safe = safe.split("/").filter((p) => p && p !== "." && p !== "..").pop() ?? "";
  safe = safe.replace(/^[.\s]+/, "");
  // Cut whole characters (never half a surrogate pair), then trim: a cut may end in a space or dot.
  const chars = [...safe];
  while (new TextEncoder().encode(chars.join("")).length > 200) chars.pop();
  safe = chars.join("").replace(/[\s.]+$/, "");
  return safe || "file";
}

/**
 * The SHA-256 (hex) and size of a file (a path, or an open file read from where it is), in chunks.
 *
 * @example
 * ```ts
 * import { hashFile } from "./files.ts";
 * const { sha256, size } = await hashFile("README.md");
 * ```
 */
export async function hashFile(
  from: string | Deno.FsFile,
): Promise<{ sha256: string; size: number }> {
  if (typeof from === "string") {
    using file = await Deno.open(from);
    return await hashFile(file);
  }
  const file = from;
  const hash = createHash("sha256");
  let size = 0;
  const buffer = new Uint8Array(256 * 1024);
  while (true) {
    const n = await file.read(buffer);
    if (n === null) break;
    hash.update(buffer.subarray(0, n));
    size += n;
  }
  return { sha256: hash.digest("hex"), size };
}

/** Options of {@linkcode IncomingFile.start}. */
export interface IncomingFileOptions {
  /** Makes a hard link (tests stand in a folder without them). Default: `Deno.link`. */
  link?: Link;
}

/** A file being received into `dir`. */
export class IncomingFile {
  /** The name as announced (unsafe; for display through a sanitizer only). */
  readonly announced: string;
  /** Bytes announced. */
  readonly size: number;
  /**
   * SHA-256 announced: up front, or (from a peer that sends it at the end) once
   * {@linkcode IncomingFile.finish} was given it; after a successful finish, the file's.
   */
  sha256: string | undefined;
  /** Bytes received so far. */
  received = 0;
  #dir: string;
  #partial: string;
  #file: Deno.FsFile;
  #hash: Hash;
  #link: Link;
  // A second handle on the partial file, for syncing what was written while more is written
  // (Deno runs the calls on one handle one at a time; the kernel syncs the file, not the handle).
  #syncer: Deno.FsFile | undefined;
  #unsynced = 0;
  #syncing: Promise<void> | undefined;
  #syncError: unknown;

  private constructor(
    dir: string,
    partial: string,
    file: Deno.FsFile,
    announced: string,
    size: number,
    sha256: string | undefined,
    link: Link,
    syncer: Deno.FsFile | undefined,
  ) {
    this.#syncer = syncer;
    this.#link = link;
    this.#dir = dir;
    this.#partial = partial;
    this.#file = file;
    this.#hash = createHash("sha256");
    this.announced = announced;
    this.size = size;
    this.sha256 = sha256;
  }

  /**
   * Starts receiving into `dir` (created 0700 if missing) under a `.partial-*` name, mode 0600.
   * Without `sha256` (it comes at the end), {@linkcode IncomingFile.finish} must be given it.
   */
  static async start(
    dir: string,
    announced: string,
    size: number,
    sha256?: string,
    options: IncomingFileOptions = {},
  ): Promise<IncomingFile> {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    // The folder a symbolic link points to now, used from here on: whoever may change the link
    // could otherwise point the path we present elsewhere after the check.
    const real = await Deno.realPath(dir);
    const { partial, file } = await makePartial(dir, real);
    let syncer: Deno.FsFile | undefined;
    try {
      const info = await file.stat();
      // The partial file is ours: its owner is who we run as (no --allow-sys=uid needed).
      await checkOwnFolder(dir, real, info.uid);
      syncer = await openSyncer(partial, info);
    } catch (e) {
      await Deno.remove(partial).catch(() => {});
      file.close();
      throw e;
    }
    return new IncomingFile(
      real,
      partial,
      file,
      announced,
      size,
      sha256,
      options.link ?? Deno.link,
      syncer,
    );
  }

  /** Appends bytes; refuses more than announced. */
  async write(bytes: Uint8Array): Promise<void> {
    if (this.received + bytes.length > this.size) {
      throw new E2eError("ERR_BAD_REQUEST", "Malformed frame: more file data than announced");
    }
    this.#hash.update(bytes);
    let n = 0;
    while (n < bytes.length) n += await this.#file.write(bytes.subarray(n));
    this.received += bytes.length;
    // The disk takes what was written while the rest comes, instead of all of it at the end.
    this.#unsynced += bytes.length;
    if (this.#unsynced >= SYNC_EVERY_BYTES && this.#syncer && !this.#syncing) {
      this.#unsynced = 0;
      this.#syncing = this.#syncer.syncData()
        .catch((e) => void (this.#syncError ??= e))
        .finally(() => this.#syncing = undefined);
    }
  }

  // Waits for a sync in progress, then closes the second handle.
  async #stopSyncing(): Promise<void> {
    await this.#syncing;
    try {
      this.#syncer?.close();
    } catch { /* already closed */ }
    this.#syncer = undefined;
  }

  /**
   * Checks size and SHA-256 (the one announced up front, else `sha256`, sent at the end), then
   * moves the file to a free final name; returns its path. A mismatch deletes the partial file.
   */
  async finish(sha256?: string): Promise<string> {
    if ((this.sha256 === undefined) === (sha256 === undefined)) {
      await this.abort();
      throw new TypeError("A file's SHA-256 is given once: up front or at the end");
    }
    this.sha256 ??= sha256;
    await this.#stopSyncing();
    try {
      if (this.#syncError) throw this.#syncError;
      await this.#file.sync();
    } catch (e) {
      await this.abort();
      throw new E2eError(
        "ERR_FILE",
        `Cannot keep "${safeFileName(this.announced)}" in "${this.#dir}": ${systemReason(e)}`,
        { hint: KEEP_HINT, cause: e },
      );
    }
    // The file stays open, and so locked, until it is in place or removed (makePartial).
    using _closed = { [Symbol.dispose]: () => this.#close() };
    const digest = this.#hash.digest("hex");
    if (this.received !== this.size || digest !== this.sha256) {
      await Deno.remove(this.#partial).catch(() => {});
      throw new E2eError(
        "ERR_BAD_REQUEST",
        this.received !== this.size
          ? `File ended after ${this.received} of ${this.size} bytes`
          : "File's SHA-256 does not match what was announced",
      );
    }
    const name = safeFileName(this.announced);
    const dot = name.lastIndexOf(".");
    const [stem, ext] = dot > 0 ? [name.slice(0, dot), name.slice(dot)] : [name, ""];
    for (let i = 0; i < 10_000; i++) {
      const target = join(this.#dir, i === 0 ? name : `${stem} (${i})${ext}`);
      try {
        if (!await placeNew(this.#partial, target, { link: this.#link })) continue;
        // The sender hears "delivered" next: the name must survive a power cut too (left
        // as a partial file, it would be removed as stale at the next start).
        await syncDir(this.#dir);
        return target;
      } catch (e) {
        await Deno.remove(this.#partial).catch(() => {});
        throw new E2eError(
          "ERR_FILE",
          `Cannot keep "${name}" in "${this.#dir}": ${systemReason(e)}`,
          { hint: KEEP_HINT, cause: e },
        );
      }
    }
    await Deno.remove(this.#partial).catch(() => {});
    throw new E2eError("ERR_FILE", `No free name for "${name}" in "${this.#dir}"`);
  }

  /** Gives up: deletes and closes the partial file. */
  async abort(): Promise<void> {
    await this.#stopSyncing();
    await Deno.remove(this.#partial).catch(() => {});
    this.#close();
  }

  #close(): void {
    try {
      this.#file.close();
    } catch { /* already closed */ }
  }
}

// A file is checked, then presented (terminal, page, history) by its path: whoever else may
// rename or replace files in the folder (another user who owns it, or any user when anyone may
// write in it) could swap in bytes of their own after the check. So a `--downloads` folder
// must be ours and closed to other users' writes (HOME/downloads, 0700, always is), or sticky
// like /tmp, where only a file's owner may rename or remove it. The same holds for each folder
// above it (`real`, symbolic links resolved), which could have ours renamed away and another put
// in its place; those may also be root's. And for each folder above it on the path as given
// (`dir`): one that others may write in lets them replace a symbolic link in it, and so send the
// next files into any folder of ours (~/.ssh, say), which the checks above would all pass.
async function checkOwnFolder(dir: string, real: string, uid: number | null): Promise<void> {
  const rules = { group: true, sticky: true };
  const who = othersMayRename(await Deno.stat(real), uid, rules);
  if (who) {
    const why = who === "owner" ? "it belongs to another user" : "every user may write in it";
    throw new E2eError("ERR_FILE", `Cannot receive files into "${dir}": ${why}`, { hint: HINT });
  }
  const checked = new Set<string>();
  for (const start of [real, resolve(dir)]) {
    for (let above = dirname(start); !checked.has(above); above = dirname(above)) {
      checked.add(above);
      const info = await Deno.stat(above);
      const whoAbove = othersMayRename(info, info.uid === 0 ? 0 : uid, rules);
      if (whoAbove) {
        const why = whoAbove === "owner" ? "belongs to another user" : "every user may write in";
        throw new E2eError(
          "ERR_FILE",
          `Cannot receive files into "${dir}": it is inside "${above}", which ${why}`,
          { hint: HINT },
        );
      }
      if (dirname(above) === above) break;
    }
  }
}

// Opens the partial file again, read-only, to sync it beside the writes; undefined if it cannot
// (then all is synced at the end, as before). It must be the file we made: same device, same inode.
async function openSyncer(partial: string, made: Deno.FileInfo): Promise<Deno.FsFile | undefined> {
  let syncer: Deno.FsFile | undefined;
  try {
    syncer = await Deno.open(partial, { read: true });
    const info = await syncer.stat();
    if (info.dev === made.dev && info.ino !== null && info.ino === made.ino) return syncer;
  } catch { /* synced at the end */ }
  syncer?.close();
  return undefined;
}

const KEEP_HINT = "check that the downloads folder is still there, can be written to and has " +
  "room, or choose another (--downloads DIR)";

const HINT = "choose a folder of your own that only you can write in (--downloads DIR), " +
  "or leave --downloads out";

// The names of partial files: exactly those IncomingFile makes (crypto.randomUUID()), so a file of
// the user's own in a --downloads folder (".partial-draft.md") is never taken for one.
const PARTIAL_NAME =
  /^\.partial-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

// Makes a partial file in `real` and holds it with a flock (released when it is closed, or its
// client dies) until it is in place or removed, so that another client using the folder leaves
// it alone (removeStalePartials). That client removes a file only while holding its lock: if it
// took the lock between our making the file and locking it, the file is gone or going once we
// hold the lock, and we make another.
async function makePartial(
  dir: string,
  real: string,
): Promise<{ partial: string; file: Deno.FsFile }> {
  for (let tries = 0; tries < 5; tries++) {
    const partial = join(real, `.partial-${crypto.randomUUID()}`);
    const file = await Deno.open(partial, { write: true, createNew: true, mode: 0o600 });
    try {
      // A file system without locks: received as before, unheld (removeStalePartials leaves it).
      const held = await file.tryLock(true).catch(() => true);
      if (held && sameFile(await file.stat(), await Deno.lstat(partial))) {
        return { partial, file };
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        await Deno.remove(partial).catch(() => {});
        file.close();
        throw e;
      }
    }
    await Deno.remove(partial).catch(() => {});
    file.close();
  }
  throw new E2eError(
    "ERR_FILE",
    `Cannot receive files into "${dir}": its partial files keep being removed`,
    { hint: KEEP_HINT },
  );
}

function sameFile(a: Deno.FileInfo, b: Deno.FileInfo): boolean {
  return a.ino !== null && a.dev === b.dev && a.ino === b.ino;
}

/**
 * Deletes the partial files that clients killed while receiving left in `dir`: only files named
 * as a client names them (`.partial-` and a UUID), and none that a running client holds (each
 * holds its own with a flock while it receives), so clients may share a downloads folder.
 *
 * @example
 * ```ts ignore
 * await removeStalePartials(downloads); // before this client receives into it
 * ```
 */
export async function removeStalePartials(dir: string): Promise<void> {
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch {
    return; // no folder yet
  }
  for (const entry of entries) {
    if (!entry.isFile || !PARTIAL_NAME.test(entry.name)) continue;
    const path = join(dir, entry.name);
    let file: Deno.FsFile;
    try {
      // Read and write: opening a FIFO put in its place (in a shared sticky folder) cannot block.
      file = await Deno.open(path, { read: true, write: true });
    } catch {
      continue; // gone, or another user's
    }
    try {
      // Removed while we hold it (never on a file system without locks), and only the file we
      // opened (not a link put in its place).
      if (await file.tryLock(true) && sameFile(await file.stat(), await Deno.lstat(path))) {
        await Deno.remove(path);
      }
    } catch {
      /* gone already */
    } finally {
      file.close();
    }
  }
}

/** The name announced for a local path. */
export function announcedName(path: string): string {
  return basename(path);
}

/**
 * How a received file is named to the user: `name`, the name it was saved under (`path`'s, a
 * "(1)" included), and `announced`, the name its sender gave, only when that differs (unsafe: for
 * display through a sanitizer only). A name padded with blanks or invisible characters must not
 * be what the user reads or downloads under.
 *
 * @example
 * ```ts
 * import { receivedName } from "./files.ts";
 * receivedName("a\u2800\u2800.sh", "/home/bob/downloads/a .sh"); // { name: "a .sh", announced: "a\u2800\u2800.sh" }
 * receivedName("notes.txt", "/home/bob/downloads/notes.txt"); // { name: "notes.txt" }
 * ```
 */
export function receivedName(
  announced: string,
  path: string,
): { name: string; announced?: string } {
  const name = basename(path);
  return name === announced ? { name } : { name, announced };
}

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** A received file is synced to disk every this many bytes as it comes, not all at its end. */
const SYNC_EVERY_BYTES = 16 * MiB;

/** What a client accepts of incoming files (docs/PROTOCOL.md §3, "Offers, consent and quotas"). */
export interface FileLimits {
  /** Largest file taken without asking, from a peer whose key is pinned. Default: 25 MiB. */
  autoAccept: number;
  /** Bytes taken from one peer per run of the client. Default: 1 GiB. */
  peerBytes: number;
  /** Files taken from one peer per run of the client. Default: 100. */
  peerFiles: number;
  /** Bytes taken from all peers per run of the client. Default: 4 GiB. */
  totalBytes: number;
  /** Files taken from all peers per run of the client. Default: 1000. */
  totalFiles: number;
  /** Free space the downloads folder keeps after a file. Default: 1 GiB. */
  freeFloor: number;
}

/** The defaults of {@linkcode FileLimits}. */
export const DEFAULT_FILE_LIMITS: Readonly<FileLimits> = Object.freeze({
  autoAccept: 25 * MiB,
  peerBytes: GiB,
  peerFiles: 100,
  totalBytes: 4 * GiB,
  totalFiles: 1000,
  freeFloor: GiB,
});

/**
 * Parses a size such as `25MiB`, `1.5GiB`, `700MB`, `4096` or `0` into bytes.
 *
 * @example
 * ```ts
 * import { parseSize } from "./files.ts";
 * parseSize("25MiB"); // 26214400
 * ```
 */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|K|M|G|T)?$/i.exec(text.trim());
  const units: Record<string, number> = {
    b: 1,
    kib: 1024,
    mib: MiB,
    gib: GiB,
    tib: 1024 * GiB,
    kb: 1e3,
    mb: 1e6,
    gb: 1e9,
    tb: 1e12,
    k: 1024,
    m: MiB,
    g: GiB,
    t: 1024 * GiB,
  };
  const bytes = m ? Math.floor(Number(m[1]) * units[(m[2] ?? "b").toLowerCase()]) : NaN;
  if (!Number.isSafeInteger(bytes)) {
    throw new E2eError(
      "ERR_USAGE",
      `A size is a number with an optional unit (25MiB, 1GiB, 4096), not ${JSON.stringify(text)}`,
    );
  }
  return bytes;
}

/** A size for people: `25 MiB`, `700 B`. */
export function formatSize(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i++;
  }
  return `${i === 0 ? value : Number(value.toFixed(1))} ${units[i]}`;
}

/** Free bytes on the disk of a folder: lib/fs.ts owns it (the CA reads it too). */
export { freeBytes };

/** Options of {@linkcode FileQuota}. */
export interface FileQuotaOptions {
  /** Free bytes in the downloads folder. Default: {@linkcode freeBytes}. */
  free?: (dir: string) => number;
  /**
   * A JSON file that remembers the files received (who sent them, where they are, their size)
   * across runs; {@linkcode FileQuota.load} reads it. Default: none (the quotas last one run).
   */
  ledger?: string;
}

/** One received file the quotas count, as the ledger keeps it. */
interface Received {
  peer: string;
  path: string;
  bytes: number;
}

/**
 * What incoming files may still take, per peer and in all: files are counted
 * when accepted and given back if they fail. With a ledger, the files received
 * in earlier runs count too, for as long as they are still in their place (a
 * file the user deleted or moved frees its share).
 */
export class FileQuota {
  readonly limits: Readonly<FileLimits>;
  #dir: string;
  #free: (dir: string) => number;
  #total = { bytes: 0, files: 0 };
  #peers = new Map<string, { bytes: number; files: number }>();
  #ledger?: string;
  #received: Received[] = [];
  #saving: Promise<void> = Promise.resolve();
  // Files taken and not arrived yet (nor given back): none of their bytes may be on the disk,
  // so the free space read for the next file must not be promised to it as well.
  #receiving: Array<{ peer: string; bytes: number }> = [];
  #receivingBytes = 0;

  /**
   * A quota for files received into `dir`.
   *
   * @example
   * ```ts
   * import { DEFAULT_FILE_LIMITS, FileQuota } from "./files.ts";
   * const quota = new FileQuota("/tmp", DEFAULT_FILE_LIMITS);
   * quota.refusal("bob", 1024); // undefined: it fits
   * ```
   */
  constructor(dir: string, limits: Readonly<FileLimits>, options: FileQuotaOptions = {}) {
    this.#dir = dir;
    this.limits = limits;
    this.#free = options.free ?? freeBytes;
    this.#ledger = options.ledger;
  }

  /**
   * Counts the files of earlier runs that the ledger names and that are still there.
   * A missing ledger is an empty one; an unreadable one is set aside, with the reason returned
   * (the quotas then count from zero rather than refuse every file).
   */
  async load(): Promise<string | undefined> {
    if (!this.#ledger) return undefined;
    let text: string;
    try {
      text = await Deno.readTextFile(this.#ledger);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return undefined;
      throw e;
    }
    let entries: unknown;
    try {
      entries = JSON.parse(text);
      if (!Array.isArray(entries)) throw new Error("not a list");
    } catch {
      await Deno.rename(this.#ledger, `${this.#ledger}.unreadable`).catch(() => {});
      return `The record of received files (${this.#ledger}) was unreadable: set aside, ` +
        `the file quotas count from zero`;
    }
    for (const e of entries as Array<Record<string, unknown>>) {
      if (
        typeof e?.peer === "string" && typeof e.path === "string" &&
        Number.isSafeInteger(e.bytes) && (e.bytes as number) >= 0
      ) {
        const r = { peer: e.peer, path: e.path, bytes: e.bytes as number };
        this.#count(r, 1);
        this.#received.push(r);
      }
    }
    this.#forgetRemoved();
    return undefined;
  }

  /**
   * Records that the file `take` counted arrived at `path`, so it counts in later runs too:
   * resolves once the ledger (in order with its other writes) is on disk, its name too, so that
   * a crash after the sender hears the file arrived cannot leave it uncounted. Throws `ERR_FILE`
   * when the ledger cannot be written; {@linkcode FileQuota.unstored} then undoes the record.
   */
  async stored(peer: string, path: string, bytes: number): Promise<void> {
    this.#arrived(this.#receiving.find((r) => r.peer === peer && r.bytes === bytes));
    this.#received.push({ peer, path, bytes });
    try {
      await this.#save();
    } catch (e) {
      throw new E2eError(
        "ERR_FILE",
        `Cannot record "${basename(path)}" for the file quotas in "${this.#ledger}": ${
          systemReason(e)
        }`,
        { cause: e },
      );
    }
  }

  /**
   * Undoes {@linkcode FileQuota.stored} for a file that is not kept after all (its ledger entry
   * or history line could not be written): it is being received again until `take`'s give-back
   * is called.
   */
  unstored(peer: string, path: string, bytes: number): void {
    const i = this.#received.findLastIndex((r) =>
      r.peer === peer && r.path === path && r.bytes === bytes
    );
    if (i < 0) return;
    this.#received.splice(i, 1);
    this.#receiving.push({ peer, bytes });
    this.#receivingBytes += bytes;
    this.#save().catch(() => {});
  }

  /** Resolves once the ledger writes started so far are done. */
  async flush(): Promise<void> {
    await this.#saving.catch(() => {});
  }

  /** Why a file of `size` bytes from `peer` is refused, or undefined when it fits. */
  refusal(peer: string, size: number): string | undefined {
    const over = this.#overQuota(peer, size);
    // Before refusing, give back what files the user removed since.
    if (over && this.#forgetRemoved()) return this.refusal(peer, size);
    if (over) return over;
    const l = this.limits;
    let free: number;
    try {
      free = this.#free(this.#dir);
    } catch {
      return "the free space of the downloads folder cannot be read";
    }
    const receiving = this.#receivingBytes;
    if (free - receiving - size < l.freeFloor) {
      return `it would leave less than ${formatSize(l.freeFloor)} free on the disk (${
        formatSize(free)
      } free${
        receiving ? `, ${formatSize(receiving)} of it promised to files being received` : ""
      })`;
    }
    return undefined;
  }

  #overQuota(peer: string, size: number): string | undefined {
    const l = this.limits;
    const p = this.#peers.get(peer) ?? { bytes: 0, files: 0 };
    if (p.files + 1 > l.peerFiles) {
      return `the quota of ${l.peerFiles} files from "${peer}" is used up`;
    }
    if (p.bytes + size > l.peerBytes) {
      return `it would pass the quota of ${formatSize(l.peerBytes)} from "${peer}" (${
        formatSize(p.bytes)
      } taken)`;
    }
    if (this.#total.files + 1 > l.totalFiles) {
      return `the quota of ${l.totalFiles} files in all is used up`;
    }
    if (this.#total.bytes + size > l.totalBytes) {
      return `it would pass the quota of ${formatSize(l.totalBytes)} in all (${
        formatSize(this.#total.bytes)
      } taken)`;
    }
    return undefined;
  }

  // Files of the ledger that are gone (deleted or moved by the user) stop counting.
  // Returns whether any was.
  #forgetRemoved(): boolean {
    const kept = this.#received.filter((r) => {
      try {
        return Deno.statSync(r.path).isFile;
      } catch {
        this.#count(r, -1);
        return false;
      }
    });
    if (kept.length === this.#received.length) return false;
    this.#received = kept;
    this.#save().catch(() => {});
    return true;
  }

  #count(r: { peer: string; bytes: number }, sign: 1 | -1): void {
    const p = this.#peers.get(r.peer) ?? { bytes: 0, files: 0 };
    this.#peers.set(r.peer, p);
    p.bytes += sign * r.bytes;
    p.files += sign;
    this.#total.bytes += sign * r.bytes;
    this.#total.files += sign;
  }

  #save(): Promise<void> {
    const ledger = this.#ledger;
    if (!ledger) return Promise.resolve();
    // In order, and each write has the list as it is when it starts.
    this.#saving = this.#saving.catch(() => {}).then(() =>
      writeFileAtomic(ledger, JSON.stringify(this.#received) + "\n", { mode: 0o600, syncDir: true })
    );
    return this.#saving;
  }

  /** Counts a file of `size` from `peer`; returns the function that gives it back. */
  take(peer: string, size: number): () => void {
    this.#count({ peer, bytes: size }, 1);
    const receiving = { peer, bytes: size };
    this.#receiving.push(receiving);
    this.#receivingBytes += size;
    let given = false;
    return () => {
      if (given) return;
      given = true;
      this.#count({ peer, bytes: size }, -1);
      // Files of one peer and size are alike to stored(), which may have taken this one's place
      // for another that arrived first: then that one's is left, and goes now.
      this.#arrived(
        this.#receiving.includes(receiving)
          ? receiving
          : this.#receiving.find((r) => r.peer === peer && r.bytes === size),
      );
    };
  }

  // A file taken is no longer being received: it arrived (its bytes are on the disk) or failed.
  #arrived(receiving: { peer: string; bytes: number } | undefined): void {
    const i = receiving ? this.#receiving.indexOf(receiving) : -1;
    if (i < 0) return;
    this.#receiving.splice(i, 1);
    this.#receivingBytes -= receiving!.bytes;
  }
}
