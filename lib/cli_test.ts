import assert from "node:assert/strict";
import { dispatch, intOption, oneOf, readBounded } from "./cli.ts";
import { E2eError } from "./errors.ts";

function chunks(
  ...parts: string[]
): { read(p: Uint8Array): Promise<number | null>; reads: number } {
  const queue = parts.map((p) => new TextEncoder().encode(p));
  const reader = {
    reads: 0,
    read(p: Uint8Array): Promise<number | null> {
      reader.reads++;
      const next = queue.shift();
      if (!next) return Promise.resolve(null);
      const n = Math.min(p.length, next.length);
      p.set(next.subarray(0, n));
      if (n < next.length) queue.unshift(next.subarray(n));
      return Promise.resolve(n);
    },
  };
  return reader;
}

function usageError(message: string, hint?: string, code = "ERR_USAGE") {
  return (e: unknown) => {
    assert.ok(e instanceof E2eError, `expected an E2eError, got ${e}`);
    assert.equal(e.code, code);
    assert.equal(e.message, message);
    if (hint !== undefined) assert.equal(e.hint, hint);
    return true;
  };
}

Deno.test("intOption() reads whole numbers up to 15 digits, such as a byte count of 1 GiB, and refuses anything else", () => {
  assert.equal(intOption(undefined, "--n"), undefined);
  assert.equal(intOption("7", "--n"), 7);
  assert.equal(intOption("1073741824", "--mailbox-total"), 1073741824);
  assert.equal(intOption("999999999999999", "--n"), 999999999999999);
  for (const bad of ["", "-1", "1.5", "1e9", "0x10", " 1", "1 ", "1000000000000000"]) {
    assert.throws(
      () => intOption(bad, "--n"),
      (e) =>
        e instanceof E2eError && e.code === "ERR_USAGE" &&
        e.message === `--n takes a whole number, not ${JSON.stringify(bad)}`,
      bad,
    );
  }
});

Deno.test("oneOf() returns an allowed value with its narrow type", () => {
  const value: "a" | "b" = oneOf("b", ["a", "b"] as const, { what: "letter" });
  assert.equal(value, "b");
});

Deno.test("oneOf() refuses another value as ERR_USAGE and lists the allowed ones in the hint", () => {
  assert.throws(
    () => oneOf("rsa-1024", ["rsa-4096", "ec-p256", "ed25519"], { what: "key type" }),
    usageError('Unknown key type "rsa-1024"', "use one of rsa-4096, ec-p256, ed25519"),
  );
});

Deno.test("oneOf() throws the code it is given", () => {
  assert.throws(
    () =>
      oneOf("bogus", ["unspecified"], { what: "revocation reason", code: "ERR_REASON_INVALID" }),
    usageError('Unknown revocation reason "bogus"', "use one of unspecified", "ERR_REASON_INVALID"),
  );
});

Deno.test("oneOf() does not accept inherited names or a different case", () => {
  for (const value of ["constructor", "A", " a", ""]) {
    assert.throws(() => oneOf(value, ["a"], { what: "letter" }), E2eError, value);
  }
});

Deno.test("readBounded() reads everything up to the end of a short input", async () => {
  const bytes = await readBounded(chunks("ab", "cd", "e"), 100);
  assert.equal(new TextDecoder().decode(bytes), "abcde");
});

Deno.test("readBounded() stops at maxBytes and leaves the rest unread", async () => {
  const reader = chunks("0123456789", "more");
  const bytes = await readBounded(reader, 4);
  assert.equal(new TextDecoder().decode(bytes), "0123");
  assert.equal(reader.reads, 1);
});

Deno.test("readBounded() with untilNewline stops after the chunk that holds a newline", async () => {
  const reader = chunks("ab", "c\nd", "never read");
  const bytes = await readBounded(reader, 100, { untilNewline: true });
  assert.equal(new TextDecoder().decode(bytes), "abc\nd");
  assert.equal(reader.reads, 2);
});

Deno.test("readStdinLine() returns the first line of stdin without its line end, reading at most 4 KiB", async () => {
  const cases: Array<[input: string, line: string]> = [
    ["e2e-chat://x\r\nsecond\n", "e2e-chat://x"],
    ["no newline", "no newline"],
    ["", ""],
    ["x".repeat(10_000) + "\n", "x".repeat(4096)],
  ];
  for (const [input, line] of cases) {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        `import { readStdinLine } from ${JSON.stringify(import.meta.resolve("./cli.ts"))};` +
        "console.log(JSON.stringify(await readStdinLine()));",
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(input)).catch(() => {});
    await writer.close().catch(() => {});
    const { success, stdout } = await child.output();
    assert.ok(success);
    assert.equal(JSON.parse(new TextDecoder().decode(stdout)), line);
  }
});

const COMMANDS = {
  program: "demo",
  usage: "Usage: demo\n",
  commands: {
    echo: (args: string[]) => Promise.resolve(args.length),
  },
  fallback: (args: string[]) => Promise.resolve(100 + args.length),
};

Deno.test("dispatch() runs the named command with the arguments after its name", async () => {
  assert.equal(await dispatch(["echo", "a", "b"], COMMANDS), 2);
});

Deno.test("dispatch() runs the fallback without a command, or with options only", async () => {
  assert.equal(await dispatch([], COMMANDS), 100);
  assert.equal(await dispatch(["--home", "x"], COMMANDS), 102);
});

Deno.test("dispatch() refuses an unknown command, inherited names included, with a hint to --help", async () => {
  for (const name of ["nope", "constructor", "toString", "ECHO"]) {
    await assert.rejects(
      () => dispatch([name], COMMANDS),
      usageError(`Unknown command ${JSON.stringify(name)}`, "run `deno task demo --help`"),
    );
  }
});

Deno.test({
  name: "runMain() reports a full disk in one line, with a hint to free space and run it again",
  ignore: Deno.build.os !== "linux", // /dev/full answers every write with ENOSPC
  async fn() {
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        `import { runMain } from ${JSON.stringify(import.meta.resolve("./cli.ts"))};` +
        'await runMain(async () => { await Deno.writeFile("/dev/full", new Uint8Array(1)); return 0; });',
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(code, 1);
    assert.equal(new TextDecoder().decode(stdout), "");
    assert.equal(
      new TextDecoder().decode(stderr),
      "e2e-chat: error: No space left on device (os error 28): writefile '/dev/full'\n" +
        "e2e-chat: hint: the disk is full: free some space on it, then run the command again\n",
    );
  },
});
