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
