/**
 * A TLS 1.3 client written by hand (x25519, TLS_AES_128_GCM_SHA256, RFC 8446),
 * for one hostile test no TLS library allows: presenting a certificate and
 * signing the handshake (CertificateVerify) with a key that is not the
 * certificate's. node:tls, Deno.connectTls and openssl s_client all refuse a
 * key that does not match; a server must refuse the handshake too.
 *
 * It does what the test needs and no more: one connection, one HTTP request,
 * the reply (or the alert that ended the connection). It does not check the
 * server's certificate or Finished.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  randomBytes,
  sign,
  X509Certificate,
} from "node:crypto";

/** What {@linkcode requestWithKey} got: the reply's text, or the alert that ended it. */
export interface HandRolledReply {
  /** The decrypted application data (the HTTP reply), "" when there was none. */
  text: string;
  /** The TLS alert description that ended the connection, if one did (51: decrypt_error). */
  alert?: number;
}

/**
 * Connects to 127.0.0.1:`port` with TLS 1.3, answers the server's
 * CertificateRequest with `certPem` and a CertificateVerify signed by `keyPem`
 * (an EC P-256 key, ecdsa_secp256r1_sha256; any key, matching or not), and
 * sends `GET path`.
 */
export async function requestWithKey(
  port: number,
  certPem: string,
  keyPem: string,
  path: string,
): Promise<HandRolledReply> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const records = new RecordReader(conn);
  try {
    const ours = generateKeyPairSync("x25519");
    const publicRaw = ours.publicKey.export({ format: "der", type: "spki" }).subarray(-32);
    const extensions = concat(
      ext(43, bytes(2, 3, 4)), // supported_versions: TLS 1.3
      ext(10, bytes(0, 2, 0, 0x1d)), // supported_groups: x25519
      ext(13, bytes(0, 2, 4, 3)), // signature_algorithms: ecdsa_secp256r1_sha256
      ext(51, concat(u16(36), bytes(0, 0x1d, 0, 32), publicRaw)), // key_share
    );
    const hello = handshake(
      1,
      concat(
        bytes(3, 3),
        randomBytes(32),
        bytes(32),
        randomBytes(32),
        bytes(0, 2, 0x13, 0x01, 1, 0),
        u16(extensions.length),
        extensions,
      ),
    );
    await conn.write(concat(bytes(0x16, 3, 1), u16(hello.length), hello));
    let transcript = hello;
    const serverHello = await records.next();
    if (serverHello.type !== 22) return alertOf(serverHello);
    transcript = concat(transcript, serverHello.body);
    const shared = diffieHellman({
      privateKey: ours.privateKey,
      publicKey: x25519Public(keyShareOf(serverHello.body)),
    });
    const early = extract(new Uint8Array(32), new Uint8Array(32));
    const hs = extract(derive(early, "derived", new Uint8Array()), shared);
    const clientHs = derive(hs, "c hs traffic", transcript);
    const serverKeys = new Keys(derive(hs, "s hs traffic", transcript));
    // The server's flight, up to its Finished.
    let pending: Uint8Array = new Uint8Array();
    let context: Uint8Array | undefined;
    for (let finished = false; !finished;) {
      const record = await records.next();
      if (record.type === 20) continue; // change_cipher_spec, for middleboxes
      if (record.type !== 23) return alertOf(record);
      const inner = serverKeys.open(record);
      if (inner.type === 21) return { text: "", alert: inner.body[1] };
      pending = concat(pending, inner.body);
      while (pending.length >= 4 && pending.length >= 4 + u24(pending, 1)) {
        const message = pending.subarray(0, 4 + u24(pending, 1));
        pending = pending.subarray(message.length);
        if (message[0] === 13) context = message.subarray(5, 5 + message[4]);
        transcript = concat(transcript, message);
        if (message[0] === 20) finished = true;
      }
    }
    const master = extract(derive(hs, "derived", new Uint8Array()), new Uint8Array(32));
    const clientAp = derive(master, "c ap traffic", transcript);
    const serverAp = derive(master, "s ap traffic", transcript);
    // Our flight: Certificate, CertificateVerify (signed with `keyPem`), Finished.
    const clientKeys = new Keys(clientHs);
    const out: Uint8Array[] = [bytes(0x14, 3, 3, 0, 1, 1)];
    const der = new Uint8Array(new X509Certificate(certPem).raw);
    const entry = concat(u24bytes(der.length), der, bytes(0, 0));
    const ctx = context ?? new Uint8Array();
    const certificate = handshake(
      11,
      concat(bytes(ctx.length), ctx, u24bytes(entry.length), entry),
    );
    transcript = concat(transcript, certificate);
    out.push(clientKeys.seal(certificate, 22));
    const signed = concat(
      new Uint8Array(64).fill(0x20),
      new TextEncoder().encode("TLS 1.3, client CertificateVerify\0"),
      sha256(transcript),
    );
    const signature = new Uint8Array(sign("sha256", signed, createPrivateKey(keyPem)));
    const verify = handshake(15, concat(bytes(4, 3), u16(signature.length), signature));
    transcript = concat(transcript, verify);
    out.push(clientKeys.seal(verify, 22));
    const finishedKey = label(clientHs, "finished", new Uint8Array(), 32);
    out.push(clientKeys.seal(handshake(20, hmac(finishedKey, sha256(transcript))), 22));
    const appKeys = new Keys(clientAp);
    const request = `GET ${path} HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n`;
    out.push(appKeys.seal(new TextEncoder().encode(request), 23));
    await conn.write(concat(...out));
    // The reply, or the alert.
    const serverApKeys = new Keys(serverAp);
    let text = "";
    while (true) {
      const record = await records.next().catch(() => undefined);
      if (!record) return { text };
      if (record.type === 21) return { text, alert: record.body[1] };
      const inner = serverApKeys.open(record);
      if (inner.type === 21) return { text, alert: inner.body[1] };
      if (inner.type === 23) text += new TextDecoder().decode(inner.body);
    }
  } finally {
    try {
      conn.close();
    } catch { /* closed already */ }
  }
}

interface TlsRecord {
  type: number;
  body: Uint8Array;
  header: Uint8Array;
}

class RecordReader {
  #conn: Deno.Conn;
  #buffer: Uint8Array = new Uint8Array();
  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }
  async next(): Promise<TlsRecord> {
    while (this.#buffer.length < 5 || this.#buffer.length < 5 + u16at(this.#buffer, 3)) {
      const chunk = new Uint8Array(64 * 1024);
      const n = await this.#conn.read(chunk);
      if (n === null) throw new Error("the server closed the connection");
      this.#buffer = concat(this.#buffer, chunk.subarray(0, n));
    }
    const length = u16at(this.#buffer, 3);
    const record = {
      type: this.#buffer[0],
      header: this.#buffer.slice(0, 5),
      body: this.#buffer.slice(5, 5 + length),
    };
    this.#buffer = this.#buffer.slice(5 + length);
    return record;
  }
}

// AES-128-GCM keys of one direction, with their record sequence number.
class Keys {
  #key: Uint8Array;
  #iv: Uint8Array;
  #seq = 0n;
  constructor(secret: Uint8Array) {
    this.#key = label(secret, "key", new Uint8Array(), 16);
    this.#iv = label(secret, "iv", new Uint8Array(), 12);
  }
  #nonce(): Uint8Array {
    const nonce = this.#iv.slice();
    let seq = this.#seq++;
    for (let i = 11; i >= 4; i--) {
      nonce[i] ^= Number(seq & 0xffn);
      seq >>= 8n;
    }
    return nonce;
  }
  seal(content: Uint8Array, type: number): Uint8Array {
    const inner = concat(content, bytes(type));
    const header = concat(bytes(23, 3, 3), u16(inner.length + 16));
    const cipher = createCipheriv("aes-128-gcm", this.#key, this.#nonce());
    cipher.setAAD(header);
    const sealed = concat(cipher.update(inner), cipher.final(), cipher.getAuthTag());
    return concat(header, sealed);
  }
  open(record: TlsRecord): { type: number; body: Uint8Array } {
    const decipher = createDecipheriv("aes-128-gcm", this.#key, this.#nonce());
    decipher.setAAD(record.header);
    decipher.setAuthTag(record.body.subarray(-16));
    let plain: Uint8Array = concat(decipher.update(record.body.subarray(0, -16)), decipher.final());
    let end = plain.length;
    while (end > 0 && plain[end - 1] === 0) end--;
    plain = plain.subarray(0, end);
    return { type: plain[plain.length - 1], body: plain.subarray(0, -1) };
  }
}

function alertOf(record: TlsRecord): HandRolledReply {
  return { text: "", alert: record.type === 21 ? record.body[1] : -1 };
}

function keyShareOf(serverHello: Uint8Array): Uint8Array {
  let at = 4 + 2 + 32;
  at += 1 + serverHello[at] + 3; // session id, cipher suite, compression
  const end = at + 2 + u16at(serverHello, at);
  for (at += 2; at < end;) {
    const type = u16at(serverHello, at);
    const length = u16at(serverHello, at + 2);
    if (type === 51) return serverHello.subarray(at + 8, at + 8 + u16at(serverHello, at + 6));
    at += 4 + length;
  }
  throw new Error("the ServerHello has no key_share");
}

function x25519Public(raw: Uint8Array) {
  // SubjectPublicKeyInfo of an X25519 key: a fixed 12-byte prefix, then the 32 bytes.
  const prefix = bytes(0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00);
  return createPublicKey({ key: Buffer.from(concat(prefix, raw)), format: "der", type: "spki" });
}

function extract(salt: Uint8Array, ikm: Uint8Array): Uint8Array {
  return hmac(salt, ikm);
}

function label(secret: Uint8Array, name: string, context: Uint8Array, length: number): Uint8Array {
  const full = new TextEncoder().encode(`tls13 ${name}`);
  const info = concat(u16(length), bytes(full.length), full, bytes(context.length), context);
  let out: Uint8Array = new Uint8Array();
  let block: Uint8Array = new Uint8Array();
  for (let i = 1; out.length < length; i++) {
    block = hmac(secret, concat(block, info, bytes(i)));
    out = concat(out, block);
  }
  return out.subarray(0, length);
}

function derive(secret: Uint8Array, name: string, transcript: Uint8Array): Uint8Array {
  return label(secret, name, sha256(transcript), 32);
}

function hmac(key: Uint8Array, data: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac("sha256", key).update(data).digest());
}

function sha256(data: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha256").update(data).digest());
}

function handshake(type: number, body: Uint8Array): Uint8Array {
  return concat(bytes(type), u24bytes(body.length), body);
}

function ext(type: number, body: Uint8Array): Uint8Array {
  return concat(u16(type), u16(body.length), body);
}

function bytes(...values: number[]): Uint8Array {
  return new Uint8Array(values);
}

function u16(n: number): Uint8Array {
  return bytes(n >> 8, n & 0xff);
}

function u24bytes(n: number): Uint8Array {
  return bytes(n >> 16, (n >> 8) & 0xff, n & 0xff);
}

function u16at(b: Uint8Array, at: number): number {
  return (b[at] << 8) | b[at + 1];
}

function u24(b: Uint8Array, at: number): number {
  return (b[at] << 16) | (b[at + 1] << 8) | b[at + 2];
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
