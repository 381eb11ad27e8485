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
  type ChatClient,
  invitePeer,
  joinUser,
  type Scenario,
  type Scene,
  sendFromPage,
  startChat,
  timeline,
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

/**
 * alice leaves mallory's #team and joins carol's, another room of that name. Without a reload,
 * the page's #team conversation still shows mallory's messages among carol's room's: a payment
 * mallory "approved" reads as said in carol's room. (Only a reload or another tab reads the
 * history, which keeps the rooms apart since d2fdec0.)
 */
async function roomOfThatNameLive(scene: Scene): Promise<void> {
  const [alice, mallory, carol] = await scene.join("alice-rl", "mallory-rl", "carol-rl");
  const web = await scene.web(alice);
  const [malloryChat, carolChat] = await Promise.all([scene.json(mallory), scene.json(carol)]);
  const page = await scene.page(web);
  const cards = page.getByRole("region", { name: "Invitations" }).getByRole("listitem");
  const joinRoomOf = async (creator: ChatClient) => {
    await creator.send("/room create #team");
    await creator.expect({ type: "room_joined", room: "#team" });
    await creator.send(`/room invite #team ${alice.name}`);
    await cards.filter({ hasText: `${creator.name} wants to chat` })
      .getByRole("button", { name: "Accept", exact: true }).click();
    const card = cards.filter({ hasText: `${creator.name} invites you to #team` });
    await card.getByRole("button", { name: "Join", exact: true }).click();
    await creator.expect({
      type: "room_member",
      room: "#team",
      name: alice.name,
      change: "joined",
    });
    await page.getByRole("button", { name: "#team room", exact: true }).waitFor();
  };
  await joinRoomOf(malloryChat);
  await page.getByRole("button", { name: "#team room", exact: true }).click();
  await malloryChat.send("/msg #team approved: pay the 9,800 EUR to DE00 MALLORY today");
  await timeline(page).getByText("approved: pay the 9,800 EUR").waitFor();
  const box = page.getByRole("textbox", { name: "Message", exact: true });
  await box.fill("/leave");
  await box.press("Enter");
  await page.getByRole("button", { name: "#team room, left", exact: true }).waitFor();

  await joinRoomOf(carolChat);
  await page.getByRole("button", { name: "#team room", exact: true }).click();
  await carolChat.send("/msg #team welcome to carol's #team");
  await timeline(page).getByText("welcome to carol's #team").waitFor();
  assert.equal(
    await timeline(page).getByText("approved: pay the 9,800 EUR").count(),
    0,
    "carol's #team shows mallory's message of her #team (live, no reload)",
  );
}

const SCENARIOS: Scenario[] = [
  [
    "r123: a room joined after leaving another of its name shows none of the other's messages, live too",
    roomOfThatNameLive,
  ],
  [
    "r123: a key change neither trusted nor dismissed is still on the peer's conversation after the client restarts",
    keyChangeAfterRestart,
  ],
  [
    "r123: a key change seen on a mailbox item stays on the peer's conversation, like one seen on a connection, after five other warnings and a reload",
    mailboxKeyChange,
  ],
];

await webTest(
  "r123: web face: a peer's key change (mailbox, restart) and two rooms of one name",
  SCENARIOS,
);
