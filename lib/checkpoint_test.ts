/**
 * Checkpoints and signed notes, against the reference vector of the Go
 * implementation that C2SP signed-note describes (golang.org/x/mod/sumdb/note,
 * the "PeterNeumann" key of its documentation and tests).
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createPrivateKey, createPublicKey, generateKeyPairSync } from "node:crypto";
import {
  formatCheckpoint,
  noteKeyId,
  openCheckpoint,
  openNote,
  parseCheckpoint,
  signCheckpoint,
  signNote,
  verifierKey,
} from "./checkpoint.ts";
import { E2eError } from "./errors.ts";

const PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const PETER_SEED = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"; // from PRIVATE+KEY+PeterNeumann+c74f20a3+…
const PETER_TEXT = "If you think cryptography is the answer to your problem,\n" +
  "then you don't know what your problem is.\n";
const PETER_NOTE = PETER_TEXT +
  "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

function peterKeys() {
  const x = Buffer.from(PETER_VKEY.split("+")[2], "base64").subarray(1).toString("base64url");
  const d = Buffer.from(PETER_SEED, "base64").subarray(1).toString("base64url");
  const privateKey = createPrivateKey({ key: { kty: "OKP", crv: "Ed25519", x, d }, format: "jwk" });
  return { privateKey, publicKey: createPublicKey(privateKey) };
}

function invalid(message: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
    assert.equal(e.code, "ERR_LOG_INVALID");
    assert.match(e.message, message);
    return true;
  };
}

Deno.test("signNote() writes the Go reference note byte for byte, and openNote() reads it", () => {
  const { privateKey, publicKey } = peterKeys();
  assert.equal(verifierKey("PeterNeumann", publicKey), PETER_VKEY);
  assert.equal(Buffer.from(noteKeyId("PeterNeumann", publicKey)).toString("hex"), "c74f20a3");
  assert.equal(signNote(PETER_TEXT, { name: "PeterNeumann", key: privateKey }), PETER_NOTE);
  assert.equal(openNote(PETER_NOTE, { name: "PeterNeumann", key: publicKey }), PETER_TEXT);
});

Deno.test("openNote() ignores other keys' lines but refuses a bad or missing signature of its own", () => {
  const { publicKey } = peterKeys();
  const peter = { name: "PeterNeumann", key: publicKey };
  const other = generateKeyPairSync("ed25519");
  const cosigned = signNote(PETER_TEXT, { name: "witness", key: other.privateKey });
  const both = PETER_NOTE + cosigned.slice(PETER_TEXT.length + 1);
  assert.equal(openNote(both, peter), PETER_TEXT);
  assert.throws(() => openNote(cosigned, peter), invalid(/not signed by the log's key/));
  const altered = PETER_NOTE.replace("then you", "than you");
  assert.throws(() => openNote(altered, peter), invalid(/does not verify/));
  const flipped = PETER_NOTE.replace("x08go", "x08gp");
  assert.throws(() => openNote(flipped, peter), invalid(/does not verify|not signed/));
  assert.throws(() => openNote(PETER_TEXT, peter), invalid(/no signature block/));
  assert.throws(() => openNote(PETER_NOTE.replace("\u2014", "-"), peter), invalid(/em dash/));
});

Deno.test("a checkpoint round-trips through sign and open, and its origin must be the log's", () => {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const root = new Uint8Array(32).map((_, i) => i);
  const checkpoint = { origin: "e2e-chat/abc", size: 42, root };
  const text = signCheckpoint(checkpoint, { name: "e2e-chat/abc", key: privateKey });
  assert.equal(
    text.split("\n\n")[0] + "\n",
    `e2e-chat/abc\n42\n${Buffer.from(root).toString("base64")}\n`,
  );
  assert.deepEqual(openCheckpoint(text, { name: "e2e-chat/abc", key: publicKey }), checkpoint);
  const foreign = signCheckpoint({ ...checkpoint, origin: "other" }, {
    name: "e2e-chat/abc",
    key: privateKey,
  });
  assert.throws(
    () => openCheckpoint(foreign, { name: "e2e-chat/abc", key: publicKey }),
    invalid(/origin/),
  );
});

Deno.test("parseCheckpoint() refuses what is not a checkpoint", () => {
  const root = Buffer.alloc(32).toString("base64");
  const cases: Array<[string, RegExp]> = [
    [`log\n1\n${root}`, /newline/],
    [`\n1\n${root}\n`, /origin/],
    [`log\n-1\n${root}\n`, /size/],
    [`log\n01\n${root}\n`, /size/],
    [`log\n99999999999999999\n${root}\n`, /size/],
    [`log\n1\nAAAA\n`, /root hash/],
    [`log\n1\n`, /root hash/],
  ];
  for (const [body, message] of cases) assert.throws(() => parseCheckpoint(body), invalid(message));
  assert.deepEqual(parseCheckpoint(`log\n1\n${root}\next line\n`).size, 1);
  assert.throws(
    () => formatCheckpoint({ origin: "a b", size: 1, root: new Uint8Array(32) }),
    TypeError,
  );
});
