/**
 * The web face (`client web`, docs/WEB.md) as a keyboard and screen-reader user
 * meets it, and as a WCAG 2.2 AA review checks it: accessible names, roles and
 * landmarks, where focus goes when the page redraws, what its live regions say
 * (and what they must not repeat), errors tied to their control, contrast in
 * both colour schemes, and reflow at 360 px and at 200 % zoom. Real chromium,
 * real client processes, a real CA service, as in tests/web_test.ts.
 *
 * @module
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import {
  type BrowserContext,
  type ChatClient,
  invitePeer,
  joinUser,
  type Locator,
  type Page,
  type Scene,
  sendFromPage,
  stallClient,
  startChat,
  timeline,
  waitUntil,
  type WebClient,
  webTest,
} from "./_browser.ts";

/** A context of its own (colour scheme, viewport, zoom) with the page of `web` open in it. */
async function openIn(
  scene: Scene,
  web: WebClient,
  options: {
    colorScheme?: "light" | "dark";
    viewport?: { width: number; height: number };
    deviceScaleFactor?: number;
  } = {},
): Promise<{ context: BrowserContext; page: Page }> {
  const context = await scene.browser.newContext({
    viewport: options.viewport ?? { width: 1200, height: 800 },
    colorScheme: options.colorScheme ?? "light",
    deviceScaleFactor: options.deviceScaleFactor ?? 1,
  });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  await page.goto(web.url);
  await page.getByRole("heading", { name: web.name, exact: true, level: 1 }).waitFor();
  return { context, page };
}

/** What the focused element is, as "role: name" (tag and text when it has no label). */
function focused(page: Page): Promise<string> {
  return page.evaluate<string>(`(() => {
    const el = document.activeElement;
    if (!el || el === document.body) return "body";
    const label = el.labels?.[0]?.textContent ?? el.getAttribute("aria-label") ?? el.textContent;
    return el.tagName.toLowerCase() + ": " + (label ?? "").trim().replace(/\\s+/g, " ");
  })()`);
}

/** Presses Tab until the element of that role and name has focus. */
async function tabTo(page: Page, role: "textbox" | "button", name: string | RegExp) {
  const target = page.getByRole(role, { name, exact: typeof name === "string" }).first();
  for (let i = 0; i < 40; i++) {
    if (await target.evaluate((el) => el === el.ownerDocument.activeElement).catch(() => false)) {
      return;
    }
    await page.keyboard.press("Tab");
  }
  throw new assert.AssertionError({ message: `Tab never reached ${role} "${name}"` });
}

/**
 * Records what the page's live regions would say: text added to (or changed in) an element
 * that already is a live region (aria-live, or role log, status or alert), as assistive
 * technology hears it — not inside aria-hidden, not while the region is hidden.
 */
async function listen(page: Page): Promise<void> {
  await page.evaluate(`(() => {
    globalThis.__said = [];
    const REGION = "[aria-live],[role=log],[role=status],[role=alert]";
    const heard = (n) => {
      if (n.nodeType === 3) return n.data;
      if (n.nodeType !== 1 || n.getAttribute("aria-hidden") === "true") return "";
      return [...n.childNodes].map(heard).join("");
    };
    new MutationObserver((records) => {
      for (const r of records) {
        const node = r.type === "characterData" ? r.target.parentElement : r.target;
        if (!node || !node.isConnected || node.closest("[aria-hidden=true]")) continue;
        const region = node.closest(REGION);
        if (!region || region.closest("[hidden]")) continue;
        const text = r.type === "characterData"
          ? r.target.data
          : [...r.addedNodes].map(heard).join("");
        if (text.trim()) globalThis.__said.push({ region: region.id, text: text.trim() });
      }
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  })()`);
}

type Said = { region: string; text: string };

/** How chromium exposes an element's live region: its role, aria-live and aria-atomic. */
async function liveness(page: Page, selector: string): Promise<string> {
  const cdp = await page.context().newCDPSession(page);
  try {
    const { root } = await cdp.send("DOM.getDocument", { depth: 0 });
    const { nodeId } = await cdp.send("DOM.querySelector", { nodeId: root.nodeId, selector });
    const { nodes } = await cdp.send("Accessibility.getPartialAXTree", {
      nodeId,
      fetchRelatives: false,
    });
    const node = nodes[0];
    const prop = (name: string) => node.properties?.find((p) => p.name === name)?.value.value;
    return `${node.role?.value} live=${prop("live")} atomic=${prop("atomic")}`;
  } finally {
    await cdp.detach();
  }
}

function said(page: Page): Promise<Said[]> {
  return page.evaluate<Said[]>("globalThis.__said");
}

// ---------------------------------------------------------------------------
// Scenarios

/** Names, roles, landmarks, the language, buttons that are buttons; the title follows. */
async function namesAndTitle(scene: Scene): Promise<void> {
  const [alice, bob, carol] = await scene.join("alice-a1", "bob-a1", "carol-a1");
  const web = await scene.web(alice);
  const [b, c] = await Promise.all([scene.json(bob), scene.json(carol)]);
  const page = await scene.page(web);
  assert.equal(await page.evaluate<string>("document.documentElement.lang"), "en");
  for (
    const [role, name] of [
      ["banner", "Your identity"],
      ["navigation", "Conversations"],
      ["main", "No conversation open"],
      ["region", "Notices"],
      ["textbox", "Chat with"],
      ["button", "Start chat"],
      ["log", "Messages"],
      ["textbox", "Message"],
      ["button", "Send"],
      ["button", "Send file"],
      ["link", "Skip to the messages"],
    ] as const
  ) {
    assert.equal(
      await page.getByRole(role, { name, exact: true }).count(),
      1,
      `one ${role} named "${name}"`,
    );
  }
  // The skip link, first on the page, leads to the messages while the box is disabled (a link to
  // a disabled box moves focus nowhere), and to the box once one can write.
  await page.keyboard.press("Tab");
  assert.equal(await focused(page), "a: Skip to the messages");
  await page.keyboard.press("Enter");
  assert.equal(await focused(page), "ol: Messages");
  await startChat(page, alice, b);
  await startChat(page, alice, c);
  await page.getByRole("main", { name: carol.name }).waitFor();
  await page.getByRole("button", { name: "Mark verified" }).waitFor();
  await page.getByRole("link", { name: "Skip to the message box" }).press("Enter");
  assert.equal(await focused(page), "textarea: Message");
  // Everything that acts on a click is a button, a link or a form field.
  const clickable = await page.evaluate<string[]>(`[...document.querySelectorAll(
    "[onclick], div[tabindex], span[tabindex], li[tabindex]")].map((e) => e.outerHTML)`);
  assert.deepEqual(clickable, []);
  for (const name of [bob.name, carol.name]) {
    assert.equal(
      await page.getByRole("navigation").getByRole("button", { name: new RegExp(name) }).count(),
      1,
    );
  }

  // With reduced motion asked for, nothing on the page moves (no transition, no animation).
  await page.emulateMedia({ reducedMotion: "reduce" });
  const moving = await page.evaluate<string[]>(`[document.documentElement,
    ...document.querySelectorAll("*")].filter((e) => {
      const s = getComputedStyle(e);
      const long = (d) => d.split(",").some((t) => parseFloat(t) > 0);
      return long(s.transitionDuration) && s.transitionProperty !== "none" ||
        s.animationName !== "none" || s.scrollBehavior === "smooth";
    }).map((e) => e.tagName.toLowerCase() + "." + e.className)`);
  assert.deepEqual(moving, [], "moves under prefers-reduced-motion: reduce");
  assert.deepEqual(await page.evaluate<number>("document.getAnimations().length"), 0);

  // The title names the open conversation, and counts what is unread elsewhere.
  await waitUntil(
    async () => (await page.title()).startsWith(`${carol.name} — `),
    `the title names ${carol.name}`,
  );
  await b.send("unread one");
  await b.send("unread two");
  await page.getByRole("button", { name: new RegExp(`${bob.name} online 2 unread`) }).waitFor();
  await waitUntil(
    async () => (await page.title()).startsWith(`(2) ${carol.name} — `),
    `the title counts 2 unread: "${await page.title()}"`,
  );
  await page.getByRole("button", { name: new RegExp(bob.name) }).click();
  await waitUntil(
    async () => (await page.title()).startsWith(`${bob.name} — `),
    `the title names ${bob.name} and counts nothing: "${await page.title()}"`,
  );
}

/** Focus stays where the user is when the list redraws, and lands somewhere when a card goes. */
async function focusKept(scene: Scene): Promise<void> {
  const [alice, bob, carol] = await scene.join("alice-f", "bob-f", "carol-f");
  const web = await scene.web(alice, ["--auto-accept", "0"]);
  const [b, c] = await Promise.all([scene.json(bob), scene.json(carol)]);
  const page = await scene.page(web);
  await startChat(page, alice, b);
  await startChat(page, alice, c);

  // On bob's conversation button (carol's is open), a message from bob redraws the list.
  await tabTo(page, "button", new RegExp(`^${bob.name} `));
  await b.send("while you are on the list");
  await page.getByRole("button", { name: new RegExp(`${bob.name} online 1 unread`) }).waitFor();
  assert.match(await focused(page), new RegExp(`^button: ${bob.name} online 1 unread`));
  // Enter opens it: focus goes to its message box.
  await page.keyboard.press("Enter");
  await page.getByRole("main", { name: bob.name }).waitFor();
  assert.equal(await focused(page), "textarea: Message");

  // "Mark verified" goes once pressed: focus moves to the message box, and the status says it.
  await listen(page);
  await tabTo(page, "button", "Mark verified");
  await page.keyboard.press("Enter");
  await page.getByText("Verified", { exact: true }).waitFor();
  assert.equal(await focused(page), "textarea: Message");
  assert.ok(
    (await said(page)).some((s) => s.region === "peer-status" && /verified/.test(s.text)),
    JSON.stringify(await said(page)),
  );

  // A conversation whose peer is offline: its message box is disabled, so focus stays on its
  // button rather than falling to the page.
  await c.stop();
  await page.getByRole("button", { name: new RegExp(`${carol.name} offline`) }).waitFor();
  await tabTo(page, "button", new RegExp(`^${carol.name} `));
  await page.keyboard.press("Enter");
  await page.getByRole("main", { name: carol.name }).waitFor();
  assert.match(await focused(page), new RegExp(`^button: ${carol.name} offline`));

  // Two files offered: answering the first moves focus to the list's heading (not to the next
  // card's button, which acts on another file), answering the last to the box.
  await page.getByRole("button", { name: new RegExp(bob.name) }).click();
  for (const name of ["one.txt", "two.txt"]) {
    const path = join(scene.dir, name);
    await Deno.writeTextFile(path, `file ${name}`);
    await b.send(`/file ${path}`);
    await page.getByRole("listitem").filter({ hasText: `offers ${name}` }).waitFor();
  }
  // The notices are no list either (a listitem would need one): their status region holds them.
  const notices = page.getByRole("region", { name: "Notices" });
  await notices.getByText(`${bob.name} offers a file: two.txt`).waitFor();
  assert.equal(await notices.getByRole("listitem").count(), 0);

  await tabTo(page, "button", "Decline file");
  await page.keyboard.press("Enter");
  await b.expect({ type: "file_failed", direction: "out" });
  await page.getByRole("listitem").filter({ hasText: "offers one.txt" }).waitFor({
    state: "detached",
  });
  assert.equal(await focused(page), "h2: Files offered to you");
  await tabTo(page, "button", "Decline file");
  await page.keyboard.press("Enter");
  await page.getByRole("region", { name: "Files offered to you" }).waitFor({ state: "hidden" });
  assert.equal(await focused(page), "textarea: Message");

  // Writing to bob when he goes: the box is disabled, and focus moves to the messages.
  await page.keyboard.type("half a thought");
  await b.stop();
  await page.getByRole("button", { name: new RegExp(`${bob.name} offline`) }).waitFor();
  assert.equal(await focused(page), "ol: Messages");
}

/** Live regions: said once, not re-read on a tick or a redraw, silent on a switch. */
async function liveRegions(scene: Scene): Promise<void> {
  const [alice, bob, carol] = await scene.join("alice-lv", "bob-lv", "carol-lv");
  const web = await scene.web(alice);
  const [b, c] = await Promise.all([scene.json(bob), scene.json(carol)]);
  const page = await scene.page(web);
  await listen(page);
  await startChat(page, alice, b);

  // A message of bob's is said once; ours once, and its delivery mark without the text again.
  await b.send("first from bob");
  await timeline(page).getByText("first from bob").waitFor();
  const box = page.getByRole("textbox", { name: "Message", exact: true });
  await box.focus();
  const before = (await said(page)).length;
  await page.keyboard.type("typed slowly");
  assert.deepEqual((await said(page)).slice(before), [], "keystrokes were announced");
  await page.keyboard.press("Enter");
  const got = await b.expect({ type: "message", text: "typed slowly" });
  await page.locator(`.item.mine[data-id="${got.id}"] .state.delivered`).waitFor();
  // The round trip is text of the message (read with it, seen without a mouse), not a title.
  const mark = timeline(page).getByRole("article").filter({ hasText: "typed slowly" })
    .locator(".state");
  assert.match(await mark.textContent() ?? "", /^✓ delivered, round trip \d+\.\d ms$/);
  assert.equal(await mark.getAttribute("title"), null);
  for (let i = 0; i < 3; i++) await b.send(`more from bob ${i}`);
  await timeline(page).getByText("more from bob 2").waitFor();

  // A file of ours: announced when it starts, not at every tick of its bar.
  const notes = join(scene.dir, "notes.bin");
  await Deno.writeFile(notes, new Uint8Array(randomBytes(3 * 1024 * 1024)));
  await page.getByLabel("Send file").setInputFiles(notes);
  await b.acceptFile(alice.name);
  await b.expect({ type: "file", from: alice.name }, 30_000);
  const bar = page.getByRole("progressbar", { name: "Sending notes.bin" });
  await waitUntil(async () => await bar.getAttribute("aria-valuenow") === "100", "bar at 100 %");

  // A switch to carol and back reads none of the old messages again.
  await startChat(page, alice, c);
  await page.getByRole("button", { name: new RegExp(bob.name) }).click();
  await timeline(page).getByText("first from bob").waitFor();
  await page.getByRole("button", { name: new RegExp(carol.name) }).click();
  await page.getByRole("main", { name: carol.name }).waitFor();

  // A message to a conversation that is not open is not in the log: its count is said.
  await b.send("while carol is open");
  await page.getByRole("button", { name: new RegExp(`${bob.name} online 1 unread`) }).waitFor();
  await waitUntil(
    async () =>
      (await said(page)).some((s) =>
        s.region === "announce" && s.text === `New message from ${bob.name}: 1 unread`
      ),
    "the unread message is said",
  );

  // Each message is an article of the log: a listitem would need a list, and the log is not one.
  await page.getByRole("button", { name: new RegExp(bob.name) }).click();
  assert.equal(await timeline(page).getByRole("listitem").count(), 0);
  assert.ok(await timeline(page).getByRole("article").count() >= 6);

  // The notices are read one by one as they come, not the whole list again with each.
  assert.equal(await liveness(page, "#notices"), "status live=polite atomic=false");
  assert.equal(await liveness(page, "#timeline"), "log live=polite atomic=false");
  assert.equal(await liveness(page, "#peer-status"), "status live=polite atomic=true");
  assert.equal(await liveness(page, "#chat-with-error"), "alert live=assertive atomic=true");
  assert.equal(await liveness(page, "#message-error"), "alert live=assertive atomic=true");

  const all = await said(page);
  const count = (region: string, re: RegExp) =>
    all.filter((s) => s.region === region && re.test(s.text)).length;
  const dump = JSON.stringify(all, null, 1);
  assert.equal(count("timeline", /first from bob/), 1, `bob's first message: ${dump}`);
  assert.equal(count("timeline", /typed slowly/), 1, `our message: ${dump}`);
  assert.equal(count("timeline", /more from bob 0/), 1, `bob's later message: ${dump}`);
  assert.ok(count("timeline", /delivered/) >= 1, `the delivery mark is said: ${dump}`);
  assert.equal(count("timeline", /notes\.bin/), 1, `the file: ${dump}`);
  assert.equal(count("timeline", /\d+ %/), 0, `the bar's ticks: ${dump}`);
  assert.equal(count("peer-status", /^Connected$/), 2, `"Connected", once a peer: ${dump}`);
}

/** A reconnection redraws the page from the client's snapshot without reading it all again. */
async function reconnectQuietly(scene: Scene): Promise<void> {
  const [alice, bobOld] = await scene.join("alice-q", "bob-q");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  await listen(page);
  const b1 = await scene.json(bobOld);
  await startChat(page, alice, b1);
  await b1.send("said before the client stalled");
  await timeline(page).getByText("said before the client stalled").waitFor();
  // bob comes back with another key: a warning the client keeps for its pages (and sends
  // again in every snapshot).
  await b1.stop();
  await page.getByRole("button", { name: /bob-q offline/ }).waitFor();
  const bobNew = await joinUser(scene.service, "bob-q", join(scene.dir, "bob-q-new"));
  const b2 = await scene.json(bobNew);
  await b2.send(`/chat ${alice.name}`);
  await page.getByRole("button", { name: "Accept", exact: true }).click();
  await page.getByRole("alert").filter({ hasText: "changed since you last talked" }).waitFor();
  // The warning on the conversation is an alert: read at once, interrupting.
  assert.equal(await liveness(page, "#key-change"), "alert live=assertive atomic=true");
  const text = `the key of "${bobOld.name}" CHANGED`;
  await page.getByRole("region", { name: "Notices" }).getByText(text).first().waitFor();

  await stallClient(page, web);
  await timeline(page).getByText("said before the client stalled").waitFor();
  await page.getByRole("region", { name: "Notices" }).getByText(text).first().waitFor();
  const all = await said(page);
  const dump = JSON.stringify(all, null, 1);
  assert.equal(all.filter((s) => s.text.includes(text)).length, 1, `the warning: ${dump}`);
  assert.equal(
    all.filter((s) => s.text.includes("said before the client stalled")).length,
    1,
    `the message: ${dump}`,
  );
}

/** The text of the elements that describe what `locator` finds (aria-describedby). */
async function description(locator: Locator): Promise<string> {
  return await locator.evaluate((el) =>
    (el.getAttribute("aria-describedby") ?? "").split(/\s+/).map((id: string) =>
      el.ownerDocument.getElementById(id)?.textContent ?? ""
    ).join(" ").trim()
  );
}

/** A failed action's error is said at once and described by the control that failed. */
async function errorsTied(scene: Scene): Promise<void> {
  const [alice] = await scene.join("alice-e");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  await listen(page);
  const field = page.getByRole("textbox", { name: "Chat with" });
  await field.fill(alice.name);
  await field.press("Enter");
  await waitUntil(
    async () => /You cannot chat with yourself/.test(await description(field)),
    `"Chat with" is described by its error: "${await description(field)}"`,
  );
  assert.equal(await field.getAttribute("aria-invalid"), "true");
  const alerts = (await said(page)).filter((s) => /cannot chat with yourself/.test(s.text));
  assert.ok(
    alerts.some((s) => s.region === "chat-with-error"),
    `the error is said as an alert: ${JSON.stringify(alerts)}`,
  );
  // Said by its alert (and as the conversation's status), not a third time as a notice.
  assert.equal(alerts.filter((s) => s.region === "notices").length, 0, JSON.stringify(alerts));
  // Typing again clears it.
  await field.fill("bob-e");
  assert.notEqual(await field.getAttribute("aria-invalid"), "true");
  assert.equal(await description(field), "");

  // In a room's message box: a command that fails is tied to the box.
  await field.fill("#a11y");
  await field.press("Enter");
  await page.getByRole("main", { name: "#a11y" }).waitFor().catch(async (e) => {
    throw new Error(`no room: "${await description(field)}"`, { cause: e });
  });
  const box = page.getByRole("textbox", { name: "Message", exact: true });
  await box.and(page.locator(":enabled")).waitFor();
  await box.fill("/remove nobody-e");
  await box.press("Enter");
  await waitUntil(
    async () => (await description(box)).length > 0,
    "the message box is described by its error",
  );
  assert.equal(await box.getAttribute("aria-invalid"), "true");
  assert.ok(
    (await said(page)).some((s) => s.region === "message-error"),
    "the message box's error is said",
  );

  // "Send file" in a room with no member connected: the error is tied to the file control.
  const path = join(scene.dir, "lonely.txt");
  await Deno.writeTextFile(path, "nobody takes this");
  const file = page.getByLabel("Send file");
  await file.setInputFiles(path);
  await waitUntil(
    async () => /Cannot send lonely\.txt to #a11y: No member/.test(await description(file)),
    `"Send file" is described by its error: "${await description(file)}"`,
  );
  assert.equal(await file.getAttribute("aria-invalid"), "true");
  const sent = (await said(page)).filter((s) => /lonely\.txt/.test(s.text));
  assert.ok(sent.some((s) => s.region === "file-error"), JSON.stringify(sent));
  assert.equal(sent.filter((s) => s.region === "notices").length, 0, JSON.stringify(sent));
}

/**
 * A card's button that fails ("Accept file" refused by the quota) is described by its error, said
 * as an alert and not as a notice; the card stays, inert, until "Dismiss".
 */
async function cardErrorsTied(scene: Scene): Promise<void> {
  const [alice, bob] = await scene.join("alice-ce", "bob-ce");
  const web = await scene.web(alice, ["--auto-accept", "0", "--peer-quota", "100B"]);
  const b = await scene.json(bob);
  const page = await scene.page(web);
  await startChat(page, alice, b);
  await listen(page);
  for (const name of ["first.bin", "second.bin"]) {
    const path = join(scene.dir, name);
    await Deno.writeFile(path, new Uint8Array(60));
    await b.send(`/file ${path}`);
    await page.getByRole("listitem").filter({ hasText: `offers ${name}` }).waitFor();
  }
  const card = (name: string) => page.getByRole("listitem").filter({ hasText: `offers ${name}` });
  await card("first.bin").getByRole("button", { name: "Accept file" }).click();
  await card("first.bin").waitFor({ state: "detached" });
  // 60 bytes of bob's 100 are taken: the second file is over the quota once accepted.
  const accept = card("second.bin").getByRole("button", { name: "Accept file" });
  await accept.click();
  await waitUntil(
    async () => /Cannot accept file second\.bin: File refused/.test(await description(accept)),
    `"Accept file" is described by its error: "${await description(accept)}"`,
  );
  assert.equal(await focused(page), "button: Accept file");
  const alerts = (await said(page)).filter((s) =>
    /second\.bin/.test(s.text) && /quota/.test(s.text)
  );
  assert.ok(
    alerts.some((s) => s.region === "offers-error"),
    `the error is said as an alert: ${JSON.stringify(await said(page))}`,
  );
  assert.equal(alerts.filter((s) => s.region === "notices").length, 0, JSON.stringify(alerts));
  // Described by the button that failed only, not by its neighbour.
  assert.doesNotMatch(
    await description(card("second.bin").getByRole("button", { name: "Decline file" })),
    /Cannot/,
  );
  await card("second.bin").getByRole("button", { name: "Dismiss" }).click();
  await page.getByRole("region", { name: "Files offered to you" }).waitFor({ state: "hidden" });
  assert.equal(await page.locator("#offers-error").textContent(), "");
}

/** The card of `creator`'s invitation to `room` on page `p`. */
function roomCard(p: Page, creator: string, room: string): Locator {
  return p.getByRole("region", { name: "Invitations" }).getByRole("listitem")
    .filter({ hasText: `${creator} invites you to ${room}` });
}

/**
 * `creator` (a JSON face) makes each of `rooms` and invites `invitee` to it; the first of `pages`
 * accepts its chat with the first invitation, and each of `pages` shows each invitation's card.
 */
async function inviteToRooms(
  creator: ChatClient,
  pages: Page[],
  options: { invitee: string; rooms: string[] },
): Promise<void> {
  for (const [i, room] of options.rooms.entries()) {
    await creator.send(`/room create ${room}`);
    await creator.expect({ type: "room_joined", room });
    await creator.send(`/room invite ${room} ${options.invitee}`);
    if (i === 0) {
      await pages[0].getByRole("listitem").filter({ hasText: `${creator.name} wants to chat` })
        .getByRole("button", { name: "Accept", exact: true }).click();
    }
    for (const p of pages) await roomCard(p, creator.name, room).waitFor();
  }
}

/**
 * An invitation that goes while its "Accept" has focus (taken in another tab) leaves focus on
 * the list's heading: the control now in its place is another sender's "Accept", which the next
 * Enter would press.
 */
async function invitationGoes(scene: Scene): Promise<void> {
  const [alice, bob, carol] = await scene.join("alice-ig", "bob-ig", "carol-ig");
  const web = await scene.web(alice);
  const [b, c] = await Promise.all([scene.json(bob), scene.json(carol)]);
  const page = await scene.page(web);
  const card = (p: Page, name: string) =>
    p.getByRole("listitem").filter({ hasText: `${name} wants to chat` });
  // bob's card after carol's and before it: whichever place it had, another Accept takes it.
  for (const order of [[c, b], [b, c]]) {
    for (const peer of order) {
      await peer.send(`/chat ${alice.name}`);
      await card(page, peer.name).waitFor();
    }
    await card(page, bob.name).getByRole("button", { name: "Accept", exact: true }).focus();
    const other = await scene.page(web);
    await card(other, bob.name).getByRole("button", { name: "Accept", exact: true }).click();
    await card(page, bob.name).waitFor({ state: "detached" });
    await b.expect({ type: "connected", peer: alice.name });
    assert.equal(await focused(page), "h2: Invitations");
    await card(page, carol.name).waitFor();
    // The next round: both invite again.
    await other.context().close();
    await b.send(`/close ${alice.name}`);
    await card(page, carol.name).getByRole("button", { name: "Accept", exact: true }).click();
    await c.expect({ type: "connected", peer: alice.name });
    await c.send(`/close ${alice.name}`);
    await page.getByRole("region", { name: "Invitations" }).waitFor({ state: "hidden" });
  }
}

/**
 * Room invitations follow the client in every tab: one declined in another tab while this tab's
 * "Decline" of it has focus goes here too (said in a notice; focus on the list's heading, not on
 * the next card's button), and one joined there goes here, focus then on the message box.
 */
async function roomInvitationGoes(scene: Scene): Promise<void> {
  const [alice, ben] = await scene.join("alice-rg", "ben-rg");
  const web = await scene.web(alice);
  const benChat = await scene.json(ben);
  const [page, other] = [await scene.page(web), await scene.page(web)];
  const card = (p: Page, room: string) => roomCard(p, ben.name, room);
  await inviteToRooms(benChat, [page, other], { invitee: alice.name, rooms: ["#side", "#team"] });
  await card(page, "#side").getByRole("button", { name: "Decline", exact: true }).focus();
  await card(other, "#side").getByRole("button", { name: "Decline", exact: true }).click();
  await benChat.expect({
    type: "warning",
    message: `"${alice.name}" declined the invitation to #side`,
  });
  await card(page, "#side").waitFor({ state: "detached" });
  assert.equal(await focused(page), "h2: Invitations");
  await page.locator("#notices")
    .getByText(`Declined the invitation to #side from "${ben.name}"`, { exact: true }).waitFor();

  await card(page, "#team").getByRole("button", { name: "Join", exact: true }).focus();
  await card(other, "#team").getByRole("button", { name: "Join", exact: true }).click();
  await benChat.expect({ type: "room_member", room: "#team", name: alice.name, change: "joined" });
  await card(page, "#team").waitFor({ state: "detached" });
  await page.getByRole("region", { name: "Invitations" }).waitFor({ state: "hidden" });
  assert.equal(await focused(page), "textarea: Message");
  // Said once in the tab that declined (its reply, then the server's word to every tab): the
  // join's news came to it after the decline's, so a second notice would be there by now.
  await card(other, "#team").waitFor({ state: "detached" });
  assert.equal(
    await other.locator("#notices").getByText(/Declined the invitation to #side/).count(),
    1,
  );
}

/** The card of the file offer of `name` on page `p`. */
function offerCard(p: Page, name: string): Locator {
  return p.getByRole("region", { name: "Files offered to you" }).getByRole("listitem")
    .filter({ hasText: `offers ${name} (` });
}

/** `sender` (a JSON face) offers first.bin and second.bin, and each of `pages` shows both cards. */
async function offerFiles(scene: Scene, sender: ChatClient, pages: Page[]): Promise<void> {
  for (const name of ["first.bin", "second.bin"]) {
    const path = join(scene.dir, name);
    await Deno.writeFile(path, new Uint8Array(60));
    await sender.send(`/file ${path}`);
    for (const p of pages) await offerCard(p, name).waitFor();
  }
}

/**
 * File offers follow the client in every tab: one declined in another tab while this tab's
 * "Accept file" of it has focus goes here too (focus on the list's heading), and so does one
 * accepted there.
 */
async function offerGoes(scene: Scene): Promise<void> {
  const [alice, bob] = await scene.join("alice-og", "bob-og");
  const web = await scene.web(alice, ["--auto-accept", "0"]);
  const b = await scene.json(bob);
  const page = await scene.page(web);
  await startChat(page, alice, b);
  const other = await scene.page(web);
  await offerFiles(scene, b, [page, other]);
  await offerCard(page, "first.bin").getByRole("button", { name: "Accept file" }).focus();
  await offerCard(other, "first.bin").getByRole("button", { name: "Decline file" }).click();
  const failed = await b.expect({ type: "file_failed", direction: "out" });
  assert.match(String(failed.reason), /declined by the user/);
  await offerCard(page, "first.bin").waitFor({ state: "detached" });
  assert.equal(await focused(page), "h2: Files offered to you");

  await offerCard(other, "second.bin").getByRole("button", { name: "Accept file" }).click();
  await offerCard(page, "second.bin").waitFor({ state: "detached" });
  await page.getByRole("region", { name: "Files offered to you" }).waitFor({ state: "hidden" });
  await timeline(page).getByText("second.bin").waitFor();
}

/**
 * A key trusted or verified in another tab: this tab's warning and "Trust new key" go and its
 * message box opens, then its "Mark verified" goes and the peer shows verified; a button that
 * had focus hands it to the message box.
 */
async function keyTrustedElsewhere(scene: Scene): Promise<void> {
  const [alice, bobOld] = await scene.join("alice-kt", "bob-kt");
  const web = await scene.web(alice);
  const page = await scene.page(web);
  const bob1 = await scene.json(bobOld);
  await startChat(page, alice, bob1);
  await bob1.stop();
  await page.getByRole("button", { name: /bob-kt offline/ }).waitFor();
  const bobNew = await joinUser(scene.service, "bob-kt", join(scene.dir, "bob-kt-new"));
  const bob2 = await scene.json(bobNew);
  await invitePeer(page, alice, bob2);
  const other = await scene.page(web);
  const box = (p: Page) => p.getByRole("textbox", { name: "Message", exact: true });
  for (const p of [page, other]) {
    await p.getByRole("button", { name: "Trust new key" }).waitFor();
    assert.ok(await box(p).isDisabled());
  }

  await page.getByRole("button", { name: "Trust new key" }).focus();
  await other.getByRole("button", { name: "Trust new key" }).click();
  await page.getByRole("alert").filter({ hasText: "changed" }).waitFor({ state: "hidden" });
  await box(page).and(page.locator(":enabled")).waitFor();
  assert.equal(await focused(page), "textarea: Message");

  const verify = (p: Page) => p.getByRole("button", { name: "Mark verified" });
  await verify(page).waitFor();
  await verify(page).focus();
  await verify(other).click();
  await verify(page).waitFor({ state: "hidden" });
  await page.locator("#peer-state").getByText("online, verified").waitFor();
  assert.equal(await focused(page), "textarea: Message");
  await sendFromPage(page, "trusted in the other tab");
  await bob2.expect({ type: "message", text: "trusted in the other tab" });
}

/** Waits until `control` is described by an error matching `error`, said by the alert `region`. */
async function failsBeside(
  page: Page,
  control: Locator,
  error: RegExp,
  region: string,
): Promise<void> {
  await waitUntil(
    async () => error.test(await description(control)),
    `described by its error: "${await description(control)}"`,
  );
  const alerts = (await said(page)).filter((s) => error.test(s.text));
  assert.ok(alerts.some((s) => s.region === region), JSON.stringify(await said(page)));
  assert.equal(alerts.filter((s) => s.region === "notices").length, 0, JSON.stringify(alerts));
}

/** The safety number the page shows once it is not `before`. */
async function safetyNumberOtherThan(page: Page, before: string): Promise<string> {
  const shown = page.locator("#safety-number");
  await waitUntil(async () => {
    const now = await shown.textContent() ?? "";
    return now !== "" && now !== before;
  }, "the safety number is fetched again");
  return await shown.textContent() ?? "";
}

/**
 * "Mark verified" pressed in a tab that has not heard yet that bob's key changed and was trusted
 * in another tab: it was about the safety number of bob's first key, so the client refuses it,
 * the error is said beside the button, and the new key is not marked verified until pressed
 * again with its own number shown.
 */
async function verifyRefused(scene: Scene): Promise<void> {
  const [alice, bobOld] = await scene.join("alice-vr", "bob-vr");
  const web = await scene.web(alice);
  const bob1 = await scene.json(bobOld);
  const { page, hold, release } = await scene.gatedPage(web);
  await startChat(page, alice, bob1);
  const verify = page.getByRole("button", { name: "Mark verified" });
  await verify.waitFor();
  const first = await safetyNumberOtherThan(page, "");
  const bobNew = await joinUser(scene.service, "bob-vr", join(scene.dir, "bob-vr-new"));
  await listen(page);
  hold();
  await bob1.stop();
  const bob2 = await scene.json(bobNew);
  const other = await scene.page(web);
  await invitePeer(other, alice, bob2);
  await other.getByRole("button", { name: "Trust new key" }).click();
  await other.getByRole("textbox", { name: "Message", exact: true }).and(
    other.locator(":enabled"),
  ).waitFor();
  assert.equal(await page.locator("#safety-number").textContent(), first);
  await verify.click();
  release();
  await failsBeside(
    page,
    verify,
    /The key of "bob-vr" changed since its safety number was shown/,
    "verify-error",
  );
  for (const p of [page, other]) {
    assert.equal(await p.locator("#peer-state").textContent(), "online");
  }
  await safetyNumberOtherThan(page, first);
  await verify.click();
  await page.locator("#peer-state").getByText("online, verified").waitFor();
  await other.locator("#peer-state").getByText("online, verified").waitFor();
}

/**
 * "Trust new key" pressed for bob's second key while bob's third has just connected (the tab
 * has not heard yet): the client refuses it instead of trusting a key nobody compared; the error
 * is said beside the button, the warning stays, and the third key is trusted only once its own
 * safety number was shown and the button pressed again.
 */
async function trustRefused(scene: Scene): Promise<void> {
  const [alice, bobFirst] = await scene.join("alice-tr", "bob-tr");
  const web = await scene.web(alice);
  const bob1 = await scene.json(bobFirst);
  const { page, hold, release } = await scene.gatedPage(web);
  await startChat(page, alice, bob1);
  const first = await safetyNumberOtherThan(page, "");
  await bob1.stop();
  await page.getByRole("button", { name: /bob-tr offline/ }).waitFor();
  const bobSecond = await joinUser(scene.service, "bob-tr", join(scene.dir, "bob-tr-2"));
  const bob2 = await scene.json(bobSecond);
  await invitePeer(page, alice, bob2);
  const trust = page.getByRole("button", { name: "Trust new key" });
  await trust.waitFor();
  const second = await safetyNumberOtherThan(page, first);
  const bobThird = await joinUser(scene.service, "bob-tr", join(scene.dir, "bob-tr-3"));
  await listen(page);
  hold();
  await bob2.stop();
  const bob3 = await scene.json(bobThird);
  // The page invites bob again (its answer held back): bob's third key connects.
  await page.getByRole("textbox", { name: "Chat with" }).fill(bob3.name);
  await page.getByRole("button", { name: "Start chat", exact: true }).click();
  await bob3.expect({ type: "invite", from: alice.name });
  await bob3.send(`/accept ${alice.name}`);
  await bob3.expect({ type: "connected", peer: alice.name });
  assert.equal(await page.locator("#safety-number").textContent(), second);
  await trust.click();
  release();
  await failsBeside(
    page,
    trust,
    /The key of "bob-tr" changed since its safety number was shown/,
    "trust-error",
  );
  const box = page.getByRole("textbox", { name: "Message", exact: true });
  assert.ok(await box.isDisabled(), "nothing goes to a key not trusted");
  await safetyNumberOtherThan(page, second);
  await trust.click();
  await box.and(page.locator(":enabled")).waitFor();
  // The warning went with its button; its error does not wait for the next key change.
  assert.equal(await page.locator("#trust-error").textContent(), "");
  await sendFromPage(page, "to the third key, compared");
  await bob3.expect({ type: "message", text: "to the third key, compared" });
}

/**
 * "Join" pressed on an invitation declined meanwhile in another tab (this tab had not heard):
 * the error is said beside it and its card stays, inert, until "Dismiss". "Join" while the
 * creator is away fails beside it too, and the card can be answered again.
 */
async function joinRefused(scene: Scene): Promise<void> {
  const [alice, ben] = await scene.join("alice-jr", "ben-jr");
  const web = await scene.web(alice);
  const benChat = await scene.json(ben);
  const { page, hold, release } = await scene.gatedPage(web);
  const card = (p: Page, room: string) => roomCard(p, ben.name, room);
  await inviteToRooms(benChat, [page], { invitee: alice.name, rooms: ["#team", "#side"] });
  const other = await scene.page(web);
  await card(other, "#team").waitFor();
  await listen(page);
  hold();
  await card(other, "#team").getByRole("button", { name: "Decline", exact: true }).click();
  await benChat.expect({
    type: "warning",
    message: `"${alice.name}" declined the invitation to #team`,
  });
  const joinTeam = card(page, "#team").getByRole("button", { name: "Join", exact: true });
  await joinTeam.click();
  release();
  await failsBeside(
    page,
    joinTeam,
    /Cannot join #team: You declined the invitation to #team from "ben-jr"/,
    "invitations-error",
  );
  await page.locator("#notices")
    .getByText(`Declined the invitation to #team from "${ben.name}"`, { exact: true }).waitFor();
  for (const name of ["Join", "Decline"]) {
    assert.equal(
      await card(page, "#team").getByRole("button", { name, exact: true })
        .getAttribute("aria-disabled"),
      "true",
      name,
    );
  }
  await card(page, "#team").getByRole("button", { name: "Dismiss" }).click();
  await card(page, "#team").waitFor({ state: "detached" });
  assert.equal(await page.locator("#invitations-error").textContent(), "");

  await benChat.stop();
  await page.getByRole("button", { name: /ben-jr offline/ }).waitFor();
  const side = card(page, "#side").getByRole("button", { name: "Join", exact: true });
  await side.click();
  await failsBeside(
    page,
    side,
    /Cannot join #side: Not connected to "ben-jr", who invited you/,
    "invitations-error",
  );
  assert.equal(await side.getAttribute("aria-disabled"), null);
  assert.equal(await card(page, "#side").getByRole("button", { name: "Dismiss" }).count(), 0);
}

/**
 * "Decline" pressed in one tab while the "Join" of the same invitation pressed in another is on
 * its way (the creator has not answered yet): refused beside the button, nothing is told to the
 * creator, and the room is joined once it answers.
 */
async function declineWhileJoining(scene: Scene): Promise<void> {
  const [alice, ben] = await scene.join("alice-dj", "ben-dj");
  const web = await scene.web(alice);
  const benChat = await scene.json(ben);
  const [page, other] = [await scene.page(web), await scene.page(web)];
  const card = (p: Page) => roomCard(p, ben.name, "#team");
  await inviteToRooms(benChat, [page, other], { invitee: alice.name, rooms: ["#team"] });
  await listen(page);
  // Ben cannot answer the join until he goes on: it stays under way.
  Deno.kill(benChat.pid, "SIGSTOP");
  try {
    await card(other).getByRole("button", { name: "Join", exact: true }).click();
    // Its reply came (the tab opens the room's conversation): the join is under way.
    await other.locator("#conversations").getByText("#team").waitFor();
    const decline = card(page).getByRole("button", { name: "Decline", exact: true });
    await decline.click();
    await failsBeside(
      page,
      decline,
      /Cannot decline #team: A join of the invitation to #team from "ben-dj" is under way/,
      "invitations-error",
    );
  } finally {
    Deno.kill(benChat.pid, "SIGCONT");
  }
  await benChat.expect({ type: "room_member", room: "#team", name: alice.name, change: "joined" });
  for (const p of [page, other]) await card(p).waitFor({ state: "detached" });
  assert.equal(
    benChat.events.filter((e) => e.type === "warning" && /declined/.test(String(e.message))).length,
    0,
  );
}

/**
 * Two tabs answer one file offer at once: the tab that lost says why beside its "Accept file"
 * (its card stays, inert, until "Dismiss"), whether it heard the other's answer before its own
 * refusal (a tab that had not heard) or after (both sent while the client was stopped).
 */
async function offerRace(scene: Scene): Promise<void> {
  const [alice, bob] = await scene.join("alice-or", "bob-or");
  const web = await scene.web(alice, ["--auto-accept", "0"]);
  const b = await scene.json(bob);
  const { page, hold, release } = await scene.gatedPage(web);
  await startChat(page, alice, b);
  const other = await scene.page(web);
  await offerFiles(scene, b, [page, other]);
  await listen(page);
  await listen(other);
  const lost = (name: string) => new RegExp(`Cannot accept file ${name}: No file offer`);

  hold();
  await offerCard(other, "first.bin").getByRole("button", { name: "Accept file" }).click();
  await offerCard(other, "first.bin").waitFor({ state: "detached" });
  const accept = offerCard(page, "first.bin").getByRole("button", { name: "Accept file" });
  await accept.click();
  release();
  await failsBeside(page, accept, lost("first\\.bin"), "offers-error");
  await timeline(page).getByText("first.bin").waitFor();
  await offerCard(page, "first.bin").getByRole("button", { name: "Dismiss" }).click();
  await offerCard(page, "first.bin").waitFor({ state: "detached" });

  web.signal("SIGSTOP");
  try {
    for (const p of [page, other]) {
      await offerCard(p, "second.bin").getByRole("button", { name: "Accept file" }).click();
    }
  } finally {
    web.signal("SIGCONT");
  }
  await timeline(page).getByText("second.bin").waitFor();
  const failed = async (p: Page) => {
    const button = offerCard(p, "second.bin").getByRole("button", { name: "Accept file" });
    return await button.count() > 0 &&
      lost("second\\.bin").test(await description(button).catch(() => ""));
  };
  await waitUntil(
    async () => (await failed(page)) || (await failed(other)),
    "the tab that lost says why",
  );
  const [loser, winner] = await failed(page) ? [page, other] : [other, page];
  await failsBeside(
    loser,
    offerCard(loser, "second.bin").getByRole("button", { name: "Accept file" }),
    lost("second\\.bin"),
    "offers-error",
  );
  await offerCard(winner, "second.bin").waitFor({ state: "detached" });
  await offerCard(loser, "second.bin").getByRole("button", { name: "Dismiss" }).waitFor();
}

// Relative luminance and contrast ratio (WCAG 2.2, 1.4.3 and 1.4.11).
function luminance(rgb: number[]): number {
  const [r, g, b] = rgb.map((v) => {
    const c = v / 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

function contrast(a: number[], b: number[]): number {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}

/**
 * The colours of what a selector finds: its text colour (or, with `what`, its outline,
 * border or placeholder colour) and the background behind it (the nearest opaque one).
 */
function colours(
  page: Page,
  selector: string,
  what: "color" | "outline" | "border" | "placeholder" = "color",
): Promise<{ fg: number[]; bg: number[] }> {
  return page.evaluate<{ fg: number[]; bg: number[] }>(`(() => {
    const el = document.querySelector(${JSON.stringify(selector)});
    if (!el) throw new Error("nothing matches " + ${JSON.stringify(selector)});
    const rgb = (s) => s.match(/[\\d.]+/g).map(Number);
    const style = ${JSON.stringify(what)} === "placeholder"
      ? getComputedStyle(el, "::placeholder")
      : getComputedStyle(el);
    const fg = ${JSON.stringify(what)} === "outline"
      ? style.outlineColor
      : ${JSON.stringify(what)} === "border" ? style.borderTopColor : style.color;
    // An outline is drawn outside the element: it is seen against its parent.
    let n = ${JSON.stringify(what)} === "outline" ? el.parentElement : el;
    for (; n; n = n.parentElement) {
      const c = rgb(getComputedStyle(n).backgroundColor);
      if (c.length === 3 || c[3] === 1) return { fg: rgb(fg).slice(0, 3), bg: c.slice(0, 3) };
    }
    return { fg: rgb(fg).slice(0, 3), bg: rgb(getComputedStyle(document.documentElement)
      .backgroundColor).slice(0, 3) };
  })()`);
}

/** Text at 4.5:1, focus rings, field borders and the delivered mark's colour at 3:1 at least. */
async function contrastBothSchemes(scene: Scene): Promise<void> {
  const [alice, bob, carol] = await scene.join("alice-c", "bob-c", "carol-c");
  const web = await scene.web(alice, ["--auto-accept", "0"]);
  const [b, c] = await Promise.all([scene.json(bob), scene.json(carol)]);
  const first = await scene.page(web);
  await startChat(first, alice, b);
  await first.getByRole("textbox", { name: "Message", exact: true }).fill("from alice");
  await first.getByRole("textbox", { name: "Message", exact: true }).press("Enter");
  await b.expect({ type: "message", text: "from alice" });
  await b.send("from bob");
  const path = join(scene.dir, "report.txt");
  await Deno.writeTextFile(path, "a report");
  await b.send(`/file ${path}`);
  await c.send(`/chat ${alice.name}`);
  await c.expect({ type: "invited" });

  const failures: string[] = [];
  for (const scheme of ["light", "dark"] as const) {
    const { context, page } = await openIn(scene, web, { colorScheme: scheme });
    try {
      await page.getByRole("button", { name: new RegExp(bob.name) }).click();
      await timeline(page).getByText("from bob").waitFor();
      await page.locator(".item.mine .state.delivered").waitFor();
      await page.getByRole("button", { name: "Accept file" }).waitFor();
      const check = async (
        label: string,
        selector: string,
        min: number,
        what?: "outline" | "border" | "placeholder",
      ) => {
        const { fg, bg } = await colours(page, selector, what);
        const ratio = contrast(fg, bg);
        if (ratio < min) {
          failures.push(
            `${scheme}: ${label} ${ratio.toFixed(2)}:1 < ${min}:1 (rgb ${fg} on rgb ${bg})`,
          );
        }
      };
      await check("the name", "#me", 4.5);
      await check("a label of the identity", ".identity dt", 4.5);
      await check("a peer's message", ".item.theirs .text", 4.5);
      await check("our message", ".item.mine .text", 4.5);
      await check("the time on our message", ".item.mine .meta", 4.5);
      await check("the time on a peer's message", ".item.theirs .meta", 4.5);
      await check("the delivered mark", ".item.mine .state.delivered", 4.5);
      await check("online", ".conv .dot.on", 4.5);
      await check("the status", "#peer-status", 4.5);
      await check("a button", "#send", 4.5);
      await check("an offer card", ".offers li p", 4.5);
      await check("an invitation card", ".invitations li span", 4.5);
      await check("the placeholder", "#chat-with", 4.5, "placeholder");
      await check("the border of a text field", "#chat-with", 3, "border");
      await check("the border of the message box", "#message", 3, "border");
      // Focus rings, reached by keyboard (:focus-visible).
      for (
        const [label, role, name] of [
          ["Chat with", "textbox", "Chat with"],
          ["a conversation", "button", new RegExp(`^${bob.name} `)],
          ["Accept (on a card)", "button", "Accept"],
          ["Accept file (on a card)", "button", "Accept file"],
          ["the message box", "textbox", "Message"],
        ] as const
      ) {
        await tabTo(page, role, name);
        const id = `focus-${label.replace(/\W+/g, "-")}`;
        await page.evaluate(`document.activeElement.dataset.check = ${JSON.stringify(id)}`);
        await check(`the focus ring on ${label}`, `[data-check="${id}"]`, 3, "outline");
      }
    } finally {
      await context.close();
    }
  }
  assert.deepEqual(failures, []);
}

/** At 360 px and at 200 % zoom (1280 × 800 at 2×: 640 CSS px) nothing scrolls sideways. */
async function reflow(scene: Scene): Promise<void> {
  // Long names: 40 characters without a place to break.
  const [alice, bob] = await scene.join(
    `alice-${"r".repeat(34)}`,
    `bob-${"w".repeat(36)}`,
  );
  const web = await scene.web(alice, ["--auto-accept", "0"]);
  const b = await scene.json(bob);
  const first = await scene.page(web);
  await startChat(first, alice, b);
  await b.send(`a long word: ${"x".repeat(120)}`);
  const path = join(scene.dir, `${"f".repeat(80)}.txt`);
  await Deno.writeTextFile(path, "a file with a long name");
  await b.send(`/file ${path}`);
  await first.getByRole("button", { name: "Accept file" }).waitFor();

  const problems: string[] = [];
  for (
    const [label, viewport, deviceScaleFactor] of [
      ["360 px", { width: 360, height: 740 }, 1],
      ["200 % zoom", { width: 640, height: 400 }, 2],
    ] as const
  ) {
    const { context, page } = await openIn(scene, web, { viewport, deviceScaleFactor });
    try {
      await page.getByRole("button", { name: new RegExp(bob.name) }).click();
      await timeline(page).getByText("a long word").waitFor();
      await page.getByRole("button", { name: "Accept file" }).waitFor();
      const wide = await page.evaluate<number>("document.documentElement.scrollWidth");
      if (wide > viewport.width) {
        // The innermost element that reaches furthest right is the one to blame.
        const culprit = await page.evaluate<string>(`(() => {
          let worst = document.body, right = 0;
          for (const e of document.body.querySelectorAll("*")) {
            const r = e.getBoundingClientRect().right;
            if (r >= right) [worst, right] = [e, r];
          }
          return worst.tagName.toLowerCase() + "." + worst.className + " in " +
            worst.parentElement.tagName.toLowerCase() + "." + worst.parentElement.className;
        })()`);
        problems.push(`${label}: the page is ${wide} px wide (${culprit})`);
      }
      const clipped = await page.evaluate<string[]>(`[...document.querySelectorAll(
        "button, a, input, textarea, label, h1, h2, h3, .item, li")]
        .filter((e) => e.getClientRects().length > 0 && !e.classList.contains("file-input")
          && !e.classList.contains("skip"))
        .filter((e) => {
          const r = e.getBoundingClientRect();
          return r.left < -1 || r.right > innerWidth + 1 || e.scrollWidth > e.clientWidth + 1
            && getComputedStyle(e).overflowX === "visible" && e.clientWidth > 0;
        })
        .map((e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + "." + e.className +
          " in " + e.parentElement.id + " (" + Math.round(e.getBoundingClientRect().right) + ") " +
          (e.textContent ?? "").trim().slice(0, 40))`);
      for (const c of clipped) problems.push(`${label}: ${c} is cut off or sticks out`);
      // Targets of at least 24 × 24 CSS px (WCAG 2.2, 2.5.8); links inside a sentence are exempt.
      const small = await page.evaluate<string[]>(`[...document.querySelectorAll(
        "button, input, textarea, .file-label")]
        .filter((e) => e.getClientRects().length > 0 && !e.classList.contains("file-input"))
        .filter((e) => {
          const r = e.getBoundingClientRect();
          return r.width < 24 || r.height < 24;
        })
        .map((e) => e.tagName.toLowerCase() + " " + (e.textContent ?? "").trim().slice(0, 30))`);
      for (const c of small) problems.push(`${label}: ${c} is smaller than 24 × 24 px`);
    } finally {
      await context.close();
    }
  }
  assert.deepEqual(problems, []);
}

await webTest("web face for keyboard and screen-reader users, WCAG 2.2 AA, in chromium", [
  [
    "every control has its name, the landmarks are there, buttons are buttons, html lang is en, nothing moves under reduced motion, and the title names the conversation and counts unread messages",
    namesAndTitle,
  ],
  [
    "focus stays on a conversation button while the list redraws and on an offline conversation it opened, moves on from Mark verified once done, to the list's heading or the message box when an offer card goes, and to the messages when the peer leaves",
    focusKept,
  ],
  [
    "live regions say each message and file once, keystrokes and progress ticks not at all, a delivery mark without the message, nothing old on a switch, Connected once a peer, each notice alone, and a message to a conversation not open as its unread count; each message is an article of the log",
    liveRegions,
  ],
  [
    "the key-change warning is an assertive alert, and a reconnection to a stalled client reads neither the kept warning nor the messages again",
    reconnectQuietly,
  ],
  [
    'a failed "Chat with", a failed room command and a failed "Send file" are said as alerts and described by the control that failed',
    errorsTied,
  ],
  [
    '"Accept file" refused by the quota is said as an alert and described by that button, not as a notice; its card stays until Dismiss',
    cardErrorsTied,
  ],
  [
    "an invitation taken in another tab while its Accept has focus leaves focus on the Invitations heading, never on another sender's Accept",
    invitationGoes,
  ],
  [
    "text, the delivered mark, field borders and focus rings meet WCAG AA contrast in light and dark",
    contrastBothSchemes,
  ],
  [
    "at 360 px and at 200 % zoom, long names and words scroll nothing sideways and cut off no control, and every target is 24 × 24 px at least",
    reflow,
  ],
]);

await webTest(
  "web face in chromium: a button pressed on what the client changed meanwhile says why beside it",
  [
    [
      "Mark verified pressed in a tab that has not heard of a new key, trusted in another tab, is refused beside the button and verifies nothing",
      verifyRefused,
    ],
    [
      "Trust new key pressed for a key that changed again is refused beside the button and trusts nothing until pressed again",
      trustRefused,
    ],
    [
      "Join on an invitation declined in another tab fails beside the button and its card stays until Dismiss; Join with the creator away fails beside it too",
      joinRefused,
    ],
    [
      "Decline pressed while a Join of the same invitation in another tab is on its way fails beside Decline, the creator hears no decline and the room is joined",
      declineWhileJoining,
    ],
    [
      "two tabs answering one file offer at once: the tab that lost says why beside its Accept file, in either order of the news",
      offerRace,
    ],
  ],
);

await webTest("web face in chromium: every tab of the page follows the client", [
  [
    "a room invitation declined or joined in another tab goes from this tab too, its focused Decline or Join handing focus to the Invitations heading or the message box",
    roomInvitationGoes,
  ],
  [
    "a file offer declined or accepted in another tab goes from this tab too, its focused Accept file handing focus to the list's heading",
    offerGoes,
  ],
  [
    "Trust new key and Mark verified done in another tab update this tab: the warning goes, the message box opens, the peer shows verified, focus on the message box",
    keyTrustedElsewhere,
  ],
]);
