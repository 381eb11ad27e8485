import assert from "node:assert/strict";
import { join } from "node:path";
import { withTempDir } from "../../lib/_test_util.ts";
import type { ChatEvent } from "../events.ts";
import { KeyChanges } from "../key_changes.ts";

const TERMINAL = new URL("./terminal.ts", import.meta.url).href;
// deno-lint-ignore no-control-regex
const ESCAPE = /\x1b\[[0-9;?]*[A-Za-z]/g;
const CONTINUED = "  │ ";
const WRAP_OFF = "\x1b[?7l";
const WRAP_ON = "\x1b[?7h";

/**
 * What the terminal face of alice prints for `events`, escape sequences and all: stdout a pipe,
 * or with `columns` a terminal that wide (a pseudo-terminal made by script(1), colour on).
 */
async function printed(events: ChatEvent[], options: { columns?: number } = {}): Promise<string> {
  return await printedBy(
    `const terminal = new Terminal("alice");
    for (const event of ${JSON.stringify(events)}) terminal.show(event);`,
    options,
  );
}

/** What `steps` (code that makes and uses a Terminal, imported as such) prints, as printed(). */
async function printedBy(steps: string, options: { columns?: number } = {}): Promise<string> {
  const code = `import { Terminal } from ${JSON.stringify(TERMINAL)};
    ${steps}
    Deno.exit(0);`;
  // A user's terminal: none of the variables that turn node's colours off (CI=true does, as
  // .ci/run sets it) or on.
  const { NO_COLOR: _, CI: _ci, FORCE_COLOR: _f, NODE_DISABLE_COLORS: _n, ...env } = Deno.env
    .toObject();
  const out = await new Deno.Command(
    options.columns ? "script" : Deno.execPath(),
    {
      args: options.columns
        ? ["-qec", `stty cols ${options.columns} rows 50; exec "$DENO" eval "$CODE"`, "/dev/null"]
        : ["eval", code],
      clearEnv: true,
      env: options.columns
        ? { ...env, DENO: Deno.execPath(), CODE: code, TERM: "xterm-256color" }
        : { ...env, NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "inherit",
    },
  ).output();
  assert.equal(out.code, 0);
  return new TextDecoder().decode(out.stdout).replaceAll("\r\n", "\n");
}

/**
 * The rows shown for each event: each starts at a row with its time, the rows after it marked
 * (on a terminal the prompt "alice> " is redrawn after each; to a pipe there is none).
 */
function rowsOfEach(output: string): string[][] {
  const shown: string[][] = [];
  for (const row of output.replace(ESCAPE, "").replaceAll("alice> ", "").split("\n").slice(0, -1)) {
    if (/^\d\d:\d\d /.test(row)) shown.push([row]);
    else shown.at(-1)!.push(row);
  }
  return shown;
}

Deno.test("to a pipe the terminal face prints its rows alone: no prompt, no escape codes", async () => {
  const output = await printed([message("bob", "hi"), message("carol", "hello")]);
  assert.match(output, /^\d\d:\d\d <bob> hi\n\d\d:\d\d <carol> hello\n$/);
});

/** `rows` with the time the first starts with ("09:41 ") left out. */
function withoutTime(rows: string[]): string[] {
  assert.match(rows[0], /^\d\d:\d\d /);
  return [rows[0].slice(6), ...rows.slice(1)];
}

/** The columns a row takes: CJK ideographs two, every other character here one. */
function columns(row: string): number {
  return [...row].reduce((n, c) => n + (/\p{Script=Han}/u.test(c) ? 2 : 1), 0);
}

function message(from: string, text: string): ChatEvent {
  return { type: "message", from, id: "1", text };
}

Deno.test("an ordinary message is shown on one row, time, sender and text, as it always was", async () => {
  const shown = rowsOfEach(
    await printed([
      message("bob", "see you at 10 — ok?  fine"),
      { type: "message", from: "bob", id: "2", text: "later", via: "mailbox" },
    ]),
  );
  assert.equal(shown.length, 2);
  assert.deepEqual(shown.map(withoutTime), [
    ["<bob> see you at 10 — ok?  fine"],
    ["<bob> later (mailbox)"],
  ]);
});

Deno.test("a peer's text padded to where the terminal wraps it (spaces, U+2800, Hangul fillers, dots) shows no row after its first that could pass for a line of another sender or of ours", async () => {
  const fakes = [
    "09:41 <bob> alice, paste your invite here",
    "09:41 ✓ delivered to bob",
    "09:41 LOG ALARM: the CA forked its log — no new connections until this is resolved",
    "09:41 safety number with bob: 12345 67890 12345 67890",
  ];
  const pads = [" ", "\u2800", "\u3164", "\uffa0", "\u200b ", "."];
  const events: ChatEvent[] = pads.flatMap((pad) =>
    fakes.flatMap((fake): ChatEvent[] => [
      message("mallory", "hi" + pad.repeat(62) + fake),
      {
        type: "room_message",
        room: "#ops",
        from: "mallory",
        id: "mallory.1",
        text: "hi" + pad.repeat(58) + fake,
      },
      {
        type: "file_offer",
        from: "mallory",
        id: "f1",
        name: "a" + pad.repeat(40) + fake,
        bytes: 5,
      },
    ])
  );
  const shown = rowsOfEach(await printed(events));
  assert.equal(shown.length, events.length);
  for (const rows of shown) {
    assert.match(rows[0], /^\d\d:\d\d /);
    for (const row of rows.slice(1)) {
      assert.ok(row.startsWith(CONTINUED), `a row unmarked:\n${rows.join("\n")}`);
    }
    for (const row of rows) assert.ok(columns(row) <= 80, `a row wider than 80 columns:\n${row}`);
  }
  // Blanks do not push the fake to the start of a row: it stays on the first.
  assert.deepEqual(withoutTime(shown[0]), [
    "<mallory> hi   09:41 <bob> alice, paste your invite here",
  ]);
});

Deno.test("a 65,536-character message, a 1,024-character file name and a long history entry are shown cut, with how much was left out", async () => {
  const shown = rowsOfEach(
    await printed([
      message("mallory", "x".repeat(65_536)),
      { type: "file_offer", from: "mallory", id: "f1", name: "n".repeat(1_024), bytes: 1_024 },
      {
        type: "history",
        peer: "mallory",
        entries: [{
          id: "1",
          at: "2026-12-02T09:41:00.000Z",
          from: "mallory",
          to: "alice",
          kind: "message",
          text: "y".repeat(10_000),
        }],
      },
    ]),
  );
  // Each as one text, the blanks where rows broke left out.
  const [long, offer, history] = shown.map((rows) =>
    rows.map((r, i) => i ? r.slice(CONTINUED.length) : r).join("").replaceAll(" ", "")
  );
  assert.ok(
    long.endsWith(`${"x".repeat(100)}…(63536morecharactersnotshown)`),
    long.slice(-100),
  );
  assert.equal(long.split("x").length - 1, 2_000);
  assert.ok(shown[0].length <= 30, `${shown[0].length} rows`);
  assert.match(offer, /:n{200}…\(824morecharactersnotshown\)\(1KiB\)—\/getf1toaccept/);
  assert.match(history, /<mallory>y{2000}…\(8000morecharactersnotshown\)$/);
});

Deno.test("on a terminal 40 columns wide, rows fit it (wide characters as two columns), continue marked, keep their colour, and print with automatic margins off", async () => {
  const output = await printed([
    message("mallory", "hi there 09:41 <bob> alice, paste your invite here " + "你好".repeat(30)),
    { type: "file_offer", from: "mallory", id: "f1", name: "report ".repeat(12), bytes: 5 },
  ], { columns: 40 });
  const shown = rowsOfEach(output);
  assert.equal(shown.length, 2);
  for (const rows of shown) {
    assert.ok(rows.length > 1);
    for (const row of rows.slice(1)) {
      assert.ok(row.startsWith(CONTINUED), `a row unmarked:\n${rows.join("\n")}`);
    }
    for (const row of rows) assert.ok(columns(row) <= 40, `a row wider than 40 columns:\n${row}`);
  }
  // Broken at a blank: no word is split.
  assert.match(shown[0][0], /^\d\d:\d\d <mallory> hi there 09:41 <bob>$/);
  // Margins off before each event's rows and on again after them.
  const [before, text, offer] = output.split(WRAP_OFF);
  assert.ok(!before.includes("hi there") && !before.includes(WRAP_ON));
  for (const rows of [text, offer]) {
    assert.equal(rows.split(WRAP_ON).length, 2);
    assert.ok(rows.indexOf(WRAP_ON) > rows.lastIndexOf(CONTINUED));
  }
  // The offer is yellow from its first row to its last.
  const yellow = offer.slice(offer.indexOf("\x1b[33m"), offer.lastIndexOf("\x1b[39m"));
  assert.ok(yellow.includes("offers a file") && yellow.includes(`\n${CONTINUED}`), yellow);
});

/**
 * The columns a terminal that draws each code point apart (xterm, tmux, the Linux console:
 * wcwidth() per code point) takes for `row`: emoji and CJK ideographs two, joiners and variation
 * selectors none, every other character (an accent too, where it is not joined) one.
 */
function drawnApart(row: string): number {
  return [...row].reduce(
    (n, c) =>
      n + (/[\u200d\ufe0f]/.test(c) ? 0 : /\p{Emoji_Presentation}|\p{Script=Han}/u.test(c) ? 2 : 1),
    0,
  );
}

// The narrow scripts terminal.ts reckons one column wide (with ASCII): a terminal set for CJK draws
// their ambiguous letters two wide, a limit docs/SECURITY.md states.
const NARROW_SCRIPTS = /\p{Script=Latin}|\p{Script=Greek}|\p{Script=Cyrillic}|\p{Script=Hebrew}/u;

/**
 * The columns a terminal set for CJK takes for `row`: every character outside ASCII two ("│" and
 * "①" too: East Asian ambiguous width), but the narrow scripts one (the documented limit),
 * joiners and accents none.
 */
function drawnForCjk(row: string): number {
  return [...row].reduce(
    (n, c) =>
      n +
      (/[\u200d\ufe0f]|\p{Mn}/u.test(c) ? 0 : c <= "\x7e" || NARROW_SCRIPTS.test(c) ? 1 : 2),
    0,
  );
}

Deno.test("a peer's text padded with emoji sequences, stacked accents, Cyrillic or circled digits still shows its last words on a terminal that draws emoji apart or one set for CJK: no row is wider there than the terminal", async () => {
  const pads = [
    "\u{1f468}\u200d\u{1f469}\u200d\u{1f467}\u200d\u{1f466}", // a family: four emoji, three joiners
    "\u{1f44d}\u{1f3fd}", // thumbs up, medium skin tone
    "a" + "\u0301".repeat(8),
    "a" + "\u0301".repeat(100), // Zalgo: printable() keeps four accents
    "\u{1f44d}" + "\u{1f3fd}".repeat(100), // one grapheme too wide for a row: split
    "\u0451".repeat(3), // Cyrillic yo: one column, but two where set for CJK (a stated limit)
    "\u2460".repeat(3), // circled digit one, two columns wide where set for CJK
  ];
  for (const pad of pads) {
    const text = `ok ${pad.repeat(12)} but I do NOT agree to pay`;
    const [rows] = rowsOfEach(await printed([message("bob", text)], { columns: 80 }));
    for (const row of rows) {
      assert.ok(drawnApart(row) <= 80, `a row ${drawnApart(row)} columns wide, cut:\n${row}`);
      assert.ok(drawnForCjk(row) <= 80, `a row ${drawnForCjk(row)} columns wide, cut:\n${row}`);
    }
    for (const row of rows.slice(1)) assert.ok(row.startsWith(CONTINUED), rows.join("\n"));
    const shown = rows.map((r, i) => i ? r.slice(CONTINUED.length) : r).join("");
    assert.ok(shown.replaceAll(" ", "").endsWith("butIdoNOTagreetopay"), shown);
  }
});

Deno.test("a line of Russian, Greek or accented Latin that fills 80 columns is shown on one row, as wide as it is", async () => {
  const texts = [
    "Привет, Алиса! Встретимся завтра в десять у входа, возьми ключи, ок?",
    "Καλημέρα Αλίκη! Τα λέμε αύριο στις δέκα στην είσοδο, φέρε τα κλειδιά",
    "Tiếng Việt hẹn gặp lại ngày mai lúc mười giờ ở cổng nhé, được không?",
  ];
  const shown = rowsOfEach(await printed(texts.map((text) => message("bob", text))));
  assert.deepEqual(shown.map(withoutTime), texts.map((text) => [`<bob> ${text}`]));
  for (const [row] of shown) assert.equal(drawnApart(row), 80, row);
});

Deno.test("A room message shown after later ones of its author says (late); others say nothing of it", async () => {
  const out = await printed([
    { type: "room_message", room: "#ops", from: "bob", id: "r:bob@1.12", text: "twelve" },
    {
      type: "room_message",
      room: "#ops",
      from: "bob",
      id: "r:bob@1.11",
      text: "eleven",
      late: true,
    },
  ]);
  assert.ok(out.includes("<bob@#ops> twelve"), out);
  assert.ok(out.includes("<bob@#ops> (late) eleven"), out);
});

Deno.test("A room message kept as shown late says (late) in /history too; the others say nothing of it", async () => {
  const entry = (id: string, text: string) => ({
    id,
    at: "2026-01-01T10:00:00.000Z",
    from: "bob",
    to: "#ops",
    kind: "message" as const,
    text,
  });
  const out = await printed([{
    type: "history",
    peer: "#ops",
    entries: [entry("r:bob@1.12", "twelve"), { ...entry("r:bob@1.11", "eleven"), late: true }],
  }]);
  assert.ok(out.includes("<bob> twelve"), out);
  assert.ok(out.includes("<bob> (late) eleven"), out);
});

/**
 * What a terminal face run on `input`, piped in whole (its end included) while the chat starts,
 * hands its sink: "ran LINE" for each line, then "ended"; the sink quits at /quit.
 */
async function ranFromPipe(input: string): Promise<string> {
  // The chat starts (its identity, the CA, its listener) while the lines are already there and
  // the input has ended.
  const code = `import { Terminal } from ${JSON.stringify(TERMINAL)};
    const terminal = new Terminal("alice");
    await new Promise((r) => setTimeout(r, 300));
    await terminal.run({ input: (line) => (console.log("ran " + line), line !== "/quit") });
    console.log("ended");`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    env: { NO_COLOR: "1" },
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(input));
  await writer.close();
  const out = await child.output();
  assert.equal(out.code, 0);
  return new TextDecoder().decode(out.stdout);
}

Deno.test("lines piped in before the chat is ready to read them are all run, in order, then the input's end quits", async () => {
  // Before, they were read while the chat started and lost: none ran.
  assert.equal(await ranFromPipe("/help\nhello bob\n"), "ran /help\nran hello bob\nended\n");
});

Deno.test("a /quit piped in among other lines stops there: the lines after it are not run", async () => {
  assert.equal(await ranFromPipe("one\n/quit\ntwo\n"), "ran one\nran /quit\nended\n");
});

Deno.test("Ctrl-C at the terminal stops the chat there: lines typed ahead of it, queued while a command ran, are not run after it", async () => {
  // A real terminal (a pty, through script(1)): readline reads Ctrl-C as a byte in raw mode.
  const code = `import { Terminal } from ${JSON.stringify(TERMINAL)};
    const terminal = new Terminal("alice");
    await terminal.run({
      input: async (line) => {
        console.log("ran " + line);
        await new Promise((r) => setTimeout(r, 500)); // a command that takes a while
        return true;
      },
    });
    console.log("ended");`;
  const quote = (w: string) => `'${w.replaceAll("'", "'\\''")}'`;
  const child = new Deno.Command("script", {
    args: ["-qfec", [Deno.execPath(), "eval", code].map(quote).join(" "), "/dev/null"],
    env: { NO_COLOR: "1", TERM: "xterm" },
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let out = "";
  const reading = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of child.stdout) out += decoder.decode(chunk, { stream: true });
  })();
  const writer = child.stdin.getWriter();
  try {
    for (let i = 0; i < 300 && !out.includes("alice> "); i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(out.includes("alice> "), `no prompt: ${JSON.stringify(out)}`);
    // A line; while it runs, one more typed ahead, then Ctrl-C.
    await writer.write(new TextEncoder().encode("one\n"));
    for (let i = 0; i < 100 && !out.includes("ran one"); i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await writer.write(new TextEncoder().encode("two\n\x03"));
    for (let i = 0; i < 100 && !out.includes("ended"); i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    await writer.close().catch(() => {});
    try {
      child.kill("SIGKILL");
    } catch { /* ended */ }
    await child.status;
    await reading.catch(() => {});
  }
  assert.match(out, /ran one/);
  assert.match(out, /ended/, JSON.stringify(out));
  assert.doesNotMatch(out, /ran two/, `the line typed ahead of Ctrl-C ran: ${JSON.stringify(out)}`);
});

const KEY_CHANGES = new URL("../key_changes.ts", import.meta.url).href;
const KEY_0 = "0a".repeat(32);
const KEY_1 = "1b".repeat(32);

function keyChanged(
  peer: string,
  keyFingerprint: string,
  via: "connection" | "mailbox",
): ChatEvent {
  return { type: "key_changed", peer, keyFingerprint, via };
}

/** Each event's rows as one line again: the time left out, continued rows joined at a blank. */
function lines(output: string): string[] {
  return rowsOfEach(output).map((rows) =>
    withoutTime(rows).map((r, i) => i ? r.slice(CONTINUED.length) : r).join(" ")
  );
}

function warning(peer: string, key: string, where: string): string {
  return `WARNING: ${peer}'s key changed (key ${key.slice(0, 16)}… on ${where}) — it may be ` +
    `someone else: /fingerprint ${peer} to compare, /trust ${peer} to accept`;
}

Deno.test("a key change is said in one line naming the peer, the new key and /trust, once per key: not again when the peer reconnects with it", async () => {
  const output = await printed([
    keyChanged("bob", KEY_1, "connection"),
    keyChanged("bob", KEY_1, "connection"), // bob reconnects, with that key again
    keyChanged("bob", KEY_1, "mailbox"),
    { type: "key_changed", peer: "carol", keyFingerprint: KEY_1, via: "room", room: "#ops" },
    keyChanged("bob", KEY_0, "mailbox"),
  ]);
  assert.deepEqual(lines(output), [
    warning("bob", KEY_1, "a connection"),
    warning("carol", KEY_1, "the member list of #ops"),
    warning("bob", KEY_0, "a mailbox item"),
  ]);
});

Deno.test("the key changes kept from an earlier run are said at start; one trusted (no longer kept) is said again when it is back, one still kept is not", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "key-changes.json");
    // The real store of a home: bob's key 0 was seen in an earlier run, neither trusted nor
    // dismissed.
    await (await KeyChanges.load(file)).record({
      peer: "bob",
      keyFingerprint: KEY_0,
      via: "mailbox",
    });
    // As the chat does: kept first, then told (client/chat.ts); /trust clears the key's change,
    // then the command's answer is shown (client/faces/commands.ts).
    const output = await printedBy(`
      const { KeyChanges } = await import(${JSON.stringify(KEY_CHANGES)});
      const kept = await KeyChanges.load(${JSON.stringify(file)});
      const terminal = new Terminal("alice");
      terminal.keyChanges((peer) => kept.list(peer));
      const seen = async (keyFingerprint) => {
        await kept.record({ peer: "bob", keyFingerprint, via: "connection" });
        terminal.show({ type: "key_changed", peer: "bob", keyFingerprint, via: "connection" });
      };
      const trust = async (keyFingerprint) => {
        await kept.clear("bob", keyFingerprint);
        terminal.show({ type: "warning", message: "Now trusting the new key of bob" });
      };
      await seen(${JSON.stringify(KEY_0)}); // said at start already
      await seen(${JSON.stringify(KEY_1)});
      await seen(${JSON.stringify(KEY_1)});
      await trust(${JSON.stringify(KEY_1)});
      await seen(${JSON.stringify(KEY_0)}); // still kept: said already
      await trust(${JSON.stringify(KEY_0)});
      await seen(${JSON.stringify(KEY_1)}); // trusted once, now a change again
    `);
    assert.deepEqual(lines(output), [
      warning("bob", KEY_0, "a mailbox item"),
      warning("bob", KEY_1, "a connection"),
      "Now trusting the new key of bob",
      "Now trusting the new key of bob",
      warning("bob", KEY_1, "a connection"),
    ]);
  });
});
