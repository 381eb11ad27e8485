import assert from "node:assert/strict";
import { join } from "node:path";
import tls from "node:tls";
import { CertificateAuthority } from "../ca/authority.ts";
import { makeCsr, PASSPHRASE, type TestKeyType, withTempDir } from "../tests/_helpers.ts";
import { E2eError } from "./errors.ts";
import { ALPN } from "./frames.ts";
import { openssl, PASSPHRASE_ARG } from "./openssl.ts";
import { pemDecode } from "./pem.ts";
import {
  checkPeer,
  checkService,
  clientOptions,
  type Credentials,
  pauseReading,
  peerCertificateDer,
  resumeReading,
  serverOptions,
  SERVICE_CN,
  trustAnchor,
} from "./tls.ts";
import { parseCertificate } from "./x509.ts";

// ---------------------------------------------------------------------------
// Fixtures: two real CAs (the same name, different keys) and what they issued.

interface Leaf extends Credentials {
  der: Uint8Array;
}

function der(pem: string): Uint8Array {
  const out = pemDecode(pem, "CERTIFICATE");
  assert.ok(out, "a PEM certificate");
  return out;
}

async function leaf(ca: CertificateAuthority, name: string): Promise<Leaf> {
  const { csr, key } = await makeCsr(name);
  const { certificate } = await ca.sign(csr, name);
  return { key, cert: certificate.pem, der: der(certificate.pem) };
}

// The profile of our leaves (ca/policy.ts leafExtensions), which misissued() changes one line of.
const PROFILE = {
  basicConstraints: "critical, CA:FALSE",
  keyUsage: "critical, digitalSignature",
  extendedKeyUsage: "serverAuth, clientAuth",
  subjectAltName: "DNS:alice",
};

/**
 * A certificate for `name` signed with our CA's own key, outside its rules: the profile with
 * `changes` (undefined drops a line; other keys add one), for a key of `keyType`.
 */
async function misissued(
  ca: CertificateAuthority,
  changes: Record<string, string | undefined>,
  keyType: TestKeyType = "ec-p256",
): Promise<Uint8Array> {
  const { csr } = await makeCsr("alice", { keyType });
  const lines = Object.entries({ ...PROFILE, ...changes })
    .filter(([, v]) => v !== undefined).map(([k, v]) => `${k} = ${v}\n`).join("");
  return await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "req.pem"), csr);
    await Deno.writeTextFile(join(dir, "ext.cnf"), lines);
    const { stdout } = await openssl([
      ...["x509", "-req", "-in", "req.pem", "-CA", ca.paths.cert, "-CAkey", ca.paths.key],
      ...["-passin", PASSPHRASE_ARG, "-days", "1", "-extfile", "ext.cnf", "-outform", "DER"],
    ], { cwd: dir, passphrase: PASSPHRASE });
    return stdout;
  });
}

const fixtures = await withTempDir(async (dir) => {
  const ca = await CertificateAuthority.init(join(dir, "ours"), PASSPHRASE, { keyType: "ec-p256" });
  const other = await CertificateAuthority.init(join(dir, "theirs"), PASSPHRASE, {
    keyType: "ec-p256",
  });
  const service = await ca.issueServiceCertificate(["127.0.0.1", "localhost"]);
  const otherService = await other.issueServiceCertificate(["127.0.0.1"]);
  return {
    caPem: ca.certificate.pem,
    alice: await leaf(ca, "alice"),
    bob: await leaf(ca, "bob"),
    service: { key: service.key, cert: service.cert, der: der(service.cert) },
    otherCaPem: other.certificate.pem,
    otherAlice: await leaf(other, "alice"),
    otherService: { key: otherService.key, cert: otherService.cert, der: der(otherService.cert) },
    // Signed by our CA's key, each with one thing wrong for a member's certificate.
    misissued: {
      "a CA certificate": await misissued(ca, { basicConstraints: "critical, CA:TRUE" }),
      "no extended key usage": await misissued(ca, { extendedKeyUsage: undefined }),
      "server authentication only": await misissued(ca, { extendedKeyUsage: "serverAuth" }),
      "client authentication only": await misissued(ca, { extendedKeyUsage: "clientAuth" }),
      "email protection only": await misissued(ca, { extendedKeyUsage: "emailProtection" }),
      "no key usage": await misissued(ca, { keyUsage: undefined }),
      "no digitalSignature": await misissued(ca, { keyUsage: "critical, keyAgreement" }),
      "certificate signing": await misissued(ca, {
        keyUsage: "critical, digitalSignature, keyCertSign",
      }),
      "an unknown critical extension": await misissued(ca, {
        "1.3.6.1.4.1.55555.1": "critical, ASN1:NULL",
      }),
      "an RSA key of 1024 bits": await misissued(ca, {}, "rsa-1024"),
      "an EC P-521 key": await misissued(ca, {}, "ec-p521"),
      "an Ed448 key": await misissued(ca, {}, "ed448"),
    } as Record<string, Uint8Array>,
    // What checkPeer() says of each, in its detail.
    misissuedDetail: {
      "a CA certificate": /CA certificate/,
      "no extended key usage": /no extendedKeyUsage serverAuth and clientAuth/,
      "server authentication only": /no extendedKeyUsage serverAuth and clientAuth/,
      "client authentication only": /no extendedKeyUsage serverAuth and clientAuth/,
      "email protection only": /no extendedKeyUsage serverAuth and clientAuth/,
      "no key usage": /no keyUsage digitalSignature/,
      "no digitalSignature": /no keyUsage digitalSignature/,
      "certificate signing": /a keyUsage of a CA/,
      "an unknown critical extension": /unknown critical extension 1\.3\.6\.1\.4\.1\.55555\.1/,
      "an RSA key of 1024 bits": /an RSA key of 1024 bits/,
      "an EC P-521 key": /the EC curve "secp521r1" is not allowed/,
      "an Ed448 key": /keys of type "ed448" are not allowed/,
    } as Record<string, RegExp>,
    // Signed the same way with nothing wrong: what our CA issues, and what it issued before.
    wellIssued: [
      await misissued(ca, {}),
      await misissued(ca, { keyUsage: "critical, digitalSignature, keyAgreement" }),
      await misissued(ca, { keyUsage: "critical, digitalSignature, keyEncipherment" }, "rsa-2048"),
      await misissued(ca, {}, "ec-p384"),
      await misissued(ca, {}, "ed25519"),
    ],
  };
});

const anchor = trustAnchor(fixtures.caPem);
const alice = parseCertificate(fixtures.alice.cert);

function rejected(detail: RegExp = /./): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
    assert.equal(e.code, "ERR_PEER_REJECTED");
    // One message for every reason: the difference stays in `detail`.
    assert.equal(e.message, "The peer's certificate was rejected");
    assert.ok(e.detail, "a detail for the logs");
    assert.match(e.detail, detail);
    return true;
  };
}

// ---------------------------------------------------------------------------
// trustAnchor

Deno.test("trustAnchor() keeps the CA certificate as PEM and parsed", () => {
  assert.equal(anchor.pem, parseCertificate(fixtures.caPem).pem);
  assert.equal(anchor.x509.ca, true);
  assert.equal(anchor.x509.subject, "CN=e2e-chat CA");
});

// ---------------------------------------------------------------------------
// checkPeer

Deno.test("checkPeer() accepts a valid leaf of our CA, with or without expectations", () => {
  const info = checkPeer(fixtures.alice.der, anchor);
  assert.equal(info.commonName, "alice");
  assert.equal(info.fingerprint, alice.fingerprint);

  const seen: string[] = [];
  const full = checkPeer(fixtures.alice.der, anchor, {
    name: "alice",
    keyFingerprint: alice.keyFingerprint,
    isRevoked: (serial) => {
      seen.push(serial);
      return false;
    },
    now: new Date(),
  });
  assert.equal(full.serial, alice.serial);
  assert.deepEqual(seen, [alice.serial], "isRevoked is asked about the certificate's serial");
});

Deno.test("checkPeer() accepts a leaf at the first and the last second of its validity", () => {
  for (const now of [alice.notBefore, alice.notAfter]) {
    assert.equal(checkPeer(fixtures.alice.der, anchor, { name: "alice", now }).commonName, "alice");
  }
});

Deno.test("checkPeer() accepts a certificate of our CA's profile for each key type the CA signs", () => {
  for (const [i, der] of fixtures.wellIssued.entries()) {
    assert.equal(checkPeer(der, anchor, { name: "alice" }).commonName, "alice", `#${i}`);
  }
});

Deno.test("checkPeer() rejects a certificate signed by our CA that is not a member's end-entity certificate", () => {
  for (const [what, der] of Object.entries(fixtures.misissued)) {
    const detail = fixtures.misissuedDetail[what];
    assert.throws(() => checkPeer(der, anchor, { name: "alice" }), rejected(detail), what);
    assert.throws(() => checkPeer(der, anchor), rejected(detail), what);
  }
});

Deno.test("checkPeer() rejects no certificate", () => {
  assert.throws(() => checkPeer(null, anchor), rejected(/no certificate/));
  assert.throws(() => checkPeer(null, anchor, { name: "alice" }), rejected(/no certificate/));
});

Deno.test("checkPeer() rejects bytes that are not a certificate", () => {
  for (const bytes of [new Uint8Array(), Uint8Array.of(0x30, 0x00), new Uint8Array(64).fill(7)]) {
    assert.throws(() => checkPeer(bytes, anchor), rejected());
  }
});

Deno.test("checkPeer() rejects a certificate of another CA, even one of the same name for the same user", () => {
  assert.throws(() => checkPeer(fixtures.otherAlice.der, anchor), rejected(/not issued by our CA/));
  assert.throws(
    () => checkPeer(fixtures.otherAlice.der, anchor, { name: "alice" }),
    rejected(/not issued by our CA/),
  );
});

Deno.test("checkPeer() rejects our CA's own certificate", () => {
  assert.throws(() => checkPeer(der(fixtures.caPem), anchor), rejected(/CA certificate/));
});

Deno.test("checkPeer() rejects the CA service's certificate", () => {
  assert.throws(() => checkPeer(fixtures.service.der, anchor), rejected(/service/));
  assert.throws(
    () => checkPeer(fixtures.service.der, anchor, { name: SERVICE_CN }),
    rejected(/service/),
  );
});

Deno.test("checkPeer() rejects a certificate that names someone else", () => {
  assert.throws(
    () => checkPeer(fixtures.bob.der, anchor, { name: "alice" }),
    rejected(/"bob", not "alice"/),
  );
  for (const name of ["Alice", "alice ", "alic", "alice2", ""]) {
    assert.throws(() => checkPeer(fixtures.alice.der, anchor, { name }), rejected(), name);
  }
});

Deno.test("checkPeer() rejects a certificate whose key differs from the expected key", () => {
  const bob = parseCertificate(fixtures.bob.cert);
  assert.throws(
    () => checkPeer(fixtures.alice.der, anchor, { keyFingerprint: bob.keyFingerprint }),
    rejected(/key/),
  );
  assert.throws(
    () =>
      checkPeer(fixtures.alice.der, anchor, {
        name: "alice",
        keyFingerprint: alice.keyFingerprint.toUpperCase(),
      }),
    rejected(/key/),
  );
  // The certificate's own fingerprint is not its key's.
  assert.throws(
    () => checkPeer(fixtures.alice.der, anchor, { keyFingerprint: alice.fingerprint }),
    rejected(/key/),
  );
});

Deno.test("checkPeer() rejects a revoked certificate", () => {
  assert.throws(
    () => checkPeer(fixtures.alice.der, anchor, { name: "alice", isRevoked: () => true }),
    rejected(/revoked/),
  );
});

Deno.test("checkPeer() rejects a certificate not yet valid or expired at `now`", () => {
  const before = new Date(alice.notBefore.getTime() - 1000);
  const after = new Date(alice.notAfter.getTime() + 1000);
  for (const now of [before, after, new Date(0), new Date("2999-01-01T00:00:00Z")]) {
    assert.throws(
      () => checkPeer(fixtures.alice.der, anchor, { name: "alice", now }),
      rejected(/not valid now/),
      now.toISOString(),
    );
  }
});

Deno.test("checkPeer() gives the same message for every reason, so a peer learns nothing from it", () => {
  const bob = parseCertificate(fixtures.bob.cert);
  const attempts: Array<() => unknown> = [
    () => checkPeer(null, anchor),
    () => checkPeer(fixtures.otherAlice.der, anchor),
    () => checkPeer(der(fixtures.caPem), anchor),
    () => checkPeer(fixtures.bob.der, anchor, { name: "alice" }),
    () => checkPeer(fixtures.alice.der, anchor, { keyFingerprint: bob.keyFingerprint }),
    () => checkPeer(fixtures.alice.der, anchor, { isRevoked: () => true }),
    () => checkPeer(fixtures.alice.der, anchor, { now: new Date(0) }),
  ];
  const details = new Set<string>();
  for (const attempt of attempts) {
    assert.throws(attempt, (e) => {
      assert.ok(rejected()(e));
      details.add((e as E2eError).detail!);
      return true;
    });
  }
  assert.equal(details.size, attempts.length, "each reason has its own detail");
});

Deno.test("checkPeer() verifies a certificate once per anchor yet checks the time, the name, the key and revocation on every call", () => {
  const fresh = trustAnchor(fixtures.caPem);
  const first = checkPeer(fixtures.alice.der, fresh, { name: "alice" });
  // What a caller does with the answer does not change the next one.
  (first as { commonName: string }).commonName = "mallory";
  const again = checkPeer(fixtures.alice.der, fresh, { name: "alice" });
  assert.equal(again.commonName, "alice");
  assert.equal(again.fingerprint, alice.fingerprint);
  assert.throws(
    () => checkPeer(fixtures.alice.der, fresh, { isRevoked: () => true }),
    rejected(/revoked/),
  );
  assert.throws(
    () => checkPeer(fixtures.alice.der, fresh, { now: new Date(alice.notAfter.getTime() + 1) }),
    rejected(/not valid now/),
  );
  assert.throws(() => checkPeer(fixtures.alice.der, fresh, { name: "bob" }), rejected(/"alice"/));
  const bob = parseCertificate(fixtures.bob.cert);
  assert.throws(
    () => checkPeer(fixtures.alice.der, fresh, { keyFingerprint: bob.keyFingerprint }),
    rejected(/key/),
  );
  assert.throws(() => checkPeer(fixtures.service.der, fresh), rejected(/service/));
  assert.throws(() => checkPeer(fixtures.service.der, fresh), rejected(/service/));
});

Deno.test("checkPeer() trusts a certificate verified under one anchor under that anchor only", () => {
  const theirs = trustAnchor(fixtures.otherCaPem);
  assert.equal(checkPeer(fixtures.otherAlice.der, theirs, { name: "alice" }).commonName, "alice");
  assert.throws(
    () => checkPeer(fixtures.otherAlice.der, anchor, { name: "alice" }),
    rejected(/not issued by our CA/),
  );
  // A refused certificate is not remembered as good, and a good one stays good.
  assert.throws(() => checkPeer(fixtures.otherAlice.der, anchor), rejected(/not issued/));
  assert.equal(checkPeer(fixtures.otherAlice.der, theirs).commonName, "alice");
});

// ---------------------------------------------------------------------------
// checkService

Deno.test("checkService() accepts our CA's service certificate", () => {
  const info = checkService(fixtures.service.der, anchor);
  assert.equal(info.commonName, SERVICE_CN);
  assert.equal(SERVICE_CN, "e2e-chat service");
});

Deno.test("checkService() rejects a member's certificate, the CA's, another CA's service, and none", () => {
  assert.throws(
    () => checkService(fixtures.alice.der, anchor),
    rejected(/not the e2e-chat CA service/),
  );
  assert.throws(() => checkService(der(fixtures.caPem), anchor), rejected());
  assert.throws(
    () => checkService(fixtures.otherService.der, anchor),
    rejected(/not issued by our CA/),
  );
  assert.throws(() => checkService(null, anchor), rejected(/no certificate/));
});

Deno.test("checkService() refuses our service's certificate once the CRL held lists it, and says so with a hint where it knows the server's origin", () => {
  const serial = checkService(fixtures.service.der, anchor, { isRevoked: () => false }).serial;
  const thrown = (fn: () => unknown): unknown => {
    try {
      fn();
    } catch (e) {
      return e;
    }
    assert.fail("nothing was thrown");
  };
  const isRevoked = (s: string) => s === serial;
  const revoked = thrown(() => checkService(fixtures.service.der, anchor, { isRevoked }));
  rejected(new RegExp(`serial ${serial}\\) is revoked`))(revoked);
  const origin = "https://127.0.0.1:65433";
  const said = thrown(() => checkService(fixtures.service.der, anchor, { isRevoked, origin }));
  assert.ok(said instanceof E2eError);
  assert.equal(said.code, "ERR_PEER_REJECTED");
  assert.equal(
    said.message,
    "The CA service at https://127.0.0.1:65433 presents a revoked certificate",
  );
  assert.match(said.hint ?? "", /replaces a revoked certificate within seconds/);
  // Any other refusal is a server that is not our CA service.
  const member = thrown(() =>
    checkService(fixtures.alice.der, anchor, { isRevoked: () => true, origin })
  );
  assert.equal(
    (member as E2eError).message,
    "The server at https://127.0.0.1:65433 is not our CA service",
  );
});

// ---------------------------------------------------------------------------
// serverOptions and clientOptions

Deno.test("serverOptions() pins the CA, asks for client certificates and requires TLS 1.2 or later", () => {
  const options = serverOptions(fixtures.service, anchor);
  assert.equal(options.key, fixtures.service.key);
  assert.equal(options.cert, fixtures.service.cert);
  assert.deepEqual(options.ca, [anchor.pem]);
  assert.equal(options.minVersion, "TLSv1.2");
  assert.equal(options.requestCert, true);
  assert.equal(options.rejectUnauthorized, false, "by default the application decides");
  assert.equal("ALPNProtocols" in options, false);
});

Deno.test("serverOptions() can require a client certificate, skip asking for one, and offer ALPN", () => {
  const required = serverOptions(fixtures.alice, anchor, { requireCert: true, alpn: [ALPN] });
  assert.equal(required.requestCert, true);
  assert.equal(required.rejectUnauthorized, true);
  assert.deepEqual(required.ALPNProtocols, ["e2e-chat/1"]);
  const none = serverOptions(fixtures.alice, anchor, { requestCert: false });
  assert.equal(none.requestCert, false);
  assert.equal(none.rejectUnauthorized, false);
});

Deno.test("clientOptions() trusts only the CA, verifies the server, and leaves naming to checkService/checkPeer", () => {
  const options = clientOptions(anchor);
  assert.deepEqual(options.ca, [anchor.pem]);
  assert.equal(options.minVersion, "TLSv1.2");
  assert.equal(options.rejectUnauthorized, true);
  assert.equal(typeof options.checkServerIdentity, "function");
  assert.equal(
    options.checkServerIdentity!("somewhere.else", {} as tls.PeerCertificate),
    undefined,
  );
  assert.equal("key" in options, false);
  assert.equal("cert" in options, false);
  assert.equal("servername" in options, false);
  assert.equal("ALPNProtocols" in options, false);
});

Deno.test("clientOptions() presents our certificate, asks for ALPN, and sends SNI only for host names", () => {
  const options = clientOptions(anchor, {
    own: fixtures.bob,
    alpn: [ALPN],
    servername: "ca.example.org",
  });
  assert.equal(options.key, fixtures.bob.key);
  assert.equal(options.cert, fixtures.bob.cert);
  assert.deepEqual(options.ALPNProtocols, ["e2e-chat/1"]);
  assert.equal(options.servername, "ca.example.org");
  // SNI must not carry an IP address (RFC 6066 §3).
  for (const ip of ["127.0.0.1", "::1", "2001:db8::1"]) {
    assert.equal("servername" in clientOptions(anchor, { servername: ip }), false, ip);
  }
});

// ---------------------------------------------------------------------------
// A real handshake on 127.0.0.1 with these options

interface Listening {
  server: tls.Server;
  port: number;
  /** Peer certificates (DER or null) of every connection the server accepted. */
  accepted: Array<Uint8Array | null>;
  close(): Promise<void>;
}

async function listen(options: tls.TlsOptions): Promise<Listening> {
  const accepted: Array<Uint8Array | null> = [];
  const sockets = new Set<tls.TLSSocket>();
  const server = tls.createServer(options, (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    accepted.push(peerCertificateDer(socket));
    socket.end("welcome\n");
  });
  server.on("tlsClientError", () => {});
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return {
    server,
    port,
    accepted,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

interface Outcome {
  /** Whether the client finished its side of the handshake. */
  connected: boolean;
  /** What it read before the connection ended. */
  received: string;
  /** The server's certificate, when connected. */
  serverCert: Uint8Array | null;
  alpn: string | false | null;
  error?: Error;
}

function connect(port: number, options: tls.ConnectionOptions): Promise<Outcome> {
  return new Promise((resolve) => {
    const outcome: Outcome = { connected: false, received: "", serverCert: null, alpn: null };
    const socket = tls.connect({ ...options, host: "127.0.0.1", port });
    const timer = setTimeout(() => socket.destroy(new Error("timed out")), 5_000);
    socket.on("secureConnect", () => {
      outcome.connected = true;
      outcome.serverCert = peerCertificateDer(socket);
      outcome.alpn = socket.alpnProtocol;
    });
    socket.on("data", (chunk: Uint8Array) => (outcome.received += new TextDecoder().decode(chunk)));
    socket.on("error", (e: Error) => (outcome.error = e));
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(outcome);
    });
  });
}

Deno.test("a mutual TLS handshake with these options: both sides pass checkPeer, a client without a certificate is refused", async () => {
  const listening = await listen(
    serverOptions(fixtures.alice, anchor, { requireCert: true, alpn: [ALPN] }),
  );
  try {
    // bob, with his certificate: both sides see each other and both checks pass.
    const ok = await connect(
      listening.port,
      clientOptions(anchor, { own: fixtures.bob, alpn: [ALPN] }),
    );
    assert.equal(ok.connected, true, `${ok.error}`);
    assert.equal(ok.received, "welcome\n");
    assert.equal(ok.alpn, ALPN);
    assert.equal(checkPeer(ok.serverCert, anchor, { name: "alice" }).commonName, "alice");
    assert.equal(listening.accepted.length, 1);
    assert.equal(checkPeer(listening.accepted[0], anchor, { name: "bob" }).commonName, "bob");

    // Without a certificate: the server never accepts the connection, and nothing is read.
    const anonymous = await connect(listening.port, clientOptions(anchor, { alpn: [ALPN] }));
    assert.equal(anonymous.received, "");
    assert.equal(listening.accepted.length, 1, "the server accepted no second connection");

    // With a certificate of another CA: refused the same way.
    const stranger = await connect(
      listening.port,
      clientOptions(anchor, { own: fixtures.otherAlice, alpn: [ALPN] }),
    );
    assert.equal(stranger.received, "");
    assert.equal(listening.accepted.length, 1);
  } finally {
    await listening.close();
  }
});

Deno.test("a client of these options refuses a server whose certificate another CA issued", async () => {
  const listening = await listen(
    serverOptions(fixtures.otherService, trustAnchor(fixtures.otherCaPem)),
  );
  try {
    const outcome = await connect(listening.port, clientOptions(anchor, { own: fixtures.bob }));
    assert.equal(outcome.connected, false);
    assert.equal(outcome.received, "");
    assert.ok(outcome.error, "the handshake failed");
  } finally {
    await listening.close();
  }
});

Deno.test("without requireCert a certificate-less client connects, and checkPeer then refuses it", async () => {
  const listening = await listen(serverOptions(fixtures.service, anchor));
  try {
    const outcome = await connect(listening.port, clientOptions(anchor));
    assert.equal(outcome.connected, true, `${outcome.error}`);
    assert.equal(checkService(outcome.serverCert, anchor).commonName, SERVICE_CN);
    assert.deepEqual(listening.accepted, [null]);
    assert.throws(() => checkPeer(listening.accepted[0], anchor), rejected(/no certificate/));
  } finally {
    await listening.close();
  }
});

// ---------------------------------------------------------------------------
// pauseReading / resumeReading: a paused socket takes nothing more in

/** Which of our sockets is paused: the accepted or dialed end, direct or inside a TLS connection. */
type End = "accepted" | "dialed" | "inside, accepted" | "inside, dialed";

function ready(socket: tls.TLSSocket, event: "secure" | "secureConnect"): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.once(event, () => resolve());
    socket.once("error", reject);
  });
}

/** Our socket (alice) on `end` and the peer's (bob) at the other, mutual TLS over 127.0.0.1. */
async function socketPair(end: End) {
  const inside = end.startsWith("inside");
  const weAccept = end === "accepted" || end === "inside, accepted";
  const server = tls.createServer(
    serverOptions(weAccept || inside ? fixtures.alice : fixtures.bob, anchor, {
      requireCert: true,
    }),
  );
  const accepted = new Promise<tls.TLSSocket>((r) => server.once("secureConnection", r));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as { port: number }).port;
  const dialer = tls.connect({
    ...clientOptions(anchor, { own: weAccept || inside ? fixtures.bob : fixtures.alice }),
    host: "127.0.0.1",
    port,
  });
  await ready(dialer, "secureConnect");
  const outer = { accepted: await accepted, dialed: dialer };
  server.close();
  const all = [outer.accepted, outer.dialed];
  if (!inside) {
    return weAccept
      ? { ours: outer.accepted, theirs: outer.dialed, all }
      : { ours: outer.dialed, theirs: outer.accepted, all };
  }
  // The outer connection as the relay's splice hands it on: TLS between alice and bob inside.
  const innerServer = new tls.TLSSocket(weAccept ? outer.accepted : outer.dialed, {
    isServer: true,
    ...serverOptions(weAccept ? fixtures.alice : fixtures.bob, anchor, { requireCert: true }),
  });
  const innerClient = tls.connect({
    ...clientOptions(anchor, { own: weAccept ? fixtures.bob : fixtures.alice }),
    socket: weAccept ? outer.dialed : outer.accepted,
  });
  await Promise.all([ready(innerServer, "secure"), ready(innerClient, "secureConnect")]);
  const [ours, theirs] = weAccept ? [innerServer, innerClient] : [innerClient, innerServer];
  return { ours, theirs, all: [ours, theirs, ...all] };
}

/** Waits until `socket` has handed everything it was given to the kernel, or stopped doing so. */
async function settled(socket: tls.TLSSocket): Promise<void> {
  let last = -1;
  for (let i = 0; i < 100 && socket.writableLength !== last; i++) {
    last = socket.writableLength;
    if (last === 0) return;
    await new Promise((r) => setTimeout(r, 150));
  }
}

const FLOOD = 64 * 1024 * 1024;

for (const end of ["accepted", "dialed", "inside, accepted", "inside, dialed"] as const) {
  Deno.test(`pauseReading() stops a socket (${end}) taking in what its peer floods it with, writing goes on, and resumeReading() delivers every byte in order`, async () => {
    const pair = await socketPair(end);
    try {
      let received = 0;
      let inOrder = true;
      pair.ours.on("data", (chunk: Uint8Array) => {
        // Byte i of the flood is i % 251: a lost, doubled or reordered chunk breaks the sequence.
        for (let i = 0; i < chunk.length; i += 4093) {
          if (chunk[i] !== (received + i) % 251) inOrder = false;
        }
        received += chunk.length;
      });
      assert.equal(pauseReading(pair.ours), true, "the TCP socket underneath was found");
      const before = pair.ours.bytesRead;
      const flood = new Uint8Array(FLOOD);
      for (let i = 0; i < FLOOD; i++) flood[i] = i % 251;
      pair.theirs.write(flood);
      await settled(pair.theirs);
      // Stuck in bob's process and the kernel's buffers, not read into ours.
      assert.ok(
        pair.theirs.writableLength > FLOOD / 2,
        `bob still holds ${pair.theirs.writableLength}`,
      );
      const taken = pair.ours.bytesRead - before;
      assert.ok(taken < 4 * 1024 * 1024, `alice read ${taken} bytes while paused`);
      assert.equal(received, 0);
      // Writing goes on while reading is paused: bob reads alice's 8 MiB, and alice drains.
      let heard = 0;
      pair.theirs.on("data", (chunk: Uint8Array) => (heard += chunk.length));
      const drained = new Promise<void>((r) => pair.ours.once("drain", () => r()));
      if (!pair.ours.write(new Uint8Array(8 * 1024 * 1024))) await drained;
      for (let i = 0; i < 200 && heard < 8 * 1024 * 1024; i++) {
        await new Promise((r) => setTimeout(r, 25));
      }
      assert.equal(heard, 8 * 1024 * 1024);
      resumeReading(pair.ours);
      for (let i = 0; i < 400 && received < FLOOD; i++) await new Promise((r) => setTimeout(r, 25));
      assert.equal(received, FLOOD);
      assert.ok(inOrder, "every byte arrived, in order");
    } finally {
      for (const s of pair.all) s.destroy();
    }
  });
}
