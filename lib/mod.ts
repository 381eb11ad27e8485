/**
 * @module
 * The shared layer of e2e-chat: errors, the openssl runner, DER/PEM/CSR/X.509
 * readers, names, files, locks, passphrases and CLI plumbing. It knows nothing
 * of `ca/` or `client/`.
 */
export * from "./errors.ts";
export * from "./openssl.ts";
export * from "./der.ts";
export * from "./pem.ts";
export * from "./csr.ts";
export * from "./x509.ts";
export * from "./names.ts";
export * from "./fs.ts";
export * from "./lock.ts";
export * from "./home.ts";
export * from "./passphrase.ts";
export * from "./tls.ts";
export * from "./connections.ts";
export * from "./reply_budget.ts";
export * from "./backoff.ts";
export * from "./keys.ts";
export * from "./frames.ts";
export * from "./crl.ts";
export * from "./signature.ts";
export * from "./lines.ts";
export * from "./merkle.ts";
export * from "./checkpoint.ts";
export * from "./invite.ts";
export * from "./room.ts";
export * from "./mailbox_record.ts";
export * from "./standing.ts";
