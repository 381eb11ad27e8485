/**
 * The one error class for domain failures, with stable string codes.
 *
 * Programming mistakes throw `TypeError`/`RangeError`; everything a user or a
 * peer can cause throws {@linkcode E2eError}. The `message` is safe to show to
 * a user; `detail` keeps internal information (such as openssl's stderr) apart
 * from it, as smallstep/certificates does.
 *
 * @module
 */

/** Every stable error code. Codes never change meaning once released. */
export type ErrorCode =
  | "ERR_USAGE"
  | "ERR_HOME"
  | "ERR_CA_EXISTS"
  | "ERR_CA_MISSING"
  | "ERR_PASSPHRASE_REQUIRED"
  | "ERR_PASSPHRASE_WEAK"
  | "ERR_PASSPHRASE_MISMATCH"
  | "ERR_BAD_PASSPHRASE"
  | "ERR_NAME_INVALID"
  | "ERR_DER_INVALID"
  | "ERR_CSR_INVALID"
  | "ERR_CSR_SIGNATURE"
  | "ERR_CSR_NAME_MISMATCH"
  | "ERR_KEY_REJECTED"
  | "ERR_NAME_TAKEN"
  | "ERR_DAYS_INVALID"
  | "ERR_NOT_FOUND"
  | "ERR_ALREADY_REVOKED"
  | "ERR_REASON_INVALID"
  | "ERR_LOCK_TIMEOUT"
  | "ERR_OPENSSL"
  | "ERR_OPENSSL_MISSING"
  | "ERR_OPENSSL_TIMEOUT"
  | "ERR_FILE"
  | "ERR_PEER_REJECTED"
  | "ERR_INVITE_INVALID"
  | "ERR_TOKEN_INVALID"
  | "ERR_INVITE_NOT_OPEN"
  | "ERR_INVITE_AMBIGUOUS"
  | "ERR_FINGERPRINT_MISMATCH"
  | "ERR_RATE_LIMITED"
  | "ERR_TOO_LARGE"
  | "ERR_BAD_REQUEST"
  | "ERR_UNAUTHENTICATED"
  | "ERR_FORBIDDEN"
  | "ERR_NETWORK"
  | "ERR_NOT_ENROLLED"
  | "ERR_METHOD_NOT_ALLOWED"
  | "ERR_UNSUPPORTED_MEDIA_TYPE"
  | "ERR_LOG_INVALID"
  | "ERR_LOG_ALARM"
  | "ERR_QUOTA"
  | "ERR_CONFLICT"
  | "ERR_INTERNAL";

/** Options of {@linkcode E2eError}. */
export interface E2eErrorOptions {
  /** A short suggestion the CLI prints as `e2e-chat: hint: …`. Default: none. */
  hint?: string;
  /** Internal detail for logs and debugging, never shown as the message. Default: none. */
  detail?: string;
  /** The underlying error. Default: none. */
  cause?: unknown;
}

/**
 * A domain failure with a stable {@linkcode ErrorCode}.
 *
 * @example Throwing and matching on the code
 * ```ts
 * import { E2eError } from "./errors.ts";
 * try {
 *   throw new E2eError("ERR_NAME_INVALID", 'Invalid name "A B"');
 * } catch (e) {
 *   if (e instanceof E2eError && e.code === "ERR_NAME_INVALID") console.error(e.message);
 * }
 * ```
 */
export class E2eError extends Error {
  /** The stable code. */
  readonly code: ErrorCode;
  /** A suggestion for the user, if any. */
  readonly hint?: string;
  /** Internal detail, kept out of `message`. */
  readonly detail?: string;

  /** Makes an error with a code and a user-safe message. */
  constructor(code: ErrorCode, message: string, options: E2eErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "E2eError";
    this.code = code;
    this.hint = options.hint;
    this.detail = options.detail;
  }
}
