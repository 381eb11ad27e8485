/**
 * Attacker's review r123 (repros only, no product change), in a real browser: Debian's
 * `chromium` driven by playwright-core, a real `client web` process, a real CA service, and
 * mailbox items sealed and signed by hand with real certificates of the CA.
 *
 * @module
 */
import assert from "node:assert/strict";
import { type ChatClient, type Scenario, type Scene, timeline, webTest } from "./_browser.ts";

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
];

await webTest(
  "r123: web face: a peer's key change (mailbox, restart) and two rooms of one name",
  SCENARIOS,
);
