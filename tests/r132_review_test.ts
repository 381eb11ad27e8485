/**
 * r132 (attacker's review, repros only). Each test fails on main as of 6da6fc1.
 *
 * @module
 */
import assert from "node:assert/strict";
import { runCa } from "./_helpers.ts";
import { withService } from "./_service_helpers.ts";

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
