/**
 * Someone who kept the CA service's key after its certificate was revoked or
 * superseded, for the tests of what members refuse: the kept key, a server
 * that poses as the service with it, and CRLs signed with the CA's own key at a
 * time the test chooses (the last one from before a revocation, say).
 *
 * @module
 */
import { createPrivateKey, sign } from "node:crypto";
import https from "node:https";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { CaPaths } from "../ca/home.ts";
import { tlv } from "../lib/_der_builder.ts";
import { pemEncode } from "../lib/pem.ts";
import { parseCertificate } from "../lib/x509.ts";
import { PASSPHRASE } from "./_helpers.ts";

/** The service's certificate and key as someone kept them, and the certificate's serial. */
export interface KeptKey {
  cert: string;
  key: string;
  serial: string;
}

/** Reads the service's certificate and key as they are now (before the test revokes them). */
export async function keepServiceKey(paths: CaPaths): Promise<KeptKey> {
  const [cert, key] = await Promise.all([
    Deno.readTextFile(paths.serviceCert),
    Deno.readTextFile(paths.serviceKey),
  ]);
  return { cert, key, serial: parseCertificate(cert).serial };
}

/** A server posing as the CA service with a kept key. */
export interface Impostor {
  /** https://127.0.0.1:PORT */
  url: string;
  port: number;
  /** What it was asked, "METHOD /path" (no query), in order. */
  asked: string[];
  /** Closes it and every connection to it. */
  close(): Promise<void>;
}

/**
 * Serves `answer` on 127.0.0.1 (`port`, default any) with the kept key: what a member reaches
 * when someone holding it takes the service's address or sits on the path to it.
 */
export async function poseAsService(
  kept: KeptKey,
  answer: (req: IncomingMessage, res: ServerResponse) => void | Promise<void>,
  options: { port?: number } = {},
): Promise<Impostor> {
  const asked: string[] = [];
  const server = https.createServer({ key: kept.key, cert: kept.cert }, (req, res) => {
    asked.push(`${req.method} ${req.url?.replace(/\?.*/, "")}`);
    Promise.resolve(answer(req, res)).catch(() => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: `https://127.0.0.1:${port}`,
    port,
    asked,
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Answers `body` (PEM) with 200: the CA's certificate or a CRL, which anyone may pass on. */
export function pem(res: ServerResponse, body: string): void {
  res.writeHead(200, { "content-type": "application/x-pem-file" });
  res.end(body);
}

const ascii = (text: string) => new TextEncoder().encode(text);
// ecdsa-with-SHA256: the tests' CAs are EC P-256.
const ECDSA_SHA256 = tlv(0x30, Uint8Array.of(0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 2));
const ISSUER = tlv(
  0x30,
  tlv(
    0x31,
    tlv(0x30, Uint8Array.of(0x06, 0x03, 0x55, 0x04, 0x03), tlv(0x0c, ascii("e2e-chat CA"))),
  ),
);

/**
 * A CRL around `fields` (what follows version, algorithm and issuer), signed with the key of the
 * EC CA whose files are `paths`: fields openssl never varies, or times it never writes.
 */
export async function signCrl(paths: CaPaths, ...fields: Uint8Array[]): Promise<string> {
  const key = createPrivateKey({ key: await Deno.readTextFile(paths.key), passphrase: PASSPHRASE });
  const tbs = tlv(0x30, tlv(0x02, Uint8Array.of(1)), ECDSA_SHA256, ISSUER, ...fields);
  const signature = new Uint8Array(sign("sha256", tbs, key));
  return pemEncode(
    tlv(0x30, tbs, ECDSA_SHA256, tlv(0x03, Uint8Array.of(0), signature)),
    "X509 CRL",
  );
}

/** A GeneralizedTime of `at` (whole seconds). */
export function generalizedTime(at: Date): Uint8Array {
  return tlv(0x18, ascii(at.toISOString().replace(/[-:T]|\.\d+/g, "")));
}

/**
 * The CRL the CA would have signed at `signedAt`, valid 7 days from then, listing nothing, numbered
 * `number` (the CA numbers its CRLs by its clock in ms: the default is `signedAt`'s).
 */
export async function crlSignedAt(
  paths: CaPaths,
  signedAt: Date,
  number = BigInt(signedAt.getTime()),
): Promise<string> {
  const hex = number.toString(16).padStart(2, "0");
  const digits = (hex.length % 2 ? "0" : "") + hex;
  const bytes = Uint8Array.from(
    (parseInt(digits.slice(0, 2), 16) & 0x80 ? "00" + digits : digits).match(/../g)!.map((h) =>
      parseInt(h, 16)
    ),
  );
  const crlNumber = tlv(
    0x30,
    tlv(0x06, Uint8Array.of(0x55, 0x1d, 0x14)),
    tlv(0x04, tlv(0x02, bytes)),
  );
  return await signCrl(
    paths,
    generalizedTime(signedAt),
    generalizedTime(new Date(signedAt.getTime() + 7 * 86_400_000)),
    tlv(0xa0, tlv(0x30, crlNumber)),
  );
}
