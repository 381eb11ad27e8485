/**
 * Secrets stay secret (docs/SECURITY.md "Secrets", STYLE.md habit 6), checked
 * on a whole run: a CA created and served, two invites, two `client join`s, a
 * short chat with a file — every process with a wrapper `openssl` first on
 * PATH that logs its arguments; bob's key is encrypted. Then the CA passphrase,
 * bob's key passphrase, the invite tokens, the message texts and the file's
 * content are searched for in openssl's argv,
 * the service log, every process's output and every file the run left; and
 * the modes of the private files are checked.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ChatClient, runTask } from "./_harness.ts";
import { PASSPHRASE, snapshot } from "./_helpers.ts";
import { inviteToken, Service } from "./_service_helpers.ts";
import { argvRecordingOpenssl, modeOf } from "./_hostile_helpers.ts";

const KEY_PASSPHRASE = "tulip orbit ledger 5521";

Deno.test("no passphrase, token or message text reaches openssl's argv, a log, any output it should not or any file; private files are 0600 in 0700 folders", async () => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-secrets-" });
  const procs: ChatClient[] = [];
  let service: Service | undefined;
  try {
    const { argvLog, env } = await argvRecordingOpenssl(dir);
    const caHome = join(dir, "ca-home");
    const caEnv = { ...env, E2E_CHAT_HOME: caHome, E2E_CHAT_CA_PASSPHRASE: PASSPHRASE };
    const outputs: Array<[string, string]> = [];
    const run = async (what: string, task: "ca" | "client", args: string[], e = env) => {
      const result = await runTask(task, args, { env: e });
      assert.equal(result.code, 0, `${what}: ${result.stderr}`);
      outputs.push([`${what} stderr`, result.stderr]);
      return result;
    };

    await run("ca init", "ca", ["init", "--key-type", "ec-p256"], caEnv);
    service = await Service.start(caHome, PASSPHRASE, { env });
    const invites = await Promise.all(
      ["alice", "bob"].map(async (n) =>
        (await run(`ca invite ${n}`, "ca", ["invite", n], caEnv)).stdout.trim()
      ),
    );
    const tokens = invites.map(inviteToken);
    const homes = [join(dir, "alice"), join(dir, "bob")];
    // bob's key is encrypted: its passphrase too must stay out of argv, logs, outputs and files.
    const bobEnv = { ...env, E2E_CHAT_PASSPHRASE: KEY_PASSPHRASE };
    for (const [i, invite] of invites.entries()) {
      const joined = await run(
        `join ${i}`,
        "client",
        ["join", invite, "--home", homes[i]],
        i === 1 ? bobEnv : env,
      );
      outputs.push([`join ${i} stdout`, joined.stdout]);
    }

    assert.match(await Deno.readTextFile(join(homes[1], "id", "key.pem")), /ENCRYPTED PRIVATE KEY/);
    const [alice, bob] = await Promise.all(
      ["alice", "bob"].map((name, i) =>
        ChatClient.start({ name, home: homes[i] }, { env: i === 1 ? bobEnv : env })
      ),
    );
    procs.push(alice, bob);
    await alice.send("/chat bob");
    await alice.expect({ type: "invited", to: "bob" });
    await bob.expect({ type: "invite", from: "alice" });
    await bob.send("/accept alice");
    await Promise.all([
      alice.expect({ type: "connected", peer: "bob" }),
      bob.expect({ type: "connected", peer: "alice" }),
    ]);
    const toBob = "meet at the old mill, 0600, bring the ledger";
    const toAlice = "understood: the ledger, the mill, six sharp";
    const fileText = "account 4471-2290-1187, pin in the other envelope\n";
    const filePath = join(dir, "ledger.txt");
    await Deno.writeTextFile(filePath, fileText);
    await alice.send(toBob);
    await bob.expect({ type: "message", from: "alice", text: toBob });
    await bob.send(toAlice);
    await alice.expect({ type: "message", from: "bob", text: toAlice });
    await alice.send(`/file ${filePath}`);
    await bob.acceptFile("alice");
    const file = await bob.expect({ type: "file", from: "alice" });
    await alice.expect({ type: "delivered", to: "bob" });
    await Promise.all([alice.stop(), bob.stop()]);
    await service.proc.stop();

    // --- where secrets must not be
    const secrets: Array<[string, string]> = [
      ["the CA passphrase", PASSPHRASE],
      ["bob's key passphrase", KEY_PASSPHRASE],
      ["alice's token", tokens[0]],
      ["bob's token", tokens[1]],
      ["the message to bob", toBob],
      ["the message to alice", toAlice],
      ["the file's content", fileText.trim()],
    ];
    const argv = await Deno.readTextFile(argvLog);
    assert.match(argv, /-passin env:E2E_CHAT_PASSIN/, "the service did not run the wrapper");
    assert.match(argv, /^genpkey /m, "the clients did not run the wrapper");
    const places: Array<[string, string]> = [
      ["openssl's argv", argv],
      ["the service log", service.log],
      ["the service's stdout", service.proc.stdout],
      ["alice's stderr", alice.stderr],
      ["bob's stderr", bob.stderr],
      ...outputs,
    ];
    const found: string[] = [];
    for (const [where, text] of places) {
      for (const [what, secret] of secrets) {
        if (text.includes(secret)) found.push(`${what} in ${where}`);
      }
    }
    // stdout of a chat: a message shows only in the receiver's "message" event.
    for (const [who, proc, received] of [["alice", alice, toAlice], ["bob", bob, toBob]] as const) {
      for (const line of proc.stdout.split("\n")) {
        for (const [what, secret] of secrets) {
          if (!line.includes(secret)) continue;
          const event = JSON.parse(line);
          if (secret === received && event.type === "message" && event.text === secret) continue;
          found.push(`${what} in ${who}'s stdout: ${line.slice(0, 120)}`);
        }
      }
    }
    // Files: the CA's, both users', everything the run left; the received file holds its content,
    // and alice's history (0600 in a 0700 folder, checked below) the conversation; bob's history is
    // sealed (his key is encrypted), so it may hold nothing of it.
    const histories = homes.map((h, i) => join(h, "history", `${i === 0 ? "bob" : "alice"}.jsonl`));
    for (const [path, content] of await snapshot(dir)) {
      for (const [what, secret] of secrets) {
        if (!content.includes(secret)) continue;
        if (path === filePath || path === file.path) continue;
        if (path === histories[0] && [toAlice, toBob].includes(secret)) continue;
        found.push(`${what} in ${path}`);
      }
    }
    assert.deepEqual(found, [], "secrets where they must not be");

    // --- modes
    const modes: Array<[string, number]> = [
      [caHome, 0o700],
      [join(caHome, "ca"), 0o700],
      [join(caHome, "ca", "ca.key"), 0o600],
      [join(caHome, "ca", "invites.json"), 0o600],
      [join(caHome, "ca", "invites.journal"), 0o600],
      [join(caHome, "ca", "index.txt"), 0o600],
      [join(caHome, "ca", "service", "key.pem"), 0o600],
      ...homes.flatMap((h): Array<[string, number]> => [
        [h, 0o700],
        [join(h, "id"), 0o700],
        [join(h, "id", "key.pem"), 0o600],
        [join(h, "peers.json"), 0o600],
        [join(h, "history"), 0o700],
        [join(h, "log.json"), 0o600],
        [join(h, "crl-number"), 0o600],
      ]),
      ...histories.map((h): [string, number] => [h, 0o600]),
      [join(homes[1], "downloads"), 0o700],
      [String(file.path), 0o600],
    ];
    const wrong: string[] = [];
    for (const [path, mode] of modes) {
      const actual = await modeOf(path);
      if (actual !== mode) wrong.push(`${path}: ${actual.toString(8)}, not ${mode.toString(8)}`);
    }
    assert.deepEqual(wrong, [], "files with the wrong mode");
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    await service?.proc.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
