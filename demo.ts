/**
 * `deno task demo`: the whole story in one command, in a temporary home that is
 * removed afterwards. A CA is created and served; alice and bob enroll with
 * invites; two client processes run the original's flow (alice asks the CA
 * for bob, bob accepts and connects) and talk over mutual TLS; the transcript
 * is printed with both fingerprints.
 *
 * Every step runs the real CLI as its own process, with the permissions its
 * `deno task` has.
 *
 * @module
 */
import { join } from "node:path";
import { randomBytes } from "node:crypto";

const ROOT = new URL(".", import.meta.url).pathname;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function say(text = ""): void {
  Deno.stdout.writeSync(encoder.encode(text + "\n"));
}

/** The permission flags of a task in deno.json, so the demo's processes get exactly those. */
async function taskFlags(task: "ca" | "client"): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json")));
  return (config.tasks[task] as string).split(" ").filter((w) => w.startsWith("--allow-"));
}

interface Proc {
  child: Deno.ChildProcess;
  lines: AsyncIterator<string>;
  stderr: string[];
}

function spawn(
  task: "ca" | "client",
  flags: string[],
  args: string[],
  env: Record<string, string>,
): Proc {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", ...flags, join(ROOT, task, "main.ts"), ...args],
    env: { ...env, NO_COLOR: "1" },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr: string[] = [];
  (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) stderr.push(chunk);
  })();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(splitLines())
    [Symbol.asyncIterator]();
  return { child, lines, stderr };
}

function splitLines(): TransformStream<string, string> {
  let pending = "";
  return new TransformStream({
    transform(chunk, controller) {
      pending += chunk;
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        controller.enqueue(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
      }
    },
    flush(controller) {
      if (pending) controller.enqueue(pending);
    },
  });
}

async function run(
  task: "ca" | "client",
  flags: string[],
  args: string[],
  env: Record<string, string>,
  stdin?: string,
): Promise<string> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", ...flags, join(ROOT, task, "main.ts"), ...args],
    env: { ...env, NO_COLOR: "1" },
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(encoder.encode(stdin));
    await w.close();
  }
  const out = await child.output();
  if (!out.success) {
    throw new Error(`deno task ${task} ${args[0]} failed:\n${decoder.decode(out.stderr)}`);
  }
  return decoder.decode(out.stdout);
}

type Event = Record<string, unknown> & { type: string };

/** `promise`, or null after `ms`; the timer never outlives the race. */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | null> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<null>((r) => (timer = setTimeout(() => r(null), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** A chat client in --json mode. */
class Client {
  readonly name: string;
  #proc: Proc;
  #seen: Event[] = [];

  constructor(name: string, proc: Proc) {
    this.name = name;
    this.#proc = proc;
  }

  async send(line: string): Promise<void> {
    const w = this.#proc.child.stdin.getWriter();
    await w.write(encoder.encode(line + "\n"));
    w.releaseLock();
  }

  /** Waits for the first event matching `match`, up to 20 s. */
  async expect(match: (e: Event) => boolean, what: string): Promise<Event> {
    const found = this.#seen.findIndex(match);
    if (found >= 0) return this.#seen.splice(found, 1)[0];
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      const next = await within(this.#proc.lines.next(), deadline - Date.now());
      if (!next || next.done) break;
      const event = JSON.parse(next.value) as Event;
      if (event.type === "error") throw new Error(`${this.name}: ${event.message}`);
      if (match(event)) return event;
      this.#seen.push(event);
    }
    throw new Error(`${this.name} did not see ${what}\n${this.#proc.stderr.join("")}`);
  }

  async quit(): Promise<void> {
    await this.send("/quit").catch(() => {});
    const status = await within(this.#proc.child.status, 5_000);
    if (!status) this.#proc.child.kill("SIGKILL");
    await this.#proc.child.stdin.close().catch(() => {});
  }
}

async function main(): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-demo-" });
  const caFlags = await taskFlags("ca");
  const clientFlags = await taskFlags("client");
  const baseEnv = { E2E_CHAT_CA_PASSPHRASE: randomBytes(18).toString("base64url") };
  const procs: Proc[] = [];
  try {
    say("e2e-chat demo — everything happens in a temporary folder:");
    say(`  ${dir}`);
    say();
    const caHome = join(dir, "ca-admin");
    say("1. The admin creates the team's CA (openssl: encrypted key, self-signed certificate)");
    say(`   $ deno task ca init --key-type ec-p256`);
    await run("ca", caFlags, ["init", "--key-type", "ec-p256", "--home", caHome], baseEnv);

    say("2. The admin starts the CA service (HTTPS, certificate issued by the CA to itself)");
    const ca = spawn("ca", caFlags, ["serve", "--port", "0", "--home", caHome], baseEnv);
    procs.push(ca);
    const url = (await ca.lines.next()).value as string;
    const fp = ((await ca.lines.next()).value as string).split(": ")[1];
    say(`   ${url}`);
    say(`   CA fingerprint (SHA-256): ${fp}`);

    say("3. The admin invites alice and bob; each joins with their own invite");
    const homes: Record<string, string> = {};
    for (const name of ["alice", "bob"]) {
      const invite = (await run("ca", caFlags, ["invite", name, "--home", caHome], baseEnv)).trim();
      say(`   $ deno task ca invite ${name}`);
      say(`     ${invite.replace(/token=.*/, "token=…")}`);
      homes[name] = join(dir, name);
      say(
        `   $ deno task client join   (as ${name}, pasting the invite at the prompt: checks the CA fingerprint, makes a key locally, enrolls)`,
      );
      // The invite goes in on stdin: on the command line, other users could read its token.
      await run("client", clientFlags, ["join", "-", "--home", homes[name]], {}, invite + "\n");
    }

    say("4. alice and bob start their chat clients (each listens for mutual TLS on 127.0.0.1)");
    const clients: Record<string, Client> = {};
    for (const name of ["alice", "bob"]) {
      const proc = spawn("client", clientFlags, ["chat", "--json", "--home", homes[name]], {});
      procs.push(proc);
      clients[name] = new Client(name, proc);
    }
    const { alice, bob } = clients;
    const ready = {
      alice: await alice.expect((e) => e.type === "ready", "ready"),
      bob: await bob.expect((e) => e.type === "ready", "ready"),
    };
    say(`   alice listens on ${ready.alice.listen}, bob on ${ready.bob.listen}`);

    say(
      "5. The original's flow: alice asks the CA for bob; bob is told at once and connects to alice",
    );
    say("   alice> /chat bob");
    await alice.send("/chat bob");
    const invited = await alice.expect((e) => e.type === "invited", "invited");
    say(`   (the CA gave alice bob's certificate: ${invited.fingerprint})`);
    await bob.expect((e) => e.type === "invite" && e.from === "alice", "the invitation");
    say("   bob sees: alice wants to chat — /accept alice");
    say("   bob> /accept alice");
    await bob.send("/accept alice");
    const atBob = await bob.expect((e) => e.type === "connected", "connected");
    const atAlice = await alice.expect((e) => e.type === "connected", "connected");
    say(
      "   Both sides checked the other's certificate: issued by our CA, not revoked, the expected name and key.",
    );
    say(`   alice sees bob's certificate   ${atAlice.fingerprint}`);
    say(`   bob sees alice's certificate   ${atBob.fingerprint}`);
    say();

    say("6. The conversation (peer to peer: the CA never sees it)");
    const lines: Array<[Client, Client, string]> = [
      [alice, bob, "Hi Bob! This goes straight to you over mutual TLS."],
      [bob, alice, "Hi Alice. And I know it's you: your certificate is pinned to our CA."],
      [alice, bob, "Let's compare safety numbers to be sure."],
    ];
    for (const [from, to, text] of lines) {
      await from.send(text);
      const got = await to.expect((e) => e.type === "message" && e.text === text, "the message");
      await from.expect((e) => e.type === "delivered", "the acknowledgement");
      say(`   <${got.from}> ${got.text}   ✓ delivered`);
    }
    await alice.send("/fingerprint bob");
    await bob.send("/fingerprint alice");
    const sa = await alice.expect((e) => e.type === "safety", "safety number");
    const sb = await bob.expect((e) => e.type === "safety", "safety number");
    say(`   safety number at alice: ${sa.number}`);
    say(
      `   safety number at bob:   ${sb.number}   ${
        sa.number === sb.number ? "(same on both sides)" : "(DIFFERENT!)"
      }`,
    );

    say();
    say("7. alice sends bob a file; bob stores it only after its SHA-256 matched");
    const file = join(dir, "notes.txt");
    await Deno.writeTextFile(
      file,
      "Meeting at 10. Bring the keys (the public ones).\n".repeat(200),
    );
    await alice.send(`/file ${file}`);
    const received = await bob.expect((e) => e.type === "file", "the file");
    say(
      `   bob received ${received.name} (${received.bytes} bytes, sha256 ${
        String(received.sha256).slice(0, 16)
      }…)`,
    );

    await alice.quit();
    await bob.quit();
    say();
    say('Done. Try it yourself: README.md, "Chat in four commands".');
  } finally {
    for (const p of procs) {
      try {
        p.child.kill("SIGTERM");
      } catch { /* already gone */ }
      await within(p.child.status, 3_000);
    }
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
