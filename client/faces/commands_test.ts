import assert from "node:assert/strict";
import { E2eError } from "../../lib/errors.ts";
import { type Command, HELP, parseCommand } from "./commands.ts";

const connected = { isPeer: (name: string) => name === "bob" };

Deno.test("parseCommand() turns every command of /help into a typed command", () => {
  const cases: Array<[string, Command]> = [
    ["/chat bob", { op: "invite", name: "bob" }],
    ["/accept alice", { op: "accept", name: "alice" }],
    ["hello there", { op: "send", text: "hello there" }],
    ["/msg bob hi  there", { op: "send", name: "bob", text: "hi  there" }],
    ["/file notes.pdf", { op: "file", path: "notes.pdf" }],
    ["/file bob my notes.pdf", { op: "file", name: "bob", path: "my notes.pdf" }],
    ["/file my notes.pdf", { op: "file", path: "my notes.pdf" }],
    ["/get lz3k-4", { op: "get", id: "lz3k-4" }],
    ["/get bob lz3k-4", { op: "get", name: "bob", id: "lz3k-4" }],
    ["/decline 7", { op: "decline", id: "7" }],
    ["/decline bob 7", { op: "decline", name: "bob", id: "7" }],
    ["/peers", { op: "peers" }],
    ["/fingerprint bob", { op: "fingerprint", name: "bob" }],
    ["/verify bob", { op: "verify", name: "bob" }],
    ["/trust bob", { op: "trust", name: "bob" }],
    ["/close bob", { op: "close", name: "bob" }],
    ["/history bob", { op: "history", name: "bob", limit: 20 }],
    ["/history bob 5", { op: "history", name: "bob", limit: 5 }],
    ["/help", { op: "help" }],
    ["/quit", { op: "quit" }],
    ["", { op: "none" }],
    ["   ", { op: "none" }],
    ["/quit\r", { op: "quit" }],
    ["/room create #team", { op: "room", action: "create", room: "#team" }],
    ["/room invite #team bob", { op: "room", action: "invite", room: "#team", name: "bob" }],
    ["/room join #team", { op: "room", action: "join", room: "#team" }],
    ["/room join #team bob", { op: "room", action: "join", room: "#team", name: "bob" }],
    ["/room decline #team", { op: "room", action: "decline", room: "#team" }],
    ["/room decline #team bob", { op: "room", action: "decline", room: "#team", name: "bob" }],
    ["/room leave #team", { op: "room", action: "leave", room: "#team" }],
    ["/room remove #team bob", { op: "room", action: "remove", room: "#team", name: "bob" }],
    ["/room members #team", { op: "room", action: "members", room: "#team" }],
    ["/rooms", { op: "rooms" }],
    ["/msg #team hi all", { op: "send", name: "#team", text: "hi all" }],
    ["/history #team 5", { op: "history", name: "#team", limit: 5 }],
  ];
  for (const [line, command] of cases) {
    assert.deepEqual(parseCommand(line, connected), command, line);
  }
  for (const command of HELP.split("\n").map((l) => l.split(" ")[0]).filter((c) => c[0] === "/")) {
    const line = command === "/room" ? "/room invite #team bob" : `${command} bob 3`;
    assert.doesNotThrow(() => parseCommand(line, connected), command);
  }
});

Deno.test("parseCommand() refuses what is not a command with ERR_USAGE or ERR_NAME_INVALID", () => {
  const cases: Array<[string, string, RegExp]> = [
    ["/chat", "ERR_USAGE", /\/chat needs NAME/],
    ["/msg bob", "ERR_USAGE", /\/msg needs NAME TEXT/],
    ["/file", "ERR_USAGE", /\/file needs PATH/],
    ["/chat Bob!", "ERR_NAME_INVALID", /Bob!/],
    ["/msg ../x hi", "ERR_NAME_INVALID", /\.\.\/x/],
    ["/history bob 0", "ERR_USAGE", /N is a number/],
    ["/history bob many", "ERR_USAGE", /N is a number/],
    ["/get", "ERR_USAGE", /\/get needs ID/],
    ["/decline", "ERR_USAGE", /\/decline needs ID/],
    ["/get bob 1 2", "ERR_USAGE", /\/get takes \[NAME\] ID/],
    ["/get ../x", "ERR_USAGE", /"\.\.\/x" is not a file id/],
    ["/decline Bob! 1", "ERR_NAME_INVALID", /Bob!/],
    ["/nope", "ERR_USAGE", /Unknown command "\/nope": see \/help/],
    ["/room", "ERR_USAGE", /\/room needs create, invite, join, decline, leave, remove or members/],
    ["/room shout #team", "ERR_USAGE", /Unknown \/room "shout": see \/help/],
    ["/room create team", "ERR_NAME_INVALID", /Invalid room name "team"/],
    ["/room invite #team", "ERR_USAGE", /\/room invite takes #ROOM NAME/],
    ["/room join #team bob cy", "ERR_USAGE", /\/room join takes #ROOM \[CREATOR\]/],
    ["/room leave #team bob", "ERR_USAGE", /\/room leave takes #ROOM$/],
    ["/room decline #team bob cy", "ERR_USAGE", /\/room decline takes #ROOM \[CREATOR\]/],
    ["/msg #Team hi", "ERR_NAME_INVALID", /Invalid room name "#Team"/],
  ];
  for (const [line, code, message] of cases) {
    assert.throws(() => parseCommand(line, connected), (e) => {
      assert.ok(e instanceof E2eError, line);
      assert.equal(e.code, code, line);
      assert.match(e.message, message, line);
      return true;
    });
  }
});
