/**
 * The CA service under hostile input (docs/SECURITY.md §1 and §2): one real
 * service (`ca/main.ts serve` on a fresh EC P-256 CA) gets seeded random and
 * truncated bodies, huge and deep ones, wrong content types, huge and
 * malformed certificate requests, names built to escape paths or to inject
 * openssl arguments (over HTTP and through the CLI), and 200 idle or slow
 * connections. Every case checks that the service still answers others at
 * once and that nothing under HOME/ca changed.
 *
 * Requests the CA must accept (odd extensions, non-ASCII subject attributes, a
 * request just under 64 KiB) run first and are checked for what they add, then
 * bursts of authenticated requests right after signings (the index cache they
 * all read); the refusals then run concurrently against one snapshot, the CLI
 * and the held connections alone.
 *
 * @module
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { join } from "node:path";
import tls from "node:tls";
import { openssl } from "../lib/openssl.ts";
import { concat, tlv } from "../lib/_der_builder.ts";
import { pemDecode, pemEncode } from "../lib/pem.ts";
import { concurrentSteps, sleep, within } from "./_harness.ts";
import { makeCsr, runCa, snapshot } from "./_helpers.ts";
import {
  assertApiError,
  type EnrolledUser,
  enrollUser,
  type HttpsReply,
  inviteToken,
  makeInvite,
  type Service,
  withService,
} from "./_service_helpers.ts";
import { assertCliError, assertSameFiles, pool, SeededRandom, tree } from "./_hostile_helpers.ts";
import { captureClientHello, type HeldConnection, holdTcp } from "./_tls_by_hand.ts";

/** The seed of the random bodies: change it to explore, keep it to reproduce. */
const SEED = 0xe2e0c4a;
/** Random bodies per route. */
const BODIES = 200;
const KiB = 1024;
const MiB = 1024 * KiB;
const LIMIT = 64 * KiB;

interface ApiErrorBody {
  error: { code: string; message: string };
}

const auth = (user: EnrolledUser) => ({ cert: user.cert, key: user.key });

/** Asserts a documented refusal: one of `statuses`, a JSON error, and one of `codes` when given. */
function assertRefused(reply: HttpsReply, what: string, statuses: number[], codes?: string[]) {
  const context = `${what}: ${reply.status} ${reply.body.slice(0, 300)}`;
  assert.ok(statuses.includes(reply.status), context);
  let code: string;
  try {
    code = (reply.json() as ApiErrorBody).error.code;
  } catch {
    throw new assert.AssertionError({ message: `${context} (not a JSON error)` });
  }
  assertApiError(reply, reply.status, code);
  if (codes) assert.ok(codes.includes(code), context);
}

/**
 * Writes `request` (and `body`, ignoring write errors: the service may close
 * first) on a fresh TLS connection, as `user` when given; returns the reply's
 * status line and headers, or status 0 when the connection closed unanswered.
 */
async function rawRequest(
  service: Service,
  request: string | Uint8Array,
  options: { body?: Uint8Array; user?: EnrolledUser } = {},
): Promise<{ status: number; head: string }> {
  const socket = tls.connect({
    host: "127.0.0.1",
    port: service.port,
    ca: service.caPem,
    checkServerIdentity: () => undefined,
    ...(options.user ? auth(options.user) : {}),
  });
  let text = "";
  socket.on("data", (bytes: Uint8Array) => text += new TextDecoder().decode(bytes));
  socket.on("error", () => {});
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("secureConnect", () => resolve());
      socket.once("error", reject);
    });
    socket.write(request);
    if (options.body) socket.write(options.body, () => {});
    const until = Date.now() + 10_000;
    while (!text.includes("\r\n\r\n") && Date.now() < until) {
      if (await within(closed.then(() => true), 20, false)) break;
    }
  } finally {
    socket.destroy();
  }
  const m = /^HTTP\/1\.[01] (\d{3}) /.exec(text);
  return { status: m ? Number(m[1]) : 0, head: text.slice(0, text.indexOf("\r\n\r\n") + 1) };
}

/** Bodies made from `base` (a valid body the route must refuse anyway) by seeded damage. */
function randomBodies(rand: SeededRandom, base: string, count: number): Uint8Array[] {
  const bytes = new TextEncoder().encode(base);
  const json = JSON.parse(base) as Record<string, unknown>;
  const value = (depth: number): unknown => {
    switch (rand.int(depth > 4 ? 4 : 7)) {
      case 0:
        return rand.int(3) === 0 ? null : rand.next() < 0.5;
      case 1:
        return rand.pick([0, -1, 1e308, -0, 2 ** 53, rand.int(1e6)]);
      case 2:
        return String.fromCharCode(...rand.bytes(rand.int(64)));
      case 3:
        return rand.pick(["", "-----BEGIN CERTIFICATE REQUEST-----", "A".repeat(43), "\u0000"]);
      case 4:
        return Array.from({ length: rand.int(5) }, () => value(depth + 1));
      default: {
        const o: Record<string, unknown> = {};
        for (let i = rand.int(5); i > 0; i--) {
          o[rand.pick(["token", "csr", "to", "__proto__", "constructor", "x"])] = value(depth + 1);
        }
        return o;
      }
    }
  };
  const bodies: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    let body: Uint8Array;
    switch (i % 8) {
      case 0: // noise
        body = rand.bytes(rand.int(2 * KiB));
        break;
      case 1: // truncated
        body = bytes.slice(0, rand.int(bytes.length));
        break;
      case 2: { // a few bytes changed
        body = bytes.slice();
        for (let n = 1 + rand.int(8); n > 0; n--) body[rand.int(body.length)] = rand.int(256);
        break;
      }
      case 3: // any JSON value
        body = new TextEncoder().encode(JSON.stringify(value(0)) ?? "null");
        break;
      case 4: { // the right fields with wrong values
        const o: Record<string, unknown> = {};
        for (const k of Object.keys(json)) o[k] = rand.next() < 0.5 ? json[k] : value(1);
        if (Object.values(o).every((v, n) => v === Object.values(json)[n])) o.csr = value(1);
        body = new TextEncoder().encode(JSON.stringify(o));
        break;
      }
      case 5: { // printable junk spliced in
        const at = rand.int(base.length);
        const junk = Array.from(
          { length: 1 + rand.int(32) },
          () => String.fromCharCode(32 + rand.int(95)),
        ).join("");
        body = new TextEncoder().encode(base.slice(0, at) + junk + base.slice(at));
        break;
      }
      case 6: { // valid JSON, request cut short
        const csr = String(json.csr);
        body = new TextEncoder().encode(
          JSON.stringify({ ...json, csr: csr.slice(0, rand.int(csr.length)) }),
        );
        break;
      }
      default: { // a valid start, then noise
        const head = bytes.slice(0, rand.int(bytes.length));
        const tail = rand.bytes(rand.int(KiB));
        body = new Uint8Array(head.length + tail.length);
        body.set(head);
        body.set(tail, head.length);
      }
    }
    bodies.push(body);
  }
  return bodies;
}

/** Certificate requests that are not well-formed DER, each as the `csr` string. */
function garbageRequests(rand: SeededRandom, valid: Uint8Array): Array<[string, string]> {
  const pem = (bytes: Uint8Array) => pemEncode(bytes, "CERTIFICATE REQUEST");
  let nested = tlv(0x05);
  for (let i = 0; i < 9_000; i++) nested = tlv(0x30, nested);
  const manyChildren = tlv(0x30, ...Array.from({ length: 10_001 }, () => tlv(0x05)));
  const signatureCut = valid.slice();
  signatureCut[signatureCut.length - 70] ^= 0x7f; // somewhere in the signature's headers
  const lengthBig = valid.slice();
  lengthBig[1] = 0x84; // the outer length now claims 4 length bytes
  return [
    ["2 KiB of seeded noise in PEM armour", pem(rand.bytes(2 * KiB))],
    ["9,000 nested SEQUENCEs", pem(nested)],
    ["a SEQUENCE of 10,001 NULLs", pem(manyChildren)],
    ["an indefinite length (BER)", pem(new Uint8Array([0x30, 0x80, 0x05, 0x00, 0x00, 0x00]))],
    ["a length of 2^32-1 bytes", pem(new Uint8Array([0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x05]))],
    ["an outer length with a wrong length-of-length", pem(lengthBig)],
    ["a high tag number", pem(new Uint8Array([0x3f, 0x81, 0x01, 0x00]))],
    ["a valid request with trailing bytes", pem(concat(valid, new Uint8Array([0x05, 0x00])))],
    ["a valid request cut by one byte", pem(valid.subarray(0, valid.length - 1))],
    ["a valid request with a damaged signature header", pem(signatureCut)],
    ["a valid request twice", pem(valid) + pem(valid)],
    ["a valid request labelled CERTIFICATE", pemEncode(valid, "CERTIFICATE")],
    ["raw DER as a string", String.fromCharCode(...valid)],
    [
      "base64 with a bad character",
      pem(valid).replace(/\n[A-Za-z0-9+/]{10}/, (m) => m.slice(0, 5) + "*" + m.slice(6)),
    ],
    [
      "an empty PEM block",
      "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----",
    ],
  ];
}

/** A request just under `target` bytes of JSON body: an ignored extension pads it. */
async function paddedRequest(name: string, token: string, target: number) {
  const body = (csr: string) => JSON.stringify({ token, csr });
  const pad = (n: number) => ["1.2.3.4.5.6.8=ASN1:UTF8String:" + "A".repeat(n)];
  let n = 40_000;
  let made = await makeCsr(name, { addext: pad(n) });
  // Each byte of the extension costs 4/3 in base64, 1/64 more for line ends, escaped as "\n".
  n += Math.floor((target - 40 - body(made.csr).length) / (4 / 3 * 66 / 64));
  made = await makeCsr(name, { addext: pad(n), keyPem: made.key });
  const size = body(made.csr).length;
  assert.ok(size <= target && size > target - 200, `padded body of ${size} bytes`);
  return made;
}

async function certificateText(pem: string): Promise<string> {
  const { stdout } = await openssl(["x509", "-noout", "-text"], { stdin: pem });
  return new TextDecoder().decode(stdout);
}

Deno.test("the CA service refuses hostile input with 4xx JSON errors, keeps serving others, and HOME/ca does not change", async (t) => {
  await withService(async (service, dir) => {
    const [alice, bob] = await Promise.all([
      enrollUser(service, "alice"),
      enrollUser(service, "bob"),
    ]);

    // Accepted: the CA ignores what a request asks for beyond its key and common name.
    await t.step(
      "a request with odd extensions, non-ASCII subject attributes or just under 64 KiB is signed with the CA's own subject and extensions only",
      async () => {
        const before = await snapshot(service.caDir);
        const [oddInvite, uniInvite, bigInvite] = await Promise.all(
          ["odd-api", "uni-api", "big-api"].map((n) => makeInvite(service.home, n)),
        );
        const [odd, uni, big] = await Promise.all([
          makeCsr("odd-api", {
            addext: [
              "basicConstraints=critical,CA:TRUE,pathlen:5",
              "keyUsage=critical,keyCertSign,cRLSign",
              "extendedKeyUsage=codeSigning,OCSPSigning",
              "subjectAltName=DNS:*.example.com,DNS:admin,IP:10.0.0.1,email:root@example.com,URI:https://evil.example/",
              "nameConstraints=permitted;DNS:example.com",
              "1.2.3.4.5.6.7=critical,ASN1:UTF8String:odd",
            ],
          }),
          makeCsr("uni-api", { subject: "/C=DE/O=Ünïcødé ☃ GmbH/OU=日本語 \u202eevil/CN=uni-api" }),
          paddedRequest("big-api", inviteToken(bigInvite), LIMIT),
        ]);
        const enroll = (invite: string, csr: string) =>
          service.request("/v1/enroll", {
            method: "POST",
            json: { token: inviteToken(invite), csr },
          });
        const replies = await Promise.all([
          enroll(oddInvite, odd.csr),
          enroll(uniInvite, uni.csr),
          enroll(bigInvite, big.csr),
        ]);
        const certs = replies.map((r) => {
          assert.equal(r.status, 200, r.body);
          return (r.json() as { certificate: string }).certificate;
        });
        for (const [i, name] of ["odd-api", "uni-api", "big-api"].entries()) {
          const x509 = new X509Certificate(certs[i]);
          assert.equal(x509.subject, `CN=${name}`);
          assert.equal(x509.subjectAltName, `DNS:${name}`);
          assert.equal(x509.ca, false);
          assert.ok(
            x509.raw.length < 2 * KiB,
            `${name}: a certificate of ${x509.raw.length} bytes`,
          );
          const text = await certificateText(certs[i]);
          assert.match(text, /CA:FALSE/);
          assert.match(
            text,
            /X509v3 Extended Key Usage: \n\s+TLS Web Server Authentication, TLS Web Client Authentication\n/,
          );
          for (const bad of ["Certificate Sign", "Code Signing", "Name Constraints", "1.2.3.4.5"]) {
            assert.ok(!text.includes(bad), `${name}: the certificate carries ${bad}`);
          }
        }
        // The CA gained exactly three certificates, three index lines and three used invites.
        const after = await snapshot(service.caDir);
        assertSameFiles(
          before,
          after,
          "signing",
          /\/(index\.txt|invites\.(json|journal)|certs\/[0-9A-F]+\.pem|log\/entries|log\/checkpoint)$/,
        );
        const index = (p: Map<string, string>) => p.get(join(service.caDir, "index.txt"))!;
        assert.ok(index(after).startsWith(index(before)));
        assert.equal(index(after).slice(index(before).length).split("\n").length - 1, 3);
        const added = [...after.keys()].filter((p) => !before.has(p));
        assert.equal(added.length, 3, added.join(", "));
      },
    );

    // The service reads its index through a cache on every authenticated request; a signing
    // appends to the index, and the requests that arrive next read the new lines at once.
    await t.step(
      "24 concurrent authenticated requests right after each of 6 signings all get 200: never a 500, nor a 403 or 404 for a valid certificate",
      async () => {
        const seen: Record<string, number> = {};
        for (let round = 0; round < 6; round++) {
          await enrollUser(service, `burst-${round}`);
          const replies = await Promise.all(
            Array.from(
              { length: 24 },
              (_, i) => service.request(i % 2 ? "/v1/certs/bob" : "/v1/rendezvous", auth(alice)),
            ),
          );
          for (const r of replies) {
            const key = r.status === 200 ? "200" : `${r.status} ${r.body.trim()}`;
            seen[key] = (seen[key] ?? 0) + 1;
          }
        }
        // The log line of a reply comes just after it: wait for all 144, so later steps
        // judge only their own lines.
        const logged = () =>
          service.log.split("\n").filter((l) => / GET \/v1\/(certs\/bob|rendezvous) /.test(l))
            .length;
        const until = Date.now() + 5_000;
        while (logged() < 144 && Date.now() < until) await sleep(20);
        assert.deepEqual(seen, { "200": 144 });
      },
    );

    // One authenticated request alone brings the service's index cache up to date whatever the
    // step above left it in, so the steps below test what they are about.
    await service.request("/v1/certs/bob", auth(alice));

    // From here on every request is refused: HOME/ca must stay exactly as it is now.
    const victimInvite = await makeInvite(service.home, "victim");
    const victimToken = inviteToken(victimInvite);
    const [victim, mallory] = await Promise.all([makeCsr("victim"), makeCsr("mallory")]);
    const base = await snapshot(service.caDir);
    const logMark = service.log.length;
    const homeFiles = await tree(service.home);

    /** The service answers others at once, and HOME/ca is as it was. */
    const assertServingAndUnchanged = async (what: string) => {
      const started = Date.now();
      const [ca, lookup] = await Promise.all([
        service.request("/v1/ca"),
        service.request("/v1/certs/bob", auth(alice)),
      ]);
      const ms = Date.now() - started;
      assert.deepEqual([ca.status, lookup.status], [200, 200], `${what}: ${lookup.body}`);
      assert.ok(ms < 2_000, `${what}: the service took ${ms} ms to answer`);
      assertSameFiles(base, await snapshot(service.caDir), what);
    };

    const enrollCodes = [
      "ERR_BAD_REQUEST",
      "ERR_CSR_INVALID",
      "ERR_CSR_SIGNATURE",
      "ERR_CSR_NAME_MISMATCH",
      "ERR_KEY_REJECTED",
      "ERR_NAME_INVALID",
      "ERR_TOKEN_INVALID",
    ];
    const post = (path: string, body: string | Uint8Array, options: Record<string, unknown> = {}) =>
      service.request(path, {
        method: "POST",
        body,
        headers: { "content-type": "application/json" },
        ...options,
      });

    const steps: Array<[string, () => Promise<void>]> = [
      [
        `${BODIES} seeded random, truncated and damaged bodies each to /v1/enroll and /v1/renew get 400/403 JSON errors, never a certificate or a 5xx`,
        async () => {
          const rand = new SeededRandom(SEED);
          // An unknown token: even a body the damage left valid cannot enroll anyone.
          const unknown = Array.from(
            rand.bytes(43),
            (b) => "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[b % 64],
          ).join("");
          const enrollBodies = randomBodies(
            rand,
            JSON.stringify({ token: unknown, csr: victim.csr }),
            BODIES,
          );
          // mallory's request, renewed as alice: a body left valid is still the wrong name.
          const renewBodies = randomBodies(rand, JSON.stringify({ csr: mallory.csr }), BODIES);
          const jobs = [
            ...enrollBodies.map((b) => ["/v1/enroll", b, {}] as const),
            ...renewBodies.map((b) => ["/v1/renew", b, auth(alice)] as const),
          ];
          await pool(jobs, 16, async ([path, body, options], i) => {
            const reply = await post(path, body, options);
            assertRefused(reply, `body ${i} to ${path}`, [400, 403], enrollCodes);
          });
        },
      ],
      [
        "huge bodies get 413, wrong content types 415, and JSON nested 32,768 deep a 400",
        async () => {
          const valid = JSON.stringify({ token: victimToken, csr: victim.csr });
          const oneMiB = JSON.stringify({ token: victimToken, csr: "A".repeat(MiB) });
          const tenMiB = new Uint8Array(10 * MiB).fill(0x20);
          const enc = (text: string) => new TextEncoder().encode(text);
          const chunked = (bytes: Uint8Array) => {
            const head = enc(`${bytes.length.toString(16)}\r\n`);
            const out = new Uint8Array(head.length + bytes.length + 7);
            out.set(head);
            out.set(bytes, head.length);
            out.set(enc("\r\n0\r\n\r\n"), head.length + bytes.length);
            return out;
          };
          for (const [path, options] of [["/v1/enroll", {}], ["/v1/renew", auth(alice)]] as const) {
            // The service may answer and close before the body is sent: raw writes, errors ignored.
            const huge: Array<[string, string, Uint8Array]> = [
              ["1 MiB with a content-length", `content-length: ${oneMiB.length}`, enc(oneMiB)],
              ["10 MiB chunked", "transfer-encoding: chunked", chunked(tenMiB)],
              [
                "100,000 nested arrays",
                "content-length: 200000",
                enc("[".repeat(100_000) + "]".repeat(100_000)),
              ],
              ["a declared length of 1 TiB", "content-length: 1099511627776", enc("{")],
            ];
            for (const [what, header, body] of huge) {
              const { status, head } = await rawRequest(
                service,
                `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n` +
                  `${header}\r\n\r\n`,
                { body, user: path === "/v1/renew" ? alice : undefined },
              );
              // The service answers from the headers and closes; a body still streaming in
              // then may get the connection reset before the 413 is read. Any answer but
              // 413 is wrong, and a small body must always read it.
              if (status === 0 && body.length > LIMIT) continue;
              assert.equal(status, 413, `${what} to ${path}: ${head}`);
              assert.match(head, /\r\nconnection: close\r\n/i, `${what} to ${path}`);
            }
            for (
              const type of [
                "text/plain",
                "application/jsonx",
                "application/json-patch+json",
                "text/json",
                "application/json , text/plain",
                "multipart/form-data; boundary=x",
                "application/x-www-form-urlencoded",
                "",
              ]
            ) {
              const headers: Record<string, string> = type ? { "content-type": type } : {};
              const reply = await service.request(path, {
                method: "POST",
                body: valid,
                headers,
                ...options,
              });
              assertRefused(reply, `content-type "${type}"`, [415], ["ERR_UNSUPPORTED_MEDIA_TYPE"]);
            }
            const deep = [
              "[".repeat(LIMIT / 2) + "]".repeat(LIMIT / 2),
              `{"token":"${victimToken}","csr":` + "[".repeat(30_000) + "]".repeat(30_000) + "}",
              '{"a":'.repeat(10_000) + "1" + "}".repeat(10_000),
              "[".repeat(LIMIT),
            ];
            for (const body of deep) {
              assertRefused(await post(path, body, options), "deep JSON", [400], [
                "ERR_BAD_REQUEST",
              ]);
            }
          }
        },
      ],
      [
        "malformed, nested and garbage DER requests, look-alike or extra common names and a request over 64 KiB are refused, and the invite stays usable",
        async () => {
          const rand = new SeededRandom(SEED + 1);
          const validDer = pemDecode(victim.csr, "CERTIFICATE REQUEST")!;
          const lookalikes = await Promise.all(
            [
              "/CN=v\u0456ctim", // Cyrillic і
              "/CN=\u2174ictim", // roman numeral five
              "/CN=VICTIM",
              "/CN=victim/CN=admin",
              "/CN=victim\\/CN=admin",
              "/CN=victim /O=x",
              "/O=victim",
              "/CN=e2e-chat service",
            ].map(async (subject) => [subject, (await makeCsr("victim", { subject })).csr]),
          );
          const cases: Array<[string, string, number[], string[]]> = [
            ...garbageRequests(rand, validDer).map(([what, csr]) =>
              [what, csr, [400], ["ERR_CSR_INVALID", "ERR_CSR_SIGNATURE", "ERR_KEY_REJECTED"]] as [
                string,
                string,
                number[],
                string[],
              ]
            ),
            ...lookalikes.map(([what, csr]) =>
              [what, csr, [400], ["ERR_CSR_NAME_MISMATCH"]] as [string, string, number[], string[]]
            ),
          ];
          // A well-formed request over 64 KiB cannot fit in a body of 64 KiB.
          const over = await paddedRequest("victim", victimToken, LIMIT + 4 * KiB);
          assert.ok(over.csr.length > LIMIT);
          cases.push(["a request over 64 KiB", over.csr, [413], ["ERR_TOO_LARGE"]]);
          await pool(cases, 4, async ([what, csr, statuses, codes]) => {
            const [enrolled, renewed] = await Promise.all([
              service.request("/v1/enroll", {
                method: "POST",
                json: { token: victimToken, csr },
              }),
              service.request("/v1/renew", { method: "POST", json: { csr }, ...auth(alice) }),
            ]);
            assertRefused(enrolled, `enroll: ${what}`, statuses, codes);
            // For alice the look-alikes are the wrong name, like everything else here.
            assertRefused(renewed, `renew: ${what}`, statuses, [...codes, "ERR_CSR_NAME_MISMATCH"]);
          });
        },
      ],
      [
        "names that escape paths or inject openssl arguments get 4xx on /v1/certs/NAME and as a rendezvous `to` or host, and no invitation is recorded",
        async () => {
          const names = [
            "../x",
            "..",
            ".",
            "../../ca/ca.key",
            "-config",
            "-passin env:HOME",
            "a\nb",
            "a\r\nX-Injected: 1",
            "$ENV::HOME",
            "${HOME}",
            "%2e%2e",
            "..%2f..%2fca",
            "alice\u0000",
            "ALICE",
            "\u0430lice",
            "alice bob",
            "alice;id",
            "e2e-chat service",
            "a".repeat(64),
            "a".repeat(8_000),
          ];
          await pool(names, 4, async (name) => {
            const path = "/v1/certs/" + encodeURIComponent(name);
            const [anonymous, authed, offer] = await Promise.all([
              service.request(path),
              service.request(path, auth(alice)),
              service.request("/v1/rendezvous", {
                method: "POST",
                json: { to: name, port: 40_000 },
                ...auth(alice),
              }),
            ]);
            const what = JSON.stringify(name.slice(0, 40));
            if (name === "." || name === "..") {
              // The URL parser resolves /v1/certs/.. before any route sees it.
              assertRefused(anonymous, `anonymous ${what}`, [404], ["ERR_NOT_FOUND"]);
              assertRefused(authed, `lookup ${what}`, [404], ["ERR_NOT_FOUND"]);
            } else {
              assertRefused(anonymous, `anonymous ${what}`, [401], ["ERR_UNAUTHENTICATED"]);
              assertRefused(authed, `lookup ${what}`, [400], ["ERR_NAME_INVALID"]);
            }
            assertRefused(offer, `rendezvous ${what}`, [400], ["ERR_NAME_INVALID"]);
          });
          // Paths the URL parser resolves first: never a file, never a 5xx.
          for (
            const path of [
              "/v1/certs/../x",
              "/v1/certs/%2e%2e",
              "/v1/certs/%2E%2e/ca/ca.key",
              "/v1/certs/..%2f..%2fca%2fca.key",
              "/v1/certs/%00",
              "/v1/certs/x/../../../../etc/passwd",
              "/v1/certs//bob",
              "/v1/certs/bob/",
            ]
          ) {
            const reply = await service.request(path, auth(alice));
            assertRefused(reply, path, [400, 404], ["ERR_NAME_INVALID", "ERR_NOT_FOUND"]);
          }
          // Hosts and odd values in a rendezvous offer to a real user.
          for (
            const body of [
              { to: "bob", port: 40_000, host: "127.0.0.1 -config x" },
              { to: "bob", port: 40_000, host: "$ENV::HOME" },
              { to: "bob", port: 40_000, host: "../x" },
              { to: "bob", port: 40_000, host: "a\nb" },
              { to: "bob", port: 40_000, host: "a".repeat(300) },
              { to: ["bob"], port: 40_000 },
              { to: { toString: "bob" }, port: 40_000 },
              { to: "bob", port: "40000" },
              { to: "bob", port: 0 },
              { to: "bob", port: 1e100 },
            ]
          ) {
            const reply = await service.request("/v1/rendezvous", {
              method: "POST",
              json: body,
              ...auth(alice),
            });
            assertRefused(reply, JSON.stringify(body).slice(0, 60), [400], ["ERR_BAD_REQUEST"]);
          }
          const pending = await service.request("/v1/rendezvous", auth(bob));
          assert.equal(pending.status, 200, pending.body);
          assert.deepEqual(pending.json(), { invitations: [], cursor: 0 });
          // Request lines no client library would send: a 4xx or a closed connection.
          for (
            const line of [
              "GET /v1/certs/a\nb HTTP/1.1",
              "GET /v1/certs/a b HTTP/1.1",
              "GET /v1/certs/\u0000 HTTP/1.1",
              "GET /v1/certs/" + "a".repeat(100_000) + " HTTP/1.1",
              "GET ../../ca/ca.key HTTP/1.1",
              "GET http://127.0.0.1/../ca HTTP/1.1",
            ]
          ) {
            const { status } = await rawRequest(service, `${line}\r\nHost: 127.0.0.1\r\n\r\n`);
            assert.ok(
              status === 0 || (status >= 400 && status < 500),
              `${JSON.stringify(line.slice(0, 40))}: ${status}`,
            );
          }
        },
      ],
    ];

    await concurrentSteps(
      t,
      steps.map(([name, fn]) => [name, async () => {
        await fn();
        await assertServingAndUnchanged(name);
      }]),
    );

    // Alone: a refused `ca revoke` opens (and drops) a transaction folder that a concurrent
    // snapshot could trip over.
    await t.step(
      "ca invite, sign and revoke refuse names and values built to escape paths or inject openssl arguments with one error line, and create nothing",
      async () => {
        const cwd = join(dir, "cli-cwd");
        await Deno.mkdir(cwd);
        const csrFile = join(cwd, "victim.csr");
        await Deno.writeTextFile(csrFile, victim.csr);
        const hostile = [
          "../x",
          "../../evil",
          "-config",
          "a\nb",
          "$ENV::HOME",
          "%2e%2e",
          "a".repeat(64),
          "a".repeat(5_000),
          "x -passin pass:1",
        ];
        const runs: string[][] = [
          ...hostile.map((n) => ["invite", n]),
          ["invite", "--", "-config"],
          ["invite", "-config", "/tmp/x.cnf", "victim"],
          ["invite", "victim", "--url", "127.0.0.1:1/../../x"],
          ["invite", "victim", "--url", "-config"],
          ["invite", "victim", "--url", "h:1\n-config x"],
          ["invite", "victim", "--ttl", "-1d"],
          ...hostile.map((n) => ["sign", "--name", n, csrFile]),
          ["sign", "--name", "victim", "--days", "1 -config x", csrFile],
          ["revoke", "../x"],
          ["revoke", "--", "-config"],
          ["revoke", "$ENV::HOME"],
          ["revoke", "victim", "--reason", "-config"],
        ];
        const failures: string[] = [];
        await pool(runs, 4, async (args) => {
          const result = await runCa(service.home, args, { cwd });
          try {
            assertCliError(result, `ca ${JSON.stringify(args).slice(0, 80)}`);
          } catch (e) {
            failures.push((e as Error).message);
          }
        });
        assert.deepEqual(failures, [], "a refusal was not one clear error line");
        assert.deepEqual(await tree(cwd), ["victim.csr"], "a file appeared beside the CLI");
        const outside = (await tree(dir)).filter((p) => !/^(ca-home|cli-cwd)\//.test(p));
        assert.deepEqual(outside, [], "a file appeared outside the CA home");
        const now = await tree(service.home);
        const stray = now.filter((p) => !homeFiles.includes(p) && !/^\.[a-z]+\.lock$/.test(p));
        assert.deepEqual(stray, [], "files appeared in the CA home");
        await assertServingAndUnchanged("the CLI");
      },
    );

    // Alone, so that its timing measures the held connections and nothing else.
    await t.step(
      "with 200 idle or slow TCP and TLS connections held open, GET /v1/ca and an mTLS lookup each answer in under 2 s",
      async () => {
        const hello = await captureClientHello();
        type Held = Pick<HeldConnection, "isClosed" | "close">;
        const held: Held[] = [];
        const drips: Array<ReturnType<typeof setInterval>> = [];
        const openTls = async (slow: boolean) => {
          const socket = tls.connect({
            host: "127.0.0.1",
            port: service.port,
            ca: service.caPem,
            checkServerIdentity: () => undefined,
          });
          let closed = false;
          socket.on("close", () => closed = true);
          socket.on("error", () => {});
          await new Promise<void>((resolve) => {
            socket.once("secureConnect", () => resolve());
            socket.once("close", () => resolve());
          });
          if (slow) {
            socket.write(
              "POST /v1/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n" +
                "content-length: 60000\r\n\r\n{",
            );
            drips.push(setInterval(() => socket.destroyed || socket.write(" "), 500));
          }
          return {
            isClosed: () => closed,
            close: () => {
              socket.destroy();
            },
          };
        };
        const kinds = ["tcp", "half-hello", "tls", "slow"] as const;
        const opened = await pool(
          Array.from({ length: 200 }, (_, i) => kinds[i % 4]),
          50,
          (kind) => {
            switch (kind) {
              case "tcp":
                return holdTcp(service.port);
              case "half-hello":
                return holdTcp(service.port, hello.subarray(0, Math.floor(hello.length / 2)));
              case "tls":
                return openTls(false);
              case "slow":
                return openTls(true);
            }
          },
        );
        held.push(...opened);
        try {
          for (let round = 0; round < 5; round++) {
            const timed = async (what: string, reply: Promise<HttpsReply>) => {
              const started = Date.now();
              const r = await reply;
              const ms = Date.now() - started;
              assert.equal(r.status, 200, `${what}: ${r.body}`);
              assert.ok(ms < 2_000, `round ${round}: ${what} took ${ms} ms`);
            };
            await Promise.all([
              timed("GET /v1/ca", service.request("/v1/ca")),
              timed("GET /v1/certs/bob", service.request("/v1/certs/bob", auth(alice))),
            ]);
            await sleep(500);
          }
          const open = held.filter((c) => !c.isClosed()).length;
          assert.ok(open >= 190, `only ${open} of 200 connections were still held open`);
        } finally {
          for (const d of drips) clearInterval(d);
          for (const c of held) c.close();
        }
        await assertServingAndUnchanged("after the held connections");
      },
    );

    await t.step(
      "a client that hangs up in the middle of a request body is not logged as an internal error",
      async () => {
        const before = service.log.length;
        const sockets = await Promise.all(Array.from({ length: 3 }, async () => {
          const socket = tls.connect({
            host: "127.0.0.1",
            port: service.port,
            ca: service.caPem,
            checkServerIdentity: () => undefined,
          });
          socket.on("error", () => {});
          await new Promise<void>((resolve) => socket.once("secureConnect", () => resolve()));
          socket.write(
            "POST /v1/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n" +
              'content-length: 1000\r\n\r\n{"token":',
          );
          return socket;
        }));
        await sleep(300);
        for (const socket of sockets) socket.destroy();
        await sleep(500);
        const log = service.log.slice(before);
        assert.doesNotMatch(log, /internal error|ERR_INTERNAL/, log);
      },
    );

    await t.step(
      "afterwards the service still works: nothing used the invite up, and it enrolls",
      async () => {
        assertSameFiles(base, await snapshot(service.caDir), "all hostile input");
        // No 5xx: every failure above was a refusal the API documents. (Clients that hung up
        // in the middle of a body are the step before's business.)
        const lines = service.log.slice(logMark).split("\n");
        const internal = lines.flatMap((l, i) =>
          /internal error: (?!Error: aborted$)/.test(l) ? [lines.slice(i, i + 8).join("\n")] : []
        );
        assert.deepEqual(internal, [], "the service failed internally");
        const aborted = lines.filter((l) => l === "e2e-chat-ca: internal error: Error: aborted");
        const failed = lines.filter((l) => / 5\d\d ERR_INTERNAL /.test(l));
        assert.equal(failed.length, aborted.length, failed.join("\n"));
        const reply = await service.request("/v1/enroll", {
          method: "POST",
          json: { token: victimToken, csr: victim.csr },
        });
        assert.equal(reply.status, 200, reply.body);
        const lookup = await service.request("/v1/certs/victim", auth(bob));
        assert.equal(lookup.status, 200, lookup.body);
      },
    );
  }, { args: ["--enroll-rate", "100000"] });
});
