/**
 * Why the CA service refuses a member's own certificate (403 `ERR_FORBIDDEN`, or 401
 * `ERR_UNAUTHENTICATED` for an expired one, docs/API.md "Errors"): the `standing` field of its
 * error reply, written by the service and read by the client here, so that a member is told the
 * true reason (revoked, superseded, expired) and what to do. A reply without it (an older
 * service), or with one this version does not read, says only what its code says.
 *
 * @module
 */

/** Why the CA no longer takes a certificate it issued. */
export type Standing =
  | { status: "revoked" }
  | {
    status: "superseded";
    /** The name's certificate now, if it has one: its serial, and whether it holds the same key. */
    by?: { serial: string; sameKey: boolean };
  }
  | { status: "expired"; notAfter: Date };

/**
 * The JSON value of a `standing` field for `standing`.
 *
 * @example
 * ```ts
 * import { standingJson } from "./standing.ts";
 * console.log(JSON.stringify(standingJson({ status: "revoked" }))); // {"status":"revoked"}
 * ```
 */
export function standingJson(standing: Standing): Record<string, unknown> {
  switch (standing.status) {
    case "revoked":
      return { status: "revoked" };
    case "superseded":
      return standing.by
        ? { status: "superseded", by: { ...standing.by } }
        : { status: "superseded" };
    case "expired":
      return { status: "expired", notAfter: standing.notAfter.toISOString() };
  }
}

/**
 * Reads a `standing` field; undefined for anything that is not one this version knows (a newer
 * service's status, a malformed one): the refusal then says only what its code says.
 *
 * @example
 * ```ts
 * import { parseStanding } from "./standing.ts";
 * console.log(parseStanding({ status: "superseded", by: { serial: "1A", sameKey: true } }));
 * ```
 */
export function parseStanding(value: unknown): Standing | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const v = value as Record<string, unknown>;
  switch (v.status) {
    case "revoked":
      return { status: "revoked" };
    case "superseded": {
      const by = v.by as Record<string, unknown> | undefined;
      if (
        typeof by === "object" && by !== null && typeof by.serial === "string" &&
        /^[0-9A-F]{1,40}$/.test(by.serial) && typeof by.sameKey === "boolean"
      ) {
        return { status: "superseded", by: { serial: by.serial, sameKey: by.sameKey } };
      }
      return { status: "superseded" };
    }
    case "expired": {
      const notAfter = typeof v.notAfter === "string" ? new Date(v.notAfter) : undefined;
      if (!notAfter || Number.isNaN(notAfter.getTime())) return undefined;
      return { status: "expired", notAfter };
    }
  }
  return undefined;
}
