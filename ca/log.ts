/**
 * The issuance log: every certificate in the CA's openssl database, in the
 * order the database committed them, as the leaves of an RFC 6962 Merkle tree
 * whose heads are C2SP checkpoints signed with the log's Ed25519 key. Clients
 * accept a certificate only with a proof that it is in the tree, and check that
 * the tree only grows — so a CA that issues a certificate it does not show
 * everybody is caught by software (docs/TRANSPARENCY.md).
 *
 * Files (ca/home.ts): `log/entries` holds the leaves, each a 4-byte big-endian
 * length and the certificate's DER, appended and never rewritten; `log/checkpoint`
 * the latest signed tree head. The database is the source of truth: after every
 * commit, still under the CA lock, {@linkcode IssuanceLog.sync} appends what the
 * database has and the log lacks, then the CA's current CRL (crl.pem) when the CA
 * key signed it and it is newer than the last such CRL logged, then signs a checkpoint. So every CRL the CA
 * signs is in the log before it is served with its proof
 * ({@linkcode IssuanceLog.latestCrl}), and a CA cannot show one member a CRL it
 * hides from the others without forking the log. A crash anywhere
 * leaves at most a torn last record (cut off at the next sync, never published)
 * or a checkpoint behind the entries (signed again at the next sync); neither
 * can put a certificate in the log that the database does not hold.
 *
 * The entries file must only grow, by appends under the CA lock (this process's
 * or another's). Before each read, append and commit the log looks at it (one
 * stat, a few µs): a file shorter than what was read, another file in its place,
 * one gone, or one rewritten without growing, is an `ERR_LOG_INVALID` that
 * stays — nothing more is appended or signed over a tree the disk no longer
 * holds, until the process starts again and checks the log afresh.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { X509Certificate } from "node:crypto";
import {
  type Checkpoint,
  type NoteKey,
  openCheckpoint,
  signCheckpoint,
} from "../lib/checkpoint.ts";
import { crlNumberOf, looksLikeCrl, parseCrlDer } from "../lib/crl.ts";
import { children, readDer, Tag } from "../lib/der.ts";
import { E2eError } from "../lib/errors.ts";
import {
  ensurePrivateDir,
  existsSync,
  readUpTo,
  readUpToSync,
  writeFileAtomicSync,
} from "../lib/fs.ts";
import { type LogProofJson, logProofJson } from "../lib/log_proof.ts";
import { type Hash, leafHash, MerkleTree } from "../lib/merkle.ts";
import { pemDecode } from "../lib/pem.ts";
import { normalizeSerialHex } from "../lib/x509.ts";
import type { CaPaths } from "./home.ts";
import type { IndexEntry } from "./store.ts";

/** Most entries one `GET /v1/log/entries` returns. */
export const MAX_ENTRIES_PAGE = 256;
/**
 * Largest certificate or CRL a log record may hold: a CRL grows with every revocation (and
 * renewal), by about 40 bytes each, so 16 MiB is some 400,000 of them (1 MiB, some 25,000, made
 * every enrollment fail after its commit once reached). Served whole, a page of entries or
 * `GET /v1/log/crl` of it stays under a client's 64 MiB reply (client/ca_client.ts) in base64.
 */
const MAX_RECORD_BYTES = 16 << 20;
/** Most bytes of entries one page holds (a page ends earlier when CRLs are large). */
const MAX_PAGE_BYTES = 8 << 20;
/** Appended bytes up to this size are read synchronously (see #read). */
const SYNC_READ_BYTES = 1 << 20;

// The origin line is the CA's fingerprint: one module owns that, lib/log_proof.ts.
export { logOrigin } from "../lib/log_proof.ts";

/** What {@linkcode IssuanceLog.verify} found. */
export interface LogReport {
  /** Entries in the log. */
  size: number;
  /** Entries in the database. */
  database: number;
  /** Entries that are CRLs (the others are the database's certificates). */
  crls: number;
  /** The root recomputed from every entry, hex. */
  root: string;
  /** The size of the signed checkpoint. */
  checkpointSize: number;
  /** Every problem found; empty when the log is sound. */
  problems: string[];
}

/** The issuance log of one CA, as read from its files. */
export class IssuanceLog {
  /** The log's origin line (also its note key name). */
  readonly origin: string;
  #paths: CaPaths;
  #verifier: NoteKey;
  #tree = new MerkleTree();
  #offsets: number[] = [];
  #serials: Array<string | null> = []; // null: a CRL
  #certs = 0; // entries that are certificates (the database's lines, in order)
  // The CRL entries the CA key signed, numbered, each above the one before, in log order: what
  // a crl.pem planted without the key (another CA's, numbered 2^127-1) would otherwise be
  // served as, and stop every later CRL from being logged (their numbers below it).
  #crls: Array<{ index: number; number: bigint }> = [];
  #ca: X509Certificate;
  #checkedCrl?: Uint8Array; // the CRL #newCrl checked last: not checked again when read back
  #crlFile?: string; // crl.pem as last looked at (inode, time, size), to read it only when new
  #byLeaf = new Map<string, number>();
  #loaded = 0; // bytes of whole records read so far
  #reading?: Promise<void>;
  #agreed = 0; // entries already found equal to the database's lines
  #agreedLines = 0; // the database lines among them
  #signed?: { text: string; checkpoint: Checkpoint }; // the checkpoint file as last read
  #seen?: SeenFile; // the entries file as last read or written
  #changed?: E2eError; // the entries changed under this process: refused from then on

  private constructor(paths: CaPaths, origin: string, verifier: NoteKey, ca: X509Certificate) {
    this.#paths = paths;
    this.origin = origin;
    this.#verifier = verifier;
    this.#ca = ca;
  }

  /**
   * Reads the log under `paths` (its entries, and the CA certificate, whose key
   * must have signed a CRL for it to count). Checkpoints are verified with
   * `verifier` (the log key's public half).
   *
   * @example
   * ```ts
   * import { X509Certificate } from "node:crypto";
   * import { CaPaths } from "./home.ts";
   * import { IssuanceLog, logOrigin } from "./log.ts";
   * const paths = new CaPaths("/tmp/home");
   * const origin = logOrigin("4f…");
   * const key = new X509Certificate(await Deno.readTextFile(paths.logCert)).publicKey;
   * const log = await IssuanceLog.open(paths, { name: origin, key });
   * console.log(log.size);
   * ```
   */
  static async open(paths: CaPaths, verifier: NoteKey): Promise<IssuanceLog> {
    const ca = new X509Certificate(await Deno.readTextFile(paths.cert));
    const log = new IssuanceLog(paths, verifier.name, verifier, ca);
    await log.refresh();
    return log;
  }

  /** Entries read so far. */
  get size(): number {
    return this.#tree.size;
  }

  /** Reads the records appended since the last read (by this process or another). */
  refresh(): Promise<void> {
    // One read at a time: two would append the same records twice.
    this.#reading ??= this.#read().finally(() => (this.#reading = undefined));
    return this.#reading;
  }

  /** The root of the first `size` entries. */
  root(size: number = this.size): Hash {
    return this.#tree.root(size);
  }

  /** The serial (normalized hex) of entry `index`; null when that entry is a CRL (see isCrl). */
  serial(index: number): string | null {
    return this.#serials[index];
  }

  /** Whether entry `index` is a CRL, not a certificate (signed by the CA key or not: see verify()). */
  isCrl(index: number): boolean {
    return index >= 0 && index < this.#serials.length && this.#serials[index] === null;
  }

  /**
   * The newest CRL in the log that the latest checkpoint covers and the CA key signed, with its
   * inclusion proof against that checkpoint; undefined when the log holds no such CRL yet.
   */
  async latestCrl(): Promise<{ der: Uint8Array; log: LogProofJson } | undefined> {
    const { text, checkpoint } = await this.checkpoint();
    const last = this.#crls.findLast((c) => c.index < checkpoint.size);
    if (!last) return undefined;
    const [der] = await this.entries(last.index, last.index + 1);
    return {
      der,
      log: logProofJson(last.index, this.#tree.inclusionProof(last.index, checkpoint.size), text),
    };
  }

  /** The latest signed checkpoint, as written, and read (after reading entries it covers). */
  async checkpoint(): Promise<{ text: string; checkpoint: Checkpoint }> {
    const { text, checkpoint } = await this.#readSigned();
    if (checkpoint.size > this.size) await this.refresh();
    if (checkpoint.size > this.size) {
      throw new E2eError("ERR_LOG_INVALID", "The checkpoint covers entries the log does not have");
    }
    return { text, checkpoint };
  }

  /** The inclusion proof of the certificate `der` against the latest checkpoint. */
  async proofOf(der: Uint8Array): Promise<LogProofJson> {
    const { text, checkpoint } = await this.checkpoint();
    let index = this.#byLeaf.get(hex(leafHash(der)));
    if (index === undefined || index >= checkpoint.size) {
      await this.refresh();
      index = this.#byLeaf.get(hex(leafHash(der)));
    }
    if (index === undefined || index >= checkpoint.size) {
      throw new E2eError("ERR_NOT_FOUND", "That certificate is not in the issuance log yet");
    }
    return logProofJson(index, this.#tree.inclusionProof(index, checkpoint.size), text);
  }

  /** Inclusion path of entry `index` in the tree of `size` entries. */
  inclusionProof(index: number, size: number): Hash[] {
    return this.#tree.inclusionProof(index, size);
  }

  /** Consistency path from size `first` to size `second`. */
  consistencyProof(first: number, second: number): Hash[] {
    return this.#tree.consistencyProof(first, second);
  }

  /**
   * The DER of entries `start` ≤ i < `end` (at most {@linkcode MAX_ENTRIES_PAGE}); fewer, but at
   * least one, when they hold more than 8 MiB (large CRLs).
   */
  async entries(start: number, end: number): Promise<Uint8Array[]> {
    if (end - start > MAX_ENTRIES_PAGE) throw new RangeError("Too many entries at once");
    if (start >= end) return [];
    const offset = (i: number) => i < this.size ? this.#offsets[i] : this.#loaded;
    while (end - start > 1 && offset(end) - offset(start) > MAX_PAGE_BYTES) end--;
    const from = this.#offsets[start];
    const to = offset(end);
    // What the disk holds, changed or not: clients check it against the signed checkpoint, and
    // entries changed under the service are evidence for them to find.
    using file = await Deno.open(this.#paths.logEntries, { read: true });
    await file.seek(from, Deno.SeekMode.Start);
    const bytes = await readUpTo(file, to - from);
    return splitRecords(bytes).records;
  }

  /**
   * Throws `ERR_LOG_INVALID` when the entries file is no longer the one this
   * log read and wrote: shorter than what it read, another file in its place,
   * gone, or rewritten without growing (growth is another process's append,
   * read at the next refresh). Once thrown, it is thrown by every later call
   * here and by {@linkcode IssuanceLog.sync} and `refresh` (`entries` still
   * serves what the disk holds: clients check it against the checkpoint).
   * Synchronous and cheap (one stat): the CA calls it before each commit that
   * issues, so that a signing is refused before its certificate is committed.
   *
   * @example
   * ```ts
   * import { X509Certificate } from "node:crypto";
   * import { CaPaths } from "./home.ts";
   * import { IssuanceLog, logOrigin } from "./log.ts";
   * const paths = new CaPaths("/tmp/home");
   * const key = new X509Certificate(await Deno.readTextFile(paths.logCert)).publicKey;
   * const log = await IssuanceLog.open(paths, { name: logOrigin("4f…"), key });
   * log.checkUnchanged(); // throws ERR_LOG_INVALID once log/entries changed under it
   * ```
   */
  checkUnchanged(): void {
    let info: Deno.FileInfo | null = null;
    try {
      info = Deno.statSync(this.#paths.logEntries);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    this.#check(info);
  }

  /**
   * Brings the log level with the database — appends, in database order, every
   * certificate it lacks, then the CA's crl.pem when its CRL number is above that
   * of every CRL logged — and signs a checkpoint of the result. Call it only
   * under the CA lock. Throws `ERR_LOG_INVALID`, appending nothing, when the log
   * holds what the database does not, or its entries changed under this process
   * (see {@linkcode IssuanceLog.checkUnchanged}).
   */
  async sync(database: IndexEntry[], signer: NoteKey): Promise<void> {
    await this.#freshRead();
    await this.#cutTornTail();
    // The certificates among the entries are the database's lines, in order (CRLs between them).
    let line = this.#agreedLines;
    for (let i = this.#agreed; i < this.size; i++) {
      const serial = this.#serials[i];
      if (serial === null) continue;
      if (line >= database.length || normalizeSerialHex(database[line++].serial) !== serial) {
        throw new E2eError(
          "ERR_LOG_INVALID",
          `The issuance log and the database differ at entry ${i}`,
          {
            hint: "run `deno task ca log verify`",
          },
        );
      }
    }
    this.#agreed = this.size;
    this.#agreedLines = line;
    const current = await this.#readSigned().then((s) => s.checkpoint, () => undefined);
    // Never sign on top of entries that no longer hash to what was published.
    if (
      current && (current.size > this.size || hex(this.root(current.size)) !== hex(current.root))
    ) {
      throw new E2eError("ERR_LOG_INVALID", "The issuance log no longer matches its checkpoint", {
        hint: "run `deno task ca log verify`",
      });
    }
    // Synchronous calls for the few small local files of a commit (each asynchronous call costs
    // tens of µs of CPU); the fsync stays asynchronous.
    const added: Uint8Array[] = [];
    for (const entry of database.slice(this.#certs)) {
      const der = pemDecode(
        Deno.readTextFileSync(this.#paths.certFile(entry.serial)),
        "CERTIFICATE",
      );
      if (!der) throw new E2eError("ERR_LOG_INVALID", `Cannot read certificate ${entry.serial}`);
      added.push(der);
    }
    // A crl.pem that cannot be logged (unreadable, too large) keeps no certificate out of the
    // log: they are logged and signed, then the CRL's error is thrown.
    let crl: Uint8Array | undefined;
    let crlError: unknown;
    try {
      crl = this.#newCrl();
    } catch (e) {
      crlError = e;
    }
    if (crl) added.push(crl);
    if (added.length) {
      if (this.size === 0) await ensurePrivateDir(this.#paths.logDir);
      using file = openEntries(this.#paths.logEntries);
      // The file opened is the one read (a replacement since the read is not appended to).
      if (this.#seen) this.#check(file.statSync());
      const bytes = Buffer.concat(added.flatMap((der) => [lengthOf(der.length), der]));
      let n = 0;
      while (n < bytes.length) n += file.writeSync(bytes.subarray(n));
      // Durable before a checkpoint covers them: a checkpoint is never ahead of the entries.
      await file.sync();
      await this.refresh();
    }
    if (current?.size !== this.size) {
      const checkpoint = { origin: this.origin, size: this.size, root: this.root() };
      const text = signCheckpoint(checkpoint, signer);
      // Not fsynced: after a power cut the file may be an older checkpoint, or empty, and the
      // next sync (the service's start makes one before it answers) signs this one again from
      // the durable entries — byte for byte the same (the tree is the same, and Ed25519
      // signatures are deterministic).
      writeFileAtomicSync(this.#paths.logCheckpoint, text, { mode: 0o644, durable: false });
      this.#signed = { text, checkpoint }; // signed here: no need to check its signature again
    }
    if (crlError) throw crlError;
  }

  /**
   * Recomputes everything: every record reads, the tree of all entries has the
   * signed checkpoint's root (at its size), and entry i is the certificate of
   * the database's line i, byte for byte.
   */
  async verify(database: IndexEntry[]): Promise<LogReport> {
    const problems: string[] = [];
    const bytes = await Deno.readFile(this.#paths.logEntries).catch(() => new Uint8Array());
    const { records, rest } = splitRecords(bytes);
    if (rest) problems.push(`${rest} bytes of a torn last record (an append cut short)`);
    const tree = new MerkleTree(records.map(leafHash));
    // The CRLs among the entries; the others are the database's certificates, in order.
    const certs: Array<{ index: number; der: Uint8Array }> = [];
    let crls = 0;
    let last: bigint | undefined; // the number of the last CRL the CA key signed
    records.forEach((der, index) => {
      if (!looksLikeCrl(der)) return certs.push({ index, der });
      crls++;
      const number = this.#caCrlNumber(der);
      if (typeof number === "string") {
        problems.push(`log entry ${index} is a CRL the CA did not sign (${number})`);
      } else if (number === undefined) {
        problems.push(`log entry ${index} is a CRL without a CRL number`);
      } else if (last !== undefined && number <= last) {
        problems.push(
          `log entry ${index} is CRL number ${hexNumber(number)}, not above the CRL logged ` +
            `before it (number ${hexNumber(last)})`,
        );
      } else last = number;
    });
    let checkpointSize = 0;
    try {
      const checkpoint = openCheckpoint(
        await Deno.readTextFile(this.#paths.logCheckpoint),
        this.#verifier,
      );
      checkpointSize = checkpoint.size;
      if (checkpoint.size > tree.size) {
        problems.push(`the checkpoint has ${checkpoint.size} entries, the log only ${tree.size}`);
      } else if (hex(tree.root(checkpoint.size)) !== hex(checkpoint.root)) {
        problems.push(
          `the entries do not hash to the checkpoint's root at size ${checkpoint.size}`,
        );
      }
    } catch (e) {
      problems.push(`the checkpoint: ${e instanceof Error ? e.message : e}`);
    }
    for (let i = 0; i < Math.max(certs.length, database.length); i++) {
      const entry = database[i];
      if (i >= certs.length) {
        problems.push(`database entry ${i} (serial ${entry.serial}) is not in the log yet`);
        continue;
      }
      if (!entry) {
        problems.push(`log entry ${certs[i].index} is not in the database`);
        continue;
      }
      const der = await Deno.readTextFile(this.#paths.certFile(entry.serial)).then(
        (pem) => pemDecode(pem, "CERTIFICATE"),
        () => null,
      );
      if (!der || hex(der) !== hex(certs[i].der)) {
        problems.push(
          `log entry ${certs[i].index} is not the database's certificate ${entry.serial}`,
        );
      }
    }
    return {
      size: records.length,
      database: database.length,
      crls,
      root: hex(tree.root()),
      checkpointSize,
      problems,
    };
  }

  // The checkpoint file, its signature checked again only when its text changed.
  // deno-lint-ignore require-await
  async #readSigned(): Promise<{ text: string; checkpoint: Checkpoint }> {
    // A synchronous read: a few lines of a local file, read for every certificate issued.
    const text = Deno.readTextFileSync(this.#paths.logCheckpoint);
    if (this.#signed?.text !== text) {
      this.#signed = { text, checkpoint: openCheckpoint(text, this.#verifier) };
    }
    return this.#signed;
  }

  async #read(): Promise<void> {
    // Synchronous calls for what a commit appends (small and local; each asynchronous call costs
    // tens of µs of CPU), an asynchronous read for a large backlog (the first read of a big log).
    if (this.#changed) throw this.#changed;
    let file: Deno.FsFile;
    try {
      file = Deno.openSync(this.#paths.logEntries, { read: true });
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      this.#check(null); // gone: fine only when there were no entries yet
      return;
    }
    try {
      const info = file.statSync();
      this.#check(info);
      const size = info.size;
      this.#seen = seenFile(info);
      if (size <= this.#loaded) return;
      file.seekSync(this.#loaded, Deno.SeekMode.Start);
      const n = size - this.#loaded;
      const bytes = n <= SYNC_READ_BYTES ? readUpToSync(file, n) : await readUpTo(file, n);
      let offset = 0;
      for (const der of splitRecords(bytes).records) {
        const index = this.#tree.append(leafHash(der));
        this.#offsets.push(this.#loaded + offset);
        if (looksLikeCrl(der)) {
          this.#serials.push(null);
          // Served and compared with only if the CA key signed it (one #newCrl just checked is
          // not checked again: a signature costs ~0.1 ms, and each commit that revokes comes here).
          const checked = this.#checkedCrl && Buffer.from(der).equals(this.#checkedCrl);
          const number = checked ? crlNumberOf(der) : this.#caCrlNumber(der);
          const last = this.#crls.at(-1);
          if (typeof number === "bigint" && (!last || number > last.number)) {
            this.#crls.push({ index, number });
          }
        } else {
          this.#serials.push(serialOf(der));
          this.#certs++;
        }
        this.#byLeaf.set(hex(this.#tree.leaf(index)), index);
        offset += 4 + der.length;
      }
      this.#loaded += offset;
    } finally {
      file.close();
    }
  }

  // The CA's crl.pem, when the CA key signed it and it is newer (by number) than every CRL the
  // CA key signed in the log: to be appended. One stat when it is the file looked at before
  // (every commit that issues comes here). One the key did not sign is refused, not skipped: it
  // was put there by someone without the key (or the CA certificate is not the key's).
  #newCrl(): Uint8Array | undefined {
    let info: Deno.FileInfo;
    try {
      info = Deno.statSync(this.#paths.crl);
    } catch {
      return undefined; // none yet
    }
    const seen = `${info.ino}/${info.mtime?.getTime()}/${info.size}`;
    if (seen === this.#crlFile) return undefined;
    const der = pemDecode(Deno.readTextFileSync(this.#paths.crl), "X509 CRL");
    if (!der) throw new E2eError("ERR_LOG_INVALID", "Cannot read the CA's CRL (crl.pem)");
    if (der.length > MAX_RECORD_BYTES) {
      throw new E2eError(
        "ERR_LOG_INVALID",
        `The CA's CRL is ${der.length} bytes, more than a log entry holds (${MAX_RECORD_BYTES})`,
      );
    }
    const number = this.#caCrlNumber(der);
    if (typeof number === "string") {
      throw new E2eError(
        "ERR_LOG_INVALID",
        `The CA's CRL (crl.pem) is not one the CA key signed (${number}): it is not logged`,
        { hint: "someone wrote HOME/ca/crl.pem without the CA key; `deno task ca crl` signs anew" },
      );
    }
    if (number === undefined) {
      throw new E2eError(
        "ERR_LOG_INVALID",
        "The CA's CRL (crl.pem) has no CRL number: it is not logged",
        { hint: "`deno task ca crl` signs a new one" },
      );
    }
    // Not one logged already, nor one older than the last logged (a crl.pem a power cut took
    // back behind the log): the CRL served is always the newest. One to append is looked at
    // again at the next sync (then as logged), so a failed append is tried again.
    const last = this.#crls.at(-1);
    if (last && number <= last.number) {
      this.#crlFile = seen;
      return undefined;
    }
    this.#checkedCrl = der;
    return der;
  }

  // The CRL number of `der` when the CA key signed it (undefined: it has none); why not, else.
  #caCrlNumber(der: Uint8Array): bigint | undefined | string {
    try {
      return parseCrlDer(der, this.#ca).number;
    } catch (e) {
      // The reason is the error's detail (its message is one generic line, for peers).
      return e instanceof E2eError && e.detail ? e.detail : e instanceof Error ? e.message : `${e}`;
    }
  }

  // A read that starts now, after whatever this process appended (a read already under way may
  // have looked at the file before).
  async #freshRead(): Promise<void> {
    while (this.#reading) await this.#reading;
    await this.refresh();
  }

  // An append cut short by a crash (a record shorter than its header says) was never covered by
  // a checkpoint: cut it off. Anything else past the last whole record is damage: keep it as
  // evidence and refuse.
  async #cutTornTail(): Promise<void> {
    let size = 0;
    try {
      size = Deno.statSync(this.#paths.logEntries).size; // synchronous: on every commit
    } catch { /* no entries yet */ }
    if (size <= this.#loaded) return;
    using file = await Deno.open(this.#paths.logEntries, { read: true, write: true });
    await file.seek(this.#loaded, Deno.SeekMode.Start);
    const tail = await readUpTo(file, Math.min(size - this.#loaded, 4));
    const length = tail.length === 4 ? new DataView(tail.buffer).getUint32(0) : undefined;
    const torn = length === undefined ||
      (length > 0 && length <= MAX_RECORD_BYTES && 4 + length > size - this.#loaded);
    if (!torn) {
      throw new E2eError(
        "ERR_LOG_INVALID",
        `The issuance log is damaged after entry ${this.size}`,
        {
          hint: "run `deno task ca log verify`",
        },
      );
    }
    await file.truncate(this.#loaded);
    await file.sync();
    this.#seen = seenFile(file.statSync()); // its new time is our own
  }

  // Whether `info` (a stat of the entries file, null when there is none) is still the file this
  // log read: the same file, at least as long as what was read, and — if no longer — unchanged
  // since (a new time with the same size is looked at closely: its records are hashed again).
  // Growth is an append by another process under the CA lock, read by the next refresh.
  #check(info: Deno.FileInfo | null): void {
    if (this.#changed) throw this.#changed;
    const seen = this.#seen;
    if (!seen) return; // nothing read yet: nothing to compare with
    let what: string | undefined;
    if (!info) {
      if (!existsSync(this.#paths.logDir)) throw folderGone();
      what = "the file is gone";
    } else if (info.dev !== seen.dev || info.ino !== seen.ino) {
      what = `another file is in its place (inode ${info.ino}, was ${seen.ino})`;
    } else if (info.size < this.#loaded) {
      what = `${this.#loaded} bytes expected, ${info.size} found`;
    } else if (info.size === this.#loaded && info.mtime?.getTime() !== seen.mtime) {
      if (!this.#sameRecords()) what = `its ${this.#loaded} bytes were rewritten`;
      else this.#seen = seenFile(info); // touched, or a torn tail cut off by another process
    }
    if (what === undefined) return;
    this.#changed = new E2eError(
      "ERR_LOG_INVALID",
      `The issuance log's entries changed under the service: ${what}`,
      {
        hint: "nothing more is logged until the service starts again; stop it, run " +
          "`deno task ca log verify`, and restore HOME/ca/log/entries from a backup if it fails",
      },
    );
    throw this.#changed;
  }

  // Whether the entries file still holds exactly the records read (a full read: only when its
  // time changed and its size did not, which no append does).
  #sameRecords(): boolean {
    let bytes: Uint8Array;
    try {
      bytes = Deno.readFileSync(this.#paths.logEntries);
    } catch {
      return false;
    }
    if (bytes.length !== this.#loaded) return false;
    const { records, rest } = splitRecords(bytes);
    if (rest || records.length !== this.size) return false;
    return hex(new MerkleTree(records.map(leafHash)).root()) === hex(this.root());
  }
}

// What identifies the entries file, and its last modification as this log saw it.
interface SeenFile {
  dev: number;
  ino: number | null;
  mtime: number | undefined;
}

function seenFile(info: Deno.FileInfo): SeenFile {
  return { dev: info.dev, ino: info.ino, mtime: info.mtime?.getTime() };
}

function folderGone(cause?: unknown): E2eError {
  return new E2eError("ERR_LOG_INVALID", "The issuance log's folder is gone", {
    hint: "restore HOME/ca/log from a backup, then run `deno task ca log verify`",
    cause,
  });
}

// The entries file, to append to. Its folder is there once the log has entries: a log whose
// folder went away is not made again behind the tree this process holds.
function openEntries(path: string): Deno.FsFile {
  try {
    return Deno.openSync(path, { append: true, create: true, mode: 0o600 });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    throw folderGone(e);
  }
}

function lengthOf(n: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n);
  return out;
}

/** The whole records in `bytes`, and how many bytes of a torn one follow them. */
function splitRecords(bytes: Uint8Array): { records: Uint8Array[]; rest: number } {
  const records: Uint8Array[] = [];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let offset = 0;
  while (offset + 4 <= bytes.length) {
    const length = view.getUint32(offset);
    if (length === 0 || length > MAX_RECORD_BYTES || offset + 4 + length > bytes.length) break;
    records.push(bytes.slice(offset + 4, offset + 4 + length));
    offset += 4 + length;
  }
  return { records, rest: bytes.length - offset };
}

// The serial of a certificate's DER: TBSCertificate's first INTEGER (after [0] version).
function serialOf(der: Uint8Array): string {
  const [tbs] = children(readDer(der), Tag.SEQUENCE);
  const fields = children(tbs, Tag.SEQUENCE);
  const serial = fields[0].tag === Tag.CONTEXT_0 ? fields[1] : fields[0];
  return normalizeSerialHex(Buffer.from(serial.value).toString("hex"));
}

function hexNumber(n: bigint): string {
  return n.toString(16).toUpperCase();
}

/**
 * The CRL number of a CRL entry of the log (its signature not checked here: see verify());
 * undefined when it has none or cannot be read.
 *
 * @example
 * ```ts
 * import { crlEntryNumber } from "./log.ts";
 * import { pemDecode } from "../lib/pem.ts";
 * console.log(crlEntryNumber(pemDecode(await Deno.readTextFile("crl.pem"), "X509 CRL")!));
 * ```
 */
export function crlEntryNumber(der: Uint8Array): bigint | undefined {
  try {
    return crlNumberOf(der);
  } catch {
    return undefined;
  }
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}
