/**
 * Member names that look like host names (issue #15, docs/SECURITY.md §2):
 * `ca sign --name localhost` once gave a certificate that curl accepted for
 * `https://localhost` with the team CA. Dotted names, IPv4 look-alikes and
 * reserved names are now refused by the CLI, invites and the CA service.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { makeCsr, runCa, withTempDir } from "./_helpers.ts";
import { assertCliError } from "./_hostile_helpers.ts";
import { assertSuccess, initCa } from "./_service_helpers.ts";

const HOST_LIKE = ["localhost", "example.com", "127.0.0.1", "2130706433", "0x7f000001", "test"];

Deno.test("ca sign and ca invite refuse names a host could be reached by, and issue nothing for them", async () => {
  await withTempDir(async (dir) => {
    const home = join(dir, "ca-home");
    await initCa(home);
    for (const name of HOST_LIKE) {
      const csrFile = join(dir, `${name}.csr`);
      await Deno.writeTextFile(csrFile, (await makeCsr(name)).csr);
      const signed = await runCa(home, ["sign", "--name", name, csrFile]);
      assertCliError(signed, `ca sign --name ${name}`);
      assert.match(
        signed.stderr,
        new RegExp(`^e2e-chat: error: Invalid name "${name}"`),
        signed.stderr,
      );
      const invited = await runCa(home, ["invite", name]);
      assertCliError(invited, `ca invite ${name}`);
    }
    const list = await runCa(home, ["list", "--json"]);
    assertSuccess(list, "ca list");
    for (const name of HOST_LIKE) assert.ok(!list.stdout.includes(`"${name}"`), list.stdout);
    // A plain member name still signs.
    const csrFile = join(dir, "alice.csr");
    await Deno.writeTextFile(csrFile, (await makeCsr("alice")).csr);
    assertSuccess(await runCa(home, ["sign", "--name", "alice", csrFile]), "ca sign --name alice");
  });
});
