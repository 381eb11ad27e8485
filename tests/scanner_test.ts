/**
 * Our TLS seen from the outside (docs/SECURITY.md "Outside scanner"): `sslscan`
 * against a running CA service and against a `client chat --json` listener.
 * Skipped, with a message, when sslscan is not installed.
 *
 * sslscan enumerates protocols and cipher suites with its own handshakes, so
 * it works on the peer listener even though that one refuses every client
 * without a certificate. When sslscan's OpenSSL was built without zlib it
 * cannot test compression; then a TLS 1.2 ClientHello of our own, offering
 * DEFLATE, checks what the server picks.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ChatClient, within } from "./_harness.ts";
import { initCa, type Service, startService } from "./_service_helpers.ts";
import { joinUser } from "./_chat_helpers.ts";

async function commandPath(name: string): Promise<string | undefined> {
  const out = await new Deno.Command("sh", { args: ["-c", `command -v ${name}`] }).output();
  const path = new TextDecoder().decode(out.stdout).trim();
  return out.success && path ? path : undefined;
}

const sslscan = await commandPath("sslscan");
if (!sslscan) {
  // deno-lint-ignore no-console
  console.log("scanner_test.ts: skipping: sslscan is not on PATH (apt-get install sslscan)");
}
// Debian installs testssl.sh as "testssl"; upstream's script is "testssl.sh".
const testssl = await commandPath("testssl") ?? await commandPath("testssl.sh");
if (!testssl) {
  // deno-lint-ignore no-console
  console.log("scanner_test.ts: skipping testssl.sh: not on PATH (apt-get install testssl.sh)");
}

/**
 * Findings testssl.sh 3.0.8 flags that we know of and cannot fix, each with its reason
 * (docs/SECURITY.md "Outside scanner"). Any other "NOT ok" fails the test.
 */
const KNOWN_NOT_OK = [
  // Deno's node:tls ignores honorCipherOrder (lib/tls.ts CIPHER_SUITES): the client picks.
  /^Has server cipher order\?\s+no \(NOT ok\)$/,
];

/** What sslscan reported, parsed from `--no-colour` output. */
interface Scan {
  text: string;
  protocols: Map<string, string>;
  ciphers: Array<{ version: string; bits: number; name: string }>;
  section(title: string): string;
}

/** Runs `sslscan --no-colour 127.0.0.1:PORT` (killed after 60 s) and parses what it printed. */
async function scan(port: number): Promise<Scan> {
  const out = await new Deno.Command(sslscan!, {
    args: ["--no-colour", `127.0.0.1:${port}`],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.ok(
    out.success,
    `sslscan exited ${out.code}\n${text}\n${new TextDecoder().decode(out.stderr)}`,
  );
  const protocols = new Map(
    [...text.matchAll(/^(SSLv2|SSLv3|TLSv1\.[0-3])\s+(enabled|disabled)$/gm)].map((
      m,
    ) => [m[1], m[2]]),
  );
  const ciphers = [...text.matchAll(/^(?:Preferred|Accepted)\s+(\S+)\s+(\d+) bits\s+(\S+)/gm)].map(
    (m) => ({ version: m[1], bits: Number(m[2]), name: m[3] }),
  );
  return {
    text,
    protocols,
    ciphers,
    section: (title) => {
      const start = text.indexOf(`  ${title}:\n`);
      if (start < 0) return "";
      const body = text.slice(start + title.length + 4);
      return body.slice(0, body.search(/\n\s*\n|$/)).trim();
    },
  };
}

/**
 * Sends a TLS 1.2 ClientHello that offers DEFLATE before null compression and
 * returns the compression method of the ServerHello, or null when the server
 * answered with an alert or closed the connection instead.
 */
async function compressionChosen(port: number): Promise<number | null> {
  const u16 = (n: number) => [n >> 8, n & 0xff];
  const u24 = (n: number) => [n >> 16, (n >> 8) & 0xff, n & 0xff];
  const vector16 = (bytes: number[]) => [...u16(bytes.length), ...bytes];
  const extension = (type: number, body: number[]) => [...u16(type), ...vector16(body)];
  const suites = [0xc02b, 0xc02c, 0xcca9, 0xc02f, 0xc030, 0xcca8].flatMap(u16);
  const body = [
    0x03,
    0x03, // TLS 1.2
    ...crypto.getRandomValues(new Uint8Array(32)),
    0x00, // no session id
    ...vector16(suites),
    0x02,
    0x01,
    0x00, // compression methods: DEFLATE, null
    ...vector16([
      ...extension(0x000a, vector16([0x001d, 0x0017, 0x0018].flatMap(u16))), // groups
      ...extension(0x000b, [0x01, 0x00]), // point formats: uncompressed
      ...extension(0x000d, vector16([0x0403, 0x0503, 0x0804, 0x0805, 0x0401].flatMap(u16))),
      ...extension(0xff01, [0x00]), // renegotiation_info, empty
    ]),
  ];
  const handshake = [0x01, ...u24(body.length), ...body];
  const record = new Uint8Array([0x16, 0x03, 0x01, ...u16(handshake.length), ...handshake]);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(record);
    let got = new Uint8Array(0);
    const buffer = new Uint8Array(16 * 1024);
    const until = Date.now() + 5_000;
    while (got.length < 5 || got.length < 5 + ((got[3] << 8) | got[4])) {
      const n = await within(conn.read(buffer), Math.max(0, until - Date.now()), "timeout");
      if (typeof n !== "number") break;
      got = new Uint8Array([...got, ...buffer.subarray(0, n)]);
    }
    if (got.length < 5 || got[0] !== 0x16 || got[5] !== 0x02) return null; // alert, or nothing
    // ServerHello: type, length(3), version(2), random(32), session id, cipher(2), compression.
    const sessionIdLength = got[5 + 4 + 2 + 32];
    return got[5 + 4 + 2 + 32 + 1 + sessionIdLength + 2];
  } finally {
    try {
      conn.close();
    } catch { /* closed by the server */ }
  }
}

const WEAK = /NULL|EXP|RC4|RC2|IDEA|SEED|(^|-)DES|3DES|DES-CBC3|anon|ADH|AECDH|MD5|PSK|SRP/i;

/** Checks what both kinds of server must show; returns nothing, fails with the scan's text. */
function assertSound(scan: Scan, what: string): void {
  const context = `${what}:\n${scan.text}`;
  for (const version of ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"]) {
    assert.equal(scan.protocols.get(version), "disabled", `${version} on ${context}`);
  }
  assert.equal(scan.protocols.get("TLSv1.3"), "enabled", `TLSv1.3 on ${context}`);
  assert.ok(scan.ciphers.length > 0, `no cipher suites found on ${context}`);
  for (const c of scan.ciphers) {
    assert.doesNotMatch(c.name, WEAK, `${c.version} ${c.name} on ${context}`);
    assert.ok(c.bits >= 128, `${c.version} ${c.name} (${c.bits} bits) on ${context}`);
    assert.match(c.version, /^TLSv1\.[23]$/, context);
  }
  const renegotiation = scan.section("TLS renegotiation");
  assert.ok(renegotiation, `no renegotiation result on ${context}`);
  assert.doesNotMatch(renegotiation, /insecure/i, context);
  const compression = scan.section("TLS Compression");
  assert.match(
    compression,
    /^Compression disabled$|does not support compression/,
    `compression on ${context}`,
  );
  for (const line of scan.section("Heartbleed").split("\n").filter(Boolean)) {
    assert.match(line, /not vulnerable to heartbleed$/, context);
  }
}

Deno.test({
  name:
    "sslscan sees TLS 1.2 and 1.3 only on the CA service and TLS 1.3 only on a peer listener, with strong suites, no compression and no insecure renegotiation",
  ignore: !sslscan,
  fn: async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "e2e-chat-scanner-" });
    let service: Service | undefined;
    let alice: ChatClient | undefined;
    try {
      const home = join(dir, "ca-home");
      await initCa(home);
      service = await startService(home);
      alice = await ChatClient.start(await joinUser(service, "alice", join(dir, "alice")));
      const [ca, peer] = await Promise.all([scan(service.port), scan(alice.port)]);

      await t.step("the CA service: TLS 1.2 and 1.3, nothing older, no weak suite", () => {
        assertSound(ca, "the CA service");
        assert.equal(ca.protocols.get("TLSv1.2"), "enabled", ca.text);
        assert.ok(ca.ciphers.some((c) => c.version === "TLSv1.2"), ca.text);
        for (const c of ca.ciphers.filter((c) => c.version === "TLSv1.2")) {
          // Forward secrecy and AEAD only.
          assert.match(c.name, /^ECDHE-.*(GCM|CHACHA20-POLY1305)/, ca.text);
        }
      });

      await t.step("a peer listener: TLS 1.3 only, no weak suite", () => {
        assertSound(peer, "the peer listener");
        assert.equal(peer.protocols.get("TLSv1.2"), "disabled", peer.text);
        assert.ok(peer.ciphers.every((c) => c.version === "TLSv1.3"), peer.text);
      });

      await t.step(
        "offered DEFLATE, the CA service picks null compression and the peer listener refuses TLS 1.2",
        async () => {
          assert.equal(await compressionChosen(service!.port), 0);
          assert.equal(await compressionChosen(alice!.port), null);
        },
      );
    } finally {
      await alice?.stop();
      await service?.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name:
    "testssl.sh finds no vulnerability in the CA service, finds its CRL through the certificate, and flags nothing but the cipher order Deno cannot set",
  ignore: !testssl,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "e2e-chat-testssl-" });
    let service: Service | undefined;
    try {
      const home = join(dir, "ca-home");
      await initCa(home);
      service = await startService(home);
      const out = await new Deno.Command(testssl!, {
        args: [
          ...[
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--add-ca",
            join(home, "ca", "ca.crt"),
          ],
          ...["-p", "-P", "-S", "-U", `127.0.0.1:${service.port}`],
        ],
        stdout: "piped",
        stderr: "piped",
        signal: AbortSignal.timeout(150_000),
      }).output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      const lines = text.split("\n").map((l) => l.trim());
      assert.ok(lines.some((l) => /^Heartbleed .*not vulnerable/.test(l)), text);
      const vulnerable = lines.filter((l) => /VULNERABLE/i.test(l) && !/not vulnerable/i.test(l));
      assert.deepEqual(vulnerable, [], text);
      const crlUrl = (await Deno.readTextFile(join(home, "ca", "crl-url.txt"))).trim();
      assert.ok(
        lines.some((l) => l.startsWith("Certificate Revocation List") && l.endsWith(crlUrl)),
        `no CRL ${crlUrl} in:\n${text}`,
      );
      assert.ok(lines.some((l) => /^Chain of trust\s+Ok/.test(l)), text);
      const notOk = lines.filter((l) => /NOT ok/.test(l));
      const unknown = notOk.filter((l) => !KNOWN_NOT_OK.some((known) => known.test(l)));
      assert.deepEqual(unknown, [], text);
    } finally {
      await service?.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
