/**
 * What openssl itself says of our output, for tests that compare the two: a
 * certificate as `openssl x509 -text` shows it (fields and extensions), the
 * leaf profile checked on that view, and `openssl verify` with an optional CRL.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { openssl, OpensslError } from "../lib/openssl.ts";
import { withTempDir } from "./_harness.ts";

/** What `openssl ARGS` prints on stdout for `stdin`. */
export async function text(args: string[], stdin?: string): Promise<string> {
  const { stdout } = await openssl(args, { stdin });
  return new TextDecoder().decode(stdout);
}

/** One extension as `openssl x509 -text` shows it. */
export interface Extension {
  critical: boolean;
  value: string;
}

/** A certificate as openssl sees it. */
export interface CertView {
  serial: string;
  subject: string;
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  signatureAlgorithm: string;
  publicKey: string;
  extensions: Map<string, Extension>;
}

/** A certificate as openssl sees it: `x509 -noout -serial …` and `x509 -text`. */
export async function inspect(pem: string): Promise<CertView> {
  const [fields, full] = await Promise.all([
    text([
      "x509",
      "-noout",
      "-serial",
      "-subject",
      "-issuer",
      "-startdate",
      "-enddate",
      "-nameopt",
      "utf8,sep_comma_plus",
    ], pem),
    text(["x509", "-noout", "-text"], pem),
  ]);
  const field = (key: string) => {
    const m = new RegExp(`^${key}=(.*)$`, "m").exec(fields);
    assert.ok(m, `openssl prints ${key}`);
    return m[1];
  };
  return {
    serial: field("serial"),
    subject: field("subject"),
    issuer: field("issuer"),
    notBefore: new Date(field("notBefore")),
    notAfter: new Date(field("notAfter")),
    signatureAlgorithm: /Signature Algorithm: (\S+)/.exec(full)?.[1] ?? "",
    publicKey: /Public-Key: \((\d+ bit)\)/.exec(full)?.[1] ??
      /Public Key Algorithm: (\S+)/.exec(full)?.[1] ?? "",
    extensions: parseExtensions(full),
  };
}

/** The extensions block of `openssl x509 -text`, by name. */
export function parseExtensions(full: string): Map<string, Extension> {
  const extensions = new Map<string, Extension>();
  const lines = full.split("\n");
  let i = lines.findIndex((l) => l.trim() === "X509v3 extensions:");
  if (i < 0) return extensions;
  let current: Extension | undefined;
  for (i++; i < lines.length; i++) {
    const header = /^ {12}(\S[^:]*):( critical)?\s*$/.exec(lines[i]);
    if (header) {
      current = { critical: header[2] !== undefined, value: "" };
      extensions.set(header[1], current);
    } else if (current && lines[i].startsWith(" ".repeat(16))) {
      current.value += (current.value ? "\n" : "") + lines[i].trim();
    } else {
      break;
    }
  }
  return extensions;
}

/** A key identifier as openssl prints it. */
export const KEY_ID = /^([0-9A-F]{2}:){19}[0-9A-F]{2}$/;

/** Checks the leaf profile: exactly these six extensions, whatever the request asked. */
export function assertLeafProfile(cert: CertView, ca: CertView, name: string, usage: string): void {
  const ext = Object.fromEntries(cert.extensions);
  const names = ["Authority Key Identifier", "Basic Constraints", "Extended Key Usage"]
    .concat(["Key Usage", "Subject Alternative Name", "Subject Key Identifier"]);
  assert.deepEqual(Object.keys(ext).sort(), names.map((n) => `X509v3 ${n}`));
  assert.deepEqual(ext["X509v3 Basic Constraints"], { critical: true, value: "CA:FALSE" });
  assert.deepEqual(ext["X509v3 Key Usage"], { critical: true, value: usage });
  assert.deepEqual(ext["X509v3 Extended Key Usage"], {
    critical: false,
    value: "TLS Web Server Authentication, TLS Web Client Authentication",
  });
  assert.deepEqual(ext["X509v3 Subject Alternative Name"], {
    critical: false,
    value: `DNS:${name}`,
  });
  assert.match(ext["X509v3 Subject Key Identifier"].value, KEY_ID);
  assert.equal(
    ext["X509v3 Authority Key Identifier"].value,
    ca.extensions.get("X509v3 Subject Key Identifier")?.value,
    "AKI names the CA's key",
  );
  assert.equal(cert.subject, `CN=${name}`);
  assert.equal(cert.issuer, ca.subject);
}

/** Runs `openssl verify` and returns whether it succeeded and what it said. */
export async function verify(
  caFile: string,
  certPem: string,
  crlPem?: string,
): Promise<{ ok: boolean; output: string }> {
  return await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "cert.pem"), certPem);
    const args = ["verify", "-CAfile", caFile];
    if (crlPem !== undefined) {
      await Deno.writeTextFile(join(dir, "crl.pem"), crlPem);
      args.push("-crl_check", "-CRLfile", join(dir, "crl.pem"));
    }
    args.push(join(dir, "cert.pem"));
    try {
      const { stdout, stderr } = await openssl(args);
      return { ok: true, output: new TextDecoder().decode(stdout) + stderr };
    } catch (e) {
      if (e instanceof OpensslError) return { ok: false, output: e.stderr };
      throw e;
    }
  });
}
