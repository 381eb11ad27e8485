/**
 * A hostile member writing to another through the CA's mailbox (docs/API.md
 * "Mailbox", docs/SECURITY.md): items it seals and signs by hand, with its own
 * valid certificate, that a client would never send. What tests/mailbox_test.ts
 * does not try: the limits of the peer protocol, which the CA cannot check on
 * items it cannot read.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { encodeItem, newItemId, seal } from "../lib/cms.ts";
import { MAX_TEXT_CHARS } from "../lib/frames.ts";
import { ChatClient, stopAll, waitUntil } from "./_harness.ts";
import { joinUser, type User } from "./_chat_helpers.ts";
import { initCa, type Service, startService } from "./_service_helpers.ts";

const MAILBOX_MS = 30_000;

/** `from` seals `text` as a message item to `to` by hand and posts it; asserts the CA took it. */
async function postMessage(service: Service, from: User, to: User, text: string): Promise<void> {
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
      sent: new Date(),
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

Deno.test("a message through the mailbox longer than a peer may send (65,536 characters) is refused with a warning, and the next one arrives", async () => {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-hostile-mailbox-" });
  let service: Service | undefined;
  const clients: ChatClient[] = [];
  try {
    const home = join(dir, "ca-home");
    await initCa(home);
    service = await startService(home, { args: ["--crl-port", "0", "--enroll-rate", "1000"] });
    const [mallory, bob] = await Promise.all(
      ["mallory", "bob"].map((n) => joinUser(service!, n, join(dir, n))),
    );
    const bobClient = await ChatClient.start(bob);
    clients.push(bobClient);
    const mark = bobClient.mark();
    // 4 MiB of text: within the CA's item size (a file's 8 MiB), 64 times a peer's message.
    await postMessage(service, mallory, bob, "A".repeat(4 * 1024 * 1024));
    await bobClient.expect(
      (e) =>
        e.type === "warning" &&
        String(e.message) ===
          `Refused a mailbox item said to be from "mallory": its text is longer than ${MAX_TEXT_CHARS} characters`,
      MAILBOX_MS,
    );
    await postMessage(service, mallory, bob, "A".repeat(MAX_TEXT_CHARS));
    const shown = await bobClient.expect({ type: "message", from: "mallory" }, MAILBOX_MS);
    assert.equal(String(shown.text).length, MAX_TEXT_CHARS);
    assert.equal(bobClient.since(mark, { type: "message" }).length, 1);
    // The refused item is gone from the CA too (acknowledged, not tried again).
    await waitUntil(async () => {
      try {
        return (await Array.fromAsync(Deno.readDir(join(service!.caDir, "mailbox", "bob"))))
          .filter((e) => e.name.endsWith(".cms")).length === 0;
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return true;
        throw e;
      }
    }, "bob's mailbox at the CA empty");
  } finally {
    await stopAll(clients);
    await service?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
