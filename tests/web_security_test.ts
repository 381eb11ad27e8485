/**
 * The web face (docs/WEB.md) against a hostile peer, in a real browser: Debian's
 * `chromium` driven by playwright-core, a real `client web` process, a real CA
 * service, and peers that are a real JSON face or a raw TLS peer writing frames
 * by hand (ids and names no honest client would choose).
 *
 * Without chromium the test is skipped with a message, except under CI=true,
 * where a missing browser fails the run.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { encodeItem, newItemId, seal } from "../lib/cms.ts";
import { encodeFrame, PROTOCOL_VERSION } from "../lib/frames.ts";
import {
  invitePeer,
  joinUser,
  type Page,
  type Scenario,
  type Scene,
  sendFromPage,
  startChat,
  type User,
  waitUntil,
  webTest,
} from "./_browser.ts";
import { freePort } from "./_harness.ts";

/** Bidi controls and C0/C1 controls: none may reach the page from a peer's file name. */
// deno-lint-ignore no-control-regex
const HIDDEN = /[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c\u0000-\u001f\u007f-\u009f]/;

function timeline(page: Page) {
  return page.getByRole("log", { name: "Messages" });
}

/** "Chat with" `name` / "Start chat" on the page. */
async function invite(page: Page, name: string): Promise<void> {
  await page.getByRole("textbox", { name: "Chat with" }).fill(name);
  await page.getByRole("button", { name: "Start chat", exact: true }).click();
}

async function messageBoxReady(page: Page): Promise<void> {
  await page.getByRole("textbox", { name: "Message", exact: true }).and(page.locator(":enabled"))
    .waitFor();
}

/**
 * `from` seals `text` to `to` by hand, claiming it was sent at `sent` (and addressed to
 * `addressedTo`, by default `to`), and posts it to `to`'s mailbox: what a member's own client
 * would refuse to write.
 */
async function postMessage(
  scene: Scene,
  from: User,
  to: User,
  text: string,
  { sent = new Date(), addressedTo = to.name }: { sent?: Date; addressedTo?: string } = {},
): Promise<void> {
  const [cert, key] = await Promise.all([
    Deno.readTextFile(from.certPath),
    Deno.readTextFile(from.keyPath),
  ]);
  const der = await seal(
    encodeItem({
      id: newItemId(),
      from: from.name,
      to: addressedTo,
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

/** A file whose announced name hides ".sh" behind 70 braille blanks, saved as "invoice.pdf .sh". */
async function paddedFile(scene: Scene): Promise<string> {
  const name = "invoice.pdf" + "\u2800".repeat(70) + ".sh";
  await Deno.mkdir(join(scene.dir, "x"), { recursive: true });
  const path = join(scene.dir, "x", name);
  await Deno.writeTextFile(path, "#!/bin/sh\necho pwned\n");
  return path;
}

// ---------------------------------------------------------------------------
// Scenarios

/**
 * A mailbox item's sending time is its sender's claim (up to a day ahead is accepted): bob's
 * "Yes, I accept." dated 23 h 58 min ahead must not move below alice's later question after a
 * reload, where it would read as his answer to it.
 */
async function claimedSendingTime(scene: Scene): Promise<void> {
  const [alice, bob] = await scene.join("alice-when", "bob-when");
  const web = await scene.web(alice);
  const b = await scene.json(bob);
  const page = await scene.page(web);
  await startChat(page, alice, b);
  await postMessage(scene, bob, alice, "Yes, I accept.", {
    sent: new Date(Date.now() + 86_280_000),
  });
  const answer = timeline(page).locator(".item.theirs", { hasText: "Yes, I accept." });
  await answer.waitFor({ timeout: 40_000 });
  await sendFromPage(page, "So you will NOT pay the 1,000 EUR?");
  const order = ["Yes, I accept.", "So you will NOT pay the 1,000 EUR?"];
  assert.deepEqual(
    (await timeline(page).locator(".item .text").allTextContents()).slice(-2),
    order,
  );
  await page.reload();
  await timeline(page).locator(".item.mine", { hasText: "NOT pay" }).waitFor();
  await answer.waitFor();
  // Arrival order, as the history file and the terminal have it.
  assert.deepEqual(
    (await timeline(page).locator(".item .text").allTextContents()).slice(-2),
    order,
  );
}

/**
 * A key change is a warning about a peer that stays on the page: its connection leaving, another
 * member's five refused items (the notices keep five) and a reload do not take it away; the user
 * dismisses it. A refused item quoting bob's name ("addressed to \"bob\"") does not write into
 * bob's status line.
 */
async function keyChangeStays(scene: Scene): Promise<void> {
  const [alice, bobOld, mallory] = await scene.join("alice-kc", "bob-kc", "mallory-kc");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  const bob1 = await scene.json(bobOld);
  await startChat(page, alice, bob1);
  await bob1.stop();
  await page.getByRole("button", { name: /bob-kc offline/ }).waitFor();
  // Someone with a new key for bob-kc (a re-enrolment, a stolen invite) calls alice, and leaves.
  const bobNew = await joinUser(scene.service, "bob-kc", join(scene.dir, "bob-kc-new"));
  const bob2 = await scene.json(bobNew);
  await invitePeer(page, alice, bob2);
  const warning = page.getByRole("alert").filter({ hasText: "key of bob-kc changed" });
  await warning.waitFor();
  await bob2.stop();
  await page.getByRole("button", { name: /bob-kc offline key changed/ }).waitFor();
  await warning.waitFor();
  const status = page.locator("#peer-status");
  const before = await status.textContent();
  await postMessage(scene, mallory, alice, "not for you", { addressedTo: bobOld.name });
  const notices = page.locator("#notices li");
  await notices.filter({ hasText: `addressed to "${bobOld.name}"` }).waitFor({ timeout: 40_000 });
  assert.equal(await status.textContent(), before);
  for (let i = 0; i < 5; i++) {
    await postMessage(scene, mallory, alice, `x${i}`, {
      sent: new Date(Date.now() + 2 * 86_400_000),
    });
  }
  await waitUntil(
    async () => (await notices.filter({ hasText: "mallory-kc" }).count()) >= 5,
    "five warnings",
    40_000,
  );
  await page.reload();
  await page.getByRole("heading", { name: alice.name, exact: true, level: 1 }).waitFor();
  await notices.filter({ hasText: "mallory-kc" }).first().waitFor();
  await page.getByRole("button", { name: /bob-kc offline key changed/ }).click();
  await warning.waitFor();
  await page.getByRole("button", { name: "Dismiss warning" }).click();
  await warning.waitFor({ state: "hidden" });
  // Dismissed for every tab: a reload does not bring it back.
  await page.reload();
  await notices.filter({ hasText: "mallory-kc" }).first().waitFor();
  assert.equal(await page.getByText("key changed").count(), 0);
  assert.equal(await page.locator("#key-change").isHidden(), true);
}

/** An offer card names the file by the name it would be saved under, and so after a reload. */
async function offerNameAfterReload(scene: Scene): Promise<void> {
  const [alice, bob] = await scene.join("alice-on", "bob-on");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  const b = await scene.json(bob);
  await startChat(page, alice, b);
  await b.send(`/file ${await paddedFile(scene)}`);
  const what = page.locator(".offers li p").first();
  await what.waitFor();
  assert.match(await what.textContent() ?? "", /^bob-on offers invoice\.pdf \.sh \(/);
  await page.reload();
  await page.getByRole("heading", { name: alice.name, exact: true, level: 1 }).waitFor();
  await what.waitFor();
  assert.match(await what.textContent() ?? "", /^bob-on offers invoice\.pdf \.sh \(/);
}

/** A received file is shown, and downloaded, under the name it was saved under, live and reloaded. */
async function receivedFileName(scene: Scene): Promise<void> {
  const [alice, bob] = await scene.join("alice-fn", "bob-fn");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  const b = await scene.json(bob);
  await startChat(page, alice, b);
  await b.send(`/file ${await paddedFile(scene)}`);
  const card = page.locator(".offers li").first();
  await card.getByRole("button", { name: "Accept file" }).click();
  await card.waitFor({ state: "detached" });
  await b.expect({ type: "delivered", to: alice.name });
  const saved = [...Deno.readDirSync(join(alice.home, "downloads"))].map((e) => e.name)
    .filter((n) => !n.startsWith("."));
  assert.deepEqual(saved, ["invoice.pdf .sh"]);
  for (const when of ["live", "reloaded"]) {
    if (when === "reloaded") await page.reload();
    const link = page.getByRole("link", { name: "Download invoice.pdf .sh", exact: true });
    await link.waitFor();
    assert.equal(await link.getAttribute("download"), "invoice.pdf .sh", when);
    assert.equal(
      await timeline(page).locator(".file-name").last().textContent(),
      "invoice.pdf .sh",
    );
  }
}

/**
 * A file name with a right-to-left override shows "invoice\u202Efdp.exe" as
 * "invoiceexe.pdf" — and reorders what follows it on the line (the size): the
 * consent card must show the name in its real order.
 */
async function bidiFileName(scene: Scene): Promise<void> {
  const [alice, mallory] = await scene.join("alice-bidi", "mallory-bidi");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  const m = await scene.json(mallory);
  await invite(page, mallory.name);
  await m.expect({ type: "invite", from: alice.name });
  await m.send(`/accept ${alice.name}`);
  await m.expect({ type: "connected", peer: alice.name });
  await messageBoxReady(page);

  const announced = "invoice\u202efdp.exe\u0007";
  await Deno.mkdir(join(scene.dir, "x"));
  const path = join(scene.dir, "x", announced);
  await Deno.writeTextFile(path, "MZ not really a program");
  await m.send(`/file ${path}`);
  const card = page.getByRole("listitem").filter({ hasText: "offers invoice" });
  await card.waitFor();
  const shown = await card.locator("p").first().textContent() ?? "";
  assert.doesNotMatch(shown, HIDDEN, `the offer card shows ${JSON.stringify(shown)}`);
  assert.match(shown, /offers invoicefdp\.exe \(23 B\)/);
  const notices = await page.getByRole("status").filter({ hasText: "offers a file" })
    .textContent() ?? "";
  assert.doesNotMatch(notices, HIDDEN, `the notice shows ${JSON.stringify(notices)}`);

  await card.getByRole("button", { name: "Accept file" }).click();
  const link = page.getByRole("link", { name: "Download invoicefdp.exe" });
  await link.waitFor();
  const item = timeline(page).locator(".item.theirs", { has: link });
  const itemText = await item.textContent() ?? "";
  assert.doesNotMatch(itemText, HIDDEN, `the timeline shows ${JSON.stringify(itemText)}`);
  assert.doesNotMatch(await link.getAttribute("download") ?? "", HIDDEN);
}

/**
 * Ids are chosen by the sender (docs/PROTOCOL.md §3), so a peer can reuse the id
 * of a message of ours it received, send a second message under the id of its
 * first ("I agree to pay" becoming "I never agreed"), or a message under the id of
 * its file: nothing may take the place of what was shown, in the live view or when
 * the history is loaded again; each is shown beside the other, as the terminal and
 * the history have them.
 */
/** bob (a raw peer) offers "contract.txt" as f1, alice accepts it on the page, and he sends it. */
async function sendContract(
  page: Page,
  peer: Awaited<ReturnType<Scene["raw"]>>,
): Promise<void> {
  const bytes = new TextEncoder().encode("the contract");
  peer.write(encodeFrame({
    type: "file",
    id: "f1",
    name: "contract.txt",
    size: bytes.length,
    sha256: createHash("sha256").update(bytes).digest("hex"),
  }));
  await page.getByRole("listitem").filter({ hasText: "offers contract.txt" })
    .getByRole("button", { name: "Accept file" }).click();
  await peer.expectFrame({ type: "accept", id: "f1" });
  peer.write(encodeFrame({ type: "chunk", id: "f1", data: Buffer.from(bytes).toString("base64") }));
  peer.write(encodeFrame({ type: "end", id: "f1" }));
}

async function reusedIds(scene: Scene): Promise<void> {
  const [alice, bob] = await scene.join("alice-ids", "bob-ids");
  const listen = freePort();
  const web = await scene.web(alice, ["--port", "0", "--listen", `127.0.0.1:${listen}`]);
  const page = await scene.page(web);
  await invite(page, bob.name);
  await page.getByText(`Invited ${bob.name}`).waitFor();
  const peer = await scene.raw(listen, bob);
  await peer.expectFrame({ type: "hello", v: PROTOCOL_VERSION });
  peer.write(encodeFrame({ type: "hello", v: PROTOCOL_VERSION, features: ["offer"] }));
  await messageBoxReady(page);

  await sendFromPage(page, "alice wrote this");
  const mine = await peer.expectFrame({ type: "msg", text: "alice wrote this" });
  peer.write(encodeFrame({ type: "msg", id: String(mine.id), text: "bob wrote this" }));
  await timeline(page).locator(".item.theirs", { hasText: "bob wrote this" }).waitFor();
  await timeline(page).locator(".item.mine", { hasText: "alice wrote this" }).waitFor({
    timeout: 2_000,
  });

  peer.write(encodeFrame({ type: "msg", id: "m1", text: "I agree to pay 100 EUR" }));
  await timeline(page).locator(".item.theirs", { hasText: "I agree to pay 100 EUR" }).waitFor();
  peer.write(encodeFrame({ type: "msg", id: "m1", text: "I never agreed to pay anything" }));
  await timeline(page).locator(".item.theirs", { hasText: "I never agreed" }).waitFor();
  await sendContract(page, peer);
  await page.getByRole("link", { name: "Download contract.txt" }).waitFor();
  peer.write(encodeFrame({ type: "msg", id: "f1", text: "no file was ever sent" }));
  await timeline(page).locator(".item.theirs", { hasText: "no file was ever sent" }).waitFor();

  // Live, then after the history is read again (another tab, or a reconnection).
  const tab2 = await page.context().newPage();
  await tab2.goto(web.url);
  await tab2.getByRole("button", { name: new RegExp(`${bob.name} online`) }).click();
  await timeline(tab2).locator(".item.theirs", { hasText: "no file was ever sent" }).waitFor();
  for (const shown of [page, tab2]) {
    const items = await timeline(shown).locator(".item").allTextContents();
    const expected = [
      "alice wrote this",
      "bob wrote this",
      "I agree to pay 100 EUR",
      "I never agreed to pay anything",
      "contract.txt",
      "no file was ever sent",
    ];
    assert.deepEqual(
      expected.map((text) => items.filter((i) => i.includes(text)).length),
      expected.map(() => 1),
      `${shown === page ? "live" : "reloaded"}: ${JSON.stringify(items)}`,
    );
    const repeat = items.find((i) => i.includes("I never agreed")) ?? "";
    assert.match(repeat, /same id as an earlier message from bob-ids/);
    assert.equal(items.filter((i) => i.includes("same id as")).length, 1);
    await timeline(shown).getByRole("link", { name: "Download contract.txt" }).waitFor({
      timeout: 2_000,
    });
  }
  await tab2.close();
}

/**
 * The same, when the page reads the history after the items came: a peer's items that arrive
 * while its conversation is not open, or before a tab opened it, are in the page's memory and
 * the last entries of the history, so an entry is the item with its `ref` (docs/PROTOCOL.md
 * §6), never "the nth item of an id" — that showed bob's second "m1" twice and hid his first.
 * Lines an earlier version wrote (no ref, an id repeated) are each shown once too.
 */
async function reusedIdsWhileAway(scene: Scene): Promise<void> {
  const [alice, bob, carol] = await scene.join("alice-away", "bob-away", "carol-away");
  const folder = join(alice.home, "history");
  await Deno.mkdir(folder, { mode: 0o700 });
  const old = (id: string, from: string, to: string, s: number, text: string) =>
    JSON.stringify({ t: "msg", id, at: `2026-01-01T00:00:0${s}.000Z`, from, to, text }) + "\n";
  await Deno.writeTextFile(
    join(folder, `${bob.name}.jsonl`),
    old("m0", bob.name, alice.name, 1, "old line: I owe you 5 EUR") +
      old("m0", bob.name, alice.name, 2, "old line: I owe you nothing") +
      old("a0", alice.name, bob.name, 3, "old line of mine"),
    { mode: 0o600 },
  );
  const listen = freePort();
  const web = await scene.web(alice, ["--port", "0", "--listen", `127.0.0.1:${listen}`]);
  const page = await scene.page(web);
  await invite(page, bob.name);
  await page.getByText(`Invited ${bob.name}`).waitFor();
  const peer = await scene.raw(listen, bob);
  await peer.expectFrame({ type: "hello", v: PROTOCOL_VERSION });
  peer.write(encodeFrame({ type: "hello", v: PROTOCOL_VERSION, features: ["offer"] }));
  await messageBoxReady(page);
  await sendFromPage(page, "hello bob");
  peer.write(encodeFrame({ type: "msg", id: "m1", text: "I agree to pay 100 EUR" }));
  await timeline(page).locator(".item.theirs", { hasText: "I agree to pay 100 EUR" }).waitFor();

  // alice chats with carol; a second tab opens on carol's conversation, the most recent.
  await startChat(page, alice, await scene.json(carol));
  await sendFromPage(page, "hi carol");
  const tab2 = await page.context().newPage();
  await tab2.goto(web.url);
  await timeline(tab2).locator(".item", { hasText: "hi carol" }).waitFor();

  // While no tab shows bob: m1 again, a new m2, a file f1 and a message f1.
  peer.write(encodeFrame({ type: "msg", id: "m1", text: "I never agreed to pay anything" }));
  peer.write(encodeFrame({ type: "msg", id: "m2", text: "sent while away" }));
  await sendContract(page, peer);
  peer.write(encodeFrame({ type: "msg", id: "f1", text: "no file was ever sent" }));
  const bobButton = (shown: Page, unread = "") =>
    shown.getByRole("button", { name: new RegExp(`^${bob.name} online${unread}`) });
  await bobButton(tab2, ".*4 unread").waitFor();
  // The first tab goes back to bob (its history was read) and sends; the second tab has that
  // send of ours live, and reads the history when it opens bob.
  await bobButton(page).click();
  await sendFromPage(page, "sent from the first tab");
  await timeline(tab2).locator(".item", { hasText: "hi carol" }).waitFor();
  await bobButton(tab2).click();
  await timeline(tab2).locator(".item", { hasText: "old line: I owe you 5 EUR" }).waitFor();
  // Now m2 again, to two tabs that show bob.
  peer.write(encodeFrame({ type: "msg", id: "m2", text: "sent while open" }));
  for (const shown of [page, tab2]) {
    await timeline(shown).locator(".item", { hasText: "sent while open" }).waitFor();
  }
  // And a tab opened last, which has it all from the history.
  const tab3 = await page.context().newPage();
  await tab3.goto(web.url);
  await bobButton(tab3).click();
  await timeline(tab3).locator(".item", { hasText: "sent while open" }).waitFor();

  const expected = [
    "old line: I owe you 5 EUR",
    "old line: I owe you nothing",
    "old line of mine",
    "hello bob",
    "I agree to pay 100 EUR",
    "I never agreed to pay anything",
    "sent while away",
    "contract.txt",
    "no file was ever sent",
    "sent from the first tab",
    "sent while open",
  ];
  const repeats = [
    "old line: I owe you nothing",
    "I never agreed to pay anything",
    "sent while open",
  ];
  for (
    const [shown, what] of [[page, "live"], [tab2, "opened later"], [tab3, "reloaded"]] as const
  ) {
    const items = await timeline(shown).locator(".item").allTextContents();
    assert.deepEqual(
      expected.map((text) => items.filter((i) => i.includes(text)).length),
      expected.map(() => 1),
      `${what}: ${JSON.stringify(items)}`,
    );
    assert.deepEqual(
      items.filter((i) => i.includes("same id as an earlier message from bob-away")),
      items.filter((i) => repeats.some((text) => i.includes(text))),
      `${what}: only the later of each repeated id is marked`,
    );
    assert.equal(items.filter((i) => i.includes("same id as")).length, repeats.length, what);
    await timeline(shown).getByRole("link", { name: "Download contract.txt" }).waitFor({
      timeout: 2_000,
    });
  }
  await tab2.close();
  await tab3.close();
}

/** A peer that floods a conversation: the page keeps its last 1,000 items, not every one. */
async function floodBounded(scene: Scene): Promise<void> {
  const [alice, bob] = await scene.join("alice-flood", "bob-flood");
  const listen = freePort();
  const web = await scene.web(alice, ["--port", "0", "--listen", `127.0.0.1:${listen}`]);
  const page = await scene.page(web);
  await invite(page, bob.name);
  await page.getByText(`Invited ${bob.name}`).waitFor();
  const peer = await scene.raw(listen, bob);
  await peer.expectFrame({ type: "hello", v: PROTOCOL_VERSION });
  peer.write(encodeFrame({ type: "hello", v: PROTOCOL_VERSION, features: ["offer"] }));
  await messageBoxReady(page);
  const count = 1_500;
  peer.write(
    Array.from(
      { length: count },
      (_, i) => encodeFrame({ type: "msg", id: `n${i}`, text: `#${i}.` }),
    )
      .join(""),
  );
  await timeline(page).locator(".item", { hasText: `#${count - 1}.` }).waitFor({ timeout: 30_000 });
  const shown = await timeline(page).locator(".item").count();
  assert.ok(shown >= 1_000 && shown <= 1_100, `the page shows ${shown} items`);
  assert.equal(await timeline(page).locator(".item", { hasText: "#0." }).count(), 0);
}

/**
 * Cookies are not isolated by port: two `client web` runs (two identities on one machine) open
 * in one browser must not log each other's pages out, since each page's uploads and downloads
 * carry its cookie.
 */
async function twoClientsOneBrowser(scene: Scene): Promise<void> {
  const [alice, carol] = await scene.join("alice-two", "carol-two");
  const [aliceWeb, carolWeb] = await Promise.all([scene.web(alice), scene.web(carol)]);
  const context = await scene.browser.newContext();
  try {
    const alicePage = await context.newPage();
    await alicePage.goto(aliceWeb.url);
    await alicePage.getByRole("heading", { name: alice.name, exact: true, level: 1 }).waitFor();
    const carolPage = await context.newPage();
    await carolPage.goto(carolWeb.url);
    await carolPage.getByRole("heading", { name: carol.name, exact: true, level: 1 }).waitFor();
    const status = (page: Page) =>
      page.evaluate(() => fetch("/app.js", { method: "HEAD" }).then((r) => r.status));
    assert.equal(await status(carolPage), 200, "carol's page has its session");
    assert.equal(await status(alicePage), 200, "alice's page lost its session to carol's");
    // A reload of alice's tab (its key is in sessionStorage) still reaches alice's client.
    await alicePage.reload();
    await alicePage.getByRole("heading", { name: alice.name, exact: true, level: 1 }).waitFor();
    await alicePage.getByRole("textbox", { name: "Chat with" }).waitFor();
    assert.equal(await alicePage.getByRole("alert").filter({ hasText: "open the URL" }).count(), 0);
  } finally {
    await context.close();
  }
}

/** Malformed requests from the page get an answer that says what is wrong, not a reset. */
async function malformedUpload(scene: Scene): Promise<void> {
  const [alice] = await scene.join("alice-bad");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  const answer = await page.evaluate(async () => {
    const key = sessionStorage.getItem("e2e-chat-key") ?? "";
    try {
      const r = await fetch("/upload?to=Not%20A%20Name&name=x.txt", {
        method: "POST",
        headers: { "x-e2e-chat-key": key },
        body: "hello",
      });
      return { status: r.status, body: await r.json() };
    } catch (e) {
      return { status: 0, body: String(e) };
    }
  });
  assert.deepEqual(answer, {
    status: 400,
    body: {
      error: {
        code: "ERR_NAME_INVALID",
        message: 'Invalid name "Not A Name"',
        hint: "use 1-63 characters: a-z, 0-9, '_', '-', starting with a letter or digit",
      },
    },
  });
  // Nothing was left in the uploads folder.
  assert.deepEqual(await Array.fromAsync(Deno.readDir(join(alice.home, "uploads"))), []);
}

/**
 * The printed URL followed from a web page (pasted into a web mail or notes, a terminal in the
 * browser): the navigation is cross-site, and a redirect keeps it so, so a SameSite=Strict
 * cookie set by the exchange would not come with the redirected request.
 */
async function followedFromAWebPage(scene: Scene): Promise<void> {
  const [alice] = await scene.join("alice-link");
  const web = await scene.web(alice);
  const site = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () =>
      new Response(`<!doctype html><a href="${web.url}">the chat page</a>`, {
        headers: { "content-type": "text/html; charset=utf-8" },
      }),
  );
  const context = await scene.browser.newContext();
  try {
    const page = await context.newPage();
    page.setDefaultTimeout(20_000);
    await page.goto(`http://rebind.test:${site.addr.port}/`);
    await page.getByRole("link", { name: "the chat page" }).click();
    await page.getByRole("heading", { name: alice.name, exact: true, level: 1 }).waitFor();
    await page.getByRole("textbox", { name: "Chat with" }).waitFor();
    assert.equal(page.url(), `${web.origin}/`, "the token or the key stayed in the address bar");
    assert.equal(await page.getByRole("alert").filter({ hasText: /open the URL/i }).count(), 0);
  } finally {
    await context.close();
    await site.shutdown();
  }
}

/**
 * A stopped client's port is free for any local user to take. Its session can never come back (a
 * new run has a new token), so an open tab that kept reconnecting could only reach an impostor —
 * which would get the page key as the WebSocket's subprotocol, and then drive the tab (fake
 * peers and messages) and receive what the user types. The tab says the session is over instead.
 */
async function noImpostorAfterStop(scene: Scene): Promise<void> {
  const [alice] = await scene.join("alice-stop");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  await page.getByRole("textbox", { name: "Chat with" }).waitFor();
  await web.stop();
  const heard: string[] = [];
  const impostor = Deno.serve({ hostname: "127.0.0.1", port: web.port, onListen() {} }, (r) => {
    heard.push(`${r.method} ${new URL(r.url).pathname} ${r.headers.get("sec-websocket-protocol")}`);
    if (r.headers.get("upgrade") === "websocket") {
      const { socket, response } = Deno.upgradeWebSocket(r, { protocol: "e2e-chat" });
      socket.onopen = () => socket.send(JSON.stringify({ type: "alive" }));
      return response;
    }
    return new Response("", { status: 200 });
  });
  try {
    await page.getByRole("alert").filter({ hasText: "open the URL it printed" }).waitFor();
    // Longer than the page's reconnection delay (1 s) and its stale-socket check.
    await new Promise((resolve) => setTimeout(resolve, 4_000));
    assert.deepEqual(heard.filter((h) => h.includes("key.")), [], "the page key reached another");
    assert.equal(
      await page.getByRole("alert").filter({ hasText: "open the URL it printed" }).count(),
      1,
    );
  } finally {
    await impostor.shutdown();
  }
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
 * An impostor's key for bob writes to alice's mailbox (held back), then bob calls with his real
 * new key, and alice trusts it: the impostor's key change is still said on bob's conversation
 * (trusting one key clears that key's change only).
 */
async function impostorKeyStays(scene: Scene): Promise<void> {
  const [alice, bobOld] = await scene.join("alice-ik", "bob-ik");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  const bob1 = await scene.json(bobOld);
  await startChat(page, alice, bob1);
  await bob1.stop();
  await page.getByRole("button", { name: /bob-ik offline/ }).waitFor();
  const impostor = await joinUser(scene.service, "bob-ik", join(scene.dir, "bob-ik-x"));
  await postMessage(scene, impostor, alice, "it's me, bob: send the codes here");
  await page.getByRole("button", { name: /bob-ik offline key changed/ })
    .waitFor({ timeout: 40_000 });
  const real = await joinUser(scene.service, "bob-ik", join(scene.dir, "bob-ik-new"));
  const bob2 = await scene.json(real);
  await invitePeer(page, alice, bob2);
  await page.getByRole("button", { name: "Trust new key" }).click();
  await page.getByRole("textbox", { name: "Message", exact: true }).and(page.locator(":enabled"))
    .waitFor();
  await page.getByRole("button", { name: /bob-ik online key changed/ }).waitFor();
  await waitUntil(
    async () => (await page.locator("#key-change-via").textContent()) === "a mailbox item",
    "the warning of the impostor's key change (a mailbox item)",
  );
  await page.reload();
  await page.getByRole("button", { name: /bob-ik online key changed/ }).waitFor();
}

const SCENARIOS: Scenario[] = [
  [
    "a peer's file name with bidi overrides and control characters shows in its real order on the offer card, in the notice and in the timeline",
    bidiFileName,
  ],
  [
    "a peer that reuses an id (of our message, of its own message or of its file) replaces nothing on the page, live or reloaded: both are shown, the later message marked",
    reusedIds,
  ],
  [
    "a peer's items that came while its conversation was not open are each shown once when it is opened, and the history of an earlier version too: a repeated id, a file's id on a message, our own",
    reusedIdsWhileAway,
  ],
  [
    "a peer that floods a conversation does not grow the page without end: it keeps the last 1,000 items",
    floodBounded,
  ],
  [
    "a peer's mailbox message that claims a sending time a day ahead is shown where it arrived, not moved below the user's later messages after a reload",
    claimedSendingTime,
  ],
  [
    "a peer's key change stays on the page after its connection left, five other warnings and a reload, until the user dismisses it, and a refused item quoting the peer's name leaves its status line alone",
    keyChangeStays,
  ],
  [
    "a key change seen on a mailbox item (held back) stays on the peer's conversation, like one seen on a connection, after five other warnings and a reload",
    mailboxKeyChange,
  ],
  [
    "a key change neither trusted nor dismissed is still on the peer's conversation after the client restarts",
    keyChangeAfterRestart,
  ],
  [
    "trusting a peer's real new key keeps the key change of another key, seen on a mailbox item, on the peer's conversation",
    impostorKeyStays,
  ],
  [
    "a file offer shows the name it would be saved under after a reload too, not the name the peer announced",
    offerNameAfterReload,
  ],
  [
    "a received file is shown and downloaded under the name it was saved under, live and after a reload, not the name the peer announced",
    receivedFileName,
  ],
  [
    "two clients' pages in one browser keep their own sessions (cookies are shared across ports)",
    twoClientsOneBrowser,
  ],
  [
    "an upload to a name that is not one gets 400 with the error, not a reset connection",
    malformedUpload,
  ],
  [
    "the printed URL followed from another site's page opens the chat page, and the key leaves the address bar",
    followedFromAWebPage,
  ],
  [
    "a tab whose client stopped says the session is over and never sends its key to whatever takes the port next",
    noImpostorAfterStop,
  ],
];

await webTest(
  "web face in chromium against hostile peers, a second client and malformed requests",
  SCENARIOS,
);
