import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import net from "node:net";
import {
  Relay,
  RELAY_HIGH_WATER_BYTES,
  RELAY_PROTOCOL,
  relayError,
  relayPairBudget,
  type RelaySide,
} from "./relay.ts";
import { flood } from "../tests/_helpers.ts";

// The relay on real loopback TCP sockets: each "side" is the server end of a connection
// whose client end the test reads and writes, as the service hands the relay an upgraded socket.

interface Client {
  socket: net.Socket;
  received: () => string;
  closed: Promise<void>;
}

async function withSockets(fn: (pair: () => Promise<[net.Socket, Client]>) => Promise<void>) {
  const accepted: net.Socket[] = [];
  const waiting: Array<(s: net.Socket) => void> = [];
  const server = net.createServer((s) => {
    const w = waiting.shift();
    if (w) w(s);
    else accepted.push(s);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  const open: net.Socket[] = [];
  const pair = async (): Promise<[net.Socket, Client]> => {
    const serverSide = new Promise<net.Socket>((resolve) => {
      const s = accepted.shift();
      if (s) resolve(s);
      else waiting.push(resolve);
    });
    const socket = net.connect(port, "127.0.0.1");
    let text = "";
    socket.on("data", (d: Uint8Array) => text += new TextDecoder().decode(d));
    socket.on("error", () => {});
    const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    const side = await serverSide;
    side.on("error", () => {});
    open.push(socket, side);
    return [side, { socket, received: () => text, closed }];
  };
  try {
    await fn(pair);
  } finally {
    for (const s of open) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

async function until(what: string, ok: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) assert.fail(`not within ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function side(socket: net.Socket, invitation: number, name: string, peer: string): RelaySide {
  return { socket, invitation, name, peer, head: new Uint8Array() };
}

Deno.test("Relay.join() holds the first side, then answers 101 to both and splices the two streams both ways, with a log line for open and close", async () => {
  await withSockets(async (pair) => {
    const logs: string[] = [];
    const tapped: string[] = [];
    const relay = new Relay({
      log: (l) => logs.push(l),
      tap: (c, from) => tapped.push(`${from}:${new TextDecoder().decode(c)}`),
    });
    const [a, alice] = await pair();
    const [b, bob] = await pair();
    assert.equal(relay.join(side(b, 7, "bob", "alice")), "waiting");
    assert.equal(relay.pairs, 1);
    const head = { ...side(a, 7, "alice", "bob"), head: new TextEncoder().encode("early ") };
    assert.equal(relay.join(head), "spliced");
    await until(
      "both got 101",
      () =>
        alice.received().startsWith("HTTP/1.1 101 ") && bob.received().startsWith("HTTP/1.1 101 "),
    );
    bob.socket.write("hello alice");
    alice.socket.write("bytes");
    await until("bob's bytes at alice", () => alice.received().endsWith("hello alice"));
    await until("alice's bytes at bob", () => bob.received().endsWith("early bytes"));
    assert.ok(tapped.includes("alice:early "), tapped.join("|"));
    assert.equal(relay.usedToday("alice"), "early bytes".length + "hello alice".length);
    alice.socket.destroy();
    await bob.closed;
    await until("the pair is gone", () => relay.pairs === 0);
    assert.deepEqual(logs[0], "e2e-chat-ca: relay opened bob<->alice invitation 7");
    assert.match(
      logs[1],
      /^e2e-chat-ca: relay closed bob<->alice invitation 7: 11 bytes bob->alice, 11 bytes alice->bob, [\d.]+s \(alice left\)$/,
    );
    assert.ok(!logs.join("\n").includes("hello"), "the log holds no content");
  });
});

Deno.test("Relay.join() refuses a member past its cap of sessions, and anyone once the total cap is reached, with ERR_RATE_LIMITED", async () => {
  await withSockets(async (pair) => {
    const relay = new Relay({ pairsPerMember: 2, maxPairs: 3 });
    for (const i of [1, 2]) {
      assert.equal(relay.join(side((await pair())[0], i, "bob", "alice")), "waiting");
    }
    assert.deepEqual(relay.join(side((await pair())[0], 3, "bob", "carol")), {
      status: 429,
      code: "ERR_RATE_LIMITED",
      message: '"bob" has 2 relay sessions, at most 2',
    });
    assert.equal(relay.join(side((await pair())[0], 5, "carol", "dave")), "waiting");
    assert.deepEqual(relay.join(side((await pair())[0], 6, "erin", "frank")), {
      status: 503,
      code: "ERR_RATE_LIMITED",
      message: "The relay is full: 3 sessions, at most 3",
    });
    // The second side of a waiting session is always let in: it takes no new place.
    assert.equal(relay.join(side((await pair())[0], 1, "alice", "bob")), "spliced");
    relay.close();
  });
});

Deno.test("Relay.join() counts a waiting session for the member who waits only: waits naming a member do not lock it out, its spliced sessions do, and it alone hears of its cap", async () => {
  await withSockets(async (pair) => {
    const relay = new Relay({ pairsPerMember: 2 });
    // mallory waits, twice, on invitations to alice that alice never takes up.
    for (const i of [1, 2]) {
      assert.equal(relay.join(side((await pair())[0], i, "mallory", "alice")), "waiting");
    }
    // alice still waits for carol, and carol for alice.
    assert.equal(relay.join(side((await pair())[0], 3, "alice", "carol")), "waiting");
    assert.equal(relay.join(side((await pair())[0], 4, "dave", "alice")), "waiting");
    assert.equal(relay.join(side((await pair())[0], 3, "carol", "alice")), "spliced");
    assert.equal(relay.join(side((await pair())[0], 4, "alice", "dave")), "spliced");
    // Spliced, both sessions are alice's: erin, who invited her, waits as for anyone (a
    // refusal would tell erin that alice relays with others), and alice is refused when she
    // comes for a third.
    assert.equal(relay.join(side((await pair())[0], 5, "erin", "alice")), "waiting");
    assert.deepEqual(relay.join(side((await pair())[0], 5, "alice", "erin")), {
      status: 429,
      code: "ERR_RATE_LIMITED",
      message: '"alice" has 2 relay sessions, at most 2',
    });
    assert.equal(relay.pairs, 5, "erin still waits (and mallory twice, and two spliced)");
    relay.close();
  });
});

Deno.test("Relay.join() lets two members have at most 2 sessions together, a newer one ending their oldest, so a member bob invited cannot fill bob's cap by waiting again and again", async () => {
  await withSockets(async (pair) => {
    const logs: string[] = [];
    const relay = new Relay({ pairsPerMember: 3, log: (l) => logs.push(l) });
    // mallory waits on bob's invitation 1 three times over, and bob comes each time.
    const bobs: Client[] = [];
    for (let i = 0; i < 3; i++) {
      assert.equal(relay.join(side((await pair())[0], 1, "mallory", "bob")), "waiting");
      const [b, bob] = await pair();
      assert.equal(relay.join(side(b, 1, "bob", "mallory")), "spliced");
      bobs.push(bob);
    }
    // The third took the place of the first: two of bob's three places are hers, no more.
    assert.equal(relay.pairs, 2);
    await bobs[0].closed;
    assert.match(
      logs.join("\n"),
      /relay closed mallory<->bob invitation 1: .*\(a newer session of the two took its place\)/,
    );
    // So alice still waits for bob, and bob for carol.
    assert.equal(relay.join(side((await pair())[0], 2, "alice", "bob")), "waiting");
    assert.equal(relay.join(side((await pair())[0], 3, "bob", "carol")), "waiting");
    assert.equal(relay.pairs, 4);
    // The other way (bob waits on mallory's invitation 4): it counts for the two as well, and
    // takes the place of their oldest.
    assert.equal(relay.join(side((await pair())[0], 4, "bob", "mallory")), "waiting");
    await bobs[1].closed;
    // A wait that gives up its place is told why.
    const [m, mallory] = await pair();
    assert.equal(relay.join(side(m, 5, "mallory", "bob")), "waiting");
    assert.equal(relay.join(side((await pair())[0], 6, "mallory", "bob")), "waiting");
    await bobs[2].closed;
    const [m2, later] = await pair();
    assert.equal(relay.join(side(m2, 7, "mallory", "bob")), "waiting");
    await mallory.closed;
    assert.match(mallory.received(), /^HTTP\/1\.1 429 Too Many Requests\r\n/);
    assert.match(
      mallory.received(),
      /"\\"mallory\\" and \\"bob\\" have at most 2 relay sessions together: a newer one took the place of this one"/,
    );
    assert.equal(later.received(), "", "the newest waits");
    assert.equal(relay.pairs, 4);
    relay.close();
  });
});

Deno.test("Relay.join() holds no connection that closed before it came, and splices none to it", async () => {
  await withSockets(async (pair) => {
    const relay = new Relay();
    const [b, bob] = await pair();
    b.destroy();
    await bob.closed;
    assert.equal(relay.join(side(b, 1, "bob", "alice")), "gone");
    assert.equal(relay.pairs, 0);
    const [a, alice] = await pair();
    assert.equal(relay.join(side(a, 1, "alice", "bob")), "waiting");
    assert.equal(alice.received(), "");
    relay.close();
  });
});

Deno.test("Relay.join() gives up on a side whose peer does not come in time with a 504 and ERR_NETWORK", async () => {
  await withSockets(async (pair) => {
    const relay = new Relay({ waitMs: 100 });
    const [b, bob] = await pair();
    assert.equal(relay.join(side(b, 1, "bob", "alice")), "waiting");
    await bob.closed;
    assert.match(bob.received(), /^HTTP\/1\.1 504 Gateway Timeout\r\n/);
    assert.match(
      bob.received(),
      /\{"error":\{"code":"ERR_NETWORK","message":"\\"alice\\" did not join the relay in time"\}\}\n$/,
    );
    assert.equal(relay.pairs, 0);
  });
});

Deno.test("Relay.join() lets a member's newer connection take the place of its waiting one", async () => {
  await withSockets(async (pair) => {
    const relay = new Relay();
    const [b1, first] = await pair();
    const [b2] = await pair();
    assert.equal(relay.join(side(b1, 1, "bob", "alice")), "waiting");
    assert.equal(relay.join(side(b2, 1, "bob", "alice")), "waiting");
    await first.closed;
    assert.equal(relay.pairs, 1);
    relay.close();
  });
});

Deno.test("the relay closes a pair once a member's byte budget for the day is spent, and refuses that member afterwards, when it waits or comes, never the member who invited it", async () => {
  await withSockets(async (pair) => {
    const logs: string[] = [];
    const relay = new Relay({ bytesPerDay: 1000, log: (l) => logs.push(l) });
    const [a, alice] = await pair();
    const [b, bob] = await pair();
    relay.join(side(b, 1, "bob", "alice"));
    relay.join(side(a, 1, "alice", "bob"));
    await until("101", () => bob.received().startsWith("HTTP/1.1 101"));
    alice.socket.write("x".repeat(1500));
    await bob.closed;
    await alice.closed;
    assert.match(logs.at(-1)!, /\(byte budget spent\)$/);
    assert.ok(relay.usedToday("bob") > 1000);
    // carol, who invited bob, waits as for anyone; bob is refused when he comes.
    const [c] = await pair();
    assert.equal(relay.join(side(c, 2, "carol", "bob")), "waiting");
    const [b2] = await pair();
    assert.deepEqual(relay.join(side(b2, 2, "bob", "carol")), {
      status: 429,
      code: "ERR_RATE_LIMITED",
      message: `The relay's byte budget of "bob" for today is spent`,
    });
    const [b3] = await pair();
    assert.deepEqual(relay.join(side(b3, 3, "bob", "dave")), {
      status: 429,
      code: "ERR_RATE_LIMITED",
      message: `The relay's byte budget of "bob" for today is spent`,
    });
    relay.close();
  });
});

Deno.test("the relay closes a pair with no byte either way for its idle time", async () => {
  await withSockets(async (pair) => {
    const logs: string[] = [];
    const relay = new Relay({ idleMs: 150, log: (l) => logs.push(l) });
    const [a, alice] = await pair();
    const [b, bob] = await pair();
    relay.join(side(b, 1, "bob", "alice"));
    relay.join(side(a, 1, "alice", "bob"));
    await Promise.all([alice.closed, bob.closed]);
    assert.match(logs.at(-1)!, /\(idle\)$/);
  });
});

Deno.test("relayPairBudget() is a quarter of the connection cap, at least 1", () => {
  assert.equal(relayPairBudget(1024), 256);
  assert.equal(relayPairBudget(8), 2);
  assert.equal(relayPairBudget(2), 1);
});

Deno.test("Relay.awaitPickup() ends a wait with a 404 when the other side did not learn of it in time, and leaves it alone when it did", async () => {
  await withSockets(async (pair) => {
    const relay = new Relay();
    const [b, bob] = await pair();
    const [c, carol] = await pair();
    assert.equal(relay.join(side(b, 1, "bob", "alice")), "waiting");
    assert.equal(relay.join(side(c, 2, "carol", "alice")), "waiting");
    relay.awaitPickup(1, () => false, 50);
    relay.awaitPickup(2, () => true, 50);
    await bob.closed;
    assert.match(bob.received(), /^HTTP\/1\.1 404 Not Found\r\n/);
    assert.match(bob.received(), /"alice\\" is not online to come to the relay"/);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(carol.received(), "", "carol still waits");
    assert.equal(relay.pairs, 1);
    relay.close();
  });
});

Deno.test("relayError() closes the connection even when the client never closes its side", async () => {
  const server = net.createServer();
  const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  // Half-open: the client keeps its side open after the reply, as a hostile one may.
  const client = net.connect({
    port: (server.address() as net.AddressInfo).port,
    host: "127.0.0.1",
    allowHalfOpen: true,
  });
  let received = "";
  client.on("data", (d: Uint8Array) => received += new TextDecoder().decode(d));
  client.on("error", () => {});
  const socket = await accepted;
  try {
    relayError(socket, 401, "ERR_UNAUTHENTICATED", "This route needs a client certificate");
    await until("the service's side is closed", () => socket.destroyed, 15_000);
    assert.match(received, /^HTTP\/1\.1 401 Unauthorized\r\n/);
  } finally {
    client.destroy();
    socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

Deno.test("the relay ends spliced and waiting sessions of a member whose certificate is no longer current, and leaves the others", async () => {
  await withSockets(async (pair) => {
    const logs: string[] = [];
    const current = new Set(["A1", "B1", "C1", "D1"]);
    const relay = new Relay({
      log: (l) => logs.push(l),
      isCurrent: (serial) => Promise.resolve(current.has(serial)),
      revocationCheckMs: 20,
    });
    try {
      const [a, alice] = await pair();
      const [b, bob] = await pair();
      const [c, carol] = await pair();
      const [d, dave] = await pair();
      const [e, erin] = await pair();
      relay.join({ ...side(b, 1, "bob", "alice"), serial: "B1" });
      relay.join({ ...side(a, 1, "alice", "bob"), serial: "A1" });
      relay.join({ ...side(d, 2, "dave", "carol"), serial: "D1" });
      relay.join({ ...side(c, 2, "carol", "dave"), serial: "C1" });
      relay.join({ ...side(e, 3, "bob", "frank"), serial: "B1" }); // bob waits for frank
      assert.equal(relay.pairs, 3);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(relay.pairs, 3, "nothing is cut while every certificate is current");

      current.delete("B1"); // bob revoked
      await Promise.all([bob.closed, alice.closed, erin.closed]);
      assert.equal(relay.pairs, 1);
      assert.ok(!carol.socket.destroyed && !dave.socket.destroyed, "carol and dave stay joined");
      assert.ok(
        logs.some((l) =>
          /relay closed bob<->alice .*the certificate of bob is no longer valid/.test(l)
        ),
        logs.join("\n"),
      );
      assert.ok(
        logs.some((l) =>
          /relay wait of bob ended, invitation 3: its certificate is no longer valid/.test(l)
        ),
        logs.join("\n"),
      );
    } finally {
      relay.close();
    }
  });
});

Deno.test("Relay.cutRevoked() leaves sides without a serial alone, and returns how many sessions it ended", async () => {
  await withSockets(async (pair) => {
    const relay = new Relay();
    try {
      const [a] = await pair();
      const [b] = await pair();
      relay.join(side(b, 1, "bob", "alice"));
      relay.join(side(a, 1, "alice", "bob"));
      assert.equal(await relay.cutRevoked(() => Promise.resolve(false)), 0);
      assert.equal(relay.pairs, 1);
    } finally {
      relay.close();
    }
  });
});

// ---------------------------------------------------------------------------
// Memory: what the relay holds for receivers that do not read, all pairs together.

/** A spliced pair's two clients on real loopback TCP, and the relay's sides of them. */
interface RawPair {
  /** The sending client (node:net). */
  sender: net.Socket;
  /** The receiving client: Deno's own connection, which reads only when asked. */
  receiver: Deno.Conn;
  /** The relay's side of the sender. */
  a: net.Socket;
  /** The relay's side of the receiver. */
  b: net.Socket;
}

// `fn` opens pairs of clients (each is closed at the end), on one listener.
async function withRawPairs(fn: (open: () => Promise<RawPair>) => Promise<void>): Promise<void> {
  const accepted: Array<(s: net.Socket) => void> = [];
  const server = net.createServer((s) => {
    s.on("error", () => {});
    accepted.shift()?.(s);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  const pairs: RawPair[] = [];
  const next = () => new Promise<net.Socket>((resolve) => accepted.push(resolve));
  const open = async (): Promise<RawPair> => {
    const serverA = next();
    const sender = net.connect(port, "127.0.0.1");
    sender.on("error", () => {});
    const a = await serverA;
    const serverB = next();
    const receiver = await Deno.connect({ hostname: "127.0.0.1", port });
    const pair = { sender, receiver, a, b: await serverB };
    pairs.push(pair);
    return pair;
  };
  try {
    await fn(open);
  } finally {
    for (const p of pairs) {
      p.sender.destroy();
      p.a.destroy();
      p.b.destroy();
      try {
        p.receiver.close();
      } catch { /* closed already */ }
    }
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

// The most the relay's sockets held unsent at once, sampled every few ms until `stop()` (what
// node:net holds, not the relay's own count: so it shows the old code's growth too).
function sampleUnsent(sockets: net.Socket[]): { stop(): number } {
  let most = 0;
  const sample = () => {
    let now = 0;
    for (const s of sockets) now += s.writableLength;
    most = Math.max(most, now);
  };
  const timer = setInterval(sample, 2);
  return {
    stop() {
      clearInterval(timer);
      sample();
      return most;
    },
  };
}

const MiB = 1024 * 1024;
/** The relay's 101 (docs/API.md "Relay"), before what the other side sent. */
const SWITCHING = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n" +
  `Upgrade: ${RELAY_PROTOCOL}\r\n\r\n`;
/** The most one read of a socket gives in Deno 2.9.6 (what a side may add past the bound). */
const READ_BYTES = 64 * 1024;

Deno.test("spliced pairs whose receivers read nothing make the relay hold at most its buffer bound (plus a read a side): it stops reading their senders, then closes each pair as not reading", async () => {
  await withRawPairs(async (open) => {
    const logs: string[] = [];
    const maxBufferedBytes = 4 * MiB;
    const relay = new Relay({ maxBufferedBytes, stuckMs: 1_500, log: (l) => logs.push(l) });
    const pairs: RawPair[] = [];
    try {
      for (let i = 0; i < 16; i++) {
        const p = await open();
        assert.equal(relay.join(side(p.b, i, `bob${i}`, `alice${i}`)), "waiting");
        assert.equal(relay.join(side(p.a, i, `alice${i}`, `bob${i}`)), "spliced");
        pairs.push(p);
      }
      const unsent = sampleUnsent(pairs.flatMap((p) => [p.a, p.b]));
      const total = 64 * MiB;
      const taken = await Promise.all(pairs.map((p) => flood(p.sender, total)));
      const most = unsent.stop();
      const bound = maxBufferedBytes + 2 * pairs.length * READ_BYTES;
      assert.ok(most <= bound, `the relay's sockets held ${most} bytes unsent, bound ${bound}`);
      assert.ok(relay.buffered.peak <= bound, `relay.buffered.peak ${relay.buffered.peak}`);
      assert.ok(relay.buffered.peak >= maxBufferedBytes, "the pairs filled the buffer");
      // Reading stopped: the senders were held by TCP, not read on into the service's memory.
      for (const n of taken) assert.ok(n < total / 2, `a sender got ${n} bytes taken`);
      await until("every pair closed", () => relay.pairs === 0);
      for (let i = 0; i < pairs.length; i++) {
        assert.ok(
          logs.some((l) =>
            l.startsWith(`e2e-chat-ca: relay closed bob${i}<->alice${i} `) &&
            l.endsWith(`(bob${i} does not read)`)
          ),
          logs.join("\n"),
        );
      }
      assert.equal(relay.buffered.held, 0);
    } finally {
      relay.close();
    }
  });
});

Deno.test("a pair whose receiver reads gets every byte, in order, while pairs whose receivers read nothing hold the relay's whole buffer", async () => {
  await withRawPairs(async (open) => {
    const maxBufferedBytes = 2 * MiB;
    const relay = new Relay({ maxBufferedBytes, stuckMs: 60_000 });
    try {
      const stalled: RawPair[] = [];
      for (let i = 0; i < 4; i++) {
        const p = await open();
        relay.join(side(p.b, i, `bob${i}`, `alice${i}`));
        relay.join(side(p.a, i, `alice${i}`, `bob${i}`));
        stalled.push(p);
        flood(p.sender, 64 * MiB); // ends when the relay closes
      }
      await until("the buffer is full", () => relay.buffered.held >= maxBufferedBytes);

      const p = await open();
      relay.join(side(p.b, 9, "bob", "alice"));
      relay.join(side(p.a, 9, "alice", "bob"));
      const unsent = sampleUnsent([...stalled, p].flatMap((q) => [q.a, q.b]));
      const total = 32 * MiB;
      const sent = createHash("sha256");
      const writing = (async () => {
        for (let i = 0; i < total / MiB; i++) {
          const chunk = new Uint8Array(MiB).fill(i & 255);
          sent.update(chunk);
          if (!p.sender.write(chunk)) await new Promise((r) => p.sender.once("drain", r));
        }
      })();
      const [head, got] = [[] as number[], createHash("sha256")];
      let received = 0;
      const buffer = new Uint8Array(256 * 1024);
      while (received < total) {
        const n = await p.receiver.read(buffer);
        if (n === null) break;
        let bytes = buffer.subarray(0, n);
        // The 101's head first, up to its blank line.
        while (bytes.length && !head.join(",").endsWith("13,10,13,10")) {
          head.push(bytes[0]);
          bytes = bytes.subarray(1);
        }
        received += bytes.length;
        got.update(bytes);
      }
      await writing;
      assert.equal(received, total);
      assert.equal(got.digest("hex"), sent.digest("hex"));
      assert.match(new TextDecoder().decode(new Uint8Array(head)), /^HTTP\/1\.1 101 /);
      const most = unsent.stop();
      const bound = maxBufferedBytes + 2 * 5 * READ_BYTES;
      assert.ok(most <= bound, `${most} bytes unsent at once, bound ${bound}`);
      assert.equal(relay.pairs, 5, "the stalled pairs are still there");
    } finally {
      relay.close();
    }
  });
});

Deno.test("a receiver that stops reading for less than the stuck time, again and again, keeps its pair and gets every byte", async () => {
  await withRawPairs(async (open) => {
    const logs: string[] = [];
    const relay = new Relay({ stuckMs: 600, log: (l) => logs.push(l) });
    try {
      const p = await open();
      relay.join(side(p.b, 1, "bob", "alice"));
      relay.join(side(p.a, 1, "alice", "bob"));
      const total = 64 * MiB;
      const writing = flood(p.sender, total);
      const expected = total + SWITCHING.length;
      let received = 0;
      const read = async (bytes: number) => {
        const n = await p.receiver.read(new Uint8Array(bytes));
        assert.ok(n !== null, `the relay closed bob: ${logs.join("\n")}`);
        received += n;
      };
      // Four times: bob reads nothing for 400 ms (the relay stops reading alice meanwhile), then
      // takes 8 MiB at once.
      for (let round = 0; round < 4; round++) {
        await new Promise((resolve) => setTimeout(resolve, 400));
        for (const end = received + 8 * MiB; received < end;) await read(MiB);
      }
      while (received < expected) await read(MiB);
      assert.equal(await writing, total);
      assert.equal(received, expected);
      assert.equal(relay.pairs, 1, logs.join("\n"));
      assert.ok(relay.buffered.peak > RELAY_HIGH_WATER_BYTES, "the relay stopped reading alice");
    } finally {
      relay.close();
    }
  });
});
