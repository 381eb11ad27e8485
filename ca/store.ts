/**
 * The CA's files on disk and how they change: openssl's own database (index,
 * certs/, crlnumber) changed only inside a transaction that works on copies
 * and commits by rename, under an exclusive lock shared by every process.
 *
 * A process killed half-way leaves the committed files as they were; at worst
 * an issued-but-uncommitted certificate file in certs/ that no index entry
 * names, which nothing reads.
 *
 * @module
 */
import { join } from "node:path";
import {
  ensurePrivateDir,
  exists,
  existsSync,
  readUpToSync,
  syncDir,
  writeFileAtomic,
} from "../lib/fs.ts";
import { type LockOptions, withLock } from "../lib/lock.ts";
import { normalizeSerialHex } from "../lib/x509.ts";
import type { CaPaths } from "./home.ts";

// Kept for callers that import it from here (tests/faults_test.ts, tests/bench/_probe.ts).
export { CaPaths } from "./home.ts";

/** One line of openssl's index.txt. */
export interface IndexEntry {
  /** V (valid), R (revoked) or E (marked expired by openssl). */
  status: "V" | "R" | "E";
  /** End of validity. */
  expires: Date;
  /** When it was revoked, for status R. */
  revokedAt?: Date;
  /** Why it was revoked, for status R. */
  reason?: string;
  /** Serial number, uppercase hex. */
  serial: string;
  /** The subject's common name (the user name). */
  name: string;
}

const prepared = new Set<string>();

/** What identifies the content of index.txt, for telling whether it changed. */
interface IndexState {
  ino: number | null;
  generation: string;
  size: number;
}

// Of each CA folder: the index as this process last made it durable, itself and its name. Another
// state is another process's doing, maybe of one killed before its fsync.
const durableIndex = new Map<string, IndexState>();
// Older than any signing can be (openssl's timeout is two minutes, the lock's one).
const SIGNING_LEFTOVER_MS = 10 * 60_000;

/** The database files a full copy holds; openssl runs with the copy's folder as its cwd. */
const DB_FILES = ["index.txt", "index.txt.attr", "crlnumber"] as const;

/** A folder where one `openssl ca` signing runs, against an empty index of its own. */
export interface SignFolder {
  /** The folder (openssl's cwd). */
  dir: string;
  /** Leaves this signing out of the commit (its certificate is never recorded). */
  discard(): void;
}

/**
 * The private work space of one transaction.
 *
 * Signing does not need openssl to read the whole index (it only appends a
 * line), so each signing runs in a {@linkcode SignFolder} with an empty index,
 * several at once if wanted, and the commit appends their lines to the real
 * index: the cost of a signing does not grow with the number of certificates
 * issued. Revocation and CRLs need openssl to see every entry: they run in
 * {@linkcode Transaction.fullCopy}, which the commit renames into place.
 */
export class Transaction {
  /** The work folder, made on first use (a transaction that only adopts signings needs none). */
  readonly dir: string;
  #paths: CaPaths;
  #full = false;
  #signs: Array<{ dir: string; keep: boolean }> = [];
  #afterCommit: Array<() => Promise<void>> = [];
  #beforeIndex: Array<() => Promise<void>> = [];
  #made = false;

  /** A transaction of the CA at `paths` working in `dir`. */
  constructor(paths: CaPaths, dir: string) {
    this.#paths = paths;
    this.dir = dir;
  }

  /** Copies the whole database into {@linkcode Transaction.dir} (once) and returns that folder. */
  async fullCopy(): Promise<string> {
    if (!this.#full) {
      this.#made = true;
      await Deno.mkdir(join(this.dir, "certs"), { recursive: true, mode: 0o700 });
      for (const file of DB_FILES) {
        await Deno.copyFile(join(this.#paths.dir, file), join(this.dir, file));
      }
      this.#full = true;
    }
    return this.dir;
  }

  /**
   * Runs `fn` after the commit, still under the lock (the issuance log appends
   * what the commit added there). Not run when the transaction fails.
   */
  afterCommit(fn: () => Promise<void>): void {
    this.#afterCommit.push(fn);
  }

  /**
   * Runs `fn` during the commit, once the new certificates are on their way to
   * disk and before the index changes (the commit point): what `fn` makes
   * durable is there whenever the index names the certificates. These run
   * together, alongside the certificates' fsyncs; a throw fails the commit.
   */
  beforeIndex(fn: () => Promise<void>): void {
    this.#beforeIndex.push(fn);
  }

  /** Whether {@linkcode Transaction.dir} was made (and needs removing). */
  get made(): boolean {
    return this.#made;
  }

  /** The functions given to {@linkcode Transaction.afterCommit}. */
  get committed(): ReadonlyArray<() => Promise<void>> {
    return this.#afterCommit;
  }

  /** A new folder for one signing, with an empty index. */
  async signFolder(): Promise<SignFolder> {
    // Reserve the slot before any await: several signings prepare their folders at once.
    const entry = { dir: join(this.dir, `sign-${this.#signs.length}`), keep: true };
    this.#signs.push(entry);
    this.#made = true;
    await prepareSignFolder(entry.dir);
    return { dir: entry.dir, discard: () => (entry.keep = false) };
  }

  /**
   * Commits the signing done in `dir`, a folder from {@linkcode signingFolder}
   * (made outside the transaction, so that openssl signs without the lock):
   * its certificate and index line go in with this transaction's.
   */
  adopt(dir: string): { discard(): void } {
    const entry = { dir, keep: true };
    this.#signs.push(entry);
    // Also during the commit, from a beforeIndex() function: its certificate is taken back.
    return { discard: () => (entry.keep = false) };
  }

  /** Commits: new certificates first, then the index (the commit point), then crlnumber and crl.pem. */
  async commit(): Promise<void> {
    const paths = this.#paths;
    const folders = this.#signs.filter((s) => s.keep);
    if (this.#full) folders.push({ dir: this.dir, keep: true });
    // Small local calls are synchronous (a few µs each instead of tens of µs of CPU); the
    // fsyncs stay asynchronous.
    const moves: Array<[string, string, { keep: boolean }]> = [];
    for (const folder of folders) {
      for (const entry of Deno.readDirSync(join(folder.dir, "certs"))) {
        const target = join(paths.certs, entry.name);
        if (existsSync(target)) continue;
        moves.push([join(folder.dir, "certs", entry.name), target, folder]);
      }
    }
    // On disk before the index names them, their names in certs/ too: after a power cut no line
    // points at nothing. Moved first, so that the fsyncs of the files and of the folder, and what
    // beforeIndex() makes durable, go at once; a certificate in certs/ that no index line names
    // counts for nothing (as one a killed process leaves), and a failed commit takes them back.
    for (const [from, to] of moves) {
      // openssl made it with the umask's mode (0666 under umask 000): a certificate is public,
      // and only we may change it.
      Deno.chmodSync(from, 0o644);
      Deno.renameSync(from, to);
    }
    const takeBack = (all: boolean) => {
      for (const [, to, folder] of moves) {
        if (!all && folder.keep) continue;
        try {
          Deno.removeSync(to);
        } catch { /* gone already: nothing to take back */ }
      }
    };
    try {
      await Promise.all([
        ...moves.map(([, to]) => syncFile(to)),
        ...(moves.length ? [syncDir(paths.certs)] : []),
        ...this.#beforeIndex.map((fn) => fn()),
      ]);
    } catch (e) {
      takeBack(true);
      throw e;
    }
    // Signings a beforeIndex() function left out: their certificates count for nothing.
    takeBack(false);
    let lines = "";
    let replaced = false;
    for (const s of this.#signs) {
      if (s.keep) lines += Deno.readTextFileSync(join(s.dir, "index.txt"));
    }
    if (this.#full) {
      const index = join(this.dir, "index.txt");
      if (lines) await Deno.writeTextFile(index, lines, { append: true });
      const next = await Deno.readTextFile(index);
      if (next !== await Deno.readTextFile(paths.index)) {
        // A new generation before and after the swap: readers that cached the old index
        // notice even when the new file gets the old one's inode number back.
        await bumpGeneration(paths);
        await writeFileAtomic(paths.index, next, { mode: 0o600 });
        await bumpGeneration(paths);
        replaced = true;
      }
      const crlnumber = await Deno.readTextFile(join(this.dir, "crlnumber"));
      if (crlnumber !== await Deno.readTextFile(paths.crlnumber)) {
        await writeFileAtomic(paths.crlnumber, crlnumber, { mode: 0o600 });
      }
    } else if (lines) {
      // Appending is the commit point; a crash mid-write leaves a partial last line,
      // which readers ignore and the next transaction cuts off (repairIndex).
      using file = Deno.openSync(paths.index, { append: true });
      const bytes = new TextEncoder().encode(lines);
      const size = file.statSync().size;
      try {
        let n = 0;
        while (n < bytes.length) n += file.writeSync(bytes.subarray(n));
      } catch (e) {
        // A full disk stops the append part-way, maybe after whole lines of the group: cut
        // them off, since their callers hear that the commit failed (synchronously, before
        // anything in this process reads them). Lines that cannot be cut off keep their
        // certificates.
        try {
          file.truncateSync(size);
        } catch {
          throw e;
        }
        takeBack(true);
        throw e;
      }
      const before = durableIndex.get(paths.dir);
      await file.sync();
      // What was durable before, and our lines: durable now (when the file is the same one).
      const after = indexState(paths, file);
      if (before?.ino === after.ino && before.generation === after.generation) {
        durableIndex.set(paths.dir, after);
      }
    }
    if (this.#full && await exists(join(this.dir, "crl.pem"))) {
      await writeFileAtomic(paths.crl, await Deno.readFile(join(this.dir, "crl.pem")), {
        mode: 0o644,
      });
    }
    // The files a full copy replaced by rename (index, crlnumber, crl.pem): their new names durable.
    if (this.#full) {
      await syncDir(paths.dir);
      // A new index we wrote (fsynced, then named): all of it durable now.
      if (replaced) durableIndex.set(paths.dir, indexState(paths));
    }
  }
}

/**
 * A new folder for one signing, with an empty index, outside any transaction:
 * `openssl ca` runs there without the lock, and {@linkcode Transaction.adopt}
 * commits what it wrote. The caller removes it afterwards; one a killed
 * process left behind is removed by a later transaction once it is old.
 *
 * @example
 * ```ts
 * import { CaPaths } from "./home.ts";
 * import { signingFolder, transaction } from "./store.ts";
 * const paths = new CaPaths("/tmp/home");
 * const dir = await signingFolder(paths); // then run openssl ca -batch … with that cwd
 * await transaction(paths, async (tx) => tx.adopt(dir));
 * ```
 */
export async function signingFolder(paths: CaPaths): Promise<string> {
  const dir = join(paths.signing, crypto.randomUUID());
  await prepareSignFolder(dir);
  return dir;
}

function prepareSignFolder(dir: string): Promise<void> {
  Deno.mkdirSync(join(dir, "certs"), { recursive: true, mode: 0o700 });
  // No index.txt.attr: with an empty index, openssl's uniqueness check has nothing to compare.
  Deno.writeTextFileSync(join(dir, "index.txt"), "", { mode: 0o600 });
  return Promise.resolve();
}

/**
 * Runs `fn` with exclusive access to the CA database and a private
 * {@linkcode Transaction}. When `fn` returns, what it did is committed; when
 * it throws, nothing is. `lock` says how to wait for the CA lock (default: 60 s, silently).
 *
 * @example
 * ```ts
 * import { CaPaths } from "./home.ts";
 * import { transaction } from "./store.ts";
 * await transaction(new CaPaths("/tmp/home"), async (tx) => {
 *   const cwd = await tx.fullCopy(); // then run openssl ca -revoke … with that cwd
 * });
 * ```
 */
export function transaction<T>(
  paths: CaPaths,
  fn: (tx: Transaction) => Promise<T>,
  lock: LockOptions = {},
): Promise<T> {
  return withLock(paths.lock, async () => {
    // Once per process: a long-running service leaves a crashed CLI's leftovers to the next start.
    if (!prepared.has(paths.dir)) {
      await ensurePrivateDir(paths.tmp);
      await removeLeftovers(paths);
      prepared.add(paths.dir);
    }
    await repairIndex(paths);
    const tx = new Transaction(paths, join(paths.tmp, `tx-${crypto.randomUUID()}`));
    try {
      const result = await fn(tx);
      await tx.commit();
      // The issuance log takes up what the index holds: only what a power cut cannot take back.
      if (tx.committed.length) await makeIndexDurable(paths);
      for (const after of tx.committed) await after();
      return result;
    } finally {
      if (tx.made) await Deno.remove(tx.dir, { recursive: true }).catch(() => {});
    }
  }, lock);
}

/**
 * Runs `fn` under the CA lock without a work copy (for init and reads that must
 * not interleave with a commit). `lock` says how to wait for it (default: 60 s, silently).
 */
export function locked<T>(
  paths: CaPaths,
  fn: () => Promise<T>,
  lock: LockOptions = {},
): Promise<T> {
  return withLock(paths.lock, fn, lock);
}

// Work folders and temp files of a process killed mid-transaction; we hold the lock, so none is in use.
async function removeLeftovers(paths: CaPaths): Promise<void> {
  for await (const entry of Deno.readDir(paths.tmp)) {
    const path = join(paths.tmp, entry.name);
    if (path === paths.signing) continue;
    await Deno.remove(path, { recursive: true }).catch(() => {});
  }
  // Signing folders live outside the lock: only old ones (a signing lasts at most minutes).
  try {
    for await (const entry of Deno.readDir(paths.signing)) {
      const path = join(paths.signing, entry.name);
      const info = await Deno.stat(path).catch(() => null);
      if (info?.mtime && Date.now() - info.mtime.getTime() > SIGNING_LEFTOVER_MS) {
        await Deno.remove(path, { recursive: true }).catch(() => {});
      }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  // Temp files of atomic writes: only old ones, as invites.json is written under another lock.
  for await (const entry of Deno.readDir(paths.dir)) {
    if (!/^\.[0-9a-f-]{36}\.tmp$/.test(entry.name)) continue;
    const path = join(paths.dir, entry.name);
    const info = await Deno.stat(path).catch(() => null);
    if (info?.mtime && Date.now() - info.mtime.getTime() > 60_000) {
      await Deno.remove(path).catch(() => {});
    }
  }
}

function indexState(paths: CaPaths, file?: Deno.FsFile): IndexState {
  const generation = readGeneration(paths);
  const info = file ? file.statSync() : Deno.statSync(paths.index);
  return { ino: info.ino, generation, size: info.size };
}

// Before: a transaction that committed nothing let the log take up a line another process had
// written and was killed before fsyncing; after a power cut the log held a certificate the index
// did not (ERR_LOG_INVALID for good). No fsync when the index is as this process left it durable
// (every commit that appended or replaced it), so a running service's enrollments gain none.
async function makeIndexDurable(paths: CaPaths): Promise<void> {
  const known = durableIndex.get(paths.dir);
  using file = Deno.openSync(paths.index, { read: true });
  const now = indexState(paths, file);
  if (known?.ino === now.ino && known.generation === now.generation && known.size === now.size) {
    return;
  }
  await file.sync();
  // Replaced by a process that may have died before it synced the folder: its name too.
  if (known?.ino !== now.ino || known.generation !== now.generation) await syncDir(paths.dir);
  durableIndex.set(paths.dir, now);
}

async function syncFile(path: string): Promise<void> {
  using file = Deno.openSync(path, { read: true, write: true });
  await file.sync();
}

async function bumpGeneration(paths: CaPaths): Promise<void> {
  await writeFileAtomic(paths.generation, crypto.randomUUID() + "\n", { mode: 0o600 });
}

/** The current generation of the index ("" before the first replacement). */
function readGeneration(paths: CaPaths): string {
  try {
    return Deno.readTextFileSync(paths.generation);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return "";
    throw e;
  }
}

// An append cut short by a crash leaves a last line without "\n": cut it off.
async function repairIndex(paths: CaPaths): Promise<void> {
  // Synchronous reads (here and in IndexCache): small and local, run on every transaction and
  // request, where each asynchronous call costs tens of µs of CPU.
  using file = Deno.openSync(paths.index, { read: true, write: true });
  const size = file.statSync().size;
  if (size === 0) return;
  const tail = new Uint8Array(Math.min(size, 4096));
  file.seekSync(size - tail.length, Deno.SeekMode.Start);
  let got = 0;
  while (got < tail.length) {
    const n = file.readSync(tail.subarray(got));
    if (n === null) break;
    got += n;
  }
  if (tail[tail.length - 1] === 0x0a) return;
  const nl = tail.lastIndexOf(0x0a);
  // A partial line longer than 4 KiB cannot be ours; leave the file for a human.
  if (nl < 0 && size > tail.length) return;
  await file.truncate(size - tail.length + nl + 1);
  await file.sync();
}

/**
 * Parses openssl's index.txt. Lines for subjects other than a single CN are kept
 * with name "".
 *
 * @example
 * ```ts
 * import { parseIndex } from "./store.ts";
 * const entries = parseIndex("V\t261202204302Z\t\t35BE\tunknown\t/CN=alice\n");
 * console.log(entries[0].name); // "alice"
 * ```
 */
export function parseIndex(text: string): IndexEntry[] {
  const entries: IndexEntry[] = [];
  // A last line without "\n" is an append still under way (or cut short): not committed.
  const complete = text.slice(0, text.lastIndexOf("\n") + 1);
  for (const line of complete.split("\n")) {
    if (!line) continue;
    const [status, expires, revoked, serial, _file, subject] = line.split("\t");
    if (status !== "V" && status !== "R" && status !== "E") continue;
    const [revokedAt, reason] = (revoked ?? "").split(",");
    const cn = /^\/CN=([^/]*)$/.exec(subject ?? "");
    entries.push({
      status,
      expires: parseTime(expires),
      revokedAt: revokedAt ? parseTime(revokedAt) : undefined,
      reason: revokedAt ? (TIMED_REASONS[reason] ?? (reason || "unspecified")) : undefined,
      serial: serial.toUpperCase(),
      name: cn ? cn[1] : "",
    });
  }
  return entries;
}

// `openssl ca -revoke -crl_compromise TIME` (and -crl_CA_compromise) records the reason as
// "keyTime,TIME" ("CAkeyTime,TIME"), which its CRLs list as keyCompromise (CACompromise).
const TIMED_REASONS: Record<string, string> = {
  keyTime: "keyCompromise",
  CAkeyTime: "CACompromise",
};

/**
 * `text`, an index.txt, with the revocation reason of the revoked `serial` changed to `reason`
 * (its revocation date kept): for a certificate revoked already (superseded, say) whose key turns
 * out compromised, which `openssl ca -revoke` refuses to revoke again. Throws `RangeError` when
 * `serial` is not a revoked entry of `text`.
 *
 * @example
 * ```ts
 * import { changeReason, parseIndex } from "./store.ts";
 * const text = changeReason("R\t261202204302Z\t261201000000Z,superseded\t35BE\tunknown\t/CN=alice\n", "35BE", "keyCompromise");
 * console.log(parseIndex(text)[0].reason); // "keyCompromise"
 * ```
 */
export function changeReason(text: string, serial: string, reason: string): string {
  const wanted = normalizeSerialHex(serial);
  let found = false;
  const lines = text.split("\n").map((line) => {
    const fields = line.split("\t");
    if (fields[0] !== "R" || fields.length < 6 || normalizeSerialHex(fields[3]) !== wanted) {
      return line;
    }
    found = true;
    fields[2] = `${fields[2].split(",")[0]},${reason}`;
    return fields.join("\t");
  });
  if (!found) throw new RangeError(`Serial ${serial} is not a revoked entry of the index`);
  return lines.join("\n");
}

// The key-ids file: a first line naming the format, then "SERIAL KEYID" lines (serial as
// normalizeSerialHex gives it, key id as the authority's keyIdentity: hex SHA-256, "rsa-n:" first
// for an RSA modulus).
const KEY_IDS_HEADER = "e2e-chat key-ids 1";
const KEY_IDS_LINE = /^((?:[1-9A-F][0-9A-F]*)|0) ((?:rsa-n:)?[0-9a-f]{64})$/;

/**
 * The text of a key-ids file (CaPaths.keyIds) holding `ids`, key identities by serial.
 *
 * @example
 * ```ts
 * import { formatKeyIds, parseKeyIds } from "./store.ts";
 * const text = formatKeyIds(new Map([["35BE", "ab".repeat(32)]]));
 * console.log(parseKeyIds(text)?.get("35BE")); // "abab…"
 * ```
 */
export function formatKeyIds(ids: Map<string, string>): string {
  let text = `${KEY_IDS_HEADER}\n`;
  for (const [serial, id] of ids) text += `${serial} ${id}\n`;
  return text;
}

/**
 * The key identities by serial a key-ids file's `text` holds, or undefined when it is damaged
 * (another format, a line that is not one, a serial twice, no final newline): then none of it
 * is used.
 *
 * @example
 * ```ts
 * import { parseKeyIds } from "./store.ts";
 * console.log(parseKeyIds("e2e-chat key-ids 1\n35BE oops\n")); // undefined
 * ```
 */
export function parseKeyIds(text: string): Map<string, string> | undefined {
  if (!text.endsWith("\n")) return undefined;
  const lines = text.slice(0, -1).split("\n");
  if (lines[0] !== KEY_IDS_HEADER) return undefined;
  const ids = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const m = KEY_IDS_LINE.exec(line);
    if (!m || ids.has(m[1])) return undefined;
    ids.set(m[1], m[2]);
  }
  return ids;
}

/** The key identities of the key-ids file (empty when it is missing or damaged). */
export async function readKeyIds(paths: CaPaths): Promise<Map<string, string>> {
  try {
    return parseKeyIds(await Deno.readTextFile(paths.keyIds)) ?? new Map();
  } catch {
    return new Map();
  }
}

/**
 * Replaces the key-ids file with `ids`, atomically (readers see the old file or the new one) and
 * without an fsync: it is derived, and a lost or damaged one is rebuilt from certs/.
 */
export async function writeKeyIds(paths: CaPaths, ids: Map<string, string>): Promise<void> {
  await writeFileAtomic(paths.keyIds, formatKeyIds(ids), { durable: false });
}

/** Reads and parses the committed index. */
export async function readIndex(paths: CaPaths): Promise<IndexEntry[]> {
  return parseIndex(await Deno.readTextFile(paths.index));
}

// openssl writes UTCTime (YYMMDDHHMMSSZ) before 2050 and GeneralizedTime after.
function parseTime(text: string): Date {
  const m = /^(\d{2}|\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text);
  if (!m) return new Date(NaN);
  let year = Number(m[1]);
  if (m[1].length === 2) year += year < 50 ? 2000 : 1900;
  return new Date(
    Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])),
  );
}

/**
 * The committed index, kept in memory and brought up to date cheaply: when the
 * file only grew (a signing appended lines) just the new bytes are parsed;
 * when it was replaced (a revocation renamed a new one into place) it is read
 * again. A replacement is told by index.gen, which every replacement changes,
 * and not by the inode alone: a new file may get the old one's number back. Lets the service check revocation on every request.
 */
export class IndexCache {
  #paths: CaPaths;
  #ino: number | null = -1;
  #generation = "";
  #offset = 0;
  #entries: IndexEntry[] = [];
  #bySerial = new Map<string, IndexEntry>();
  #last: Promise<unknown> = Promise.resolve();

  /** A cache of the index of the CA at `paths`. */
  constructor(paths: CaPaths) {
    this.#paths = paths;
  }

  /** The entry of `serial` (hex, any case, leading zeros or not) as committed now. */
  async find(serial: string): Promise<IndexEntry | undefined> {
    await this.entries();
    return this.#bySerial.get(normalizeSerialHex(serial));
  }

  /** The entries as committed now. Calls are serialized: each update reads on from the last. */
  entries(): Promise<IndexEntry[]> {
    const next = this.#last.catch(() => {}).then(() => this.#update());
    this.#last = next;
    return next;
  }

  #update(): IndexEntry[] {
    // The generation is read before the index, so a swap in between is seen next time.
    const generation = readGeneration(this.#paths);
    using file = Deno.openSync(this.#paths.index);
    const info = file.statSync();
    if (info.ino !== this.#ino || info.size < this.#offset || generation !== this.#generation) {
      this.#generation = generation;
      this.#ino = info.ino;
      this.#offset = 0;
      this.#entries = [];
      this.#bySerial = new Map();
    }
    if (info.size === this.#offset) return this.#entries;
    file.seekSync(this.#offset, Deno.SeekMode.Start);
    const bytes = readUpToSync(file, info.size - this.#offset);
    const complete = bytes.subarray(0, bytes.lastIndexOf(0x0a) + 1);
    for (const entry of parseIndex(new TextDecoder().decode(complete))) {
      this.#entries.push(entry);
      this.#bySerial.set(normalizeSerialHex(entry.serial), entry);
    }
    this.#offset += complete.length;
    return this.#entries;
  }
}
