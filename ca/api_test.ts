import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, X509Certificate } from "node:crypto";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { openCheckpoint } from "../lib/checkpoint.ts";
import { CRL_REPUBLISH_MS, parseCrl } from "../lib/crl.ts";
import { decodeHashes, verifyLogProof } from "../lib/log_proof.ts";
import { leafHash, MerkleTree, verifyConsistency, verifyInclusion } from "../lib/merkle.ts";
import { BACKOFF_FIRST_MS } from "../lib/backoff.ts";
import { E2eError, type ErrorCode } from "../lib/errors.ts";
import { pemDecode, pemEncode } from "../lib/pem.ts";
import { trustAnchor } from "../lib/tls.ts";
import { sha256Hex } from "../lib/x509.ts";
import { makeCsr, newKeyPem, PASSPHRASE, snapshot, withTempDir } from "../tests/_helpers.ts";
import { expiredCertificate } from "../tests/_service_helpers.ts";
import { crlSignedAt } from "../tests/_impostor.ts";
import { e2eError } from "../lib/_test_util.ts";
import {
  type ApiContext,
  type ApiRequest,
  checkBodyHeaders,
  errorReply,
  handle,
  MAX_BODY_BYTES,
  MAX_WAIT_SECONDS,
  parseJsonBody,
  relayParty,
  RENEWALS_PER_DAY,
} from "./api.ts";
import { CertificateAuthority } from "./authority.ts";
import { CaPaths } from "./home.ts";
import { InviteStore } from "./invites.ts";
import { Mailbox } from "./mailbox.ts";
import { RateLimiter } from "./rate_limit.ts";
import { Rendezvous } from "./rendezvous.ts";

// The handler in process, with a real CA made by the real openssl in a temp home.
// Each reply goes through errorReply(), so statuses and bodies are the ones on the wire.

const encoder = new TextEncoder();

interface World {
  ctx: ApiContext;
  ca: CertificateAuthority;
  home: string;
  /** A member: an enrolled name with its certificate (DER) and key (PEM). */
  member(name: string): Promise<{ der: Uint8Array; key: string; serial: string }>;
  /** A fresh invite token for `name`. */
  invite(name: string): Promise<string>;
}

let logKeyPem = "";

async function withWorld(fn: (world: World) => Promise<void>): Promise<void> {
  await withTempDir(async (home) => {
    const ca = await CertificateAuthority.init(home, PASSPHRASE, { keyType: "ec-p256" });
    const ctx: ApiContext = {
      ca,
      anchor: trustAnchor(ca.certificate.pem),
      invites: new InviteStore(ca.paths),
      rendezvous: new Rendezvous({ ttlMs: 60_000 }),
      enrollLimiter: new RateLimiter(10, 60_000),
      log: await ca.openLog(),
    };
    logKeyPem = await Deno.readTextFile(ca.paths.logCert);
    await fn({
      ctx,
      ca,
      home,
      async member(name) {
        const { csr, key } = await makeCsr(name);
        const { certificate } = await ca.sign(csr, name);
        return { der: pemDecode(certificate.pem, "CERTIFICATE")!, key, serial: certificate.serial };
      },
      async invite(name) {
        return (await ctx.invites.create(name, 60_000)).token;
      },
    });
  });
}

interface CallOptions {
  /** A JSON value to send as the body. */
  json?: unknown;
  /** A raw body instead (text). */
  raw?: string | Uint8Array;
  /** Default: application/json. */
  contentType?: string;
  /** The client certificate, DER. Default: none. */
  peer?: Uint8Array | null;
  /** Accept: application/json. Default: false. */
  wantsJson?: boolean;
  /** Default: 127.0.0.1. */
  remoteAddress?: string;
}

interface Reply {
  status: number;
  type: string;
  body: string;
  user?: string;
  headers: Record<string, string>;
  // deno-lint-ignore no-explicit-any
  json: any;
}

/** One request through handle(), and a refusal through errorReply(), as the service does. */
async function call(
  ctx: ApiContext,
  method: string,
  target: string,
  options: CallOptions = {},
): Promise<Reply> {
  const url = new URL(target, "https://ca.invalid");
  const bytes = options.raw === undefined
    ? encoder.encode(options.json === undefined ? "" : JSON.stringify(options.json))
    : typeof options.raw === "string"
    ? encoder.encode(options.raw)
    : options.raw;
  const contentType = options.contentType ?? "application/json";
  try {
    const reply = await handle(ctx, {
      method,
      path: url.pathname,
      query: url.searchParams,
      remoteAddress: options.remoteAddress ?? "127.0.0.1",
      peerDer: options.peer ?? null,
      wantsJson: options.wantsJson ?? false,
      json: () => Promise.resolve().then(() => parseJsonBody(contentType, bytes)),
      signal: new AbortController().signal,
    });
    return {
      ...reply,
      headers: {},
      json: reply.type === "application/json" ? JSON.parse(reply.body) : undefined,
    };
  } catch (e) {
    assert.ok(e instanceof E2eError, `a refusal is an E2eError, not ${e}`);
    const reply = errorReply(e);
    return { ...reply, json: JSON.parse(reply.body) };
  }
}

/** POST /v1/renew of `csr` on a connection that presented the client certificate `peer`. */
function renewAs(ctx: ApiContext, peer: Uint8Array, csr: string): Promise<Reply> {
  return call(ctx, "POST", "/v1/renew", { json: { csr }, peer });
}

/**
 * Asserts the 403 a caller gets whose client certificate is revoked or superseded: the message
 * older clients show, and the `standing` that says which (that one, when given).
 */
function assertNotCurrent(reply: Reply, what = "", standing?: Record<string, unknown>): void {
  assertError(reply, 403, "ERR_FORBIDDEN", "The client certificate is revoked or superseded", what);
  assert.ok(
    ["revoked", "superseded", "expired"].includes(reply.json.error.standing?.status),
    `${what}: ${reply.body}`,
  );
  if (standing) assert.deepEqual(reply.json.error.standing, standing, what);
}

function assertError(
  reply: Reply,
  status: number,
  code: ErrorCode,
  message: string | RegExp,
  what = "",
): void {
  assert.equal(reply.status, status, `${what}: ${reply.body}`);
  assert.equal(reply.type, "application/json", what);
  assert.deepEqual(Object.keys(reply.json), ["error"], what);
  // `standing` only on a refusal of the caller's own certificate (docs/API.md "Errors"): revoked
  // or superseded (403), or expired (401).
  const keys = (code === "ERR_FORBIDDEN" && status === 403 ||
      code === "ERR_UNAUTHENTICATED" && status === 401) && reply.json.error.standing
    ? ["code", "message", "standing"]
    : ["code", "message"];
  assert.deepEqual(Object.keys(reply.json.error), keys, what);
  assert.equal(reply.json.error.code, code, what);
  if (typeof message === "string") assert.equal(reply.json.error.message, message, what);
  else assert.match(reply.json.error.message, message, what);
}

function assertCertificateJson(value: Record<string, string>, name: string): void {
  assert.deepEqual(Object.keys(value), [
    "name",
    "certificate",
    "fingerprint",
    "keyFingerprint",
    "serial",
    "notAfter",
    "logIndex",
    "log",
  ]);
  // Proved in the issuance log: the proof verifies against the checkpoint it names.
  const log = value.log as unknown as { index: number; hashes: string[]; checkpoint: string };
  const origin = log.checkpoint.split("\n")[0];
  const key = new X509Certificate(logKeyPem).publicKey;
  const der = pemDecode(value.certificate, "CERTIFICATE")!;
  verifyLogProof(der, log, { name: origin, key });
  assert.equal(value.logIndex as unknown, log.index);
  assert.equal(value.name, name);
  assert.equal(value.fingerprint, sha256Hex(pemDecode(value.certificate, "CERTIFICATE")!));
  assert.match(value.keyFingerprint, /^[0-9a-f]{64}$/);
  assert.match(value.serial, /^[0-9A-F]+$/);
  assert.ok(Date.parse(value.notAfter) > Date.now());
}

// ---------------------------------------------------------------------------
// Routes, methods and the error table

Deno.test("handle() serves the CA certificate and the current CRL as PEM to anyone", async () => {
  await withWorld(async ({ ctx, ca }) => {
    const caReply = await call(ctx, "GET", "/v1/ca");
    assert.equal(caReply.status, 200);
    assert.equal(caReply.type, "application/x-pem-file");
    assert.equal(caReply.body, ca.certificate.pem);
    const crl = await call(ctx, "GET", "/v1/crl");
    assert.equal(crl.status, 200);
    assert.equal(crl.type, "application/x-pem-file");
    assert.equal(crl.body, await Deno.readTextFile(ca.paths.crl));
    assert.match(crl.body, /^-----BEGIN X509 CRL-----\n/);
  });
});

Deno.test("handle() signs a new CRL once the one it hands out was signed over an hour ago (its thisUpdate, CRL_REPUBLISH_MS), not before, whatever crl.pem's mtime says", async () => {
  await withWorld(async ({ ctx, ca }) => {
    const ago = (ms: number) => new Date(Date.now() - ms);
    // Recent, with an old mtime: handed out as it is.
    const recent = await crlSignedAt(ca.paths, ago(CRL_REPUBLISH_MS - 60_000));
    await Deno.writeTextFile(ca.paths.crl, recent);
    await Deno.utime(ca.paths.crl, ago(2 * CRL_REPUBLISH_MS), ago(2 * CRL_REPUBLISH_MS));
    assert.equal((await call(ctx, "GET", "/v1/crl")).body, recent);
    // Old, with a fresh mtime (a CA home restored with `cp -r`): signed again.
    const old = await crlSignedAt(ca.paths, ago(CRL_REPUBLISH_MS + 60_000));
    await Deno.writeTextFile(ca.paths.crl, old);
    const next = await call(ctx, "GET", "/v1/crl");
    const [before, after] = [old, next.body].map((pem) => parseCrl(pem, ca.certificate.x509));
    assert.ok(after.number! > before.number!, `CRL number ${after.number} after ${before.number}`);
    assert.ok(Date.now() - after.thisUpdate.getTime() < 60_000, `${after.thisUpdate}`);
    assert.equal(next.body, await Deno.readTextFile(ca.paths.crl));
  });
});

Deno.test("handle() hands out the last CRL when signing a new one fails, says so once in the log, and tries again after 10 s (BACKOFF_FIRST_MS), not at every request", async () => {
  await withWorld(async ({ ctx, ca }) => {
    const lines: string[] = [];
    ctx.logLine = (line) => lines.push(line);
    const signedAt = new Date(Date.now() - CRL_REPUBLISH_MS - 60_000);
    const old = await crlSignedAt(ca.paths, signedAt);
    await Deno.writeTextFile(ca.paths.crl, old);
    await Deno.utime(ca.paths.crl, signedAt, signedAt);
    const config = await Deno.readTextFile(ca.paths.config);
    await Deno.writeTextFile(ca.paths.config, "[ ca\n"); // a broken CA folder: openssl ca fails
    for (let i = 0; i < 2; i++) {
      const reply = await call(ctx, "GET", "/v1/crl");
      assert.equal(reply.status, 200, reply.body);
      assert.equal(reply.body, old);
    }
    assert.equal(lines.length, 1, lines.join("\n"));
    assert.match(lines[0], /^e2e-chat-ca: cannot sign a new CRL: /);
    assert.ok(lines[0].includes(`the last one, signed at ${signedAt.toISOString().slice(0, 19)}`));
    assert.match(
      lines[0],
      /members take no CRL over 70 min old .*, and refuse this service once it is over 3 h old \(at .*\); trying again in 10 s/,
    );
    // Mended at once, but not tried again before 10 s.
    await Deno.writeTextFile(ca.paths.config, config);
    assert.equal((await call(ctx, "GET", "/v1/crl")).body, old);
    await new Promise((r) => setTimeout(r, BACKOFF_FIRST_MS));
    const next = await call(ctx, "GET", "/v1/crl");
    assert.equal(next.status, 200, next.body);
    assert.ok(Date.now() - parseCrl(next.body, ca.certificate.x509).thisUpdate.getTime() < 60_000);
    assert.equal(lines.length, 2, lines.join("\n"));
    assert.equal(lines[1], "e2e-chat-ca: signed a new CRL again, after 1 failed attempt");
  });
});

Deno.test("handle() refuses a wrong method with 405 naming the allowed one, and an unknown route with 404", async () => {
  await withWorld(async ({ ctx }) => {
    const cases: Array<[string, string, number, ErrorCode, string]> = [
      ["POST", "/v1/ca", 405, "ERR_METHOD_NOT_ALLOWED", "Method POST is not allowed here; use GET"],
      ["PUT", "/v1/crl", 405, "ERR_METHOD_NOT_ALLOWED", "Method PUT is not allowed here; use GET"],
      [
        "GET",
        "/v1/enroll",
        405,
        "ERR_METHOD_NOT_ALLOWED",
        "Method GET is not allowed here; use POST",
      ],
      [
        "GET",
        "/v1/renew",
        405,
        "ERR_METHOD_NOT_ALLOWED",
        "Method GET is not allowed here; use POST",
      ],
      [
        "DELETE",
        "/v1/rendezvous",
        405,
        "ERR_METHOD_NOT_ALLOWED",
        "Method DELETE is not allowed here; use GET",
      ],
      [
        "POST",
        "/v1/certs/alice",
        405,
        "ERR_METHOD_NOT_ALLOWED",
        "Method POST is not allowed here; use GET",
      ],
      ["GET", "/", 404, "ERR_NOT_FOUND", 'No route "/"'],
      ["GET", "/v1/nope", 404, "ERR_NOT_FOUND", 'No route "/v1/nope"'],
      ["GET", "/v1/certs/", 404, "ERR_NOT_FOUND", 'No route "/v1/certs/"'],
      ["GET", "/v1/certs/alice/extra", 404, "ERR_NOT_FOUND", 'No route "/v1/certs/alice/extra"'],
      ["GET", "/v1/ca/", 404, "ERR_NOT_FOUND", 'No route "/v1/ca/"'],
      ["GET", "/V1/CA", 404, "ERR_NOT_FOUND", 'No route "/V1/CA"'],
    ];
    for (const [method, path, status, code, message] of cases) {
      assertError(await call(ctx, method, path), status, code, message, `${method} ${path}`);
    }
  });
});

Deno.test("errorReply() gives every code the status of the docs/API.md error table", async () => {
  const doc = await Deno.readTextFile(new URL("../docs/API.md", import.meta.url));
  const rows = [...doc.matchAll(/^\|\s*(\d{3})\s*\|(.*)\|\s*$/gm)];
  assert.ok(rows.length >= 10, "the error table is in docs/API.md");
  let seen = 0;
  for (const [, status, codes] of rows) {
    for (const [code] of codes.matchAll(/ERR_[A-Z_]+/g)) {
      const reply = errorReply(new E2eError(code as ErrorCode, "A message"));
      assert.equal(reply.status, Number(status), code);
      assert.equal(reply.code, code);
      seen++;
    }
  }
  assert.ok(seen >= 17, `only ${seen} codes in the table`);
});

Deno.test("errorReply() hides the message of a 500 and of anything that is not an E2eError", () => {
  const cases: unknown[] = [
    new Error("secret detail /home/x"),
    "a string",
    new E2eError("ERR_LOCK_TIMEOUT", "Timed out waiting for /home/x/.ca.lock"),
    new E2eError("ERR_OPENSSL", "openssl failed", { detail: "stderr text" }),
  ];
  for (const e of cases) {
    const reply = errorReply(e);
    assert.equal(reply.status, 500);
    assert.equal(
      JSON.parse(reply.body).error.message,
      "Internal error",
    );
    assert.ok(!reply.body.includes("/home/x") && !reply.body.includes("stderr"), reply.body);
    // The caller is told only that it failed; the service log keeps the code.
    assert.equal(JSON.parse(reply.body).error.code, "ERR_INTERNAL");
    assert.equal(reply.code, e instanceof E2eError ? e.code : "ERR_INTERNAL");
  }
  assert.equal(JSON.parse(errorReply(new Error("x")).body).error.code, "ERR_INTERNAL");
});

Deno.test("errorReply() adds retry-after to a 429 and connection: close to a 413, and nothing else", () => {
  assert.deepEqual(errorReply(new E2eError("ERR_RATE_LIMITED", "x")).headers, {
    "retry-after": "60",
  });
  assert.deepEqual(errorReply(new E2eError("ERR_TOO_LARGE", "x")).headers, {
    connection: "close",
  });
  assert.deepEqual(errorReply(new E2eError("ERR_NOT_FOUND", "x")).headers, {});
});

// ---------------------------------------------------------------------------
// Bodies

Deno.test("parseJsonBody() takes application/json up to 64 KiB, with parameters and in any case", () => {
  const atLimit = `{"a":"${"x".repeat(MAX_BODY_BYTES - 8)}"}`;
  assert.equal(encoder.encode(atLimit).length, MAX_BODY_BYTES);
  for (const type of ["application/json", "application/json; charset=utf-8", "Application/JSON"]) {
    assert.deepEqual(parseJsonBody(type, encoder.encode('{"to":"bob"}')), { to: "bob" }, type);
  }
  assert.equal(
    (parseJsonBody("application/json", encoder.encode(atLimit)) as { a: string }).a.length,
    MAX_BODY_BYTES - 8,
  );
});

Deno.test("parseJsonBody() refuses another type (415), a body over 64 KiB (413) and text that is not UTF-8 JSON (400)", () => {
  const refuse = (type: string | undefined, bytes: Uint8Array, code: ErrorCode, message: string) =>
    assert.throws(() => parseJsonBody(type, bytes), (e) => {
      assert.ok(e instanceof E2eError);
      assert.equal(e.code, code);
      assert.equal(e.message, message);
      return true;
    });
  const json = encoder.encode("{}");
  for (const type of [undefined, "", "text/plain", "application/x-www-form-urlencoded", "json"]) {
    refuse(type, json, "ERR_UNSUPPORTED_MEDIA_TYPE", "The body must be application/json");
  }
  refuse(
    "application/json",
    new Uint8Array(MAX_BODY_BYTES + 1).fill(0x20),
    "ERR_TOO_LARGE",
    "The body is larger than 65536 bytes",
  );
  for (const bad of ["", "{", "{'a':1}", "nul", "[1,]"]) {
    refuse(
      "application/json",
      encoder.encode(bad),
      "ERR_BAD_REQUEST",
      "The body is not valid JSON",
    );
  }
  // A lone continuation byte inside a string: not UTF-8, so not JSON.
  refuse(
    "application/json",
    Uint8Array.of(0x22, 0x80, 0x22),
    "ERR_BAD_REQUEST",
    "The body is not valid JSON",
  );
});

Deno.test("checkBodyHeaders() refuses a declared length over 64 KiB before any byte is read", () => {
  checkBodyHeaders("application/json", MAX_BODY_BYTES);
  assert.throws(
    () => checkBodyHeaders("application/json", MAX_BODY_BYTES + 1),
    /larger than 65536/,
  );
  assert.throws(() => checkBodyHeaders("text/plain", 0), /must be application\/json/);
});

// ---------------------------------------------------------------------------
// POST /v1/enroll

Deno.test("POST /v1/enroll issues a certificate for the invited name and uses the token up", async () => {
  await withWorld(async ({ ctx, invite }) => {
    const token = await invite("alice");
    const { csr } = await makeCsr("alice");
    const reply = await call(ctx, "POST", "/v1/enroll", { json: { token, csr } });
    assert.equal(reply.status, 200, reply.body);
    assert.equal(reply.user, "alice");
    assertCertificateJson(reply.json, "alice");
    assert.ok(await ctx.ca.isCurrent(reply.json.serial));
    // (The same key again is a retry: see the tests below.)
    const other = await makeCsr("alice");
    const again = await call(ctx, "POST", "/v1/enroll", { json: { token, csr: other.csr } });
    assertError(again, 403, "ERR_TOKEN_INVALID", "Invalid, used or expired invite token");
  });
});

Deno.test("POST /v1/enroll answers a used token with a request for the same key with the same certificate, and signs and writes nothing", async () => {
  await withWorld(async ({ ctx, invite, home }) => {
    const token = await invite("alice");
    const { csr, key } = await makeCsr("alice");
    const first = await call(ctx, "POST", "/v1/enroll", { json: { token, csr } });
    assert.equal(first.status, 200, first.body);
    const before = await snapshot(home);
    // A new request from the same key, as a retried join makes (and the very same one).
    const retry = await makeCsr("alice", { keyPem: key });
    for (const again of [retry.csr, csr]) {
      const reply = await call(ctx, "POST", "/v1/enroll", { json: { token, csr: again } });
      assert.equal(reply.status, 200, reply.body);
      assert.equal(reply.user, "alice");
      assertCertificateJson(reply.json, "alice");
      assert.deepEqual(reply.json, first.json);
    }
    assert.deepEqual(await snapshot(home), before);
    const alice = (await ctx.ca.database()).filter((e) => e.name === "alice");
    assert.deepEqual(alice.map((e) => e.serial), [first.json.serial]);
  });
});

Deno.test("POST /v1/enroll refuses a used token as before when the key differs or its certificate was revoked, superseded or renewed", async () => {
  const INVALID = "Invalid, used or expired invite token";
  await withWorld(async ({ ctx, invite, home }) => {
    // From many addresses: more attempts than the rate limit allows one.
    let n = 0;
    const enroll = (token: string, csr: string) =>
      call(ctx, "POST", "/v1/enroll", { json: { token, csr }, remoteAddress: `10.0.0.${++n}` });
    const tokens = {
      revoked: await invite("alice"),
      superseded: await invite("bob"),
      renewed: await invite("carol"),
    };
    const keys: Record<string, { csr: string; key: string }> = {};
    for (const [which, token] of Object.entries(tokens)) {
      const name = { revoked: "alice", superseded: "bob", renewed: "carol" }[which]!;
      keys[which] = await makeCsr(name);
      const reply = await enroll(token, keys[which].csr);
      assert.equal(reply.status, 200, reply.body);
      // Each retry works until its certificate stops being the name's valid one.
      assert.equal((await enroll(token, keys[which].csr)).status, 200, which);
    }
    // Another key, another name's request, no request at all: the refusal of a used token.
    assertError(
      await enroll(tokens.revoked, (await makeCsr("alice")).csr),
      403,
      "ERR_TOKEN_INVALID",
      INVALID,
    );
    assertError(
      await enroll(tokens.revoked, (await makeCsr("bob", { keyPem: keys.revoked.key })).csr),
      403,
      "ERR_TOKEN_INVALID",
      INVALID,
    );
    assertError(await enroll(tokens.revoked, "garbage"), 403, "ERR_TOKEN_INVALID", INVALID);

    await ctx.ca.revoke("alice", { reason: "keyCompromise" });
    await ctx.ca.sign((await makeCsr("bob")).csr, "bob", { replace: true });
    await ctx.ca.sign((await makeCsr("carol", { keyPem: keys.renewed.key })).csr, "carol");
    const before = await snapshot(home);
    for (const [which, token] of Object.entries(tokens)) {
      assertError(await enroll(token, keys[which].csr), 403, "ERR_TOKEN_INVALID", INVALID, which);
    }
    assert.deepEqual(await snapshot(home), before);
  });
});

Deno.test("POST /v1/enroll refuses a used token with a request that carries its certificate's key under a signature that key did not make: the key, not its certificate, gets a retry", async () => {
  await withWorld(async ({ ctx, invite, home }) => {
    const token = await invite("alice");
    const alice = await makeCsr("alice");
    const first = await call(ctx, "POST", "/v1/enroll", { json: { token, csr: alice.csr } });
    assert.equal(first.status, 200, first.body);
    // A thief with the token and alice's certificate (both may leak): a request for CN=alice signed
    // by the thief's key, with alice's public key put in place of the thief's (same curve, same size).
    const thief = await makeCsr("alice");
    const spki = (pem: string) =>
      Buffer.from(createPublicKey(createPrivateKey(pem)).export({ type: "spki", format: "der" }));
    const der = Buffer.from(pemDecode(thief.csr, "CERTIFICATE REQUEST")!);
    const at = der.indexOf(spki(thief.key));
    assert.ok(at > 0);
    spki(alice.key).copy(der, at);
    const forged = pemEncode(new Uint8Array(der), "CERTIFICATE REQUEST");
    const before = await snapshot(home);
    const reply = await call(ctx, "POST", "/v1/enroll", { json: { token, csr: forged } });
    assertError(reply, 403, "ERR_TOKEN_INVALID", "Invalid, used or expired invite token");
    assert.deepEqual(await snapshot(home), before);
    // The same bytes as a first enrollment: its signature does not verify.
    const fresh = await call(ctx, "POST", "/v1/enroll", {
      json: { token: await invite("alice"), csr: forged },
    });
    assertError(
      fresh,
      400,
      "ERR_CSR_SIGNATURE",
      "Cannot sign request: its signature does not verify",
    );
  });
});

Deno.test("POST /v1/enroll with a new invite replaces the name's certificate, revoking the old one", async () => {
  await withWorld(async ({ ctx, invite, member }) => {
    const old = await member("alice");
    const { csr } = await makeCsr("alice");
    const reply = await call(ctx, "POST", "/v1/enroll", {
      json: { token: await invite("alice"), csr },
    });
    assert.equal(reply.status, 200, reply.body);
    assert.notEqual(reply.json.serial, old.serial);
    assert.equal(await ctx.ca.isCurrent(old.serial), false);
  });
});

Deno.test("POST /v1/enroll refuses bad bodies, tokens and requests with a 4xx JSON error, changes nothing and keeps the token", async () => {
  await withWorld(async ({ ctx, invite, home }) => {
    const token = await invite("alice");
    const [good, bob, weak] = await Promise.all([
      makeCsr("alice"),
      makeCsr("bob"),
      makeCsr("alice", { keyType: "rsa-1024" }),
    ]);
    const before = await snapshot(`${home}/ca`);
    const cases: Array<[string, CallOptions, number, ErrorCode, string | RegExp]> = [
      ["no body", {}, 400, "ERR_BAD_REQUEST", "The body is not valid JSON"],
      [
        "cut JSON",
        { raw: JSON.stringify({ token }).slice(0, -1) },
        400,
        "ERR_BAD_REQUEST",
        "The body is not valid JSON",
      ],
      [
        "an array",
        { json: [token, good.csr] },
        400,
        "ERR_BAD_REQUEST",
        "The body must be a JSON object",
      ],
      ["null", { json: null }, 400, "ERR_BAD_REQUEST", "The body must be a JSON object"],
      ["a string", { json: "x" }, 400, "ERR_BAD_REQUEST", "The body must be a JSON object"],
      [
        "no csr",
        { json: { token } },
        400,
        "ERR_BAD_REQUEST",
        'Field "csr" must be a non-empty string',
      ],
      [
        "an empty csr",
        { json: { token, csr: "" } },
        400,
        "ERR_BAD_REQUEST",
        'Field "csr" must be a non-empty string',
      ],
      [
        "a numeric csr",
        { json: { token, csr: 1 } },
        400,
        "ERR_BAD_REQUEST",
        'Field "csr" must be a non-empty string',
      ],
      [
        "text for a csr",
        { json: { token, csr: "not a request" } },
        400,
        "ERR_CSR_INVALID",
        /^Invalid certificate request: /,
      ],
      [
        "a truncated DER request",
        {
          json: {
            token,
            csr: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n",
          },
        },
        400,
        "ERR_CSR_INVALID",
        /^Invalid certificate request: /,
      ],
      [
        "no token",
        { json: { csr: good.csr } },
        403,
        "ERR_TOKEN_INVALID",
        "Invalid, used or expired invite token",
      ],
      [
        "a numeric token",
        { json: { token: 7, csr: good.csr } },
        403,
        "ERR_TOKEN_INVALID",
        "Invalid, used or expired invite token",
      ],
      [
        "a malformed token",
        { json: { token: "abc", csr: good.csr } },
        403,
        "ERR_TOKEN_INVALID",
        "Invalid, used or expired invite token",
      ],
      [
        "an unknown token",
        { json: { token: "A".repeat(43), csr: good.csr } },
        403,
        "ERR_TOKEN_INVALID",
        "Invalid, used or expired invite token",
      ],
      [
        "another name's request",
        { json: { token, csr: bob.csr } },
        400,
        "ERR_CSR_NAME_MISMATCH",
        /alice/,
      ],
      [
        "a weak key",
        { json: { token, csr: weak.csr } },
        400,
        "ERR_KEY_REJECTED",
        /^Cannot sign request: an RSA key of 1024 bits is too weak/,
      ],
      [
        "text/plain",
        { json: { token, csr: good.csr }, contentType: "text/plain" },
        415,
        "ERR_UNSUPPORTED_MEDIA_TYPE",
        "The body must be application/json",
      ],
      [
        "a body over 64 KiB",
        { json: { token, csr: good.csr, pad: "x".repeat(MAX_BODY_BYTES) } },
        413,
        "ERR_TOO_LARGE",
        "The body is larger than 65536 bytes",
      ],
    ];
    for (const [what, options, status, code, message] of cases) {
      // Distinct addresses: these are not what the rate limit is about.
      const reply = await call(ctx, "POST", "/v1/enroll", { ...options, remoteAddress: what });
      assertError(reply, status, code, message, what);
      assert.ok(!reply.body.includes(token), `${what}: the reply shows the token`);
    }
    assert.deepEqual(await snapshot(`${home}/ca`), before, "a refused request changed HOME/ca");
    const accepted = await call(ctx, "POST", "/v1/enroll", { json: { token, csr: good.csr } });
    assert.equal(accepted.status, 200, accepted.body);
  });
});

Deno.test("POST /v1/enroll allows 10 attempts a minute from one address, then 429 with retry-after, before reading the body", async () => {
  await withWorld(async ({ ctx }) => {
    for (let i = 0; i < 10; i++) {
      assertError(
        await call(ctx, "POST", "/v1/enroll"),
        400,
        "ERR_BAD_REQUEST",
        "The body is not valid JSON",
      );
    }
    const limited = await call(ctx, "POST", "/v1/enroll", { raw: "x".repeat(MAX_BODY_BYTES + 1) });
    assertError(limited, 429, "ERR_RATE_LIMITED", "Too many enrollment attempts from this address");
    assert.equal(limited.headers["retry-after"], "60");
    const other = await call(ctx, "POST", "/v1/enroll", { remoteAddress: "10.0.0.2" });
    assertError(other, 400, "ERR_BAD_REQUEST", "The body is not valid JSON", "another address");
  });
});

// ---------------------------------------------------------------------------
// Authentication (every auth route)

const AUTH_ROUTES: Array<[string, string, unknown]> = [
  ["GET", "/v1/certs/alice", undefined],
  ["POST", "/v1/renew", { csr: "x" }],
  ["POST", "/v1/rendezvous", { to: "alice", port: 4000 }],
  ["GET", "/v1/rendezvous", undefined],
  ["DELETE", "/v1/rendezvous/1", undefined],
];

Deno.test("auth routes refuse no certificate, garbage and another CA's certificate with 401", async () => {
  await withWorld(async ({ ctx, member }) => {
    await member("alice");
    const foreign = await withTempDir(async (other) => {
      const ca2 = await CertificateAuthority.init(other, PASSPHRASE, { keyType: "ec-p256" });
      const { certificate } = await ca2.sign((await makeCsr("alice")).csr, "alice");
      return pemDecode(certificate.pem, "CERTIFICATE")!;
    });
    for (const [method, path, json] of AUTH_ROUTES) {
      const what = `${method} ${path}`;
      assertError(
        await call(ctx, method, path, { json }),
        401,
        "ERR_UNAUTHENTICATED",
        "This route needs a client certificate",
        `${what}, no certificate`,
      );
      for (
        const [kind, peer] of [["garbage", Uint8Array.of(0x30, 0x03, 1, 2, 3)], [
          "another CA's",
          foreign,
        ]] as const
      ) {
        assertError(
          await call(ctx, method, path, { json, peer }),
          401,
          "ERR_UNAUTHENTICATED",
          "The client certificate was not accepted",
          `${what}, ${kind}`,
        );
      }
    }
  });
});

Deno.test("auth routes refuse a revoked or superseded certificate with 403 at once, and say which in standing", async () => {
  await withWorld(async ({ ctx, ca, member }) => {
    const alice = await member("alice");
    const bob = await member("bob");
    // Before: both are members.
    assert.equal((await call(ctx, "GET", "/v1/certs/bob", { peer: alice.der })).status, 200);
    await ca.revoke("alice");
    const carolOld = await member("carol");
    const { certificate: carol } = await ca.sign((await makeCsr("carol")).csr, "carol", {
      replace: true,
    });
    // Before: no standing; a chat start said "on the revocation list" of either.
    const cases = [
      ["revoked", alice.der, { status: "revoked" }],
      ["superseded", carolOld.der, {
        status: "superseded",
        by: { serial: carol.serial, sameKey: false },
      }],
    ] as const;
    for (const [method, path, json] of AUTH_ROUTES) {
      for (const [who, peer, standing] of cases) {
        assertNotCurrent(
          await call(ctx, method, path, { json, peer }),
          `${method} ${path}, ${who}`,
          standing,
        );
      }
    }
    assert.equal((await call(ctx, "GET", "/v1/certs/carol", { peer: bob.der })).status, 200);
  });
});

Deno.test("auth routes refuse an expired certificate of ours with 401 and say in standing that it expired, and when; another CA's expired one gets no standing", async () => {
  await withWorld(async ({ ctx, ca, home }) => {
    const expired = await expiredCertificate({ caDir: ca.paths.dir }, join(home, "copy"), "carol");
    const der = pemDecode(expired.cert, "CERTIFICATE")!;
    const foreign = await withTempDir(async (other) => {
      const ca2 = await CertificateAuthority.init(other, PASSPHRASE, { keyType: "ec-p256" });
      const copy = join(other, "copy");
      return pemDecode(
        (await expiredCertificate({ caDir: ca2.paths.dir }, copy, "carol")).cert,
        "CERTIFICATE",
      )!;
    });
    for (const [method, path, json] of AUTH_ROUTES) {
      const what = `${method} ${path}`;
      const reply = await call(ctx, method, path, { json, peer: der });
      // Before: the same 401 and message, without standing: a client whose clock was behind
      // could not tell its user why.
      assertError(
        reply,
        401,
        "ERR_UNAUTHENTICATED",
        "The client certificate was not accepted",
        what,
      );
      assert.deepEqual(reply.json.error.standing, {
        status: "expired",
        notAfter: "2020-01-08T00:00:00.000Z",
      }, what);
      const other = await call(ctx, method, path, { json, peer: foreign });
      assertError(
        other,
        401,
        "ERR_UNAUTHENTICATED",
        "The client certificate was not accepted",
        what,
      );
      assert.equal(other.json.error.standing, undefined, `${what}, another CA's`);
    }
  });
});

/**
 * A certificate of ours for `name` (and `key`, else a new one), valid only in 2020, and in the live
 * index as revoked for `reason` before it expired (as a renewal, a new invite or `ca revoke` would
 * have left it): its line appended, its file where the CA keeps them.
 */
async function expiredAndRevoked(
  ca: CertificateAuthority,
  home: string,
  name: string,
  reason: string,
  key?: string,
): Promise<{ der: Uint8Array; key: string }> {
  const copy = join(home, `copy-${name}`);
  const expired = await expiredCertificate({ caDir: ca.paths.dir }, copy, name, key);
  const lines = (await Deno.readTextFile(join(copy, "index.txt"))).trim().split("\n");
  const [, expires, , serial, file, subject] = lines.at(-1)!.split("\t");
  await Deno.writeTextFile(
    ca.paths.index,
    `R\t${expires}\t200105000000Z,${reason}\t${serial}\t${file}\t${subject}\n`,
    { append: true },
  );
  await Deno.writeTextFile(ca.paths.certFile(serial), expired.cert);
  return { der: pemDecode(expired.cert, "CERTIFICATE")!, key: expired.key };
}

Deno.test("an expired certificate that was superseded or revoked before it expired is refused as one that has not expired (403 and its standing), not told to ask for a new invite; a renewal's retry with one superseded for its own key gets the current certificate", async () => {
  await withWorld(async ({ ctx, ca, home, member }) => {
    const bob = await member("bob");
    // carol renewed (the same key) from another home, or her renewal's reply was lost; her
    // certificate of before has expired since.
    const carolOld = await expiredAndRevoked(ca, home, "carol", "superseded");
    const { certificate: carol } = await ca.sign(
      (await makeCsr("carol", { keyPem: carolOld.key })).csr,
      "carol",
    );
    // dave's was revoked (stolen, say), then expired.
    const daveOld = await expiredAndRevoked(ca, home, "dave", "keyCompromise");
    for (const [method, path, json] of AUTH_ROUTES) {
      const what = `${method} ${path}`;
      assertNotCurrent(await call(ctx, method, path, { json, peer: daveOld.der }), what, {
        status: "revoked",
      });
      if (path === "/v1/renew") continue; // below
      // Before: 401 with standing expired (its holder told to ask for a new invite).
      assertNotCurrent(await call(ctx, method, path, { json, peer: carolOld.der }), what, {
        status: "superseded",
        by: { serial: carol.serial, sameKey: true },
      });
    }
    // The renewal's retry: the name's certificate now, for the caller's key; nothing signed.
    const { csr } = await makeCsr("carol", { keyPem: carolOld.key });
    const again = await renewAs(ctx, carolOld.der, csr);
    assert.equal(again.status, 200, again.body);
    assert.equal(typeof again.json.issuedEarlier, "string", again.body);
    assert.equal(again.json.serial, carol.serial);
    assert.equal((await ca.current("carol"))!.serial, carol.serial);
    // A certificate superseded by one for another key gets no retry.
    const { certificate: bobNow } = await ca.sign((await makeCsr("bob")).csr, "bob", {
      replace: true,
    });
    const bobsKey = (await makeCsr("bob")).csr;
    assertNotCurrent(await renewAs(ctx, bob.der, bobsKey), "bob", {
      status: "superseded",
      by: { serial: bobNow.serial, sameKey: false },
    });
  });
});

// ---------------------------------------------------------------------------
// GET /v1/certs/{name}

Deno.test("GET /v1/certs/{name} returns the current certificate as PEM, or as JSON when asked", async () => {
  await withWorld(async ({ ctx, ca, member }) => {
    const alice = await member("alice");
    await member("bob-smith_2");
    const pemReply = await call(ctx, "GET", "/v1/certs/bob-smith_2", { peer: alice.der });
    assert.equal(pemReply.status, 200);
    assert.equal(pemReply.type, "application/x-pem-file");
    assert.equal(pemReply.user, "alice");
    assert.equal(pemReply.body, (await ca.current("bob-smith_2"))!.pem);
    const jsonReply = await call(ctx, "GET", "/v1/certs/bob-smith_2", {
      peer: alice.der,
      wantsJson: true,
    });
    assert.equal(jsonReply.status, 200);
    assertCertificateJson(jsonReply.json, "bob-smith_2");
    // A percent-encoded name is decoded before it is checked.
    const encoded = await call(ctx, "GET", "/v1/certs/%62ob-smith_2", { peer: alice.der });
    assert.equal(encoded.body, pemReply.body);
  });
});

Deno.test("GET /v1/certs/{name} refuses a name without a certificate (404), a revoked one (404) and a bad name (400)", async () => {
  await withWorld(async ({ ctx, ca, member }) => {
    const alice = await member("alice");
    await member("bob");
    await ca.revoke("bob");
    const cases: Array<[string, number, ErrorCode, string | RegExp]> = [
      ["carol", 404, "ERR_NOT_FOUND", 'No valid certificate for "carol" in the directory'],
      ["bob", 404, "ERR_NOT_FOUND", 'No valid certificate for "bob" in the directory'],
      ["Bob", 400, "ERR_NAME_INVALID", /Bob/],
      ["a%20b", 400, "ERR_NAME_INVALID", /a b/],
      ["a%2Fb", 400, "ERR_NAME_INVALID", /a\/b/],
      ["%", 400, "ERR_NAME_INVALID", "Invalid name: not valid percent-encoding"],
      ["%E0%A4%A", 400, "ERR_NAME_INVALID", "Invalid name: not valid percent-encoding"],
      ["e2e-chat%20service", 400, "ERR_NAME_INVALID", /e2e-chat service/],
    ];
    for (const [segment, status, code, message] of cases) {
      assertError(
        await call(ctx, "GET", `/v1/certs/${segment}`, { peer: alice.der }),
        status,
        code,
        message,
        segment,
      );
    }
  });
});

// ---------------------------------------------------------------------------
// POST /v1/renew

Deno.test("POST /v1/renew issues a new certificate for the caller's key and supersedes the old one", async () => {
  await withWorld(async ({ ctx, ca, member }) => {
    const alice = await member("alice");
    const { csr } = await makeCsr("alice", { keyPem: alice.key });
    const reply = await renewAs(ctx, alice.der, csr);
    assert.equal(reply.status, 200, reply.body);
    assert.equal(reply.user, "alice");
    assertCertificateJson(reply.json, "alice");
    assert.notEqual(reply.json.serial, alice.serial);
    assert.equal((await ca.current("alice"))!.serial, reply.json.serial);
    assert.equal(await ca.isCurrent(alice.serial), false);
    // The old one is refused elsewhere, as superseded by one for its own key.
    assertNotCurrent(await call(ctx, "GET", "/v1/rendezvous", { peer: alice.der }), "old", {
      status: "superseded",
      by: { serial: reply.json.serial, sameKey: true },
    });
  });
});

Deno.test("POST /v1/renew refuses another key (409), another name (400) and a bad body (400)", async () => {
  await withWorld(async ({ ctx, member }) => {
    const alice = await member("alice");
    const [otherKey, bob] = await Promise.all([makeCsr("alice"), makeCsr("bob")]);
    const cases: Array<[string, CallOptions, number, ErrorCode, string | RegExp]> = [
      ["another key", { json: { csr: otherKey.csr } }, 409, "ERR_NAME_TAKEN", /alice/],
      ["another name", { json: { csr: bob.csr } }, 400, "ERR_CSR_NAME_MISMATCH", /bob|alice/],
      ["no csr", { json: {} }, 400, "ERR_BAD_REQUEST", 'Field "csr" must be a non-empty string'],
      ["bad JSON", { raw: "{" }, 400, "ERR_BAD_REQUEST", "The body is not valid JSON"],
      [
        "a form",
        { raw: "csr=x", contentType: "application/x-www-form-urlencoded" },
        415,
        "ERR_UNSUPPORTED_MEDIA_TYPE",
        "The body must be application/json",
      ],
    ];
    for (const [what, options, status, code, message] of cases) {
      assertError(
        await call(ctx, "POST", "/v1/renew", { ...options, peer: alice.der }),
        status,
        code,
        message,
        what,
      );
    }
    assert.ok(await ctx.ca.isCurrent(alice.serial), "a refused renewal kept the certificate");
  });
});

Deno.test("POST /v1/renew refuses (403) a caller whose certificate is revoked while its body is still on the way, and issues nothing", async () => {
  await withWorld(async ({ ctx, ca, member }) => {
    const alice = await member("alice");
    const { csr } = await makeCsr("alice", { keyPem: alice.key });
    // A client that authenticated, then held its upload back until the admin's revocation
    // was confirmed.
    const renewal = handle(ctx, {
      method: "POST",
      path: "/v1/renew",
      query: new URLSearchParams(),
      remoteAddress: "127.0.0.1",
      peerDer: alice.der,
      wantsJson: false,
      json: async () => {
        // (Not keyCompromise: then the key itself is refused, ERR_KEY_REJECTED, before this.)
        await ca.revoke("alice", { reason: "affiliationChanged" });
        return { csr };
      },
      signal: new AbortController().signal,
    });
    await assert.rejects(
      renewal,
      e2eError(
        "ERR_FORBIDDEN",
        `Cannot sign request: serial ${alice.serial} is no longer the valid certificate of "alice"`,
      ),
    );
    assert.equal(await ca.current("alice"), undefined, "the revocation stays in force");
    const alices = (await ca.list()).filter((c) => c.name === "alice");
    assert.deepEqual(alices.map((c) => [c.serial, c.status]), [[alice.serial, "revoked"]]);
  });
});

Deno.test("POST /v1/renew retried after a lost reply gets the current certificate again, saying when it was issued (issuedEarlier)", async () => {
  await withWorld(async ({ ctx, ca, member }) => {
    const alice = await member("alice");
    const { csr } = await makeCsr("alice", { keyPem: alice.key });
    const t0 = Date.now();
    const first = await renewAs(ctx, alice.der, csr);
    assert.equal(first.status, 200, first.body);
    // A new certificate: signed now, so no issuedEarlier.
    assert.equal(first.json.issuedEarlier, undefined);
    // The reply never reached alice: she still has only her old (now superseded) certificate.
    const issued = (await ca.list()).length;
    for (let i = 0; i < RENEWALS_PER_DAY + 1; i++) {
      const again = await renewAs(ctx, alice.der, csr);
      assert.equal(again.status, 200, again.body);
      // Issued before this request: when, so that a client that did not ask can say so.
      const { issuedEarlier, ...certificate } = again.json;
      assertCertificateJson(certificate, "alice");
      const at = Date.parse(issuedEarlier);
      assert.ok(at >= t0 - 1_000 && at <= Date.now(), `issuedEarlier ${issuedEarlier}`);
      assert.equal(issuedEarlier, new Date(at).toISOString());
      assert.equal(again.json.serial, first.json.serial);
      assert.equal(again.json.certificate, first.json.certificate);
    }
    assert.equal((await ca.list()).length, issued, "a retry signs nothing");
    // Nor does it count against the daily cap: the new certificate still renews.
    const next = await renewAs(ctx, pemDecode(first.json.certificate, "CERTIFICATE")!, csr);
    assert.equal(next.status, 200, next.body);
    assert.notEqual(next.json.serial, first.json.serial);
    // The old certificate is still refused everywhere else.
    assertNotCurrent(await call(ctx, "GET", "/v1/certs/alice", { peer: alice.der }));
  });
});

Deno.test("POST /v1/renew sent twice at once issues one certificate and answers both with it", async () => {
  await withWorld(async ({ ctx, ca, member }) => {
    const alice = await member("alice");
    const { csr } = await makeCsr("alice", { keyPem: alice.key });
    const issued = (await ca.list()).length;
    const [a, b] = await Promise.all([
      renewAs(ctx, alice.der, csr),
      renewAs(ctx, alice.der, csr),
    ]);
    assert.equal(a.status, 200, a.body);
    assert.equal(b.status, 200, b.body);
    assert.equal(a.json.serial, b.json.serial);
    assert.equal((await ca.list()).length, issued + 1);
  });
});

Deno.test("POST /v1/renew retried after a lost reply for another key is still refused", async () => {
  await withWorld(async ({ ctx, ca, member }) => {
    const alice = await member("alice");
    const { csr } = await makeCsr("alice", { keyPem: alice.key });
    const first = await renewAs(ctx, alice.der, csr);
    assert.equal(first.status, 200, first.body);
    const other = await makeCsr("alice");
    assertNotCurrent(await renewAs(ctx, alice.der, other.csr));
    // Nor when the admin gave the name a new key, or revoked it for another reason.
    const replaced = await makeCsr("alice");
    await ca.sign(replaced.csr, "alice", { replace: true });
    assertNotCurrent(await renewAs(ctx, alice.der, csr));
    const bob = await member("bob");
    const bobCsr = (await makeCsr("bob", { keyPem: bob.key })).csr;
    await ca.revoke("bob", { reason: "keyCompromise" });
    assertNotCurrent(await renewAs(ctx, bob.der, bobCsr));
  });
});

// ---------------------------------------------------------------------------
// /v1/rendezvous

Deno.test("POST then GET /v1/rendezvous hands bob alice's offer with her certificate, and the cursor skips it after", async () => {
  await withWorld(async ({ ctx, member }) => {
    const alice = await member("alice");
    const bob = await member("bob");
    const offer = await call(ctx, "POST", "/v1/rendezvous", {
      json: { to: "bob", port: 40123 },
      peer: alice.der,
      remoteAddress: "192.0.2.7",
    });
    assert.equal(offer.status, 200, offer.body);
    assert.equal(offer.user, "alice");
    assert.deepEqual(Object.keys(offer.json), ["id", "to", "expiresAt", "peer"]);
    assert.equal(offer.json.to, "bob");
    assertCertificateJson(offer.json.peer, "bob");

    const got = await call(ctx, "GET", "/v1/rendezvous", { peer: bob.der });
    assert.equal(got.status, 200, got.body);
    assert.equal(got.user, "bob");
    assert.equal(got.json.invitations.length, 1);
    const [invitation] = got.json.invitations;
    assert.deepEqual(
      { id: invitation.id, from: invitation.from, host: invitation.host, port: invitation.port },
      { id: offer.json.id, from: "alice", host: "192.0.2.7", port: 40123 },
    );
    assertCertificateJson(invitation.peer, "alice");
    assert.equal(got.json.cursor, offer.json.id);

    const later = await call(ctx, "GET", `/v1/rendezvous?after=${got.json.cursor}`, {
      peer: bob.der,
    });
    assert.deepEqual(later.json, { invitations: [], cursor: got.json.cursor });
    // Alice's own list is empty: the offer was to bob.
    const own = await call(ctx, "GET", "/v1/rendezvous", { peer: alice.der });
    assert.deepEqual(own.json, { invitations: [], cursor: 0 });
  });
});

Deno.test("DELETE /v1/rendezvous/ID by its recipient takes the invitation up: no GET lists it again, the relay still finds it; anyone else gets 404, as for none", async () => {
  await withWorld(async ({ ctx, member }) => {
    const alice = await member("alice");
    const bob = await member("bob");
    const carol = await member("carol");
    const offer = await call(ctx, "POST", "/v1/rendezvous", {
      json: { to: "bob", port: 40123 },
      peer: alice.der,
    });
    const id = offer.json.id;
    for (const [who, peer] of [["the inviter", alice.der], ["a stranger", carol.der]] as const) {
      assertError(
        await call(ctx, "DELETE", `/v1/rendezvous/${id}`, { peer }),
        404,
        "ERR_NOT_FOUND",
        `No pending invitation ${id}`,
        who,
      );
    }
    assertError(
      await call(ctx, "DELETE", `/v1/rendezvous/${id + 1}`, { peer: bob.der }),
      404,
      "ERR_NOT_FOUND",
      `No pending invitation ${id + 1}`,
      "no such invitation",
    );
    assertError(
      await call(ctx, "GET", `/v1/rendezvous/${id}`, { peer: bob.der }),
      405,
      "ERR_METHOD_NOT_ALLOWED",
      "Method GET is not allowed here; use DELETE",
    );
    assert.equal(
      (await call(ctx, "GET", "/v1/rendezvous", { peer: bob.der })).json.invitations.length,
      1,
    );
    const taken = await call(ctx, "DELETE", `/v1/rendezvous/${id}`, { peer: bob.der });
    assert.equal(taken.status, 200, taken.body);
    assert.deepEqual(taken.json, { taken: id });
    assert.equal(taken.user, "bob");
    // A client started later (after=0) is not shown it; the relay still joins its parties.
    const listed = await call(ctx, "GET", "/v1/rendezvous", { peer: bob.der });
    assert.deepEqual(listed.json, { invitations: [], cursor: 0 });
    assert.equal(ctx.rendezvous.get(id)?.from, "alice");
  });
});

Deno.test("POST /v1/rendezvous takes an explicit host, and GET leaves out an offer from a user revoked since", async () => {
  await withWorld(async ({ ctx, ca, member }) => {
    const alice = await member("alice");
    const bob = await member("bob");
    const offer = await call(ctx, "POST", "/v1/rendezvous", {
      json: { to: "bob", port: 1, host: "chat.example.org" },
      peer: alice.der,
    });
    assert.equal(offer.status, 200, offer.body);
    const got = await call(ctx, "GET", "/v1/rendezvous", { peer: bob.der });
    assert.equal(got.json.invitations[0].host, "chat.example.org");
    await ca.revoke("alice");
    const after = await call(ctx, "GET", "/v1/rendezvous", { peer: bob.der });
    assert.deepEqual(after.json.invitations, []);
  });
});

Deno.test("POST /v1/rendezvous and a mailbox post refuse (403) a member revoked while the body was on the way, and keep nothing", async () => {
  await withWorld(async ({ ctx, ca, home, member }) => {
    const alice = await member("alice");
    await member("bob");
    const mailbox = await Mailbox.open(new CaPaths(home));
    try {
      // A client that authenticated, then held its upload back until its revocation was confirmed.
      const request = (path: string, body: Partial<ApiRequest>): ApiRequest => ({
        method: "POST",
        path,
        query: new URLSearchParams(),
        remoteAddress: "127.0.0.1",
        peerDer: alice.der,
        wantsJson: false,
        json: () => Promise.reject(new Error("no JSON body")),
        signal: new AbortController().signal,
        ...body,
      });
      const offer = handle(
        { ...ctx, mailbox },
        request("/v1/rendezvous", {
          json: async () => {
            await ca.revoke("alice");
            return { to: "bob", port: 1 };
          },
        }),
      );
      await assert.rejects(
        offer,
        e2eError("ERR_FORBIDDEN", "The client certificate is revoked or superseded"),
      );
      assert.equal(await ca.current("alice"), undefined, "the revocation stays in force");
      assert.deepEqual(await ctx.rendezvous.wait("bob", 0, 0, new AbortController().signal), []);
      const again = await member("alice");
      const post = handle(
        { ...ctx, mailbox },
        {
          ...request("/v1/mailbox/bob", {
            bytes: async () => {
              await ca.revoke("alice");
              return new Uint8Array(10);
            },
          }),
          peerDer: again.der,
        },
      );
      await assert.rejects(
        post,
        e2eError("ERR_FORBIDDEN", "The client certificate is revoked or superseded"),
      );
      assert.deepEqual(mailbox.list("bob"), []);
    } finally {
      mailbox.close();
    }
  });
});

Deno.test("POST /v1/rendezvous refuses a bad port, a bad host, oneself (400) and a name without a certificate (404)", async () => {
  await withWorld(async ({ ctx, member }) => {
    const alice = await member("alice");
    await member("bob");
    const port = 'Field "port" must be a whole number from 1 to 65535';
    const host = 'Field "host" must be an IP address or a host name';
    const cases: Array<[string, unknown, number, ErrorCode, string]> = [
      ["no to", { port: 4000 }, 400, "ERR_BAD_REQUEST", 'Field "to" must be a non-empty string'],
      [
        "a numeric to",
        { to: 5, port: 4000 },
        400,
        "ERR_BAD_REQUEST",
        'Field "to" must be a non-empty string',
      ],
      [
        "oneself",
        { to: "alice", port: 4000 },
        400,
        "ERR_BAD_REQUEST",
        "Cannot rendezvous with yourself",
      ],
      [
        "a host without a port",
        { to: "bob", host: "h" },
        400,
        "ERR_BAD_REQUEST",
        'Field "host" needs a "port"',
      ],
      ["a null port", { to: "bob", port: null }, 400, "ERR_BAD_REQUEST", port],
      ["port 0", { to: "bob", port: 0 }, 400, "ERR_BAD_REQUEST", port],
      ["port 65536", { to: "bob", port: 65536 }, 400, "ERR_BAD_REQUEST", port],
      ["port 1.5", { to: "bob", port: 1.5 }, 400, "ERR_BAD_REQUEST", port],
      ['port "80"', { to: "bob", port: "80" }, 400, "ERR_BAD_REQUEST", port],
      [
        "an empty host",
        { to: "bob", port: 80, host: "" },
        400,
        "ERR_BAD_REQUEST",
        'Field "host" must be a non-empty string',
      ],
      ["a host with a space", { to: "bob", port: 80, host: "a b" }, 400, "ERR_BAD_REQUEST", host],
      ["a host with a path", { to: "bob", port: 80, host: "a/b" }, 400, "ERR_BAD_REQUEST", host],
      ["a host starting with -", { to: "bob", port: 80, host: "-a" }, 400, "ERR_BAD_REQUEST", host],
      [
        "a host of 254 characters",
        { to: "bob", port: 80, host: "a".repeat(254) },
        400,
        "ERR_BAD_REQUEST",
        host,
      ],
      ["a bad name", { to: "Bob", port: 80 }, 400, "ERR_NAME_INVALID", 'Invalid name "Bob"'],
      [
        "no certificate",
        { to: "carol", port: 80 },
        404,
        "ERR_NOT_FOUND",
        'No valid certificate for "carol" in the directory',
      ],
    ];
    for (const [what, json, status, code, message] of cases) {
      const reply = await call(ctx, "POST", "/v1/rendezvous", { json, peer: alice.der });
      assertError(reply, status, code, message, what);
    }
    assert.deepEqual(ctx.rendezvous.pending("bob"), [], "a refused offer was recorded");
  });
});

Deno.test("GET /v1/rendezvous refuses after and wait that are not whole numbers in range", async () => {
  await withWorld(async ({ ctx, member }) => {
    const alice = await member("alice");
    const cases: Array<[string, string]> = [
      ["wait=31", `Parameter "wait" must be a whole number up to ${MAX_WAIT_SECONDS}`],
      ["wait=-1", `Parameter "wait" must be a whole number up to ${MAX_WAIT_SECONDS}`],
      ["wait=1.5", `Parameter "wait" must be a whole number up to ${MAX_WAIT_SECONDS}`],
      ["wait=", `Parameter "wait" must be a whole number up to ${MAX_WAIT_SECONDS}`],
      ["after=x", `Parameter "after" must be a whole number up to ${Number.MAX_SAFE_INTEGER}`],
      [
        "after=99999999999999999",
        `Parameter "after" must be a whole number up to ${Number.MAX_SAFE_INTEGER}`,
      ],
    ];
    for (const [query, message] of cases) {
      assertError(
        await call(ctx, "GET", `/v1/rendezvous?${query}`, { peer: alice.der }),
        400,
        "ERR_BAD_REQUEST",
        message,
        query,
      );
    }
    const ok = await call(ctx, "GET", `/v1/rendezvous?after=0&wait=0`, { peer: alice.der });
    assert.equal(ok.status, 200);
  });
});

// ---------------------------------------------------------------------------
// The issuance log

Deno.test("GET /v1/log/… serves the checkpoint, entries, inclusion and consistency proofs to members only", async () => {
  await withWorld(async ({ ctx, member }) => {
    const alice = await member("alice");
    await member("bob");
    const key = new X509Certificate(logKeyPem).publicKey;
    for (
      const path of ["checkpoint", "key", "entries?start=0&end=1", "proof?index=0&size=1", "crl"]
    ) {
      assertError(
        await call(ctx, "GET", `/v1/log/${path}`),
        401,
        "ERR_UNAUTHENTICATED",
        /client certificate/,
      );
    }
    const cp = await call(ctx, "GET", "/v1/log/checkpoint", { peer: alice.der });
    assert.equal(cp.type, "text/plain; charset=utf-8");
    const checkpoint = openCheckpoint(cp.body, { name: cp.body.split("\n")[0], key });
    // The log key's certificate, the CRL, alice and bob.
    assert.equal(checkpoint.size, 4);
    const keyReply = await call(ctx, "GET", "/v1/log/key", { peer: alice.der });
    assert.equal(keyReply.body, logKeyPem);

    const entries = await call(ctx, "GET", "/v1/log/entries?start=0&end=4", { peer: alice.der });
    const ders = entries.json.entries.map((b: string) => new Uint8Array(Buffer.from(b, "base64")));
    const tree = new MerkleTree(ders.map(leafHash));
    assert.deepEqual(tree.root(), checkpoint.root);
    assert.deepEqual(ders[2], alice.der);

    const proof = await call(ctx, "GET", "/v1/log/proof?index=2&size=4", { peer: alice.der });
    assert.deepEqual(Object.keys(proof.json), ["index", "size", "hashes"]);
    assert.ok(
      verifyInclusion(2, 4, leafHash(alice.der), decodeHashes(proof.json.hashes), checkpoint.root),
    );
    const cons = await call(ctx, "GET", "/v1/log/consistency?first=3&second=4", {
      peer: alice.der,
    });
    assert.ok(verifyConsistency(3, 4, tree.root(3), tree.root(4), decodeHashes(cons.json.hashes)));
    // The newest CRL in the log, entry 1, with its proof: what crl.pem holds.
    const crl = await call(ctx, "GET", "/v1/log/crl", { peer: alice.der });
    assert.deepEqual(Object.keys(crl.json), ["crl", "log"]);
    assert.equal(crl.json.crl, await Deno.readTextFile(ctx.ca.paths.crl));
    assert.equal(verifyLogProof(ders[1], crl.json.log, { name: checkpoint.origin, key }).size, 4);
    assert.deepEqual(ders[1], pemDecode(crl.json.crl, "X509 CRL"));

    const bad: Array<[string, RegExp]> = [
      ["entries?start=2&end=1", /"end" must be from 2 to 4/],
      ["entries?start=5&end=6", /"start" must be from 0 to 4/],
      ["entries?start=x&end=1", /"start" must be a whole number/],
      ["proof?index=4&size=4", /"index" must be from 0 to 3/],
      ["proof?index=0&size=5", /"size" must be from 1 to 4/],
      ["consistency?first=4&second=3", /"first" must be from 0 to 3/],
    ];
    for (const [path, message] of bad) {
      assertError(
        await call(ctx, "GET", `/v1/log/${path}`, { peer: alice.der }),
        400,
        "ERR_BAD_REQUEST",
        message,
        path,
      );
    }
    assertError(
      await call(ctx, "GET", "/v1/log/nope", { peer: alice.der }),
      404,
      "ERR_NOT_FOUND",
      /No route/,
    );
    assertError(
      await call(ctx, "POST", "/v1/log/checkpoint"),
      405,
      "ERR_METHOD_NOT_ALLOWED",
      /use GET/,
    );
  });
});

Deno.test("GET /v1/log/entries returns at most 256 entries at once", async () => {
  await withWorld(async ({ ctx, member, ca }) => {
    const alice = await member("alice");
    // 260 more certificates (a key for each name: one key, one name), signed in batches as
    // concurrent enrollments are.
    const names = Array.from({ length: 260 }, (_, i) => `many-${i}`);
    for (let i = 0; i < names.length; i += 26) {
      await Promise.all(
        names.slice(i, i + 26).map(async (name) => {
          await ca.sign((await makeCsr(name, { keyPem: newKeyPem() })).csr, name);
        }),
      );
    }
    const reply = await call(ctx, "GET", "/v1/log/entries?start=0&end=262", { peer: alice.der });
    assert.equal(reply.json.entries.length, 256);
    const rest = await call(ctx, "GET", "/v1/log/entries?start=256&end=262", { peer: alice.der });
    assert.equal(rest.json.entries.length, 6);
  });
});

Deno.test("POST /v1/rendezvous without a port makes an invitation without an address; a relay request reaches the inviter's GET", async () => {
  await withWorld(async ({ ctx, member }) => {
    const alice = await member("alice");
    const bob = await member("bob");
    const offer = await call(ctx, "POST", "/v1/rendezvous", {
      peer: alice.der,
      json: { to: "bob" },
    });
    assert.equal(offer.status, 200, offer.body);
    const got = await call(ctx, "GET", "/v1/rendezvous", { peer: bob.der });
    const [invitation] = got.json.invitations;
    assert.deepEqual(Object.keys(invitation), ["id", "from", "expiresAt", "peer"]);
    const before = await call(ctx, "GET", "/v1/rendezvous", { peer: alice.der });
    assert.equal(before.json.relays, undefined, "no relays field without a relay request");
    const waiting = ctx.rendezvous.requestRelay(ctx.rendezvous.get(offer.json.id)!, 30_000);
    const asked = await call(ctx, "GET", `/v1/rendezvous?after=${before.json.cursor}&wait=5`, {
      peer: alice.der,
    });
    assert.deepEqual(asked.json, {
      invitations: [],
      relays: [{ id: waiting.id, invitation: offer.json.id, from: "bob" }],
      cursor: waiting.id,
    });
  });
});

Deno.test("relayParty() admits the two parties of a pending invitation and refuses anyone else, an unknown invitation and a revoked member", async () => {
  await withWorld(async ({ ctx, ca, member }) => {
    const alice = await member("alice");
    const bob = await member("bob");
    const carol = await member("carol");
    const offer = await call(ctx, "POST", "/v1/rendezvous", {
      peer: alice.der,
      json: { to: "bob" },
    });
    const id = offer.json.id;
    const party = (der: Uint8Array | null, invitation: string = String(id)) =>
      relayParty(ctx, {
        method: "GET",
        path: "/v1/relay",
        query: new URLSearchParams({ invitation }),
        remoteAddress: "127.0.0.1",
        peerDer: der,
        wantsJson: true,
        json: () => Promise.resolve(undefined),
        signal: new AbortController().signal,
      });
    const atAlice = await party(alice.der);
    assert.deepEqual([atAlice.user, atAlice.peer, atAlice.invitation.id], ["alice", "bob", id]);
    const atBob = await party(bob.der);
    assert.deepEqual([atBob.user, atBob.peer], ["bob", "alice"]);
    // Someone else's invitation: the answer of none, so its existence does not show.
    await assert.rejects(
      party(carol.der),
      e2eError("ERR_NOT_FOUND", `No pending invitation ${id}`),
    );
    await assert.rejects(
      party(null),
      e2eError("ERR_UNAUTHENTICATED", "This route needs a client certificate"),
    );
    await assert.rejects(
      party(bob.der, String(id + 1)),
      e2eError("ERR_NOT_FOUND", `No pending invitation ${id + 1}`),
    );
    await assert.rejects(
      party(bob.der, "x"),
      e2eError("ERR_BAD_REQUEST", /^Parameter "invitation" must be a whole number/),
    );
    await ca.revoke("alice");
    await assert.rejects(
      party(alice.der),
      e2eError("ERR_FORBIDDEN", "The client certificate is revoked or superseded"),
    );
    // The other party revoked since the invitation: no session for bob either.
    await assert.rejects(
      party(bob.der),
      e2eError("ERR_NOT_FOUND", 'No valid certificate for "alice" in the directory'),
    );
  });
});

Deno.test("POST /v1/renew issues a member at most RENEWALS_PER_DAY certificates a day, then refuses with 429 ERR_RATE_LIMITED and issues nothing, while others still renew", async () => {
  await withWorld(async ({ ctx, ca, member }) => {
    const [alice, bob] = await Promise.all([member("alice"), member("bob")]);
    const { csr } = await makeCsr("alice", { keyPem: alice.key });
    let peer = alice.der;
    for (let i = 0; i < RENEWALS_PER_DAY; i++) {
      const reply = await renewAs(ctx, peer, csr);
      assert.equal(reply.status, 200, `renewal ${i + 1}: ${reply.body}`);
      peer = pemDecode(reply.json.certificate as string, "CERTIFICATE")!;
    }
    const current = (await ca.current("alice"))!.serial;
    const refused = await renewAs(ctx, peer, csr);
    assertError(
      refused,
      429,
      "ERR_RATE_LIMITED",
      `Too many renewals for "alice": ${RENEWALS_PER_DAY} in a day`,
    );
    assert.equal((await ca.current("alice"))!.serial, current, "a refused renewal issued nothing");
    const { csr: bobCsr } = await makeCsr("bob", { keyPem: bob.key });
    const other = await renewAs(ctx, bob.der, bobCsr);
    assert.equal(other.status, 200, other.body);
  });
});

Deno.test("handle() signs a new CRL when the one it hands out is dated over 5 min ahead of the CA's clock (a clock put back), numbered above it, and says so in the log", async () => {
  await withWorld(async ({ ctx, ca }) => {
    const lines: string[] = [];
    ctx.logLine = (line) => lines.push(line);
    // Signed while the CA's clock ran 2 h ahead: openssl left the next number in crlnumber.
    const signedAt = new Date(Date.now() + 2 * 3_600_000);
    const ahead = await crlSignedAt(ca.paths, signedAt);
    const aheadNumber = BigInt(signedAt.getTime());
    await Deno.writeTextFile(ca.paths.crl, ahead);
    await Deno.writeTextFile(
      ca.paths.crlnumber,
      `${(aheadNumber + 1n).toString(16).toUpperCase()}\n`,
    );
    const reply = await call(ctx, "GET", "/v1/crl");
    assert.equal(reply.status, 200, reply.body);
    const got = parseCrl(reply.body, ca.certificate.x509);
    assert.ok(got.thisUpdate.getTime() <= Date.now(), `thisUpdate ${got.thisUpdate.toISOString()}`);
    assert.ok(Date.now() - got.thisUpdate.getTime() < 60_000, `${got.thisUpdate.toISOString()}`);
    // Not a rollback to the issuance log or to members that took the one ahead.
    assert.ok(got.number! > aheadNumber, `CRL number ${got.number} after ${aheadNumber}`);
    assert.equal(reply.body, await Deno.readTextFile(ca.paths.crl));
    assert.equal(lines.length, 1, lines.join("\n"));
    assert.match(
      lines[0],
      /^e2e-chat-ca: the CRL in crl\.pem is dated \d+ min ahead of this machine's clock \(signed at .*\): signing a new one/,
    );
    // Once: the new CRL is handed out as it is.
    assert.equal((await call(ctx, "GET", "/v1/crl")).body, reply.body);
    assert.equal(lines.length, 1, lines.join("\n"));
  });
});

Deno.test("handle() hands out a CRL dated less than 5 min ahead of the CA's clock as it is", async () => {
  await withWorld(async ({ ctx, ca }) => {
    const lines: string[] = [];
    ctx.logLine = (line) => lines.push(line);
    const ahead = await crlSignedAt(ca.paths, new Date(Date.now() + 4 * 60_000));
    await Deno.writeTextFile(ca.paths.crl, ahead);
    assert.equal((await call(ctx, "GET", "/v1/crl")).body, ahead);
    assert.deepEqual(lines, []);
  });
});
