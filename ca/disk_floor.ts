/**
 * The free-space floor of the CA's disk. The CA commits its database, issuance
 * log, invites journal and mailbox on the disk of its home; members can make it
 * write there (enrollments, renewals, mailbox posts), and if they filled it the
 * admin's own revocation and CRL would fail. So below the floor the service
 * refuses to store anything on a member's behalf (507 `ERR_QUOTA`), while
 * revocation, the CRL, reads and the admin's CLI go on.
 *
 * The default, 64 MiB: what an admin's revocation writes is kilobytes (the
 * index rewritten, a CRL, a log entry) — a CA of 100,000 certificates rewrites
 * an index of about 15 MB — so 64 MiB keeps room for that and more; a fixed
 * size rather than a share of the disk, which on a large disk would refuse
 * members with gigabytes still free. The free space is read for each write
 * (statfs, 3.4 µs on Deno 2.9.6: no cache needed beside a signing or an fsync
 * of milliseconds), and the writes admitted and not yet done count as spent,
 * so concurrent posts cannot all pass one reading.
 *
 * @module
 */
import { E2eError } from "../lib/errors.ts";
import { freeBytes } from "../lib/fs.ts";

/** Free bytes the CA's disk keeps for the admin by default (`ca serve --free-floor-mib`). */
export const DEFAULT_FREE_FLOOR_BYTES = 64 * 1024 * 1024;
/** What an enrollment or a renewal is counted to write, generously (a certificate, an index line, a log entry, a journal line). */
export const SIGNING_BYTES = 64 * 1024;
/** How often, at most, the service logs that the floor refused writes, in ms. */
export const FLOOR_LOG_INTERVAL_MS = 10_000;

/** Options of {@linkcode DiskFloor}. */
export interface DiskFloorOptions {
  /** Told, at most every {@linkcode FLOOR_LOG_INTERVAL_MS}, that the floor refused writes. Default: none. */
  log?: (line: string) => void;
}

/**
 * Keeps `floorBytes` free on the disk of `dir`: {@linkcode DiskFloor.reserve}
 * refuses a write that would go below it.
 *
 * @example
 * ```ts
 * import { DiskFloor } from "./disk_floor.ts";
 * const floor = new DiskFloor(".", 64 * 1024 * 1024);
 * const done = floor.reserve(1024); // throws ERR_QUOTA below the floor
 * // … write the 1024 bytes …
 * done();
 * ```
 */
export class DiskFloor {
  /** The folder whose disk is watched (the CA home). */
  readonly dir: string;
  /** Free bytes kept; 0: no floor, and the free space is never read. */
  readonly floorBytes: number;
  #reserved = 0;
  #log?: (line: string) => void;
  #lastLog = -Infinity;
  #refused = 0;

  /** A floor of `floorBytes` (a whole number, 0 for none) for the disk of `dir`. */
  constructor(dir: string, floorBytes: number, options: DiskFloorOptions = {}) {
    if (!Number.isSafeInteger(floorBytes) || floorBytes < 0) {
      throw new RangeError(`A free-space floor is a whole number of bytes, not ${floorBytes}`);
    }
    this.dir = dir;
    this.floorBytes = floorBytes;
    this.#log = options.log;
  }

  /**
   * Reads the free space once, so a service that cannot (no `--allow-sys=statfs`)
   * says so at start instead of refusing every member; its free bytes (Infinity
   * without a floor).
   */
  check(): number {
    if (this.floorBytes === 0) return Infinity;
    try {
      return freeBytes(this.dir);
    } catch (e) {
      throw new E2eError("ERR_FILE", `Cannot read the free space of the disk of "${this.dir}"`, {
        cause: e,
        hint: "deno task ca may read it (--allow-sys=statfs); with deno run, allow it, " +
          "or serve with --free-floor-mib 0 (no floor)",
      });
    }
  }

  /**
   * Counts `bytes` about to be written for a member until the returned function
   * is called (once they are written, or failed); throws `ERR_QUOTA` (507) when
   * they would leave less than the floor free, counting the writes under way.
   */
  reserve(bytes: number): () => void {
    if (this.floorBytes === 0) return () => {};
    let free: number;
    try {
      free = freeBytes(this.dir);
    } catch (e) {
      // Fail closed: a disk we cannot read may be full.
      throw this.#refuse(`its free space cannot be read (${e instanceof Error ? e.message : e})`);
    }
    if (free - this.#reserved - bytes < this.floorBytes) {
      throw this.#refuse(
        `${free} bytes free, ${this.#reserved} of them being written, and ${bytes} more asked`,
      );
    }
    this.#reserved += bytes;
    let left = bytes;
    return () => {
      this.#reserved -= left;
      left = 0;
    };
  }

  #refuse(why: string): E2eError {
    this.#refused++;
    const now = Date.now();
    if (now - this.#lastLog >= FLOOR_LOG_INTERVAL_MS) {
      this.#lastLog = now;
      this.#log?.(
        `e2e-chat-ca: disk floor reached: the disk of ${this.dir} keeps ${this.floorBytes} bytes ` +
          `free (--free-floor-mib), ${why}; refused ${this.#refused} member write${
            this.#refused === 1 ? "" : "s"
          } since the last report`,
      );
      this.#refused = 0;
    }
    return new E2eError(
      "ERR_QUOTA",
      `The CA's disk is full: it keeps ${this.floorBytes} bytes free for revocations and the CRL`,
      { hint: "try again later, and tell the CA's admin (the service log says more)" },
    );
  }
}
