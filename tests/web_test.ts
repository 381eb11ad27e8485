/**
 * The web face (`client web`, docs/WEB.md) in a real browser: Debian's
 * `chromium` driven by playwright-core, real client processes (the page's
 * client and peers on the JSON face) and a real CA service. The page is driven
 * by its accessible names, as a screen-reader user would.
 *
 * Without chromium the tests are skipped with a message, except under CI=true,
 * where a missing browser fails the run.
 *
 * @module
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { join } from "node:path";
import { makeCsr } from "./_helpers.ts";
import { encodeFrame, PROTOCOL_VERSION } from "../lib/frames.ts";
import { commitSomething, signBehindTheirBacks } from "./_dishonest_ca.ts";
import { Chat } from "../client/chat.ts";
import { WebServer } from "../client/faces/web/server.ts";
import { Identity } from "../client/identity.ts";
import {
  ChatClient,
  chromiumPath,
  invitePeer,
  joinUser,
  launchBrowser,
  type Page,
  revoke,
  type Scenario,
  type Scene,
  sendFromPage,
  sleep,
  stallClient,
  startChat,
  timeline,
  waitUntil,
  WebClient,
  webTest,
  whoami,
  withWebWorld,
} from "./_browser.ts";
import { freePort } from "./_harness.ts";

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Waits for the card of the file offered as `name` and clicks its "Accept file". */
async function acceptOnPage(page: Page, name: string): Promise<void> {
  const card = page.getByRole("listitem").filter({ hasText: `offers ${name} (` });
  await card.waitFor();
  await card.getByRole("button", { name: "Accept file" }).click();
  await card.waitFor({ state: "detached" });
}

// ---------------------------------------------------------------------------
// Scenarios

async function messagesBothWays(scene: Scene): Promise<void> {
  const shot = Deno.env.get("E2E_CHAT_WEB_SCREENSHOT");
  // For the screenshot in docs/web.png the users get their plain names.
  const [alice, bob] = await scene.join(shot ? "alice" : "alice-w", shot ? "bob" : "bob-w");
  const web = await scene.web(alice);
  const bobChat = await scene.json(bob);
  const page = await scene.page(web);
  await page.getByText(await whoami(alice).then((w) => w.fingerprint.slice(0, 4))).first()
    .waitFor();
  await startChat(page, alice, bobChat);
  await page.getByRole("button", { name: new RegExp(`${bob.name} online`) }).waitFor();

  await sendFromPage(page, "hello bob, from the page");
  const got = await bobChat.expect({ type: "message", text: "hello bob, from the page" });
  const mine = page.locator(`.item.mine[data-id="${got.id}"]`);
  await mine.locator(".state", { hasText: "delivered" }).waitFor();
  assert.match(await mine.locator(".state").textContent() ?? "", /round trip [\d.]+ ms/);

  // A tab without the page key (the address typed by hand) gets nothing but the advice.
  const bare = await page.context().newPage();
  await bare.goto(`${web.origin}/`);
  await bare.getByRole("alert").filter({ hasText: "open the URL it printed" }).waitFor();
  await bare.close();
  // A second tab opened from the printed URL sees the conversation too.
  const tab2 = await page.context().newPage();
  tab2.setDefaultTimeout(20_000);
  await tab2.goto(web.url);
  // Its snapshot has come (so its WebSocket hears what follows).
  await tab2.getByRole("button", { name: new RegExp(`${bob.name} online`) }).waitFor();
  await bobChat.send("hello alice, from the JSON face");
  await timeline(page).getByText("hello alice, from the JSON face").waitFor();
  await timeline(tab2).getByText("hello alice, from the JSON face").waitFor();
  await tab2.close();
  await bobChat.expect({ type: "delivered", to: alice.name });

  // The safety number, then "Mark verified".
  const number = page.locator("#safety-number");
  await number.waitFor();
  assert.match(await number.textContent() ?? "", /^\d{5}( \d{5}){11}$/);
  await page.getByRole("button", { name: "Mark verified" }).click();
  await page.getByText("Verified", { exact: true }).waitFor();

  // A file from the page: same SHA-256 at bob, the bar at 100 %.
  const bytes = new Uint8Array(randomBytes(3 * 1024 * 1024 + 17));
  const notes = join(scene.dir, "notes.bin");
  await Deno.writeFile(notes, bytes);
  await page.getByLabel("Send file").setInputFiles(notes);
  // bob's key is first seen on this connection: every file waits for his consent.
  await bobChat.acceptFile(alice.name);
  const file = await bobChat.expect({ type: "file", from: alice.name }, 30_000);
  assert.equal(file.name, "notes.bin");
  assert.equal(file.sha256, sha256(bytes));
  assert.equal(sha256(await Deno.readFile(String(file.path))), sha256(bytes));
  const bar = page.getByRole("progressbar", { name: "Sending notes.bin" });
  await waitUntil(async () => await bar.getAttribute("aria-valuenow") === "100", "bar at 100 %");

  // A file dropped on the conversation is sent too.
  const dropped = await page.evaluateHandle(`(() => {
    const dt = new DataTransfer();
    dt.items.add(new File(["dropped by drag and drop"], "dropped.txt", { type: "text/plain" }));
    return dt;
  })()`);
  await page.dispatchEvent("#conversation", "dragover", { dataTransfer: dropped });
  await page.getByText("Drop files to send them").waitFor();
  await page.dispatchEvent("#conversation", "drop", { dataTransfer: dropped });
  await bobChat.acceptFile(alice.name);
  const droppedFile = await bobChat.expect({ type: "file", name: "dropped.txt" });
  assert.equal(droppedFile.sha256, sha256(new TextEncoder().encode("dropped by drag and drop")));
  await page.getByText("Drop files to send them").waitFor({ state: "hidden" });

  // A file from bob: downloadable from the page with identical bytes, as an attachment.
  const theirs = new Uint8Array(randomBytes(200_000));
  const theirPath = join(scene.dir, "from-bob.bin");
  await Deno.writeFile(theirPath, theirs);
  // bob's key is verified ("Mark verified" above): a file this small comes without asking.
  await bobChat.send(`/file ${theirPath}`);
  const link = page.getByRole("link", { name: "Download from-bob.bin" });
  await link.waitFor();
  const incoming = page.getByRole("progressbar", { name: "Receiving from-bob.bin" });
  assert.equal(await incoming.getAttribute("aria-valuenow"), "100");
  const [download] = await Promise.all([page.waitForEvent("download"), link.click()]);
  assert.equal(download.suggestedFilename(), "from-bob.bin");
  const saved = join(scene.dir, "downloaded.bin");
  await download.saveAs(saved);
  assert.equal(sha256(await Deno.readFile(saved)), sha256(theirs));

  if (shot) {
    await bobChat.send("got your notes, thanks!");
    await timeline(page).getByText("got your notes, thanks!").waitFor();
    await page.screenshot({ path: shot });
  }
}

/**
 * A file offered to the page waits on a card (who, name, size) with
 * "Accept file" and "Decline file"; nothing is written before Accept; Decline
 * tells the sender; a card survives a reload.
 */
async function offerCard(scene: Scene): Promise<void> {
  const [alice, bob] = await scene.join("alice-o", "bob-o");
  const web = await scene.web(alice, ["--auto-accept", "0"]);
  const page = await scene.page(web);
  const b = await scene.json(bob);
  await startChat(page, alice, b);
  const path = join(scene.dir, "report.pdf");
  const body = new Uint8Array(randomBytes(40_000));
  await Deno.writeFile(path, body);
  const downloads = join(alice.home, "downloads");
  const files = async () => {
    const names: string[] = [];
    try {
      for await (const e of Deno.readDir(downloads)) names.push(e.name);
    } catch { /* not made yet */ }
    return names;
  };

  await b.send(`/file ${path}`);
  const offers = page.getByRole("region", { name: "Files offered to you" });
  const card = offers.getByRole("listitem").filter({ hasText: "bob-o offers report.pdf" });
  await card.waitFor();
  // Between current clients the SHA-256 comes at the end of the transfer, not with the offer.
  assert.match(await card.innerText(), /offers report\.pdf \(39\.1 KiB\)/);
  const accept = card.getByRole("button", { name: "Accept file" });
  const decline = card.getByRole("button", { name: "Decline file" });
  // The buttons say which file they answer.
  assert.match(String(await accept.getAttribute("aria-describedby")), /^offer-/);
  await sleep(500);
  assert.deepEqual(await files(), [], "written before Accept file");
  // A reload shows the card again.
  await page.reload();
  await card.waitFor();
  await decline.click();
  await card.waitFor({ state: "detached" });
  const failed = await b.expect({ type: "file_failed", direction: "out" });
  assert.match(String(failed.reason), /"alice-o" declined it: declined by the user/);
  assert.deepEqual(await files(), []);

  await b.send(`/file ${path}`);
  await card.waitFor();
  await accept.click();
  await card.waitFor({ state: "detached" });
  await b.expect({ type: "delivered", to: alice.name });
  assert.deepEqual(await files(), ["report.pdf"]);
  await offers.waitFor({ state: "hidden" });
}

async function keyChange(scene: Scene): Promise<void> {
  const [alice, bobOld] = await scene.join("alice-k", "bob-k");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  const bob1 = await scene.json(bobOld);
  await startChat(page, alice, bob1);
  await bob1.stop();
  await page.getByRole("button", { name: /bob-k offline/ }).waitFor();

  const bobNew = await joinUser(scene.service, "bob-k", join(scene.dir, "bob-k-new"));
  const bob2 = await scene.json(bobNew);
  // bob's new client is shown alice's first invitation too (the CA keeps it): invitePeer() has
  // it accept only once alice's client holds the new one.
  await invitePeer(page, alice, bob2);

  const warning = page.getByRole("alert").filter({ hasText: "changed" });
  await warning.waitFor();
  assert.ok(await page.getByRole("textbox", { name: "Message", exact: true }).isDisabled());
  // bob's message is held back: not in the page.
  await bob2.send("it is really me");
  await sleep(800);
  assert.equal(await timeline(page).getByText("it is really me").count(), 0);

  await page.getByRole("button", { name: "Trust new key" }).click();
  await warning.waitFor({ state: "hidden" });
  await sendFromPage(page, "now trusted");
  await bob2.expect({ type: "message", text: "now trusted" });
  await bob2.send("and now you hear me");
  await timeline(page).getByText("and now you hear me").waitFor();
}

async function hostileText(scene: Scene): Promise<void> {
  const [alice, mallory] = await scene.join("alice-h", "mallory-h");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  const m = await scene.json(mallory);
  await startChat(page, alice, m);
  let dialogs = 0;
  page.on("dialog", (d) => {
    dialogs++;
    d.dismiss().catch(() => {});
  });
  const payload =
    `<img src=x onerror="window.__pwned=1;alert(1)"><script>window.__pwned=2</script>` +
    `<b>bold</b>`;
  await m.send(payload);
  await timeline(page).getByText(payload, { exact: true }).waitFor();
  const name = `<img src=x onerror=window.__pwned=3>.html`;
  const path = join(scene.dir, "evil.bin");
  await Deno.writeTextFile(path, "<script>window.__pwned=4</script>");
  // The JSON face sends the file under its own base name: give it the hostile one.
  const evil = join(scene.dir, "x", name);
  await Deno.mkdir(join(scene.dir, "x"), { recursive: true });
  await Deno.rename(path, evil);
  await m.send(`/file ${evil}`);
  // The offer card shows the name as text too.
  await acceptOnPage(page, "<img src=x onerror=window.__pwned=3>.html");
  await timeline(page).locator(".file-name", { hasText: "<img" }).waitFor();
  await sleep(300);
  assert.equal(await page.evaluate(() => (globalThis as { __pwned?: number }).__pwned), undefined);
  assert.equal(dialogs, 0);
  assert.equal(await timeline(page).locator("img, script, b").count(), 0);
}

async function narrowKeyboardDark(scene: Scene): Promise<void> {
  const [alice, bob, carol] = await scene.join("alice-n", "bob-n", "carol-n");
  const web = await scene.web(alice);
  const [b, c] = await Promise.all([scene.json(bob), scene.json(carol)]);
  const context = await scene.browser.newContext({
    viewport: { width: 360, height: 740 },
    colorScheme: "dark",
  });
  try {
    const page = await context.newPage();
    page.setDefaultTimeout(20_000);
    await page.goto(web.url);
    await page.getByRole("heading", { name: alice.name, level: 1 }).waitFor();
    const background = await page.evaluate<string>(
      "getComputedStyle(document.body).backgroundColor",
    );
    const [r, g, bl] = background.match(/\d+/g)!.map(Number);
    assert.ok(r + g + bl < 200, `not dark: ${background}`);

    // Keyboard alone: Tab to "Chat with", type, Enter.
    const tabTo = async (role: "textbox" | "button", name: string) => {
      const target = page.getByRole(role, { name, exact: true });
      for (let i = 0; i < 30; i++) {
        if (
          await target.evaluate((el) => el === el.ownerDocument.activeElement).catch(() => false)
        ) {
          return;
        }
        await page.keyboard.press("Tab");
      }
      throw new assert.AssertionError({ message: `Tab never reached ${role} "${name}"` });
    };
    await tabTo("textbox", "Chat with");
    await page.keyboard.type(bob.name);
    await page.keyboard.press("Enter");
    await b.expect({ type: "invite", from: alice.name });
    await b.send(`/accept ${alice.name}`);
    await b.expect({ type: "connected", peer: alice.name });
    await page.getByRole("button", { name: /bob-n online/ }).waitFor();
    await tabTo("textbox", "Message");
    await page.keyboard.type("typed without a mouse");
    await page.keyboard.press("Enter");
    await b.expect({ type: "message", text: "typed without a mouse" });

    // An invitation, accepted by keyboard; then bob's message counts as unread.
    await c.send(`/chat ${alice.name}`);
    await c.expect({ type: "invited" });
    await tabTo("button", "Accept");
    await page.keyboard.press("Enter");
    await c.expect({ type: "connected", peer: alice.name });
    await page.getByRole("heading", { name: carol.name, level: 2 }).waitFor();
    await b.send("are you there?");
    await page.getByRole("button", { name: /bob-n online 1 unread/ }).waitFor();
    await page.getByRole("button", { name: /bob-n/ }).click();
    await timeline(page).getByText("are you there?").waitFor();
    await page.getByRole("button", { name: /bob-n online$/ }).waitFor();

    const width = await page.evaluate<number>("document.documentElement.scrollWidth");
    assert.ok(width <= 360, `the page is ${width} px wide at 360 px`);
  } finally {
    await context.close();
  }
}

/** The CA issued a certificate for alice's name with another key: a banner says so, and stays. */
async function logAlarm(scene: Scene): Promise<void> {
  // A name of its own: the scenarios share one CA, and the dishonest certificate must not
  // meet another scenario's enrollment of the same name.
  const [alice, bob] = await scene.join("alice-alarm", "bob-alarm-inviter");
  // Bob invites alice before the CA signs behind her back: an invitation is made for the key the
  // directory names, and the CA lists to alice only those made for hers.
  const b = await scene.json(bob);
  await b.send(`/chat ${alice.name}`);
  await b.expect({ type: "invited", to: alice.name }); // at the CA, for alice's own key
  const { key } = await makeCsr("alice-alarm");
  await signBehindTheirBacks(scene.service, "alice-alarm", key);
  await commitSomething(scene.service);
  const web = await scene.web(alice);
  const page = await scene.page(web);
  try {
    await page.getByRole("alert").filter({
      hasText: /Log alarm: the CA issued a certificate for your name that you did not request/,
    }).waitFor();
  } catch (e) {
    const state = await Deno.readTextFile(join(alice.home, "log.json")).catch((e) => String(e));
    const index = await Deno.readTextFile(join(scene.service.caDir, "index.txt")).catch(String);
    const refusals = scene.service.log.split("\n").filter((l) => / 40[13] /.test(l)).slice(-8);
    throw new Error(
      `no log alarm banner; the page's notices: ${await page.locator("#notices").textContent()}; ` +
        `alice's log.json: ${state}; the CA's index: ${index}; its refusals: ${
          refusals.join("\n")
        }`,
      { cause: e },
    );
  }
  // No new connections while it stands.
  await page.getByRole("textbox", { name: "Chat with" }).fill("bob-alarm");
  await page.getByRole("button", { name: "Start chat", exact: true }).click();
  await page.getByRole("status").getByText(/alarm/).first().waitFor();
  // A reload (a second tab) shows it too.
  const again = await scene.page(web);
  await again.getByRole("alert").filter({ hasText: /Log alarm: .*did not request/ }).waitFor();

  // An invitation cannot be accepted either: the error is tied to its "Accept" (an alert that
  // describes that button), not a passing notice.
  const card = page.getByRole("listitem").filter({ hasText: `${bob.name} wants to chat` });
  const accept = card.getByRole("button", { name: "Accept", exact: true });
  await accept.click();
  const error = page.getByRole("alert").filter({ hasText: `Cannot accept the invitation of` });
  await error.waitFor();
  assert.match(await error.textContent() ?? "", /alarm/i);
  const describedBy = (await accept.getAttribute("aria-describedby") ?? "").split(" ");
  assert.ok(describedBy.includes(await error.getAttribute("id") ?? "?"), describedBy.join(" "));
  assert.equal(
    await page.locator("#notices").getByText("Cannot accept").count(),
    0,
    "the error is not a notice",
  );
}

async function refusedPeer(scene: Scene): Promise<void> {
  const [alice, carol] = await scene.join("alice-x", "carol-x");
  await revoke(scene.service, carol.name);
  const web = await scene.web(alice);
  const page = await scene.page(web);
  await page.getByRole("textbox", { name: "Chat with" }).fill(carol.name);
  await page.getByRole("button", { name: "Start chat", exact: true }).click();
  const status = page.locator("#peer-status");
  await waitUntil(
    async () => /revoked|rejected|no valid|not found/i.test(await status.textContent() ?? ""),
    "the reason carol-x is refused",
  );
  assert.equal(
    await page.getByRole("textbox", { name: "Message", exact: true }).isDisabled(),
    true,
  );
}

async function historyAfterRestart(scene: Scene): Promise<void> {
  const [alice, bob] = await scene.join("alice-r", "bob-r");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  const b = await scene.json(bob);
  await startChat(page, alice, b);
  await sendFromPage(page, "remember this after a restart");
  await b.expect({ type: "message", text: "remember this after a restart" });
  await b.send("and this reply too");
  await timeline(page).getByText("and this reply too").waitFor();
  await web.stop();
  // The old page notices, and says that this session is over.
  await page.getByRole("alert").filter({ hasText: /Lost|restarted/ }).waitFor();

  const again = await scene.web(alice);
  const page2 = await scene.page(again);
  await page2.getByRole("button", { name: /bob-r/ }).click();
  await timeline(page2).getByText("remember this after a restart").waitFor();
  await timeline(page2).getByText("and this reply too").waitFor();
}

/**
 * A member who leaves a room and is invited back numbers its messages from 1 again: the page shows
 * them beside those of before, live and from the history (room message ids were AUTHOR.SEQ; a
 * history written then is shown whole too).
 */
async function memberComesBack(scene: Scene): Promise<void> {
  const [alice, bob] = await scene.join("alice-back", "bob-back");
  // And from a version whose room ids were AUTHOR.SEQ: bob in #old, twice "bob-back.1".
  const history = join(alice.home, "history");
  await Deno.mkdir(history, { mode: 0o700 });
  await Deno.writeTextFile(
    join(history, "%23old.jsonl"),
    ["once", "and again"].map((text) =>
      JSON.stringify({
        t: "msg",
        id: `${bob.name}.1`,
        at: new Date().toISOString(),
        from: bob.name,
        to: "#old",
        text,
      }) + "\n"
    ).join(""),
    { mode: 0o600 },
  );
  const web = await scene.web(alice);
  const bobChat = await scene.json(bob);
  const page = await scene.page(web);
  await page.getByRole("textbox", { name: "Chat with" }).fill("#team");
  await page.getByRole("button", { name: "Start chat", exact: true }).click();
  await page.getByRole("button", { name: /#team room/ }).waitFor();
  const box = page.getByRole("textbox", { name: "Message", exact: true });
  // The first time, bob accepts the connection; it stays (made by an invitation to a room).
  const invite = async (first = false) => {
    await box.fill(`/invite ${bob.name}`);
    await box.press("Enter");
    if (first) {
      await bobChat.expect({ type: "invite", from: alice.name });
      await bobChat.send(`/accept ${alice.name}`);
    }
    await bobChat.expect({ type: "room_invite", room: "#team", from: alice.name });
    await bobChat.send("/room join #team");
    await bobChat.expect({ type: "room_joined", room: "#team" });
  };
  await invite(true);
  await bobChat.send("/msg #team before: the deal is off");
  await timeline(page).getByText("before: the deal is off").waitFor();
  await bobChat.send("/room leave #team");
  await bobChat.expect({ type: "room_member", room: "#team", name: bob.name, change: "left" });
  // Invited back, bob numbers his messages from 1 again.
  await invite();
  await bobChat.send("/msg #team after: I am back");
  await timeline(page).getByText("after: I am back").waitFor();
  const bobSaid = (p: Page) => timeline(p).locator(".item.theirs").allTextContents();
  const live = await bobSaid(page);
  assert.deepEqual(live.map((t) => /before|after/.exec(t)?.[0]), ["before", "after"]);

  // A tab opened now shows both, from the history.
  const tab = await page.context().newPage();
  await tab.goto(web.url);
  await tab.getByRole("button", { name: /#team room/ }).click();
  await timeline(tab).getByText("after: I am back").waitFor();
  const again = await bobSaid(tab);
  assert.deepEqual(again.map((t) => /before|after/.exec(t)?.[0]), ["before", "after"]);
  await tab.getByRole("button", { name: /#old/ }).click();
  await timeline(tab).getByText("and again").waitFor();
  assert.deepEqual(
    (await bobSaid(tab)).map((t) => /once|and again/.exec(t)?.[0]),
    ["once", "and again"],
  );
  await tab.close();
}

/**
 * A room's history is its own: a #team re-created (another room, another id) shows only its own
 * messages when the history is read again, not those of the #team before it; and a room message
 * kept as shown late says "(late)" there too.
 */
async function roomHistoryIsItsOwn(scene: Scene): Promise<void> {
  const [alice, bob] = await scene.join("alice-own", "bob-own");
  // A history of before, kept by the room's name: bob's 11 was withheld and shown after his 12.
  const history = join(alice.home, "history");
  await Deno.mkdir(history, { mode: 0o700 });
  const line = (seq: number, text: string, late?: true) =>
    JSON.stringify({
      t: "msg",
      id: `${"c".repeat(32)}:${bob.name}@1.${seq}`,
      at: new Date(Date.now() - 60_000 + seq).toISOString(),
      from: bob.name,
      to: "#ops",
      text,
      ...(late ? { late } : {}),
    }) + "\n";
  await Deno.writeTextFile(
    join(history, "%23ops.jsonl"),
    line(12, "twelve, shown first") + line(11, "eleven, withheld", true),
    { mode: 0o600 },
  );
  const web = await scene.web(alice);
  const bobChat = await scene.json(bob);
  const page = await scene.page(web);
  const box = page.getByRole("textbox", { name: "Message", exact: true });
  const say = async (text: string) => {
    await box.fill(text);
    await box.press("Enter");
    await waitUntil(async () => await box.inputValue() === "", `"${text}" sent`);
  };
  const team = async (first = false) => {
    await page.getByRole("textbox", { name: "Chat with" }).fill("#team");
    await page.getByRole("button", { name: "Start chat", exact: true }).click();
    await page.getByRole("button", { name: "#team room", exact: true }).waitFor();
    await say(`/invite ${bob.name}`);
    if (first) {
      await bobChat.expect({ type: "invite", from: alice.name });
      await bobChat.send(`/accept ${alice.name}`);
    }
    await bobChat.expect({ type: "room_invite", room: "#team", from: alice.name });
    await bobChat.send("/room join #team");
    await bobChat.expect({ type: "room_joined", room: "#team" });
  };
  await team(true);
  await bobChat.send("/msg #team in the first #team");
  await timeline(page).getByText("in the first #team").waitFor();
  await say(`/remove ${bob.name}`);
  await bobChat.expect({ type: "room_member", room: "#team", name: bob.name, change: "removed" });
  await say("/leave");
  await page.getByRole("button", { name: "#team room, left", exact: true }).waitFor();
  await team(); // created again: another room called #team
  await bobChat.send("/msg #team in the second #team");
  await timeline(page).getByText("in the second #team").waitFor();

  // A tab opened now reads each from the history.
  const tab = await page.context().newPage();
  await tab.goto(web.url);
  await tab.getByRole("button", { name: /^#team room/ }).click();
  await timeline(tab).getByText("in the second #team").waitFor();
  assert.equal(await timeline(tab).getByText("in the first #team").count(), 0);
  await tab.getByRole("button", { name: /^#ops room/ }).click();
  await timeline(tab).locator(".item", { hasText: "eleven, withheld" }).locator(".late", {
    hasText: "(late)",
  }).waitFor();
  assert.equal(
    await timeline(tab).locator(".item", { hasText: "twelve, shown first" }).locator(".late")
      .count(),
    0,
  );
  await tab.close();
}

async function lostAndBack(scene: Scene): Promise<void> {
  const [alice] = await scene.join("alice-l");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  await stallClient(page, web);
  await page.getByRole("textbox", { name: "Chat with" }).waitFor();
}

/** Plain HTTP requests with chosen headers (fetch cannot set Host). */
function rawRequest(
  port: number,
  lines: string[],
): Promise<{ status: number; head: string; body: string }> {
  return new Promise((resolve, reject) => {
    Deno.connect({ hostname: "127.0.0.1", port }).then(async (conn) => {
      try {
        await conn.write(new TextEncoder().encode(lines.join("\r\n") + "\r\n\r\n"));
        let text = "";
        const buf = new Uint8Array(65536);
        const until = Date.now() + 10_000;
        while (Date.now() < until) {
          const n = await conn.read(buf);
          if (n === null) break;
          text += new TextDecoder().decode(buf.subarray(0, n));
          if (/\r\n\r\n/.test(text) && /content-length: (\d+)/i.test(text)) {
            const len = Number(/content-length: (\d+)/i.exec(text)![1]);
            const [head, ...rest] = text.split("\r\n\r\n");
            if (new TextEncoder().encode(rest.join("\r\n\r\n")).length >= len) {
              resolve({ status: Number(head.split(" ")[1]), head, body: rest.join("\r\n\r\n") });
              return;
            }
          }
          if (/^HTTP\/1\.1 101/.test(text) && text.includes("\r\n\r\n")) break;
        }
        const [head, ...rest] = text.split("\r\n\r\n");
        resolve({ status: Number(head.split(" ")[1]), head, body: rest.join("\r\n\r\n") });
      } catch (e) {
        reject(e);
      } finally {
        conn.close();
      }
    }, reject);
  });
}

async function refusals(scene: Scene): Promise<void> {
  const [alice] = await scene.join("alice-s");
  const web = await scene.web(alice);
  const host = `127.0.0.1:${web.port}`;
  const get = (path: string, headers: string[] = []) =>
    rawRequest(web.port, [`GET ${path} HTTP/1.1`, ...headers, "Connection: close"]);

  // Without a session: only the short page, 401, with the security headers.
  for (const path of ["/", "/app.js", "/style.css", "/ws", "/download/x", "/nothing"]) {
    const r = await get(path, [`Host: ${host}`]);
    assert.equal(r.status, 401, `${path}: ${r.head}`);
    assert.match(r.body, /Open the URL the client printed/);
    assert.doesNotMatch(r.body, /<script/);
  }
  const wrongToken = await get(`/session?token=${"0".repeat(64)}`, [`Host: ${host}`]);
  assert.equal(wrongToken.status, 401);

  // A foreign Host (DNS rebinding) gets 421, even with the token.
  for (const h of ["rebind.test", `rebind.test:${web.port}`, "127.0.0.1", "localhost:1"]) {
    const r = await get(`/session?token=${web.token}`, [`Host: ${h}`]);
    assert.equal(r.status, 421, `Host ${h}: ${r.head}`);
  }

  // The token becomes an HttpOnly, SameSite=Strict cookie and a page key in the fragment, and
  // leaves the address bar.
  const ex = await get(`/session?token=${web.token}`, [`Host: ${host}`]);
  assert.equal(ex.status, 303);
  const keyLine = /^location: \/#key=([0-9a-f]{64})$/im.exec(ex.head);
  assert.ok(keyLine, ex.head);
  const pageKey = keyLine[1];
  const cookieLine =
    /^set-cookie: (e2e_session_\d+=[0-9a-f]{64}); HttpOnly; SameSite=Strict; Path=\/$/im
      .exec(ex.head);
  assert.ok(cookieLine, ex.head);
  const cookie = `Cookie: ${cookieLine[1]}`;
  const ok = await get("/", [`Host: ${host}`, cookie]);
  assert.equal(ok.status, 200);
  assert.match(
    ok.head,
    /^content-security-policy: default-src 'none'; script-src 'self';.*frame-ancestors 'none'/im,
  );
  assert.match(ok.head, /^x-content-type-options: nosniff$/im);
  assert.doesNotMatch(ok.head, /access-control-allow/i);
  assert.doesNotMatch(ok.body, /<script>|\sstyle=|\son\w+=/i, "inline script or style in the page");
  const foreignWithCookie = await get("/", [`Host: rebind.test:${web.port}`, cookie]);
  assert.equal(foreignWithCookie.status, 421);

  // Cross-origin WebSocket and POST are refused, with a valid session.
  const wsHead = (origin: string, key = pageKey) => [
    `Host: ${host}`,
    cookie,
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    `Sec-WebSocket-Protocol: e2e-chat, key.${key}`,
    origin,
  ];
  const crossWs = await rawRequest(web.port, [
    "GET /ws HTTP/1.1",
    ...wsHead("Origin: http://evil.test"),
  ]);
  assert.equal(crossWs.status, 403);
  const noOriginWs = await rawRequest(web.port, ["GET /ws HTTP/1.1", ...wsHead("X-No: origin")]);
  assert.equal(noOriginWs.status, 403);
  const sameWs = await rawRequest(web.port, [
    "GET /ws HTTP/1.1",
    ...wsHead(`Origin: http://${host}`),
  ]);
  assert.equal(sameWs.status, 101);
  assert.match(sameWs.head, /^sec-websocket-protocol: e2e-chat$/im);
  // The cookie alone (which browsers also send to every other port of 127.0.0.1) opens nothing:
  // no WebSocket, no upload, no download without the page key or a ticket from the page.
  for (const key of ["", "0".repeat(64)]) {
    const stolen = await rawRequest(web.port, [
      "GET /ws HTTP/1.1",
      ...wsHead(`Origin: http://${host}`, key),
    ]);
    assert.equal(stolen.status, 403, `key ${JSON.stringify(key)}: ${stolen.head}`);
  }
  const uploadWithoutKey = await rawRequest(web.port, [
    "POST /upload?to=bob&name=x HTTP/1.1",
    `Host: ${host}`,
    cookie,
    `Origin: http://${host}`,
    "Content-Length: 0",
    "Connection: close",
  ]);
  assert.equal(uploadWithoutKey.status, 403);
  for (const ticket of ["", `?ticket=${"0".repeat(64)}`]) {
    assert.equal((await get(`/download/x${ticket}`, [`Host: ${host}`, cookie])).status, 403);
  }
  const crossPost = await rawRequest(web.port, [
    "POST /upload?to=bob&name=x HTTP/1.1",
    `Host: ${host}`,
    cookie,
    "Origin: http://evil.test",
    "Content-Length: 0",
    "Connection: close",
  ]);
  assert.equal(crossPost.status, 403);
  // Downloads: nothing outside the downloads folder.
  for (
    const p of [
      "/download/..%2Fid%2Fkey.pem",
      "/download/%2E%2E%2Fpeers.json",
      "/download/.hidden",
      "/download/a%5C..%5Cb",
    ]
  ) {
    assert.notEqual((await get(p, [`Host: ${host}`, cookie])).status, 200, p);
  }

  // A second run on the same --port says so and stops (it does not share the port).
  await assert.rejects(
    WebClient.start(alice, { args: ["--port", String(web.port)] }),
    /Cannot serve the page on 127\.0\.0\.1:\d+[\s\S]*hint: choose another --port/,
  );

  // In the browser: a rebinding name gets nothing, and a foreign page's WebSocket is refused.
  const rebinding = await scene.browser.newContext();
  try {
    const page = await rebinding.newPage();
    const r = await page.goto(`http://rebind.test:${web.port}/session?token=${web.token}`);
    assert.equal(r?.status(), 421);
  } finally {
    await rebinding.close();
  }
  const page = await scene.page(web);
  assert.equal(page.url(), `${web.origin}/`, "the token stayed in the address bar");
  const evil = await page.context().newPage();
  await evil.goto(`http://rebind.test:${web.port}/nothing`).catch(() => {});
  const opened = await evil.evaluate((port) =>
    new Promise<string>((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`);
      ws.onopen = () => resolve("open");
      ws.onerror = () => resolve("refused");
      setTimeout(() => resolve("timeout"), 5_000);
    }), web.port);
  assert.equal(opened, "refused");
}

async function room(scene: Scene): Promise<void> {
  const [alice, bob, carol] = await scene.join("alice-rm", "bob-rm", "carol-rm");
  const web = await scene.web(alice);
  const [bobChat, carolChat] = await Promise.all([scene.json(bob), scene.json(carol)]);
  const page = await scene.page(web);
  // The page creates #team from "Chat with", and invites bob from the room's message box.
  await page.getByRole("textbox", { name: "Chat with" }).fill("#team");
  await page.getByRole("button", { name: "Start chat", exact: true }).click();
  await page.getByRole("button", { name: /#team room/ }).waitFor();
  for (const peer of [bobChat, carolChat]) {
    const box = page.getByRole("textbox", { name: "Message", exact: true });
    await box.fill(`/invite ${peer.name}`);
    await box.press("Enter");
    await peer.expect({ type: "invite", from: alice.name });
    await peer.send(`/accept ${alice.name}`);
    await peer.expect({ type: "room_invite", room: "#team", from: alice.name });
    await peer.send("/room join #team");
    await peer.expect({ type: "room_joined", room: "#team" });
  }
  await carolChat.expect({ type: "connected", peer: bob.name }, 30_000);
  await sendFromPage(page, "hello room, from the page");
  await bobChat.expect({
    type: "room_message",
    from: alice.name,
    text: "hello room, from the page",
  });
  await carolChat.expect({
    type: "room_message",
    from: alice.name,
    text: "hello room, from the page",
  });
  await carolChat.send("/msg #team hi from carol");
  await timeline(page).getByText("hi from carol").waitFor();
  await page.locator(".item.theirs", { hasText: "hi from carol" }).getByText(carol.name).waitFor();

  // A room invitation on the page has "Join".
  await carolChat.send("/room create #side");
  await carolChat.send(`/room invite #side ${alice.name}`);
  await page.getByRole("button", { name: "Join" }).click();
  await carolChat.expect({
    type: "room_member",
    room: "#side",
    name: alice.name,
    change: "joined",
  });
  await page.getByRole("button", { name: /#side room/ }).waitFor();
}

/**
 * Invitations to two rooms called #team (ben's and mallory's) and to ben's #side: each card
 * names its creator, Join takes the one clicked, Decline drops its own and tells its creator.
 */
async function roomInvitationCards(scene: Scene): Promise<void> {
  const [alice, ben, mallory] = await scene.join("alice-ri", "ben-ri", "mallory-ri");
  const web = await scene.web(alice);
  const [benChat, malloryChat] = await Promise.all([scene.json(ben), scene.json(mallory)]);
  const page = await scene.page(web);
  const cards = page.getByRole("region", { name: "Invitations" }).getByRole("listitem");
  const card = (from: string, room: string) =>
    cards.filter({ hasText: `${from} invites you to ${room}` });
  const invitations: Array<[ChatClient, string[]]> = [
    [benChat, ["#team", "#side"]],
    [malloryChat, ["#team"]],
  ];
  for (const [creator, rooms] of invitations) {
    for (const room of rooms) {
      await creator.send(`/room create ${room}`);
      await creator.expect({ type: "room_joined", room });
      await creator.send(`/room invite ${room} ${alice.name}`);
      if (room === rooms[0]) {
        await cards.filter({ hasText: `${creator.name} wants to chat` })
          .getByRole("button", { name: "Accept", exact: true }).click();
      }
      await card(creator.name, room).waitFor();
    }
  }
  for (const [from, room] of [[ben.name, "#team"], [ben.name, "#side"], [mallory.name, "#team"]]) {
    for (const name of ["Join", "Decline"]) {
      assert.equal(await card(from, room).getByRole("button", { name, exact: true }).count(), 1);
    }
  }
  // Decline: the card goes, and its creator is told.
  await card(ben.name, "#side").getByRole("button", { name: "Decline", exact: true }).click();
  await benChat.expect({
    type: "warning",
    message: `"${alice.name}" declined the invitation to #side`,
  });
  await card(ben.name, "#side").waitFor({ state: "detached" });
  // Join on mallory's #team card joins hers, not ben's (the first card of that name).
  const benMark = benChat.mark();
  await card(mallory.name, "#team").getByRole("button", { name: "Join", exact: true }).click();
  await malloryChat.expect({
    type: "room_member",
    room: "#team",
    name: alice.name,
    change: "joined",
  });
  await page.getByRole("button", { name: /#team room/ }).waitFor();
  // In a #team now: ben's invitation to his goes too, and he never got a join.
  await card(ben.name, "#team").waitFor({ state: "detached" });
  await benChat.expectNone(benMark, { type: "room_member" });
}

/**
 * A peer's words in a notice (the reason it gave for declining our file) are shown as the
 * terminal shows them (lib/printable.ts): no bidi control to reorder the line, no control
 * character.
 */
async function peerWordsInNotices(scene: Scene): Promise<void> {
  const [alice, bob] = await scene.join("alice-pw", "bob-pw");
  const listen = freePort();
  const web = await scene.web(alice, ["--port", "0", "--listen", `127.0.0.1:${listen}`]);
  const page = await scene.page(web);
  await page.getByRole("textbox", { name: "Chat with" }).fill(bob.name);
  await page.getByRole("button", { name: "Start chat", exact: true }).click();
  await page.getByRole("status").filter({ hasText: `Invited ${bob.name}:` }).waitFor();
  const peer = await scene.raw(listen, bob);
  await peer.expectFrame({ type: "hello", v: PROTOCOL_VERSION });
  peer.write(encodeFrame({ type: "hello", v: PROTOCOL_VERSION, features: ["offer"] }));
  await page.getByRole("textbox", { name: "Message", exact: true }).and(page.locator(":enabled"))
    .waitFor();
  const path = join(scene.dir, "plan.txt");
  await Deno.writeTextFile(path, "the plan");
  await page.getByLabel("Send file").setInputFiles(path);
  const offer = await peer.expectFrame({ type: "file", name: "plan.txt" });
  peer.write(encodeFrame({
    type: "decline",
    id: String(offer.id),
    reason: "too big\u202e txt.exe\u2066 \u0007ok",
  }));
  const notice = page.getByRole("region", { name: "Notices" }).getByText("declined it");
  await notice.waitFor();
  const shown = await notice.textContent() ?? "";
  // deno-lint-ignore no-control-regex
  assert.doesNotMatch(shown, /[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c\u0000-\u001f]/);
  assert.match(shown, /declined it: too big txt\.exe \\x07ok$/);
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
    "alice in the browser invites bob (JSON face), messages both ways show delivered marks, Mark verified, a file from the picker arrives with the same SHA-256 and its bar reaches 100 %, a dropped file is sent, a received file downloads with identical bytes",
    messagesBothWays,
  ],
  [
    'a file offered to the page waits on a card with "Accept file" and "Decline file"; nothing is written before Accept, Decline tells the sender',
    offerCard,
  ],
  [
    "a key change shows the warning and holds messages back until Trust new key",
    keyChange,
  ],
  [
    "a peer message and a file name made of HTML and script show as text and run nothing",
    hostileText,
  ],
  [
    "a peer's words in a notice (its reason to decline our file) lose their bidi and control characters, as on the terminal",
    peerWordsInNotices,
  ],
  ["the page says when it lost the client process and recovers when it is back", lostAndBack],
  [
    "at 360 px wide, in a dark colour scheme and by keyboard alone: start a chat, send, accept an invitation; unread counts",
    narrowKeyboardDark,
  ],
  ["a revoked peer is refused and the page shows the reason", refusedPeer],
  [
    "rooms are conversations: the page creates #team, invites two members, sends and shows their messages, and joins a room it is invited to",
    room,
  ],
  [
    "two invitations to #team from two creators: each card names its creator, Join joins the one clicked; Decline drops an invitation and tells its creator",
    roomInvitationCards,
  ],
  [
    "requests without the session, with a foreign Host or a cross-origin Origin are refused; the token leaves the address bar",
    refusals,
  ],
];

await webTest("web face in chromium: real CA service, real clients", [
  ...SCENARIOS,
  ["history is shown after a restart", historyAfterRestart],
  [
    "a member who leaves a room and comes back is shown beside its messages of before, live and in the room's history, not in place of them",
    memberComesBack,
  ],
  [
    "a room's history is its own: a #team created again shows none of the #team before it after a reload, and a message kept as shown late says (late)",
    roomHistoryIsItsOwn,
  ],
  [
    "a room joined after leaving another of its name shows none of the other's messages, live too",
    roomOfThatNameLive,
  ],
  [
    "a log alarm shows as a banner that stays, and no chat starts: Start chat and an invitation's Accept fail, the latter described by its error",
    logAlarm,
  ],
]);

// The certificate looks 6.5 days into its 7: a renewal that fails is said at once (client/renewal.ts).
const NEAR_ITS_END_MS = 6.5 * 86_400_000;
const CHROMIUM = await chromiumPath();

Deno.test({
  name:
    "a warning about the page's own certificate stays in view, apart from the notices: a peer's file offers do not push it out, and a new tab shows it",
  ignore: !CHROMIUM && Deno.env.get("CI") !== "true",
  async fn() {
    assert.ok(CHROMIUM, "CI=true and chromium is not on PATH: the web tests cannot run");
    const browser = await launchBrowser(CHROMIUM);
    try {
      await withWebWorld(async (service, dir) => {
        const [alice, bob] = await Promise.all(
          ["alice-cert", "bob-cert"].map((n) => joinUser(service, n, join(dir, n))),
        );
        const b = await ChatClient.start(bob);
        // alice's core runs here, for the renewal's test-only clock (tests/renewal_test.ts).
        let aged = false;
        const chat = await Chat.start(await Identity.load(alice.home), {
          renewal: {
            clock: () => Date.now() + (aged ? NEAR_ITS_END_MS : 0),
            checkMs: 100,
            retryMs: 600_000, // one attempt in this test, one warning
          },
        });
        let web: WebServer | undefined;
        try {
          web = await WebServer.start(chat, { uploads: join(dir, "uploads") });
          const open = async () => {
            const page = await (await browser.newContext()).newPage();
            page.setDefaultTimeout(20_000);
            await page.goto(web!.url);
            await page.getByRole("heading", { name: alice.name, exact: true, level: 1 }).waitFor();
            return page;
          };
          const page = await open();
          await chat.invite(bob.name);
          await b.expect({ type: "invite", from: alice.name });
          await b.send(`/accept ${alice.name}`);
          await b.expect({ type: "connected", peer: alice.name });
          await waitUntil(() => chat.isConnected(bob.name), "alice connected to bob");

          // The CA goes away as the certificate nears its end: the renewal fails, said at once.
          await service.stop();
          aged = true;
          const renewal = /^Cannot renew your certificate \(1 attempt failed; it expires /;
          await page.getByText(renewal).waitFor();

          // bob offers six files: six notices, more than the five the page shows. They may come in
          // any order (each /file stats and opens its file first): the sixth to come is waited for,
          // not offer-6's.
          let offers = 0;
          const counting = chat.on((e) => {
            if (e.type === "file_offer") offers++;
          });
          for (let i = 1; i <= 6; i++) {
            const path = join(dir, `offer-${i}.txt`);
            await Deno.writeTextFile(path, `file ${i}`);
            await b.send(`/file ${alice.name} ${path}`);
          }
          await waitUntil(() => offers === 6, "six offers at alice's core", 20_000);
          counting();
          const notices = page.getByRole("region", { name: "Notices", exact: true });
          await waitUntil(
            async () => await notices.getByText(/offers a file/).count() === 5,
            "five offers among the notices",
            20_000,
          );
          assert.ok(await page.getByText(renewal).isVisible(), "the renewal warning is in view");
          assert.equal(await notices.getByText(renewal).count(), 0, "not a notice");
          // In a status region of its own, read as it comes, as the notices are.
          const certificate = page.getByRole("region", { name: "Your certificate", exact: true });
          assert.equal(await certificate.getByText(renewal).count(), 1);
          const list = page.locator("#identity-notices");
          assert.equal(await list.getAttribute("role"), "status");
          assert.equal(await list.getAttribute("aria-atomic"), "false");

          // A tab opened now shows it too (from its snapshot), apart from the notices.
          const again = await open();
          await again.getByRole("region", { name: "Your certificate", exact: true })
            .getByText(renewal).waitFor();
          assert.equal(
            await again.getByRole("region", { name: "Notices" }).getByText(renewal).count(),
            0,
          );
        } finally {
          await web?.stop();
          await chat.stop();
          await b.stop();
        }
      });
    } finally {
      await browser.close();
    }
  },
});
