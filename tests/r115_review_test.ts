/**
 * Attacker's review r115: repros that fail on main (see /work/notes/r115/report.md).
 *
 * @module
 */
import assert from "node:assert/strict";
import { encodeItem, newItemId, seal } from "../lib/cms.ts";
import { join } from "node:path";
import {
  invitePeer,
  joinUser,
  type Service,
  startChat,
  timeline,
  type User,
  waitUntil,
  webTest,
} from "./_browser.ts";

/** `from` seals `text` to `to` by hand, claiming it was sent at `sent`, and posts it. */
async function postMessageAt(
  service: Service,
  from: User,
  to: User,
  text: string,
  sent: Date,
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
  const posted = await service.request(`/v1/mailbox/${to.name}`, {
    method: "POST",
    body: der,
    headers: { "content-type": "application/cms" },
    cert,
    key,
  });
  assert.equal(posted.status, 200, posted.body);
}

webTest(
  "r115: a peer's mailbox message claiming a sending time is shown on the page where it arrived, not moved below the user's later messages",
  [
    ["future-dated mailbox message", async (scene) => {
      const [alice, bob] = await scene.join("alice", "bob");
      const web = await scene.web(alice);
      const bobClient = await scene.json(bob);
      const page = await scene.page(web);
      await startChat(page, alice, bobClient);
      // bob's answer, claimed sent 23 h 58 min from now: the page shows only HH:MM (a minute ago).
      await postMessageAt(
        scene.service,
        bob,
        alice,
        "Yes, I accept.",
        new Date(Date.now() + 86_280_000),
      );
      await timeline(page).locator(".item.theirs", { hasText: "Yes, I accept." }).waitFor({
        timeout: 40_000,
      });
      // alice asks after reading it.
      const box = page.getByRole("textbox", { name: "Message", exact: true });
      await box.fill("So you will NOT pay the 1,000 EUR?");
      await box.press("Enter");
      await page.locator(".item.mine", { hasText: "NOT pay" }).waitFor();
      await page.reload();
      await timeline(page).locator(".item.mine", { hasText: "NOT pay" }).waitFor();
      await timeline(page).locator(".item.theirs", { hasText: "Yes, I accept." }).waitFor();
      const texts = await timeline(page).locator(".item .text").allTextContents();
      // Arrival order (the history file's and the terminal's): bob's answer, then alice's question.
      assert.deepEqual(texts.slice(-2), ["Yes, I accept.", "So you will NOT pay the 1,000 EUR?"]);
    }],
  ],
);

webTest(
  "r115: the page still shows that a peer's key changed after another member's five refused mailbox items",
  [
    ["key-change warning flushed by notices", async (scene) => {
      const [alice, bobOld, mallory] = await scene.join("alice-k", "bob-k", "mallory-k");
      const web = await scene.web(alice);
      const page = await scene.page(web);
      const bob1 = await scene.json(bobOld);
      await startChat(page, alice, bob1);
      await bob1.stop();
      await page.getByRole("button", { name: /bob-k offline/ }).waitFor();
      // Someone with a new key for bob-k (a re-enrolment, a stolen invite) calls alice.
      const bobNew = await joinUser(scene.service, "bob-k", join(scene.dir, "bob-k-new"));
      const bob2 = await scene.json(bobNew);
      await invitePeer(page, alice, bob2);
      const notices = page.locator("#notices li");
      await notices.filter({ hasText: "CHANGED" }).waitFor();
      // The impostor leaves: the key-change alert goes with its connection.
      await bob2.stop();
      await page.getByRole("button", { name: /bob-k offline/ }).waitFor();
      // mallory posts five items alice's client refuses (dated two days ahead): five warnings.
      for (let i = 0; i < 5; i++) {
        await postMessageAt(
          scene.service,
          mallory,
          alice,
          `x${i}`,
          new Date(Date.now() + 2 * 86_400_000),
        );
      }
      await waitUntil(
        async () => (await notices.filter({ hasText: "mallory-k" }).count()) >= 5,
        "five warnings",
        40_000,
      );
      await page.reload();
      await page.getByRole("heading", { name: alice.name, exact: true, level: 1 }).waitFor();
      await notices.filter({ hasText: "mallory-k" }).first().waitFor();
      const shown = await notices.allTextContents();
      assert.ok(
        shown.some((n) => n.includes("CHANGED")) ||
          (await page.locator("#key-change:not([hidden])").count()) > 0,
        `nothing on the page says bob-k's key changed; notices: ${JSON.stringify(shown)}`,
      );
    }],
  ],
);

webTest(
  "r115: a file offer shows the name it would be saved under after the page is reloaded too, not the name the peer announced",
  [
    ["offer card after a reload", async (scene) => {
      const [alice, bob] = await scene.join("alice-o", "bob-o");
      const web = await scene.web(alice);
      const page = await scene.page(web);
      const b = await scene.json(bob);
      await startChat(page, alice, b);
      // 70 braille blanks push the real extension away from "invoice.pdf".
      const name = "invoice.pdf" + "\u2800".repeat(70) + ".sh";
      await Deno.mkdir(join(scene.dir, "x"), { recursive: true });
      const path = join(scene.dir, "x", name);
      await Deno.writeTextFile(path, "#!/bin/sh\necho pwned\n");
      await b.send(`/file ${path}`);
      const what = page.locator(".offers li p").first();
      await what.waitFor();
      const live = await what.textContent();
      assert.match(live!, /^bob-o offers invoice\.pdf \.sh \(/);
      await page.reload();
      await page.getByRole("heading", { name: alice.name, exact: true, level: 1 }).waitFor();
      await what.waitFor();
      assert.equal(await what.textContent(), live);
    }],
  ],
);

webTest(
  "r115: a received file is shown (and offered for download) under the name it was saved under, not the name the peer announced",
  [
    ["file item's name", async (scene) => {
      const [alice, bob] = await scene.join("alice-f", "bob-f");
      const web = await scene.web(alice);
      const page = await scene.page(web);
      const b = await scene.json(bob);
      await startChat(page, alice, b);
      const name = "invoice.pdf" + "\u2800".repeat(70) + ".sh";
      await Deno.mkdir(join(scene.dir, "x"), { recursive: true });
      const path = join(scene.dir, "x", name);
      await Deno.writeTextFile(path, "#!/bin/sh\necho pwned\n");
      await b.send(`/file ${path}`);
      const card = page.locator(".offers li").first();
      await card.getByRole("button", { name: "Accept file" }).click();
      await card.waitFor({ state: "detached" });
      await b.expect({ type: "delivered", to: alice.name });
      const saved = [...Deno.readDirSync(join(alice.home, "downloads"))].map((e) => e.name)
        .filter((n) => !n.startsWith("."));
      assert.deepEqual(saved, ["invoice.pdf .sh"]);
      const shown = timeline(page).locator(".file-name").last();
      await shown.waitFor();
      assert.equal(await shown.textContent(), "invoice.pdf .sh");
    }],
  ],
);
