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
import { ensurePrivateDir, exists, writeFileAtomic } from "../lib/fs.ts";
import { withLock } from "../lib/lock.ts";

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

/** Paths of the CA directory. */
export class CaPaths {
  /** The home directory. */
  readonly home: string;
  /** HOME/ca, mode 0700. */
  readonly dir: string;

  /** The paths of the CA under `home`. */
  constructor(home: string) {
    this.home = home;
    this.dir = join(home, "ca");
  }
  /** The encrypted CA key (0600). */
  get key(): string {
    return join(this.dir, "ca.key");
  }
  /** The self-signed CA certificate. */
  get cert(): string {
    return join(this.dir, "ca.crt");
  }
  /** The openssl configuration. */
  get config(): string {
    return join(this.dir, "openssl.cnf");
  }
  /** openssl's index of issued certificates. */
  get index(): string {
    return join(this.dir, "index.txt");
  }
  /** Issued certificates, one SERIAL.pem each. */
  get certs(): string {
    return join(this.dir, "certs");
  }
  /** The latest CRL, PEM. */
  get crl(): string {
    return join(this.dir, "crl.pem");
  }
  /** Scratch space for transactions. */
  get tmp(): string {
    return join(this.dir, "tmp");
  }
  /** The lock every writer takes; beside the CA dir so that init can take it too. */
  get lock(): string {
    return join(this.home, ".ca.lock");
  }
  /** The file of an issued certificate. */
  certFile(serial: string): string {
    return join(this.certs, `${serial}.pem`);
  }
}

/** The files a transaction works on, as copies; openssl runs with `dir` as its cwd. */
const DB_FILES = ["index.txt", "index.txt.attr", "crlnumber"] as const;

/**
 * Runs `fn` with exclusive access to the CA database and a private work
 * directory holding copies of it. When `fn` returns, the copies it changed are
 * committed: new certificates first, then index.txt (the commit point), then
 * crlnumber and crl.pem. When it throws, nothing is committed.
 *
 * @example
 * ```ts
 * import { CaPaths, transaction } from "./store.ts";
 * await transaction(new CaPaths("/tmp/home"), async (work) => {
 *   // run openssl ca with cwd = work
 * });
 * ```
 */
export function transaction<T>(paths: CaPaths, fn: (work: string) => Promise<T>): Promise<T> {
  return withLock(paths.lock, async () => {
    await ensurePrivateDir(paths.tmp);
    await removeLeftovers(paths);
    const work = await Deno.makeTempDir({ dir: paths.tmp, prefix: "tx-" });
    try {
      await Deno.mkdir(join(work, "certs"));
      for (const file of DB_FILES) await Deno.copyFile(join(paths.dir, file), join(work, file));
      const result = await fn(work);
      await commit(paths, work);
      return result;
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  });
}

/**
 * Runs `fn` under the CA lock without a work copy (for init and reads that must
 * not interleave with a commit).
 */
export function locked<T>(paths: CaPaths, fn: () => Promise<T>): Promise<T> {
  return withLock(paths.lock, fn);
}

// Work folders and temp files of a process killed mid-transaction; we hold the lock, so none is in use.
async function removeLeftovers(paths: CaPaths): Promise<void> {
  for await (const entry of Deno.readDir(paths.tmp)) {
    await Deno.remove(join(paths.tmp, entry.name), { recursive: true }).catch(() => {});
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

async function commit(paths: CaPaths, work: string): Promise<void> {
  for await (const entry of Deno.readDir(join(work, "certs"))) {
    const target = join(paths.certs, entry.name);
    await syncFile(join(work, "certs", entry.name));
    if (!await exists(target)) await Deno.rename(join(work, "certs", entry.name), target);
  }
  for (const file of ["index.txt", "crlnumber"]) {
    const next = await Deno.readTextFile(join(work, file));
    if (next === await Deno.readTextFile(join(paths.dir, file))) continue;
    await writeFileAtomic(join(paths.dir, file), next, { mode: 0o600 });
  }
  if (await exists(join(work, "crl.pem"))) {
    await writeFileAtomic(paths.crl, await Deno.readFile(join(work, "crl.pem")), { mode: 0o644 });
  }
}

async function syncFile(path: string): Promise<void> {
  const file = await Deno.open(path, { read: true, write: true });
  try {
    await file.sync();
  } finally {
    file.close();
  }
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
  for (const line of text.split("\n")) {
    if (!line) continue;
    const [status, expires, revoked, serial, _file, subject] = line.split("\t");
    if (status !== "V" && status !== "R" && status !== "E") continue;
    const [revokedAt, reason] = (revoked ?? "").split(",");
    const cn = /^\/CN=([^/]*)$/.exec(subject ?? "");
    entries.push({
      status,
      expires: parseTime(expires),
      revokedAt: revokedAt ? parseTime(revokedAt) : undefined,
      reason: revokedAt ? (reason || "unspecified") : undefined,
      serial: serial.toUpperCase(),
      name: cn ? cn[1] : "",
    });
  }
  return entries;
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
 * The committed index, re-read only when the file changed (index.txt is
 * replaced by rename, so its inode, size or mtime changes on every commit).
 * Lets the service check revocation on every request without rereading it.
 */
export class IndexCache {
  #paths: CaPaths;
  #key = "";
  #entries: IndexEntry[] = [];

  /** A cache of the index of the CA at `paths`. */
  constructor(paths: CaPaths) {
    this.#paths = paths;
  }

  /** The entries as committed now. */
  async entries(): Promise<IndexEntry[]> {
    const info = await Deno.stat(this.#paths.index);
    const key = `${info.ino}:${info.size}:${info.mtime?.getTime()}`;
    if (key !== this.#key) {
      this.#entries = await readIndex(this.#paths);
      this.#key = key;
    }
    return this.#entries;
  }
}
