/**
 * The record of a mailbox item (docs/API.md §mailbox): what the service knows
 * of an item it keeps for an offline member, and what it replies to a POST and
 * lists on a GET. One shape for both sides: the service writes it, the client
 * reads it. The item itself is CMS (lib/cms.ts); the service cannot read it.
 *
 * @module
 */

/** What the service knows of a mailbox item (all of it), as it stores and sends it. */
export interface MailboxRecord {
  /** Random 128 bits, hex, chosen by the service. */
  id: string;
  /** The sender (the authenticated caller of the POST). */
  from: string;
  /** The recipient. */
  to: string;
  /** The item's size, bytes. */
  size: number;
  /** When it was posted, ISO 8601. */
  postedAt: string;
  /** When it is deleted unless fetched, ISO 8601. */
  expiresAt: string;
  /**
   * SHA-256 of the item's bytes, hex: the same bytes posted again by the same sender (a post
   * retried after the service did not answer) get this record back, not a second copy. Absent
   * from records of services before it.
   */
  sha256?: string;
}
