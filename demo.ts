/**
 * `deno task demo`: the whole story in one command, in a temporary home that is
 * removed afterwards. A CA is created and served; alice and bob enroll with
 * invites; two client processes run the original's flow (alice asks the CA
 * for bob, bob accepts and connects) and talk over mutual TLS; the transcript
 * is printed with both fingerprints. Then carol, who was offline, finds alice's
 * message in the CA's mailbox (sealed end to end), and, unreachable herself
 * (`--no-listen`), talks to alice through the CA's relay.
 *
 * Every step runs the real CLI as its own process, with the permissions its
 * `deno task` has.
 *
 * @module
 */
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { ChatClient, type ChatEvent, runTask, TaskProcess } from "./tests/_harness.ts";

const encoder = new TextEncoder();
/** How long the demo waits for any one step. */
const WAIT_MS = 20_000;

function say(text = ""): void {
  Deno.stdout.writeSync(encoder.encode(text + "\n"));
}

/** Runs `deno task TASK ARGS` (its permissions, from deno.json) to the end; throws when it fails. */
async function run(
  task: "ca" | "client",
  args: string[],
  env: Record<string, string>,
  stdin?: string,
): Promise<string> {
  const result = await runTask(task, args, { env, stdin });
  if (result.code !== 0) throw new Error(`deno task ${task} ${args[0]} failed:\n${result.stderr}`);
  return result.stdout;
}

/** The first event of `client` that passes `match`; an error event or a timeout names `what`. */
async function expect(
  client: ChatClient,
  match: (e: ChatEvent) => boolean,
  what: string,
): Promise<ChatEvent> {
  try {
    return await client.expect(match, WAIT_MS);
  } catch (e) {
    throw new Error(`${client.name} did not see ${what}: ${e instanceof Error ? e.message : e}`);
  }
}

async function main(): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-demo-" });
  const baseEnv = { E2E_CHAT_CA_PASSPHRASE: randomBytes(18).toString("base64url") };
  const procs: Array<TaskProcess | ChatClient> = [];
  try {
    say("e2e-chat demo — everything happens in a temporary folder:");
    say(`  ${dir}`);
    say();
    const caHome = join(dir, "ca-admin");
    say("1. The admin creates the team's CA (openssl: encrypted key, self-signed certificate)");
    say(`   $ deno task ca init --key-type ec-p256`);
    await run("ca", ["init", "--key-type", "ec-p256", "--home", caHome], baseEnv);

    say("2. The admin starts the CA service (HTTPS, certificate issued by the CA to itself)");
    const ca = await TaskProcess.start("ca", ["serve", "--port", "0", "--home", caHome], {
      env: baseEnv,
    });
    procs.push(ca);
    const [url, fp] = await ca.waitFor(
      () => {
        const fingerprint = /^CA fingerprint \(SHA-256\): ([0-9a-f]{64})$/m.exec(ca.stdout);
        return fingerprint ? [ca.stdout.split("\n")[0], fingerprint[1]] : undefined;
      },
      "the CA service's address and fingerprint",
      WAIT_MS,
    );
    say(`   ${url}`);
    say(`   CA fingerprint (SHA-256): ${fp}`);

    say("3. The admin invites alice, bob and carol; each joins with their own invite");
    const homes: Record<string, string> = {};
    for (const name of ["alice", "bob", "carol"]) {
      const invite = (await run("ca", ["invite", name, "--home", caHome], baseEnv)).trim();
      say(`   $ deno task ca invite ${name}`);
      say(`     ${invite.replace(/token=.*/, "token=…")}`);
      homes[name] = join(dir, name);
      say(
        `   $ deno task client join   (as ${name}, pasting the invite at the prompt: checks the CA fingerprint, makes a key locally, enrolls)`,
      );
      // The invite goes in on stdin: on the command line, other users could read its token.
      await run("client", ["join", "-", "--home", homes[name]], {}, invite + "\n");
    }

    say("4. alice and bob start their chat clients (each listens for mutual TLS on 127.0.0.1)");
    const clients: Record<string, ChatClient> = {};
    for (const name of ["alice", "bob"]) {
      clients[name] = await ChatClient.start({ name, home: homes[name] }, {
        readyMs: WAIT_MS,
        failOnError: true,
      });
      procs.push(clients[name]);
    }
    const { alice, bob } = clients;
    const ready = { alice: alice.ready, bob: bob.ready };
    say(`   alice listens on ${ready.alice.listen}, bob on ${ready.bob.listen}`);

    say(
      "5. The original's flow: alice asks the CA for bob; bob is told at once and connects to alice",
    );
    say("   alice> /chat bob");
    await alice.send("/chat bob");
    const invited = await expect(alice, (e) => e.type === "invited", "invited");
    say(`   (the CA gave alice bob's certificate: ${invited.fingerprint})`);
    await expect(bob, (e) => e.type === "invite" && e.from === "alice", "the invitation");
    say("   bob sees: alice wants to chat — /accept alice");
    say("   bob> /accept alice");
    await bob.send("/accept alice");
    const atBob = await expect(bob, (e) => e.type === "connected", "connected");
    const atAlice = await expect(alice, (e) => e.type === "connected", "connected");
    say(
      "   Both sides checked the other's certificate: issued by our CA, not revoked, the expected name and key.",
    );
    say(`   alice sees bob's certificate   ${atAlice.fingerprint}`);
    say(`   bob sees alice's certificate   ${atBob.fingerprint}`);
    say();

    say("6. The conversation (peer to peer: the CA never sees it)");
    const lines: Array<[ChatClient, ChatClient, string]> = [
      [alice, bob, "Hi Bob! This goes straight to you over mutual TLS."],
      [bob, alice, "Hi Alice. And I know it's you: your certificate is pinned to our CA."],
      [alice, bob, "Let's compare safety numbers to be sure."],
    ];
    for (const [from, to, text] of lines) {
      await from.send(text);
      const got = await expect(to, (e) => e.type === "message" && e.text === text, "the message");
      await expect(from, (e) => e.type === "delivered", "the acknowledgement");
      say(`   <${got.from}> ${got.text}   ✓ delivered`);
    }
    await alice.send("/fingerprint bob");
    await bob.send("/fingerprint alice");
    const sa = await expect(alice, (e) => e.type === "safety", "safety number");
    const sb = await expect(bob, (e) => e.type === "safety", "safety number");
    say(`   safety number at alice: ${sa.number}`);
    say(
      `   safety number at bob:   ${sb.number}   ${
        sa.number === sb.number ? "(same on both sides)" : "(DIFFERENT!)"
      }`,
    );

    say();
    say("7. alice offers bob a file; bob accepts it, and stores it only after its SHA-256 matched");
    const file = join(dir, "notes.txt");
    await Deno.writeTextFile(
      file,
      "Meeting at 10. Bring the keys (the public ones).\n".repeat(200),
    );
    await alice.send(`/file ${file}`);
    const offer = await bob.acceptFile("alice");
    say(`   bob was offered ${offer.name} (${offer.bytes} bytes) and said /get ${offer.id}`);
    const received = await expect(bob, (e) => e.type === "file", "the file");
    say(
      `   bob received ${received.name} (${received.bytes} bytes, sha256 ${
        String(received.sha256).slice(0, 16)
      }…)`,
    );

    say();
    say("8. carol is offline: alice writes to her anyway, through the CA's mailbox");
    say("   alice> /msg carol Welcome! We talk in the mornings.");
    await alice.send("/msg carol Welcome! We talk in the mornings.");
    const queued = await expect(alice, (e) => e.type === "queued", "queued");
    say(
      "   queued: sealed for carol's certificate and signed by alice (CMS, openssl cms); the CA holds",
    );
    say("   only ciphertext, the two names, its size, its SHA-256 and the times");
    say("   carol starts her client, unreachable from outside: --no-listen");
    const carol = await ChatClient.start({ name: "carol", home: homes.carol }, {
      args: ["--no-listen"],
      readyMs: WAIT_MS,
      failOnError: true,
    });
    procs.push(carol);
    const mail = await expect(carol, (e) => e.type === "message", "the mailbox message");
    say(`   <${mail.from}> ${mail.text}   (via ${mail.via}: opened and checked by carol alone)`);
    await expect(
      alice,
      (e) => e.type === "delivered" && e.id === queued.id,
      "the mailbox receipt",
    );
    say("   alice sees ✓ delivered: carol's signed receipt came back through the mailbox");

    say();
    say("9. carol cannot be reached, so the two meet at the CA's relay");
    say("   carol> /chat alice        alice> /accept carol");
    await carol.send("/chat alice");
    await expect(alice, (e) => e.type === "invite" && e.from === "carol", "carol's invitation");
    await alice.send("/accept carol");
    const relayed = await expect(
      alice,
      (e) => e.type === "connected" && e.peer === "carol",
      "connected to carol",
    );
    // Each side says connected once the other's hello arrived: carol writes once she has.
    await expect(carol, (e) => e.type === "connected" && e.peer === "alice", "connected to alice");
    say(
      `   connected via ${relayed.via}: the CA splices the bytes; inside, alice and carol run their own`,
    );
    say("   mutual TLS 1.3 with every check, so the CA forwards only their ciphertext");
    await carol.send("Hello from behind my NAT.");
    const hello = await expect(
      alice,
      (e) => e.type === "message" && e.from === "carol",
      "carol's message",
    );
    say(`   <${hello.from}> ${hello.text}`);

    await alice.stop();
    await bob.stop();
    await carol.stop();

    say();
    say("10. Even the CA is checked: every certificate it issued is in its append-only log");
    say("   $ deno task ca log --entries 4");
    const log = await run("ca", ["log", "--home", caHome, "--entries", "4"], baseEnv);
    for (const line of log.trimEnd().split("\n")) say(`     ${line}`);
    say(
      '   $ deno task client audit   (as bob: rebuilds the tree, looks for certificates for "bob")',
    );
    const audit = await run("client", ["audit", "--home", homes.bob], {});
    for (const line of audit.trimEnd().split("\n")) say(`     ${line}`);
    say();
    say('Done. Try it yourself: README.md, "Chat in four commands".');
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    Deno.stderr.writeSync(
      encoder.encode(`e2e-chat: error: demo failed: ${e instanceof Error ? e.message : e}\n`),
    );
    Deno.exit(1);
  }
}
