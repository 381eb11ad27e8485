import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { join } from "node:path";
import { CertificateAuthority } from "../ca/authority.ts";
import { makeCsr, PASSPHRASE, withTempDir } from "../tests/_helpers.ts";
import { e2eError } from "./_test_util.ts";
import { decodeItem, encodeItem, type MailboxItem, newItemId, open, seal } from "./cms.ts";
import { encryptKey } from "./keys.ts";
import { openssl } from "./openssl.ts";

const encoder = new TextEncoder();

interface Member {
  cert: string;
  keyPath: string;
  passphrase?: string;
}

const dir = await Deno.makeTempDir({ prefix: "e2e-chat-cms-test-" });
const ca = await CertificateAuthority.init(join(dir, "ca"), PASSPHRASE, { keyType: "ec-p256" });
const other = await CertificateAuthority.init(join(dir, "other"), PASSPHRASE, {
  keyType: "ec-p256",
});

async function member(
  authority: CertificateAuthority,
  name: string,
  keyType: "ec-p256" | "rsa-2048" | "ed25519" = "ec-p256",
  passphrase?: string,
): Promise<Member> {
  const { csr, key } = await makeCsr(name, { keyType });
  const { certificate } = await authority.sign(csr, name);
  const keyPath = join(dir, `${name}-${crypto.randomUUID()}.key`);
  await Deno.writeTextFile(keyPath, passphrase ? await encryptKey(key, passphrase) : key, {
    mode: 0o600,
  });
  return { cert: certificate.pem, keyPath, passphrase };
}

const alice = await member(ca, "alice");
const bob = await member(ca, "bob", "ec-p256", "bob's passphrase 42");
const carol = await member(ca, "carol", "rsa-2048");
const dave = await member(ca, "dave", "ed25519");
const mallory = await member(other, "alice");

function item(overrides: Partial<MailboxItem> = {}): MailboxItem {
  return {
    id: newItemId(),
    from: "alice",
    to: "bob",
    kind: "message",
    sent: new Date("2026-01-02T03:04:05.000Z"),
    payload: encoder.encode("hello bob"),
    ...overrides,
  };
}

function sealFor(from: Member, to: Member, content: Uint8Array): Promise<Uint8Array> {
  return seal(content, {
    key: { path: from.keyPath, passphrase: from.passphrase },
    signerCert: from.cert,
    recipientCert: to.cert,
  });
}

function openAs(to: Member, der: Uint8Array) {
  return open(der, {
    key: { path: to.keyPath, passphrase: to.passphrase },
    recipientCert: to.cert,
    caCert: ca.certificate.pem,
  });
}

globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

Deno.test("encodeItem() and decodeItem() round-trip a message, a file with binary bytes, a receipt and a room message", () => {
  const bytes = new Uint8Array(256).map((_, i) => i);
  for (
    const original of [
      item(),
      item({ kind: "file", name: "photo 1.jpg", payload: bytes }),
      item({ kind: "receipt", payload: new Uint8Array(), acks: [newItemId(), newItemId()] }),
      item({ kind: "room", payload: new TextEncoder().encode('{"op":"msg"}') }),
    ]
  ) {
    const encoded = encodeItem(original);
    assert.deepEqual(decodeItem(encoded), original);
    // Canonical: the same item always makes the same bytes.
    assert.deepEqual(encodeItem(decodeItem(encoded)), encoded);
  }
});

Deno.test("decodeItem() refuses a changed length, an unknown field, a bad id and a file name with a slash", () => {
  const good = new TextDecoder().decode(encodeItem(item()));
  const cases: Array<[string, RegExp]> = [
    [good + "x", /payload length/],
    [good.replace('"kind"', '"extra":1,"kind"'), /unexpected header fields/],
    [good.replace(/"id":"[0-9a-f]+"/, '"id":"xyz"'), /id is not 32 hex/],
    [good.replace('"v":1', '"v":2'), /version 2 is not 1/],
    ["garbage", /no header/],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => decodeItem(encoder.encode(text)), e2eError("ERR_BAD_REQUEST", message));
  }
  assert.throws(
    () => encodeItem(item({ kind: "file", name: "../etc/passwd" })),
    e2eError("ERR_BAD_REQUEST", "Not a mailbox item: the file name is invalid"),
  );
});

Deno.test("seal() and open() round-trip between EC keys (the recipient's key encrypted) and to an RSA key", async () => {
  const content = encodeItem(item());
  const opened = await openAs(bob, await sealFor(alice, bob, content));
  assert.deepEqual(opened.content, content);
  assert.match(opened.signerCert, /BEGIN CERTIFICATE/);
  assert.equal(
    new X509Certificate(opened.signerCert).fingerprint256,
    new X509Certificate(alice.cert).fingerprint256,
  );
  const toCarol = await sealFor(bob, carol, content);
  assert.deepEqual((await openAs(carol, toCarol)).content, content);
});

Deno.test("a sealed item is AES-256-GCM AuthEnvelopedData with the SHA-256 KDF (EC) or OAEP-SHA-256 (RSA), and holds no plaintext", async () => {
  const secret = "the plaintext that must not show";
  const content = encodeItem(item({ payload: encoder.encode(secret) }));
  const toBob = await sealFor(alice, bob, content);
  const toCarol = await sealFor(alice, carol, content);
  const parse = async (der: Uint8Array) =>
    new TextDecoder().decode(
      (await openssl(["asn1parse", "-inform", "DER"], { stdin: der })).stdout,
    );
  const bobView = await parse(toBob);
  assert.match(bobView, /id-smime-ct-authEnvelopedData/);
  assert.match(bobView, /dhSinglePass-stdDH-sha256kdf-scheme/);
  assert.match(bobView, /aes-256-gcm/);
  const carolView = await parse(toCarol);
  assert.match(carolView, /rsaesOaep/);
  assert.match(carolView, /sha256/);
  for (const der of [toBob, toCarol]) {
    assert.ok(!new TextDecoder("latin1").decode(der).includes(secret));
  }
});

Deno.test("the plain openssl cms command line opens a sealed item with the recipient's key", async () => {
  const content = encodeItem(item({ to: "carol" }));
  const der = await sealFor(alice, carol, content);
  await withTempDir(async (tmp) => {
    await Deno.writeFile(join(tmp, "item.der"), der);
    await Deno.writeTextFile(join(tmp, "ca.pem"), ca.certificate.pem);
    const decrypted = await openssl([
      "cms",
      "-decrypt",
      "-inform",
      "DER",
      "-in",
      "item.der",
      "-inkey",
      carol.keyPath,
      "-binary",
    ], { cwd: tmp });
    const verified = await openssl(
      ["cms", "-verify", "-inform", "DER", "-CAfile", "ca.pem", "-purpose", "any", "-binary"],
      { cwd: tmp, stdin: decrypted.stdout },
    );
    assert.deepEqual(verified.stdout, content);
  });
});

Deno.test("open() refuses an item altered anywhere, one for someone else, and one signed by another CA", async () => {
  const content = encodeItem(item());
  const der = await sealFor(alice, bob, content);
  for (const at of [der.length - 5, Math.floor(der.length / 2), 300]) {
    const altered = der.slice();
    altered[at] ^= 0x01;
    await assert.rejects(openAs(bob, altered), e2eError("ERR_PEER_REJECTED", /mailbox item/));
  }
  await assert.rejects(
    openAs(carol, der),
    e2eError(
      "ERR_PEER_REJECTED",
      "The mailbox item does not open with your key (altered, or not for you)",
    ),
  );
  await assert.rejects(
    openAs(bob, await sealFor(mallory, bob, content)),
    e2eError("ERR_PEER_REJECTED", "The mailbox item's signature does not verify against our CA"),
  );
});

Deno.test("seal() refuses Ed25519 keys on either side with what to do, never a weaker fallback", async () => {
  const content = encodeItem(item());
  const hint = (e: unknown) => (e as { hint: string }).hint;
  await assert.rejects(
    sealFor(alice, dave, content),
    (e) =>
      e2eError(
        "ERR_KEY_REJECTED",
        "The mailbox needs an EC or RSA key, and the recipient's key is ed25519",
      )(e) &&
      hint(e) === "OpenSSL 3.0 cannot sign or encrypt CMS with Ed25519; only a direct chat " +
          "reaches them until they re-enroll with --key-type ec-p256",
  );
  await assert.rejects(
    sealFor(dave, bob, content),
    (e) =>
      e2eError("ERR_KEY_REJECTED", "The mailbox needs an EC or RSA key, and your key is ed25519")(
        e,
      ) &&
      hint(e) === "OpenSSL 3.0 cannot sign or encrypt CMS with Ed25519; re-enroll with " +
          "--key-type ec-p256 to use the mailbox",
  );
});

Deno.test("seal() with a wrong passphrase is ERR_BAD_PASSPHRASE and never shows it", async () => {
  await assert.rejects(
    sealFor({ ...bob, passphrase: "wrong passphrase 99" }, alice, encodeItem(item())),
    e2eError("ERR_BAD_PASSPHRASE", "Cannot unlock your key for the mailbox", {
      never: ["wrong passphrase 99"],
    }),
  );
});

// An envelope for `to` as `openssl cms -encrypt` makes it with `cipher` (not as seal() does).
async function envelope(to: Member, cipher: string, content: Uint8Array): Promise<Uint8Array> {
  const cert = join(dir, `recipient-${crypto.randomUUID()}.pem`);
  await Deno.writeTextFile(cert, to.cert);
  const { stdout } = await openssl(
    ["cms", "-encrypt", "-binary", cipher, "-outform", "DER", cert],
    {
      stdin: content,
    },
  );
  return stdout;
}

Deno.test("open() refuses an AES-CBC item whose padding does not decrypt as not opening, not as a wrong passphrase", async () => {
  const broken = await envelope(bob, "-aes-256-cbc", encodeItem(item()));
  broken[broken.length - 1] ^= 0x01; // openssl says "bad decrypt", as for a wrong passphrase
  await assert.rejects(
    openAs(bob, broken),
    e2eError(
      "ERR_PEER_REJECTED",
      "The mailbox item does not open with your key (altered, or not for you)",
    ),
  );
});

Deno.test("open() refuses what seal() never makes: AES-256-CBC EnvelopedData and AES-128-GCM, intact", async () => {
  await Deno.writeTextFile(join(dir, "alice.pem"), alice.cert);
  const { stdout: signed } = await openssl(
    ["cms", "-sign", "-binary", "-nodetach", "-md", "sha256", "-signer", "alice.pem"]
      .concat(["-inkey", alice.keyPath, "-outform", "DER"]),
    { cwd: dir, stdin: encodeItem(item()) },
  );
  for (const cipher of ["-aes-256-cbc", "-aes-128-gcm"]) {
    await assert.rejects(
      openAs(alice, await envelope(alice, cipher, signed)),
      (e) =>
        e2eError(
          "ERR_PEER_REJECTED",
          "The mailbox item does not open with your key (altered, or not for you)",
        )(e) && /not AES-256-GCM AuthEnvelopedData/.test((e as { detail: string }).detail),
      cipher,
    );
  }
});

Deno.test("open() with a wrong passphrase for our key is ERR_BAD_PASSPHRASE and never shows it", async () => {
  const der = await sealFor(alice, bob, encodeItem(item()));
  await assert.rejects(
    openAs({ ...bob, passphrase: "wrong passphrase 99" }, der),
    e2eError("ERR_BAD_PASSPHRASE", "Cannot unlock your key for the mailbox", {
      never: ["wrong passphrase 99"],
    }),
  );
});

Deno.test("open() refuses an item with a byte changed anywhere, for an EC or an RSA key, and one whose signed content is no CMS, as a verdict on the item (ERR_PEER_REJECTED)", async () => {
  for (const to of [bob, carol]) {
    const der = await sealFor(alice, to, encodeItem(item({ to: to === bob ? "bob" : "carol" })));
    for (let at = 0; at < der.length; at += 97) {
      const altered = der.slice();
      altered[at] ^= 0x01;
      await assert.rejects(openAs(to, altered), e2eError("ERR_PEER_REJECTED", /mailbox item/));
    }
  }
  // Sealed for bob as seal() seals, but what is inside is not signed: the bytes are no CMS.
  const unsigned = (await openssl(
    [
      "cms",
      "-encrypt",
      "-binary",
      "-aes-256-gcm",
      "-recip",
      "recipient.pem",
      "-keyopt",
      "ecdh_kdf_md:sha256",
      "-outform",
      "DER",
    ],
    { cwd: await writeCert(bob), stdin: encodeItem(item()) },
  )).stdout;
  await assert.rejects(
    openAs(bob, unsigned),
    e2eError("ERR_PEER_REJECTED", "The mailbox item's signature does not verify against our CA"),
  );
});

Deno.test("open() whose openssl is killed, or finds no temporary folder, fails with a code of our side (ERR_OPENSSL, ERR_FILE), not as a refusal of the item", async () => {
  await withTempDir(async (tmp) => {
    const der = await sealFor(alice, bob, encodeItem(item()));
    const wrapper = join(tmp, "openssl");
    for (const step of ["decrypt", "verify"]) {
      await Deno.writeTextFile(
        wrapper,
        `#!/bin/sh\ncase "$*" in *-${step}*) kill -9 $$;; esac\nexec openssl "$@"\n`,
        { mode: 0o755 },
      );
      await withEnv("E2E_CHAT_OPENSSL", wrapper, async () => {
        await assert.rejects(
          openAs(bob, der),
          e2eError(
            "ERR_OPENSSL",
            `Cannot ${step} the mailbox item here: openssl cms was killed (SIGKILL)`,
          ),
        );
      });
    }
    await withEnv("TMPDIR", join(tmp, "gone"), async () => {
      await assert.rejects(
        openAs(bob, der),
        e2eError(
          "ERR_FILE",
          /^Cannot make a temporary folder for openssl: No such file or directory/,
        ),
      );
    });
    assert.equal(
      new TextDecoder().decode(decodeItem((await openAs(bob, der)).content).payload),
      "hello bob",
    );
  });
});

// A folder holding `m`'s certificate as recipient.pem, for a plain openssl command.
async function writeCert(m: Member): Promise<string> {
  const folder = await Deno.makeTempDir({ dir });
  await Deno.writeTextFile(join(folder, "recipient.pem"), m.cert);
  return folder;
}

async function withEnv(name: string, value: string, fn: () => Promise<void>): Promise<void> {
  const before = Deno.env.get(name);
  Deno.env.set(name, value);
  try {
    await fn();
  } finally {
    if (before === undefined) Deno.env.delete(name);
    else Deno.env.set(name, before);
  }
}
