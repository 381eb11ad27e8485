/**
 * Invites: single-use, expiring enrollment tokens bound to one name. Only a
 * SHA-256 of each token is stored (HOME/ca/invites.json, 0600), so the file
 * alone enrolls nobody. The CLI writes the file and a running service reads it
 * on every enrollment, so new invites work without a restart.
 *
 * @module
 */
import { createHash, randomBytes } from "node:crypto";
import { E2eError } from "../lib/errors.ts";
import { writeFileAtomic } from "../lib/fs.ts";
import { withLock } from "../lib/lock.ts";
import { TOKEN_PATTERN } from "../lib/invite.ts";
import { checkName } from "../lib/names.ts";
import type { CaPaths } from "./home.ts";

/** One stored invite. */
interface InviteRecord {
  hash: string;
  name: string;
  createdAt: string;
  expiresAt: string;
  usedAt?: string;
  /** Set while an enrollment with this token is under way. */
  reservedUntil?: string;
}

// The token's shape belongs to the invite format.
export { TOKEN_PATTERN } from "../lib/invite.ts";

// Longer than the worst wait of an enrollment (60 s for the lock, 120 s for openssl).
const RESERVATION_MS = 10 * 60_000;

// One message for every bad token, so a caller learns nothing from the difference.
const INVALID = "Invalid, used or expired invite token";

/** Invites of the CA at `paths`. */
export class InviteStore {
  #file: string;
  #lock: string;

  /** The store of the CA at `paths`. */
  constructor(paths: CaPaths) {
    this.#file = paths.invites;
    this.#lock = paths.invitesLock;
  }

  /** Creates an invite for `name` valid for `ttlMs`; returns the token (shown once, never stored). */
  async create(name: string, ttlMs: number): Promise<{ token: string; expiresAt: Date }> {
    checkName(name);
    const token = randomBytes(32).toString("base64url");
    const now = Date.now();
    const expiresAt = new Date(now + ttlMs);
    await withLock(this.#lock, async () => {
      // Expired and used invites older than a day are dropped as the file is rewritten.
      const records = (await this.#read()).filter((r) =>
        Date.parse(r.usedAt ?? r.expiresAt) > now - 86_400_000
      );
      records.push({
        hash: hashToken(token),
        name,
        createdAt: new Date(now).toISOString(),
        expiresAt: expiresAt.toISOString(),
      });
      await this.#write(records);
    });
    return { token, expiresAt };
  }

  /**
   * Redeems `token`: runs `enroll` with the invite's name, and marks the token
   * used only when `enroll` succeeds (a request refused by the policy leaves the
   * invite usable). The file lock is held only to reserve and to mark, not while
   * `enroll` signs, so enrollments with different tokens run side by side. A
   * reservation is written to the file, so another process cannot redeem the
   * same token meanwhile; one left by a crash is dropped when the service starts again (and lapses after ten minutes).
   */
  async redeem<T>(token: unknown, enroll: (name: string) => Promise<T>): Promise<T> {
    if (typeof token !== "string" || !TOKEN_PATTERN.test(token)) {
      throw new E2eError("ERR_TOKEN_INVALID", INVALID);
    }
    const hash = hashToken(token);
    const name = await this.#update(hash, (record, now) => {
      if (
        record.usedAt || Date.parse(record.expiresAt) <= now ||
        Date.parse(record.reservedUntil ?? "") > now
      ) {
        throw new E2eError("ERR_TOKEN_INVALID", INVALID);
      }
      record.reservedUntil = new Date(now + RESERVATION_MS).toISOString();
    });
    let result: T;
    try {
      result = await enroll(name);
    } catch (e) {
      await this.#update(hash, (record) => delete record.reservedUntil).catch(() => {});
      throw e;
    }
    await this.#update(hash, (record, now) => {
      delete record.reservedUntil;
      record.usedAt = new Date(now).toISOString();
    });
    return result;
  }

  /**
   * The name an unused, unexpired `token` enrolls; `ERR_TOKEN_INVALID` otherwise.
   * Reads only: lets a request be checked before the token is reserved.
   */
  async nameOf(token: unknown): Promise<string> {
    if (typeof token !== "string" || !TOKEN_PATTERN.test(token)) {
      throw new E2eError("ERR_TOKEN_INVALID", INVALID);
    }
    const hash = hashToken(token);
    const record = (await this.#read()).find((r) => r.hash === hash);
    if (!record || record.usedAt || Date.parse(record.expiresAt) <= Date.now()) {
      throw new E2eError("ERR_TOKEN_INVALID", INVALID);
    }
    return record.name;
  }

  /**
   * Drops every reservation: the service calls this when it starts, since one
   * left behind can only come from a service that died mid-enrollment.
   */
  async clearReservations(): Promise<void> {
    await withLock(this.#lock, async () => {
      const records = await this.#read();
      if (!records.some((r) => r.reservedUntil)) return;
      for (const r of records) delete r.reservedUntil;
      await this.#write(records);
    });
  }

  // Changes the record of `hash` under the lock; returns its name.
  async #update(
    hash: string,
    change: (record: InviteRecord, now: number) => void,
  ): Promise<string> {
    return await withLock(this.#lock, async () => {
      const records = await this.#read();
      const record = records.find((r) => r.hash === hash);
      if (!record) throw new E2eError("ERR_TOKEN_INVALID", INVALID);
      change(record, Date.now());
      await this.#write(records);
      return record.name;
    });
  }

  async #read(): Promise<InviteRecord[]> {
    try {
      const data = JSON.parse(await Deno.readTextFile(this.#file));
      return Array.isArray(data?.invites) ? data.invites : [];
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return [];
      throw e;
    }
  }

  async #write(records: InviteRecord[]): Promise<void> {
    await writeFileAtomic(this.#file, JSON.stringify({ invites: records }, null, 1) + "\n", {
      mode: 0o600,
    });
  }
}

function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/**
 * Parses a duration like "90s", "30m", "24h" or "7d" into milliseconds.
 *
 * @example
 * ```ts
 * import { parseDuration } from "./invites.ts";
 * parseDuration("24h"); // 86400000
 * ```
 */
export function parseDuration(text: string): number {
  const m = /^(\d{1,6})([smhd])$/.exec(text);
  if (!m || Number(m[1]) === 0) {
    throw new E2eError("ERR_USAGE", `Invalid duration ${JSON.stringify(text)}`, {
      hint: "use a number and a unit: 90s, 30m, 24h, 7d",
    });
  }
  return Number(m[1]) * { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as "s"];
}
