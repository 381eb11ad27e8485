/**
 * r132 (attacker's review, repros only): `client join` taking up the key `client csr` made, and
 * passphrase files. Each test fails on main as of 6da6fc1.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { parseCsr } from "../lib/csr.ts";
import { runTask } from "./_harness.ts";
import { runCa } from "./_helpers.ts";
import { assertSuccess, makeInvite, withService } from "./_service_helpers.ts";

function client(home: string, args: string[], stdin?: string) {
  return runTask("client", args, { env: { E2E_CHAT_HOME: home }, timeoutMs: 60_000, stdin });
}

Deno.test(
  "r132: Ctrl-C at the terminal chat stops it there: the lines typed ahead of it (queued while " +
    "a command ran) are not run after it",
  async () => {
    const { childEnv, ROOT, taskFlags, waitUntil } = await import("./_harness.ts");
    await withService(async (service, dir) => {
      const home = join(dir, "alice");
      const invite = await makeInvite(service.home, "alice");
      assertSuccess(await client(home, ["join", "-"], `${invite}\n`), "join");
      const deno = [Deno.execPath(), "run", ...await taskFlags("client"), "client/main.ts"];
      // A real terminal (a pty, through script(1)), as the member at the keyboard has.
      const quote = (w: string) => `'${w.replaceAll("'", "'\\''")}'`;
      const chat = new Deno.Command("script", {
        args: ["-qfec", [...deno, "chat", "--no-listen"].map(quote).join(" "), "/dev/null"],
        cwd: ROOT,
        env: childEnv({ E2E_CHAT_HOME: home, TERM: "xterm" }),
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      let out = "";
      const reading = (async () => {
        const decoder = new TextDecoder();
        for await (const chunk of chat.stdout) out += decoder.decode(chunk, { stream: true });
      })();
      const writer = chat.stdin.getWriter();
      try {
        await waitUntil(() => out.includes("alice> "), "the prompt", 30_000);
        // One keystroke burst: a command, a second one typed ahead, then Ctrl-C (raw mode: a byte
        // readline reads, which closes the chat's input).
        await writer.write(new TextEncoder().encode("/rooms\n/room create #r132\n\x03"));
        await waitUntil(() => /bye|Bye|left|quit/i.test(out), "the chat to end", 30_000).catch(
          () => {},
        );
        await new Promise((r) => setTimeout(r, 1_000));
      } finally {
        await writer.close().catch(() => {});
        try {
          chat.kill("SIGKILL");
        } catch { /* ended */ }
        await chat.status;
        await reading.catch(() => {});
        await chat.stderr.cancel().catch(() => {});
      }
      assert.doesNotMatch(
        out,
        /you are in #r132/,
        `the room typed ahead of Ctrl-C was made after it:\n${JSON.stringify(out)}`,
      );
    });
  },
);

Deno.test(
  "r132: usage mistakes exit 2 (README) in the CA too: `ca invite Bad`, a name no member can " +
    "have, as `client lookup Bad` and `client csr Bad` do now",
  async () => {
    await withService(async (service) => {
      const run = await runCa(service.home, ["invite", "Bad"]);
      assert.match(run.stderr, /Invalid name "Bad"/);
      assert.equal(run.code, 2, run.stderr);
    });
  },
);

Deno.test(
  "r132: a key csr made (and the CA signed) for alice is not certified for bob too by a join " +
    "with bob's invite in alice's home: one key, two names",
  async () => {
    await withService(async (service, dir) => {
      const home = join(dir, "alice");
      assertSuccess(await client(home, ["csr", "alice"]), "client csr alice");
      const csrPath = join(home, "id", "request.csr");
      const aliceKey = parseCsr(await Deno.readTextFile(csrPath)).keyFingerprint;
      assertSuccess(
        await runCa(service.home, [
          "sign",
          "--name",
          "alice",
          csrPath,
          "--out",
          join(dir, "a.crt"),
        ]),
        "ca sign",
      );
      // The admin hands alice the wrong invite (bob's), or alice pastes the wrong one.
      const invite = await makeInvite(service.home, "bob");
      const joined = await client(home, ["join", "-"], `${invite}\n`);
      if (joined.code !== 0) return; // refused: fine
      const whoami = JSON.parse((await client(home, ["whoami", "--json"])).stdout);
      assert.notEqual(
        whoami.keyFingerprint,
        aliceKey,
        `alice's home is now ${whoami.name}, with the key the CA certified for alice: ` +
          "nothing said the key was made for another name",
      );
    });
  },
);
