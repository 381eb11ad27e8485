import assert from "node:assert/strict";
import { decodeFrame } from "../../lib/frames.ts";
import type { ChatEvent } from "../events.ts";

const JSON_FACE = new URL("./json.ts", import.meta.url).href;

/** What the JSON face writes on stdout for `events`. */
async function written(events: ChatEvent[]): Promise<string> {
  const code = `import { flushEvents, jsonEvent } from ${JSON.stringify(JSON_FACE)};
    for (const event of ${JSON.stringify(events)}) jsonEvent(event);
    flushEvents();`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).output();
  assert.equal(out.code, 0);
  return new TextDecoder().decode(out.stdout);
}

Deno.test("a peer's text with Unicode line breaks, C1 controls and lone surrogates stays one well-formed JSON line, the surrogates as U+FFFD", async () => {
  // What a peer can send: the frame is accepted as it is.
  const frame = decodeFrame(
    '{"type":"msg","id":"1","text":"a\\u2028b\\u2029c\\u0085d\\ud800e\\udfff\\u009bf"}',
  );
  assert.ok(frame.type === "msg");
  assert.equal(frame.text, "a\u2028b\u2029c\u0085d\ud800e\udfff\u009bf");
  // A backslash in the text just before a lone surrogate.
  const text = frame.text + "\\\ud800";
  const out = await written([{ type: "message", from: "mallory", id: "1", text }]);
  // One line for every reader: no character any Unicode-aware reader breaks a line at.
  assert.equal(out.split("\n").length, 2);
  // deno-lint-ignore no-control-regex
  assert.deepEqual([...out.matchAll(/[\u2028\u2029\u0085\r\v\f\u001c-\u001e]/g)], []);
  // And well-formed: no escape of a surrogate standing alone.
  assert.ok(!/\\ud[89a-f]/i.test(out), out);
  assert.deepEqual(JSON.parse(out), {
    type: "message",
    from: "mallory",
    id: "1",
    text: "a\u2028b\u2029c\u0085d\ufffde\ufffd\u009bf\\\ufffd",
  });
});

Deno.test("the JSON face writes an ordinary event as JSON.stringify does, emoji and a backslash before ud800 included", async () => {
  const events: ChatEvent[] = [
    { type: "message", from: "bob", id: "1", text: 'hi 👨‍👩‍👧 \\ud800 \\\\ud800 "q" 你好' },
    { type: "delivered", to: "bob", id: "2" },
  ];
  assert.equal(await written(events), events.map((e) => JSON.stringify(e) + "\n").join(""));
});
