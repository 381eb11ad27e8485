import assert from "node:assert/strict";
import { CertificateAuthority } from "../ca/authority.ts";
import { makeCsr, PASSPHRASE, withTempDir } from "../tests/_helpers.ts";
import { normalizeSerialHex, parseCrl } from "./crl.ts";
import { E2eError } from "./errors.ts";
import { openssl } from "./openssl.ts";
import { pemDecode, pemEncode } from "./pem.ts";
import { tlv } from "./_der_builder.ts";
import { generalizedTime as timeOf, signCrl } from "../tests/_impostor.ts";

const decoder = new TextDecoder();

type CaKeyType = "ec-p256" | "ed25519";
const LABEL: Record<CaKeyType, string> = { "ec-p256": "an EC P-256", "ed25519": "an Ed25519" };

async function withCa(
  keyType: CaKeyType,
  fn: (ca: CertificateAuthority) => Promise<void>,
): Promise<void> {
  await withTempDir(async (home) => {
    await fn(await CertificateAuthority.init(home, PASSPHRASE, { keyType }));
  });
}

async function issue(ca: CertificateAuthority, name: string): Promise<string> {
  const { csr } = await makeCsr(name);
  return (await ca.sign(csr, name)).certificate.serial;
}

function rejectedCrl(detail: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
    assert.equal(e.code, "ERR_PEER_REJECTED");
    assert.equal(e.message, "The CRL was rejected");
    assert.match(e.detail ?? "", detail);
    return true;
  };
}

/** What `openssl crl -noout -text` says of a CRL: its revoked serials (normalized) and dates. */
async function opensslView(crlPem: string): Promise<
  { serials: Set<string>; lastUpdate: Date; nextUpdate: Date; number?: bigint }
> {
  const { stdout } = await openssl(["crl", "-noout", "-text"], { stdin: crlPem });
  const text = decoder.decode(stdout);
  const serials = new Set(
    [...text.matchAll(/Serial Number: ([0-9A-Fa-f:]+)/g)].map((m) => normalizeSerialHex(m[1])),
  );
  const last = /Last Update: (.+)/.exec(text);
  const next = /Next Update: (.+)/.exec(text);
  assert.ok(last && next, text);
  const number = /CRL Number: *\n\s*(\d+)/.exec(text);
  return {
    serials,
    lastUpdate: new Date(last[1]),
    nextUpdate: new Date(next[1]),
    number: number ? BigInt(number[1]) : undefined,
  };
}

function crlDer(pem: string): Uint8Array {
  const der = pemDecode(pem, "X509 CRL");
  assert.ok(der, "a PEM X509 CRL");
  return der;
}

function hexBytes(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g)!.map((h) => parseInt(h, 16)));
}

function indexOf(haystack: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

// ---------------------------------------------------------------------------
// parseCrl on CRLs made by the real CA

for (const keyType of ["ec-p256", "ed25519"] as const) {
  Deno.test(`parseCrl() reads the empty CRL of ${LABEL[keyType]} CA, with openssl's dates`, async () => {
    await withCa(keyType, async (ca) => {
      const pem = await ca.crl();
      const crl = parseCrl(pem, ca.certificate.x509);
      assert.deepEqual(crl.revoked, new Set());
      const view = await opensslView(pem);
      assert.equal(view.serials.size, 0);
      assert.equal(crl.thisUpdate.getTime(), view.lastUpdate.getTime());
      assert.equal(crl.nextUpdate?.getTime(), view.nextUpdate.getTime());
      assert.ok(crl.thisUpdate.getTime() <= Date.now() + 1000);
      assert.ok(crl.nextUpdate!.getTime() > crl.thisUpdate.getTime());
      // The CRL number (RFC 5280 §5.2.3), as openssl prints it, larger with each CRL.
      assert.equal(crl.number, view.number);
      assert.ok(parseCrl(await ca.crl(), ca.certificate.x509).number! > view.number!);
    });
  });

  Deno.test(`parseCrl() lists exactly the serials ${LABEL[keyType]} CA revoked, as openssl reads them`, async () => {
    await withCa(keyType, async (ca) => {
      const alice = await issue(ca, "alice");
      const bob = await issue(ca, "bob");
      const carol = await issue(ca, "carol");
      await ca.revoke("alice", { reason: "keyCompromise" });
      await ca.revoke(carol);
      const pem = await ca.crl();
      const crl = parseCrl(pem, ca.certificate.x509);

      const view = await opensslView(pem);
      assert.deepEqual(crl.revoked, view.serials);
      assert.deepEqual(crl.revoked, new Set([alice, carol].map(normalizeSerialHex)));
      assert.ok(!crl.revoked.has(normalizeSerialHex(bob)));
      for (const serial of crl.revoked) assert.match(serial, /^(0|[1-9A-F][0-9A-F]*)$/);
      assert.equal(crl.thisUpdate.getTime(), view.lastUpdate.getTime());
      assert.equal(crl.nextUpdate?.getTime(), view.nextUpdate.getTime());

      // The CRL the CA keeps on disk after a revocation says the same.
      const stored = parseCrl(await Deno.readTextFile(ca.paths.crl), ca.certificate.x509);
      assert.deepEqual(stored.revoked, crl.revoked);
    });
  });

  Deno.test(`parseCrl() tells the serials ${LABEL[keyType]} CA revoked as superseded from those revoked for another reason, as openssl reads them`, async () => {
    await withCa(keyType, async (ca) => {
      await issue(ca, "alice");
      const bob = await issue(ca, "bob");
      const carol = await issue(ca, "carol");
      await issue(ca, "dan");
      await ca.revoke("alice", { reason: "keyCompromise" });
      await ca.revoke(bob, { reason: "superseded" });
      await ca.revoke(carol);
      const pem = await ca.crl();
      const crl = parseCrl(pem, ca.certificate.x509);

      assert.deepEqual(crl.superseded, new Set([normalizeSerialHex(bob)]));
      assert.equal(crl.revoked.size, 3);
      const { stdout } = await openssl(["crl", "-noout", "-text"], { stdin: pem });
      const text = decoder.decode(stdout);
      const byOpenssl = new Set(
        [...text.matchAll(
          /Serial Number: ([0-9A-Fa-f:]+)\s+Revocation Date: .+\s+CRL entry extensions:\s+X509v3 CRL Reason Code:\s+Superseded/g,
        )]
          .map((m) => normalizeSerialHex(m[1])),
      );
      assert.deepEqual(crl.superseded, byOpenssl);
    });
  });
}

Deno.test("parseCrl() refuses a CRL with an entry extension it does not know marked critical (an indirect CRL's certificateIssuer), and reads one not critical", async () => {
  await withCa("ec-p256", async (ca) => {
    const signedAt = new Date(Date.now() - 60_000);
    const extension = (oid: number, critical: boolean) =>
      tlv(
        0x30,
        tlv(0x06, Uint8Array.of(0x55, 0x1d, oid)),
        ...(critical ? [tlv(0x01, Uint8Array.of(0xff))] : []),
        tlv(0x04, tlv(0x30, tlv(0xa4, tlv(0x30)))), // certificateIssuer: an empty directoryName
      );
    const crlWith = (entryExtension: Uint8Array) =>
      signCrl(
        ca.paths,
        timeOf(signedAt),
        timeOf(new Date(signedAt.getTime() + 86_400_000)),
        tlv(
          0x30,
          tlv(
            0x30,
            tlv(0x02, Uint8Array.of(0x12, 0x34)),
            timeOf(signedAt),
            tlv(0x30, entryExtension),
          ),
        ),
      );
    const indirect = await crlWith(extension(29, true));
    assert.throws(
      () => parseCrl(indirect, ca.certificate.x509),
      rejectedCrl(/unknown critical CRL entry extension 2\.5\.29\.29/),
    );
    const read = parseCrl(await crlWith(extension(29, false)), ca.certificate.x509);
    assert.deepEqual(read.revoked, new Set(["1234"]));
    assert.deepEqual(read.superseded, new Set());
  });
});

Deno.test("parseCrl() refuses a CRL made by another CA", async () => {
  await withCa("ec-p256", async (ours) => {
    await withCa("ec-p256", async (theirs) => {
      // Same name ("e2e-chat CA"), same key type: only the key differs.
      assert.equal(theirs.certificate.x509.subject, ours.certificate.x509.subject);
      const pem = await theirs.crl();
      assert.throws(() => parseCrl(pem, ours.certificate.x509), rejectedCrl(/signature/));
    });
  });
});

Deno.test("parseCrl() refuses a CRL of an ed25519 CA checked against an EC CA", async () => {
  await withCa("ec-p256", async (ours) => {
    await withCa("ed25519", async (theirs) => {
      const pem = await theirs.crl();
      assert.throws(() => parseCrl(pem, ours.certificate.x509), rejectedCrl(/signature/));
    });
  });
});

for (const keyType of ["ec-p256", "ed25519"] as const) {
  Deno.test(`parseCrl() refuses a CRL of ${LABEL[keyType]} CA whose revoked serial was changed`, async () => {
    await withCa(keyType, async (ca) => {
      const alice = await issue(ca, "alice");
      await ca.revoke("alice");
      const der = crlDer(await ca.crl());
      const at = indexOf(der, hexBytes(alice));
      assert.ok(at > 0, "the serial is in the CRL");
      const tampered = der.slice();
      tampered[at + 3] ^= 0x01;
      assert.throws(
        () => parseCrl(pemEncode(tampered, "X509 CRL"), ca.certificate.x509),
        rejectedCrl(/signature/),
      );
    });
  });
}

Deno.test("parseCrl() refuses a CRL whose signature, length or framing was tampered with", async () => {
  await withCa("ec-p256", async (ca) => {
    await issue(ca, "alice");
    await ca.revoke("alice");
    const pem = await ca.crl();
    const der = crlDer(pem);
    const anchor = ca.certificate.x509;

    const lastByte = der.slice();
    lastByte[lastByte.length - 1] ^= 0xff;
    const truncated = der.subarray(0, der.length - 1);
    const trailing = Uint8Array.of(...der, 0);
    const cases: Array<[string, string]> = [
      ["a changed signature byte", pemEncode(lastByte, "X509 CRL")],
      ["a truncated CRL", pemEncode(truncated, "X509 CRL")],
      ["a byte after the CRL", pemEncode(trailing, "X509 CRL")],
      ["an empty CRL", pemEncode(new Uint8Array(), "X509 CRL")],
      ["a NULL instead of a CRL", pemEncode(Uint8Array.of(0x05, 0x00), "X509 CRL")],
    ];
    for (const [what, text] of cases) {
      assert.throws(() => parseCrl(text, anchor), rejectedCrl(/./), what);
    }
    // And the original still passes: the failures above are the tampering's.
    assert.equal(parseCrl(pem, anchor).revoked.size, 1);
  });
});

Deno.test("parseCrl() refuses text that is not a PEM X509 CRL", async () => {
  await withCa("ec-p256", async (ca) => {
    const anchor = ca.certificate.x509;
    const der = crlDer(await ca.crl());
    for (
      const text of [
        "",
        "not a crl",
        ca.certificate.pem, // a certificate
        pemEncode(der, "CERTIFICATE"), // a CRL under another label
      ]
    ) {
      assert.throws(() => parseCrl(text, anchor), rejectedCrl(/not a PEM X509 CRL/));
    }
  });
});

// ---------------------------------------------------------------------------
// normalizeSerialHex

Deno.test("normalizeSerialHex() makes uppercase hex without colons or leading zeros", () => {
  const cases: Array<[string, string]> = [
    ["00ab:cd", "ABCD"],
    ["ABCD", "ABCD"],
    ["0a", "A"],
    ["0A:0B", "A0B"],
    ["00:00:01", "1"],
    ["7f", "7F"],
    ["0", "0"],
    ["00", "0"],
    ["00:00", "0"],
    ["568e70ac356da36b44c9dacd232bf99923215803", "568E70AC356DA36B44C9DACD232BF99923215803"],
  ];
  for (const [input, expected] of cases) {
    assert.equal(normalizeSerialHex(input), expected, input);
  }
});

Deno.test("normalizeSerialHex() gives one form for the serial of a certificate, its index line and the CRL", async () => {
  await withCa("ec-p256", async (ca) => {
    const serial = await issue(ca, "alice");
    await ca.revoke("alice");
    const crl = parseCrl(await ca.crl(), ca.certificate.x509);
    const colons = serial.toLowerCase().match(/../g)!.join(":");
    for (const form of [serial, serial.toLowerCase(), `00${serial}`, colons]) {
      assert.ok(crl.revoked.has(normalizeSerialHex(form)), form);
    }
  });
});

// ---------------------------------------------------------------------------
// Hand-made CRLs signed with the real CA key: the fields openssl does not vary

const ascii = (text: string) => new TextEncoder().encode(text);
const utcTime = (text: string) => tlv(0x17, ascii(text));
const generalizedTime = (text: string) => tlv(0x18, ascii(text));
const integer = (...bytes: number[]) => tlv(0x02, Uint8Array.from(bytes));

const entry = (serial: Uint8Array) => tlv(0x30, serial, utcTime("260101000000Z"));

Deno.test("parseCrl() reads UTCTime with the RFC 5280 century rule, GeneralizedTime, and no nextUpdate", async () => {
  await withCa("ec-p256", async (ca) => {
    const anchor = ca.certificate.x509;
    const a = parseCrl(
      await signCrl(ca.paths, utcTime("491231235959Z"), utcTime("500101000000Z")),
      anchor,
    );
    assert.equal(a.thisUpdate.toISOString(), "2049-12-31T23:59:59.000Z");
    assert.equal(a.nextUpdate?.toISOString(), "1950-01-01T00:00:00.000Z");
    assert.equal(a.revoked.size, 0);

    const b = parseCrl(await signCrl(ca.paths, generalizedTime("20510203040506Z")), anchor);
    assert.equal(b.thisUpdate.toISOString(), "2051-02-03T04:05:06.000Z");
    assert.equal(b.nextUpdate, undefined);
  });
});

Deno.test("parseCrl() reads serials with a leading zero byte, and a revoked list right after thisUpdate", async () => {
  await withCa("ec-p256", async (ca) => {
    const pem = await signCrl(
      ca.paths,
      utcTime("260101000000Z"),
      tlv(0x30, entry(integer(0x00, 0x80, 0x01)), entry(integer(0x0a, 0xbc)), entry(integer(0))),
    );
    const crl = parseCrl(pem, ca.certificate.x509);
    assert.deepEqual(crl.revoked, new Set(["8001", "ABC", "0"]));
    assert.equal(crl.nextUpdate, undefined);
    assert.deepEqual((await opensslView(pem)).serials, crl.revoked);
  });
});

Deno.test("parseCrl() refuses a CRL signed by the CA whose fields are malformed", async () => {
  await withCa("ec-p256", async (ca) => {
    const anchor = ca.certificate.x509;
    const now = utcTime("260101000000Z");
    const cases: Array<[string, Uint8Array[]]> = [
      ["no thisUpdate", []],
      ["a thisUpdate that is not a time", [utcTime("yesterday")]],
      ["a UTCTime with a time zone offset", [utcTime("260101000000+0100")]],
      ["a GeneralizedTime with fractions", [generalizedTime("20260101000000.5Z")]],
      ["a revoked entry whose serial is not an INTEGER", [
        now,
        tlv(0x30, tlv(0x30, tlv(0x04, Uint8Array.of(1)), now)),
      ]],
      ["a revoked entry that is not a SEQUENCE", [now, tlv(0x30, integer(1))]],
      ["an empty revoked entry", [now, tlv(0x30, tlv(0x30))]],
    ];
    for (const [what, fields] of cases) {
      const pem = await signCrl(ca.paths, ...fields);
      assert.throws(() => parseCrl(pem, anchor), rejectedCrl(/malformed CRL/), what);
    }
  });
});

// crlExtensions ([0] EXPLICIT): one extension of `oid` (DER bytes) holding `value`.
const crlExtension = (oid: number[], value: Uint8Array, critical = false) =>
  tlv(
    0x30,
    tlv(0x06, Uint8Array.from(oid)),
    ...(critical ? [Uint8Array.of(0x01, 0x01, 0xff)] : []),
    tlv(0x04, value),
  );
const CRL_NUMBER = [0x55, 0x1d, 0x14]; // 2.5.29.20
const crlExtensions = (...extensions: Uint8Array[]) => tlv(0xa0, tlv(0x30, ...extensions));

Deno.test("parseCrl() reads a CRL number of up to 20 octets, and none in a CRL without one", async () => {
  await withCa("ec-p256", async (ca) => {
    const anchor = ca.certificate.x509;
    const now = utcTime("260101000000Z");
    const numbered = (...bytes: number[]) =>
      signCrl(ca.paths, now, crlExtensions(crlExtension(CRL_NUMBER, integer(...bytes))));
    assert.equal(parseCrl(await numbered(0x05), anchor).number, 5n);
    const max = [0x00, ...new Array(20).fill(0xff)]; // 2^160 - 1: 20 octets, a zero to stay positive
    assert.equal(parseCrl(await numbered(...max), anchor).number, 2n ** 160n - 1n);
    // An extension the client need not understand, not critical, beside it.
    const aki = crlExtension([0x55, 0x1d, 0x23], tlv(0x30));
    assert.equal(
      parseCrl(
        await signCrl(
          ca.paths,
          now,
          crlExtensions(aki, crlExtension(CRL_NUMBER, integer(7)), crlExtension([0x2a, 3], tlv(5))),
        ),
        anchor,
      ).number,
      7n,
    );
    assert.equal(parseCrl(await signCrl(ca.paths, now), anchor).number, undefined);
  });
});

Deno.test("parseCrl() refuses a CRL whose number is empty, negative or longer than 20 octets, given twice, or beside an unknown critical extension", async () => {
  await withCa("ec-p256", async (ca) => {
    const anchor = ca.certificate.x509;
    const now = utcTime("260101000000Z");
    const number = (...bytes: number[]) => crlExtension(CRL_NUMBER, integer(...bytes));
    const cases: Array<[string, Uint8Array, RegExp]> = [
      ["an empty INTEGER", crlExtensions(number()), /Bad CRL number/],
      ["a negative number", crlExtensions(number(0xff)), /Bad CRL number/],
      ["21 octets", crlExtensions(number(...new Array(21).fill(0x7f))), /Bad CRL number/],
      // RFC 5280 §5.2: at most one instance of an extension; which would count?
      ["two numbers", crlExtensions(number(9), number(1)), /appears twice/],
      // RFC 5280 §5.2: a CRL with a critical extension not understood is not used: a delta
      // CRL (deltaCRLIndicator) or a partial one (issuingDistributionPoint) read as complete
      // would un-revoke what it leaves out.
      [
        "a deltaCRLIndicator",
        crlExtensions(number(9), crlExtension([0x55, 0x1d, 0x1b], integer(8), true)),
        /unknown critical CRL extension 2\.5\.29\.27/,
      ],
      [
        "an issuingDistributionPoint",
        crlExtensions(crlExtension([0x55, 0x1d, 0x1c], tlv(0x30), true), number(9)),
        /unknown critical CRL extension 2\.5\.29\.28/,
      ],
    ];
    for (const [what, extensions, detail] of cases) {
      const pem = await signCrl(ca.paths, now, extensions);
      assert.throws(() => parseCrl(pem, anchor), rejectedCrl(detail), what);
    }
  });
});
