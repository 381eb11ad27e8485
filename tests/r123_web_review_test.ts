/**
 * Attacker's review r123 (repros only, no product change), in a real browser: Debian's
 * `chromium` driven by playwright-core, a real `client web` process, a real CA service, and
 * mailbox items sealed and signed by hand with real certificates of the CA.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { encodeItem, newItemId, seal } from "../lib/cms.ts";
import {
  invitePeer,
  joinUser,
  type Scenario,
  type Scene,
  sendFromPage,
  startChat,
  type User,
  waitUntil,
  webTest,
} from "./_browser.ts";

/** `from` seals `text` to `to` and posts it to `to`'s mailbox, as a member's client would. */
async function postMessage(
  scene: Scene,
  from: User,
  to: User,
  text: string,
  { sent = new Date() }: { sent?: Date } = {},
): Promise<void> {
  const [cert, key] = await Promise.all([
    Deno.readTextFile(from.certPath),
    Deno.readTextFile(from.keyPath),
  ]);
  const der = await seal(
    encodeItem({
      id: newItemId(),
      from: from.name,
      to: to.name,
      kind: "message",
      sent,
      payload: new TextEncoder().encode(text),
    }),
    {
      key: { path: from.keyPath },
      signerCert: cert,
      recipientCert: await Deno.readTextFile(to.certPath),
    },
  );
  const posted = await scene.service.request(`/v1/mailbox/${to.name}`, {
    method: "POST",
    body: der,
    headers: { "content-type": "application/cms" },
    cert,
    key,
  });
  assert.equal(posted.status, 200, posted.body);
}

/**
 * Someone with a new key for bob (a re-enrolment, a stolen invite) does not call alice: they
 * write to her mailbox while bob is offline. Her client holds the item back ("its key
 * changed"), but the page keeps that key change only as one notice among the last five, not on
 * bob's conversation: mallory's five refused items push it out, and after a reload nothing on
 * the page says bob's key changed.
 */
async function mailboxKeyChange(scene: Scene): Promise<void> {
  const [alice, bobOld, mallory] = await scene.join("alice-mk", "bob-mk", "mallory-mk");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  const bob1 = await scene.json(bobOld);
  await startChat(page, alice, bob1);
  await bob1.stop();
  await page.getByRole("button", { name: /bob-mk offline/ }).waitFor();
  const bobNew = await joinUser(scene.service, "bob-mk", join(scene.dir, "bob-mk-new"));
  await postMessage(scene, bobNew, alice, "it's me, bob, on a new laptop: send the codes here");
  const notices = page.locator("#notices li");
  await notices.filter({ hasText: "its key changed" }).waitFor({ timeout: 40_000 });
  // mallory's five items dated two days ahead are refused, each with a notice.
  for (let i = 0; i < 5; i++) {
    await postMessage(scene, mallory, alice, `x${i}`, {
      sent: new Date(Date.now() + 2 * 86_400_000),
    });
  }
  await waitUntil(
    async () => (await notices.filter({ hasText: "mallory-mk" }).count()) >= 5,
    "five warnings",
    40_000,
  );
  await page.reload();
  await page.getByRole("heading", { name: alice.name, exact: true, level: 1 }).waitFor();
  await notices.filter({ hasText: "mallory-mk" }).first().waitFor();
  // The key change must still be on bob's conversation, as one seen on a connection is.
  const marked = await page.getByRole("button", { name: /bob-mk offline key changed/ }).count();
  const anywhere = await page.getByText(/key (of "?bob-mk"? )?changed/i).count();
  assert.ok(
    marked === 1,
    `bob-mk's key change (mailbox) is not on his conversation after a reload; ` +
      `${anywhere} mention(s) of it left on the page`,
  );
}

/**
 * Someone with a new key for bob calls alice and leaves: the page marks bob's conversation
 * "key changed" until alice trusts a new key or dismisses it. A restart of alice's client (she
 * closes it for the night) takes the mark away without either: the key change is kept in the
 * page server's memory only, and nothing else on disk says it happened.
 */
async function keyChangeAfterRestart(scene: Scene): Promise<void> {
  const [alice, bobOld] = await scene.join("alice-kr", "bob-kr");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  const bob1 = await scene.json(bobOld);
  await startChat(page, alice, bob1);
  await sendFromPage(page, "see you tomorrow"); // the conversation is in the history
  await bob1.stop();
  await page.getByRole("button", { name: /bob-kr offline/ }).waitFor();
  const bobNew = await joinUser(scene.service, "bob-kr", join(scene.dir, "bob-kr-new"));
  const bob2 = await scene.json(bobNew);
  await invitePeer(page, alice, bob2);
  await page.getByRole("alert").filter({ hasText: "key of bob-kr changed" }).waitFor();
  await bob2.stop();
  await page.getByRole("button", { name: /bob-kr offline key changed/ }).waitFor();
  // alice's client stops and starts again; she opens her page.
  await page.context().close();
  await web.stop();
  const again = await scene.web(alice);
  const page2 = await scene.page(again);
  await page2.getByRole("heading", { name: alice.name, exact: true, level: 1 }).waitFor();
  await page2.getByRole("button", { name: /bob-kr offline/ }).waitFor();
  assert.equal(
    await page2.getByRole("button", { name: /bob-kr offline key changed/ }).count(),
    1,
    "bob-kr's key change, neither trusted nor dismissed, is gone after a restart of the client",
  );
}

const SCENARIOS: Scenario[] = [
  [
    "r123: a key change neither trusted nor dismissed is still on the peer's conversation after the client restarts",
    keyChangeAfterRestart,
  ],
  [
    "r123: a key change seen on a mailbox item stays on the peer's conversation, like one seen on a connection, after five other warnings and a reload",
    mailboxKeyChange,
  ],
];

await webTest("r123: web face against a peer's new key (mailbox, restart)", SCENARIOS);
