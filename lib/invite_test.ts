import assert from "node:assert/strict";
import { E2eError } from "./errors.ts";
import { formatInvite, parseCaAddress, parseInvite, TOKEN_PATTERN } from "./invite.ts";
import { e2eError } from "./_test_util.ts";

const FP = "0123456789abcdef".repeat(4);
const TOKEN = "Zm9vYmFyX-_0123456789abcdefghijklmnopqrstuv";

function invite(authority: string, rest = `alice?fp=${FP}&token=${TOKEN}`): string {
  return `e2e-chat://${authority}/${rest}`;
}

Deno.test("the test token has the shape of a real one", () => {
  assert.match(TOKEN, /^[A-Za-z0-9_-]{43}$/);
});

// ---------------------------------------------------------------------------
// Valid invites

Deno.test("parseInvite() reads an invite with an IPv4 address", () => {
  assert.deepEqual(parseInvite(invite("127.0.0.1:65433")), {
    host: "127.0.0.1",
    port: 65433,
    name: "alice",
    fingerprint: FP,
    token: TOKEN,
    caUrl: "https://127.0.0.1:65433",
  });
});

Deno.test("parseInvite() reads an invite with a host name", () => {
  const parsed = parseInvite(
    invite("ca.example-team.org:443", `bob-smith_2?fp=${FP}&token=${TOKEN}`),
  );
  assert.equal(parsed.host, "ca.example-team.org");
  assert.equal(parsed.port, 443);
  assert.equal(parsed.name, "bob-smith_2");
  assert.equal(parsed.caUrl, "https://ca.example-team.org:443");
  assert.equal(parseInvite(invite("localhost:1")).host, "localhost");
});

Deno.test("parseInvite() reads an invite with a bracketed IPv6 address, and keeps the brackets only in the URL", () => {
  const loopback = parseInvite(invite("[::1]:65433"));
  assert.equal(loopback.host, "::1");
  assert.equal(loopback.port, 65433);
  assert.equal(loopback.caUrl, "https://[::1]:65433");
  const full = parseInvite(invite("[2001:DB8::a:1]:8443"));
  assert.equal(full.host, "2001:DB8::a:1");
  assert.equal(full.caUrl, "https://[2001:DB8::a:1]:8443");
});

Deno.test("parseInvite() accepts ports 1 and 65535", () => {
  assert.equal(parseInvite(invite("127.0.0.1:1")).port, 1);
  assert.equal(parseInvite(invite("127.0.0.1:65535")).port, 65535);
});

Deno.test("parseInvite() normalizes a fingerprint given in uppercase or with colons", () => {
  const upper = FP.toUpperCase();
  const colons = upper.match(/../g)!.join(":");
  for (const fp of [upper, colons, colons.toLowerCase(), FP]) {
    assert.equal(
      parseInvite(invite("127.0.0.1:65433", `alice?fp=${fp}&token=${TOKEN}`)).fingerprint,
      FP,
      fp,
    );
  }
});

Deno.test("parseInvite() ignores whitespace around the invite, the order of the parameters and extra ones", () => {
  assert.equal(parseInvite(`  ${invite("127.0.0.1:65433")}\n`).token, TOKEN);
  const reordered = parseInvite(invite("127.0.0.1:65433", `alice?token=${TOKEN}&v=2&fp=${FP}`));
  assert.equal(reordered.token, TOKEN);
  assert.equal(reordered.fingerprint, FP);
});

// ---------------------------------------------------------------------------
// Invalid invites: ERR_INVITE_INVALID, and never the token in the message

const BAD: Array<[what: string, text: string, why: RegExp]> = [
  ["an empty text", "", /expected e2e-chat:\/\/HOST:PORT\/NAME\?fp=…&token=…/],
  ["the token alone", TOKEN, /expected e2e-chat:\/\//],
  ["another scheme", `https://127.0.0.1:65433/alice?fp=${FP}&token=${TOKEN}`, /expected/],
  ["a missing port", `e2e-chat://127.0.0.1/alice?fp=${FP}&token=${TOKEN}`, /expected/],
  ["an empty port", invite("127.0.0.1:"), /expected/],
  ["a six-digit port", invite("127.0.0.1:065433"), /expected/],
  ["a user in the authority", invite(`${TOKEN}@127.0.0.1:65433`), /expected/],
  ["an unbracketed IPv6 address", invite("::1:65433"), /expected/],
  ["a host with a space", invite("ca example:65433"), /expected/],
  ["a host with an underscore", invite("ca_1:65433"), /expected/],
  ["a fragment", `${invite("127.0.0.1:65433")}#more`, /expected/],
  ["no query", `e2e-chat://127.0.0.1:65433/alice`, /expected/],
  [
    "a path deeper than the name",
    invite("127.0.0.1:65433", `x/alice?fp=${FP}&token=${TOKEN}`),
    /name/,
  ],
  ["port 0", invite("127.0.0.1:0"), /the port is out of range/],
  ["port 65536", invite("127.0.0.1:65536"), /the port is out of range/],
  ["port 99999", invite("127.0.0.1:99999"), /the port is out of range/],
  [
    "no name",
    invite("127.0.0.1:65433", `?fp=${FP}&token=${TOKEN}`),
    /the name is not a valid user name/,
  ],
  ["an uppercase name", invite("127.0.0.1:65433", `Alice?fp=${FP}&token=${TOKEN}`), /the name/],
  [
    "a percent-encoded name",
    invite("127.0.0.1:65433", `%61lice?fp=${FP}&token=${TOKEN}`),
    /the name/,
  ],
  ["a name with a space", invite("127.0.0.1:65433", `a b?fp=${FP}&token=${TOKEN}`), /the name/],
  [
    "a name of 64 characters",
    invite("127.0.0.1:65433", `${"a".repeat(64)}?fp=${FP}&token=${TOKEN}`),
    /the name/,
  ],
  ["no fp", invite("127.0.0.1:65433", `alice?token=${TOKEN}`), /fp must be 64 hex characters/],
  ["an empty fp", invite("127.0.0.1:65433", `alice?fp=&token=${TOKEN}`), /fp must be 64 hex/],
  [
    "an fp of 63 characters",
    invite("127.0.0.1:65433", `alice?fp=${FP.slice(1)}&token=${TOKEN}`),
    /fp must/,
  ],
  [
    "an fp of 65 characters",
    invite("127.0.0.1:65433", `alice?fp=${FP}0&token=${TOKEN}`),
    /fp must/,
  ],
  [
    "an fp that is not hex",
    invite("127.0.0.1:65433", `alice?fp=${"g".repeat(64)}&token=${TOKEN}`),
    /fp must/,
  ],
  [
    "an fp in base64",
    invite("127.0.0.1:65433", `alice?fp=${btoa("x".repeat(32))}&token=${TOKEN}`),
    /fp must/,
  ],
  ["no token", invite("127.0.0.1:65433", `alice?fp=${FP}`), /the token is malformed/],
  ["an empty token", invite("127.0.0.1:65433", `alice?fp=${FP}&token=`), /the token is malformed/],
  [
    "a token of 42 characters",
    invite("127.0.0.1:65433", `alice?fp=${FP}&token=${TOKEN.slice(1)}`),
    /token/,
  ],
  [
    "a token of 44 characters",
    invite("127.0.0.1:65433", `alice?fp=${FP}&token=${TOKEN}A`),
    /token/,
  ],
  ["a padded token", invite("127.0.0.1:65433", `alice?fp=${FP}&token=${TOKEN.slice(1)}=`), /token/],
  [
    "a token with '/'",
    invite("127.0.0.1:65433", `alice?fp=${FP}&token=${TOKEN.slice(1)}/`),
    /token/,
  ],
  [
    "a token with '+' (read as a space)",
    invite("127.0.0.1:65433", `alice?fp=${FP}&token=${TOKEN.slice(1)}+`),
    /token/,
  ],
];

for (const [what, text, why] of BAD) {
  Deno.test(`parseInvite() refuses ${what}, without repeating the token`, () => {
    assert.throws(() => parseInvite(text), (e) => {
      assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
      assert.equal(e.code, "ERR_INVITE_INVALID");
      assert.match(e.message, /^Invalid invite: /);
      assert.match(e.message, why);
      assert.match(e.hint ?? "", /deno task ca invite NAME/);
      // Neither the token nor a recognizable piece of it, anywhere in the error.
      for (const part of [TOKEN, TOKEN.slice(1), TOKEN.slice(0, 20), TOKEN.slice(-20)]) {
        for (const field of [e.message, e.hint ?? "", e.detail ?? "", String(e.stack)]) {
          assert.ok(!field.includes(part), `the error shows the token: ${field}`);
        }
      }
      return true;
    });
  });
}

// ---------------------------------------------------------------------------
// formatInvite(): the writing half, checked against parseInvite()

Deno.test("formatInvite() writes what parseInvite() reads back, for names, IPv4 and IPv6 hosts", () => {
  const cases: Array<{ host: string; port: number; urlHost: string; name: string }> = [
    { host: "127.0.0.1", port: 65433, urlHost: "127.0.0.1", name: "alice" },
    { host: "ca.example-team.org", port: 443, urlHost: "ca.example-team.org", name: "bob-smith_2" },
    { host: "::1", port: 1, urlHost: "[::1]", name: "carol" },
    { host: "[2001:db8::a:1]", port: 65535, urlHost: "[2001:db8::a:1]", name: "d-9" },
  ];
  for (const { host, port, urlHost, name } of cases) {
    const url = formatInvite({ host, port, name, fingerprint: FP, token: TOKEN });
    assert.equal(url, `e2e-chat://${urlHost}:${port}/${name}?fp=${FP}&token=${TOKEN}`);
    assert.deepEqual(parseInvite(url), {
      host: urlHost.replace(/^\[|\]$/g, ""),
      port,
      name,
      fingerprint: FP,
      token: TOKEN,
      caUrl: `https://${urlHost}:${port}`,
    });
  }
});

Deno.test("formatInvite() refuses fields that parseInvite() would refuse, without showing the token", () => {
  const good = { host: "127.0.0.1", port: 65433, name: "alice", fingerprint: FP, token: TOKEN };
  const bad: Array<[string, Partial<typeof good>, RegExp]> = [
    ["a host with a space", { host: "ca example" }, /Invalid invite host "ca example"/],
    ["port 0", { port: 0 }, /Invalid invite port 0/],
    ["port 65536", { port: 65536 }, /Invalid invite port 65536/],
    ["an uppercase name", { name: "Alice" }, /Invalid invite name "Alice"/],
    ["an uppercase fingerprint", { fingerprint: FP.toUpperCase() }, /fingerprint/],
    ["a short token", { token: TOKEN.slice(1) }, /^Invalid invite token$/],
  ];
  for (const [what, change, message] of bad) {
    assert.throws(() => formatInvite({ ...good, ...change }), (e) => {
      assert.ok(e instanceof RangeError, what);
      assert.match(e.message, message, what);
      assert.ok(!e.message.includes(TOKEN.slice(1, 21)), what);
      return true;
    });
  }
});

Deno.test("TOKEN_PATTERN is the shape parseInvite() checks", () => {
  assert.match(TOKEN, TOKEN_PATTERN);
  assert.doesNotMatch(TOKEN + "A", TOKEN_PATTERN);
});

Deno.test("parseCaAddress() reads HOST:PORT or https://HOST:PORT as the CA URL invites name", () => {
  assert.equal(parseCaAddress("ca.example.org:65433"), "https://ca.example.org:65433");
  assert.equal(parseCaAddress(" https://10.0.0.5:443/ "), "https://10.0.0.5:443");
  assert.equal(parseCaAddress("[::1]:8443"), "https://[::1]:8443");
});

Deno.test("parseCaAddress() refuses what is not a CA address with ERR_USAGE", () => {
  for (
    const text of [
      "ca.example.org",
      "http://ca:1",
      "https://ca:0",
      "ca:65536",
      "ca:1/x",
      "::1:8443",
      "",
    ]
  ) {
    assert.throws(
      () => parseCaAddress(text),
      e2eError(
        "ERR_USAGE",
        `A CA address is HOST:PORT or https://HOST:PORT, not ${JSON.stringify(text)}`,
      ),
    );
  }
});
