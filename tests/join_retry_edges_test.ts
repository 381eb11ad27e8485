/**
 * Edges of the join retry (docs/API.md "POST /v1/enroll", "A retry") found in
 * review: the real service, the real client processes, real openssl and TLS.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { parseCertificate } from "../lib/x509.ts";
import { readIndex } from "../ca/store.ts";
import { CaPaths } from "../ca/home.ts";
import { commitSomething } from "./_dishonest_ca.ts";
import { tree } from "./_hostile_helpers.ts";
import {
  assertSuccess,
  enrollUser,
  makeInvite,
  runClient,
  type Service,
  withService,
} from "./_service_helpers.ts";

/** The serials the CA's index holds for `name` (any status). */
async function serialsOf(service: Service, name: string): Promise<string[]> {
  return (await readIndex(new CaPaths(service.home))).filter((e) => e.name === name)
    .map((e) => e.serial);
}

Deno.test("a join that the CA committed and then answered with a 500 (its issuance log damaged) keeps its key, and the join run again once the log is repaired gets that certificate", async () => {
  await withService(async (service, dir) => {
    const paths = new CaPaths(service.home);
    await enrollUser(service, "bob"); // the log has entries and a checkpoint
    const invite = await makeInvite(service.home, "alice");
    const size = (await Deno.stat(paths.logEntries)).size;
    // Four bytes that are no record: the commit's log append after the index line refuses them.
    await Deno.writeFile(paths.logEntries, new Uint8Array(4), { append: true });
    const home = join(dir, "alice");
    const failed = await runClient(home, ["join", invite]);
    assert.notEqual(failed.code, 0, failed.stdout);
    assert.match(failed.stderr, /^e2e-chat: error: The CA refused: Internal error$/m);
    await service.waitForLog(/ POST \/v1\/enroll 500 /);
    const [serial] = await serialsOf(service, "alice");
    assert.ok(serial, "the CA committed before its log failed");
    // The CA may have issued (a 5xx is no refusal): the key is all that can claim it.
    assert.deepEqual(await tree(home), ["joining/", "joining/identity.json", "joining/key.pem"]);
    const key = await Deno.readTextFile(join(home, "joining", "key.pem"));

    // The operator repairs the log; the next commit brings it level with the database.
    await Deno.truncate(paths.logEntries, size);
    await commitSomething(service);
    const retried = await runClient(home, ["join", invite]);
    assertSuccess(retried, "the join run again");
    const cert = parseCertificate(await Deno.readTextFile(join(home, "id", "cert.pem")));
    assert.equal(cert.serial, serial);
    assert.equal(await Deno.readTextFile(join(home, "id", "key.pem")), key);
    assert.deepEqual(await serialsOf(service, "alice"), [serial]);
  });
});
