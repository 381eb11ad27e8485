import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { join } from "node:path";
import { withTempDir } from "../tests/_helpers.ts";
import {
  addressKey,
  connectionBudget,
  type ConnectionLimits,
  deadline,
  freeDescriptors,
  guardConnections,
  ListenerGroup,
  listenerShare,
  MAX_CONNECTIONS_CEILING,
  MIN_CONNECTIONS,
} from "./connections.ts";

/** A throwaway self-signed P-256 key and certificate made by the real openssl. */
async function selfSigned(dir: string): Promise<{ key: string; cert: string }> {
  const out = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-keyout",
      join(dir, "k.pem"),
      "-out",
      join(dir, "c.pem"),
      "-subj",
      "/CN=guard",
      "-days",
      "1",
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  return {
    key: await Deno.readTextFile(join(dir, "k.pem")),
    cert: await Deno.readTextFile(join(dir, "c.pem")),
  };
}

/** A TLS server on 127.0.0.1 guarded with `limits`; every finished handshake is held open. */
async function guarded(
  own: { key: string; cert: string },
  limits: ConnectionLimits,
): Promise<{ server: tls.Server; port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = tls.createServer(
    { ...own, minVersion: "TLSv1.3" },
    (s) => s.on("error", () => {}),
  );
  server.on("connection", (s: net.Socket) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  guardConnections(server, limits);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  return {
    server,
    port: (server.address() as net.AddressInfo).port,
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

/** A raw TCP connection; `closed` resolves with the ms it stayed open. */
function rawFrom(port: number) {
  const started = Date.now();
  const socket = net.connect({ host: "127.0.0.1", port });
  socket.on("error", () => {});
  socket.on("data", () => {});
  const connected = new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  const closed = new Promise<number>((resolve) =>
    socket.once("close", () => resolve(Date.now() - started))
  );
  let isClosed = false;
  closed.then(() => isClosed = true);
  return { socket, connected, closed, isClosed: () => isClosed };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

Deno.test("freeDescriptors() counts the files this process can still open, and connectionBudget() keeps a quarter of them, within bounds", async () => {
  const free = freeDescriptors();
  assert.ok(
    Number.isSafeInteger(free) && free >= 64 && free <= 4 * MAX_CONNECTIONS_CEILING,
    `${free}`,
  );
  // Under ulimit -n 64, a child counts fewer than 64 (Deno itself holds some).
  const code =
    'import { freeDescriptors } from "./lib/connections.ts"; console.log(freeDescriptors());';
  const out = await new Deno.Command("sh", {
    args: ["-c", 'ulimit -n 64 && exec "$0" eval "$1"', Deno.execPath(), code],
    stdout: "piped",
  }).output();
  const counted = Number(new TextDecoder().decode(out.stdout).trim());
  assert.ok(counted > 8 && counted < 64, `counted ${counted} under ulimit -n 64`);
  assert.equal(connectionBudget(256), 64);
  assert.equal(connectionBudget(1024), 256);
  assert.equal(connectionBudget(10), MIN_CONNECTIONS);
  assert.equal(connectionBudget(4 * 1_048_576), MAX_CONNECTIONS_CEILING);
  assert.equal(connectionBudget(Number.MAX_SAFE_INTEGER), MAX_CONNECTIONS_CEILING);
});

Deno.test("a listener's share is a quarter of the budget, never below 8 nor above its own cap", () => {
  assert.equal(listenerShare(57, 64), 14);
  assert.equal(listenerShare(256, 64), 64);
  assert.equal(listenerShare(1024, 64), 64);
  assert.equal(listenerShare(1024, 32), 32);
  assert.equal(listenerShare(20, 64), MIN_CONNECTIONS);
  assert.equal(listenerShare(0, 64), MIN_CONNECTIONS);
});

Deno.test("guardConnections() closes connections past the total and the per-address cap at once, reports it, and accepts again once one closes", async () => {
  await withTempDir(async (dir) => {
    const own = await selfSigned(dir);
    for (
      const [limits, report] of [
        [
          { maxConnections: 3, maxPerAddress: 100 },
          /^connection cap reached: 3 connections open, at most 3; refused 1 connection since the last report$/,
        ],
        [
          { maxConnections: 100, maxPerAddress: 3 },
          /^connection cap reached: 3 connections open from 127\.0\.0\.1, at most 3; refused 1 connection since the last report$/,
        ],
      ] as const
    ) {
      const reports: string[] = [];
      const server = await guarded(own, {
        ...limits,
        handshakeMs: 30_000,
        onRefused: (m) => reports.push(m),
      });
      const conns: Array<ReturnType<typeof rawFrom>> = [];
      try {
        const open = async () => {
          const c = rawFrom(server.port);
          conns.push(c);
          await c.connected;
          return c;
        };
        const kept = [await open(), await open(), await open()];
        const fourth = await open();
        assert.ok(
          await Promise.race([fourth.closed, sleep(2_000).then(() => false)]) !== false,
          "not refused",
        );
        assert.equal(reports.length, 1);
        assert.match(reports[0], report);
        // Refused again within 10 s: counted, not reported yet (a flood must not flood the log).
        const fifth = await open();
        await fifth.closed;
        assert.equal(reports.length, 1);
        await sleep(200);
        assert.ok(kept.every((c) => !c.isClosed()), "a connection within the caps was closed");
        kept[0].socket.destroy();
        await kept[0].closed;
        await sleep(100);
        const again = await open();
        await sleep(500);
        assert.equal(again.isClosed(), false, "not accepted after a slot was freed");
      } finally {
        for (const c of conns) c.socket.destroy();
        await server.close();
      }
    }
  });
});

Deno.test("guardConnections() on a server listened through its guard keeps listening at its cap, closes what comes at once, and accepts again once one closes", async () => {
  const server = net.createServer((s) => s.on("error", () => {}));
  const reports: string[] = [];
  const guard = guardConnections(server, {
    maxConnections: 2,
    maxPerAddress: 100,
    handshakeMs: 0,
    onRefused: (m) => reports.push(m),
  });
  await guard.listen(0, "127.0.0.1");
  const port = (server.address() as net.AddressInfo).port;
  const conns: Array<ReturnType<typeof rawFrom>> = [];
  const open = async () => {
    const c = rawFrom(port);
    conns.push(c);
    await c.connected;
    return c;
  };
  try {
    const kept = [await open(), await open()];
    while (guard.open < 2) await sleep(10);
    assert.equal(guard.paused, true);
    const third = await open();
    await third.closed;
    assert.match(
      reports.join("\n"),
      /^connection cap reached: 2 connections open, at most 2; refused 1 connection since the last report$/,
    );
    assert.equal(server.listening, true);
    kept[0].socket.destroy();
    while (guard.paused) await sleep(20);
    const again = await open();
    await sleep(300);
    assert.equal(again.isClosed(), false, "not accepted after a slot was freed");
    assert.equal(guard.open, 2);
  } finally {
    for (const c of conns) c.socket.destroy();
    guard.stop();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

/**
 * In a child under `ulimit -n 64`: a server listened through its guard with `limits` (after
 * `flood`, connections to itself past its cap of 2, closed again), then files opened until none
 * is left and let go 800 ms later (before it would check: Deno itself may panic out of
 * descriptors); a connection that comes meanwhile kills Deno's accept loop, silently, for good.
 * Resolves with the child's lines once a connection is accepted again, within `withinMs` of the
 * files' release.
 */
async function killAcceptLoop(
  limits: string,
  flood: boolean,
  withinMs: number,
): Promise<{ port: number; lines: string[] }> {
  const script = `
    import net from "node:net";
    import { guardConnections } from ${
    JSON.stringify(new URL("./connections.ts", import.meta.url).href)
  };
    let full = false;
    const server = net.createServer((s) => s.on("error", () => {}));
    server.on("connection", (s) => full && console.log("accepted " + s.remotePort));
    const guard = guardConnections(server, {
      maxConnections: 2, maxPerAddress: 2, handshakeMs: 0, ...${limits},
      onRefused: (m) => console.log(m),
    });
    await guard.listen(0, "127.0.0.1");
    const port = server.address().port;
    // Deno starts its signal thread on first need, and panics when it cannot: start it now.
    const hup = () => {};
    Deno.addSignalListener("SIGHUP", hup);
    Deno.removeSignalListener("SIGHUP", hup);
    if (${flood}) {
      const own = await Promise.all([0, 1, 2].map(() => new Promise((resolve) => {
        const s = net.connect({ port, host: "127.0.0.1" });
        s.on("error", () => resolve(s));
        s.once("connect", () => resolve(s));
      })));
      await new Promise((r) => setTimeout(r, 200));
      for (const s of own) s.destroy();
      await new Promise((r) => setTimeout(r, 100));
    }
    full = true;
    const files = [];
    try { for (;;) files.push(Deno.openSync("/dev/null")); } catch { /* none left */ }
    console.log("full " + port);
    await new Promise((r) => setTimeout(r, 800));
    for (const f of files) f.close();
    console.log("freed");
    await new Promise((r) => setTimeout(r, 10_000));
    guard.stop();
    server.close();
  `;
  const child = new Deno.Command("bash", {
    args: ["-c", 'ulimit -n 64 && exec "$0" eval --quiet "$1"', Deno.execPath(), script],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const reading = (async () => {
    let rest = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      rest += chunk;
      const parts = rest.split("\n");
      rest = parts.pop()!;
      lines.push(...parts);
    }
  })();
  let stderr = "";
  const readingErrors = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) stderr += chunk;
  })();
  const conns: Deno.TcpConn[] = [];
  try {
    const until = async (re: RegExp, ms: number) => {
      const end = Date.now() + ms;
      while (!lines.some((l) => re.test(l))) {
        assert.ok(Date.now() < end, `no ${re} in:\n${lines.join("\n")}\n${stderr}`);
        await sleep(20);
      }
      return lines.find((l) => re.test(l))!;
    };
    const port = Number((await until(/^full \d+$/, 10_000)).split(" ")[1]);
    // Taken by the kernel, handed to nobody: the accept fails for want of a descriptor.
    conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
    await until(/^freed$/, 5_000);
    await sleep(300);
    assert.ok(!lines.some((l) => l.startsWith("accepted")), "accepted while out of descriptors");
    const end = Date.now() + withinMs;
    while (!lines.some((l) => /^accepted \d+$/.test(l))) {
      assert.ok(Date.now() < end, `never accepted again:\n${lines.join("\n")}\n${stderr}`);
      conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
      await sleep(500);
    }
    return { port, lines };
  } finally {
    for (const c of conns) c.close();
    try {
      child.kill();
    } catch { /* it ended: its stderr says why */ }
    await child.status;
    await Promise.all([reading, readingErrors]);
  }
}

Deno.test("guardConnections() on a server listened through its guard finds, once quiet, that its accept loop died when something else took every descriptor, and accepts again on the same port", async () => {
  // Once quiet for 1.5 s, and the probe's 2 s, a new connection is accepted.
  const { port, lines } = await killAcceptLoop(`{ quietMs: 1_500 }`, false, 8_000);
  // Woken on the same socket (Deno 2.9.6), or, where that cannot be done, a fresh one.
  assert.ok(
    lines.some((l) =>
      l === `the listener on port ${port} stopped accepting; woke it on the same socket` ||
      l === `the listener on port ${port} stopped accepting; listening again`
    ),
    lines.join("\n"),
  );
});

Deno.test("guardConnections() on a server that refused connections at its cap checks a second after they stop, not after a quiet minute, that its accept loop lives, and wakes it on the same socket", async () => {
  // A flood is when the descriptors run out: a second after it, and the probe's 2 s.
  const { port, lines } = await killAcceptLoop(`{}`, true, 6_000);
  assert.ok(lines.some((l) => /^connection cap reached: /.test(l)), lines.join("\n"));
  assert.ok(
    lines.includes(`the listener on port ${port} stopped accepting; woke it on the same socket`),
    lines.join("\n"),
  );
});

Deno.test("guardConnections() cuts off a TLS handshake trickled a byte at a time at its deadline, and keeps a finished one", async () => {
  await withTempDir(async (dir) => {
    const own = await selfSigned(dir);
    const server = await guarded(own, { maxPerAddress: 8, handshakeMs: 1_500 });
    try {
      // A finished handshake outlives the handshake deadline.
      const done = tls.connect({
        host: "127.0.0.1",
        port: server.port,
        ca: own.cert,
        checkServerIdentity: () => undefined,
      });
      done.on("error", () => {});
      let doneClosed = false;
      done.once("close", () => doneClosed = true);
      await new Promise<void>((resolve, reject) => {
        done.once("secureConnect", () => resolve());
        done.once("error", reject);
      });
      // A client that sends one byte every 200 ms: an inactivity timer would never fire.
      const trickle = rawFrom(server.port);
      await trickle.connected;
      const hello = new Uint8Array([
        0x16,
        0x03,
        0x01,
        0x02,
        0x00,
        0x01,
        0x00,
        0x01,
        0xfc,
        0x03,
        0x03,
      ]);
      let i = 0;
      const drip = setInterval(
        () => trickle.socket.write(new Uint8Array([hello[i++ % hello.length]])),
        200,
      );
      try {
        const ms = await Promise.race([trickle.closed, sleep(6_000).then(() => -1)]);
        assert.ok(ms >= 1_300 && ms < 3_500, `the trickling client was cut off after ${ms} ms`);
      } finally {
        clearInterval(drip);
      }
      await sleep(500);
      assert.equal(doneClosed, false, "a finished handshake was cut off");
      done.destroy();
    } finally {
      await server.close();
    }
  });
});

Deno.test("deadline() destroys a socket at its time however busy it is, and not once cancelled", async () => {
  const server = net.createServer((s) => s.on("data", () => {}).on("error", () => {}));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const port = (server.address() as net.AddressInfo).port;
  try {
    const a = rawFrom(port);
    const b = rawFrom(port);
    await Promise.all([a.connected, b.connected]);
    deadline(a.socket, 500);
    const cancel = deadline(b.socket, 500);
    cancel();
    const drip = setInterval(() => {
      if (!a.isClosed()) a.socket.write("x");
    }, 50);
    const ms = await Promise.race([a.closed, sleep(3_000).then(() => -1)]);
    clearInterval(drip);
    assert.ok(ms >= 450 && ms < 1_500, `cut after ${ms} ms`);
    await sleep(300);
    assert.equal(b.isClosed(), false);
    b.socket.destroy();
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

Deno.test("addressKey() counts an IPv6 address for its /64 and an IPv4-mapped or NAT64 one for its IPv4 address, as the per-address caps and the rate limits do", () => {
  for (
    const a of ["2001:db8:1:2::1", "2001:DB8:1:2:ffff:ffff:ffff:fffe", "2001:db8:1:2:0:0:0:7%eth0"]
  ) {
    assert.equal(addressKey(a), "2001:db8:1:2::/64", a);
  }
  assert.equal(addressKey("2001:db8:1:3::1"), "2001:db8:1:3::/64");
  assert.equal(addressKey("::ffff:192.0.2.7"), "192.0.2.7");
  assert.equal(addressKey("::FFFF:c000:0207"), "192.0.2.7");
  assert.equal(addressKey("192.0.2.7"), "192.0.2.7");
  // NAT64 / SIIT (RFC 6052): each IPv4 client on its own, not all of them in 64:ff9b::/64.
  assert.equal(addressKey("64:ff9b::192.0.2.7"), "192.0.2.7");
  assert.equal(addressKey("64:ff9b::c000:208"), "192.0.2.8");
  assert.equal(addressKey("::1"), "0:0:0:0::/64");
});

Deno.test("guardConnections() on a server at its cap keeps its port, so no other local process can take it while members wait", async () => {
  const server = net.createServer((s) => s.on("error", () => {}));
  const reports: string[] = [];
  const guard = guardConnections(server, {
    maxConnections: 2,
    maxPerAddress: 100,
    handshakeMs: 0,
    onRefused: (m) => reports.push(m),
  });
  await guard.listen(0, "127.0.0.1");
  const port = (server.address() as net.AddressInfo).port;
  const conns = [rawFrom(port), rawFrom(port)];
  let impostor: Deno.TcpListener | undefined;
  try {
    await Promise.all(conns.map((c) => c.connected));
    while (guard.open < 2) await sleep(10);
    assert.equal(guard.paused, true);
    // Anyone on the host (an unprivileged user, another service) tries the port now.
    try {
      impostor = Deno.listen({ hostname: "127.0.0.1", port });
    } catch (e) {
      assert.ok(e instanceof Deno.errors.AddrInUse, String(e));
    }
    conns[0].socket.destroy();
    await sleep(600);
    assert.equal(
      impostor,
      undefined,
      `another process took port ${port} while the server was at its cap; the server says:\n${
        reports.join("\n")
      }`,
    );
  } finally {
    impostor?.close();
    for (const c of conns) c.socket.destroy();
    guard.stop();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

Deno.test("guardConnections() keeps a server's port while anyone, with no certificate, sets off refusals at another listener of its group: no local process can take it meanwhile", async () => {
  const group = new ListenerGroup();
  const api = net.createServer((s) => s.on("error", () => {}));
  const crl = net.createServer((s) => s.on("error", () => {}));
  const reports: string[] = [];
  const apiGuard = guardConnections(api, {
    maxConnections: 100,
    maxPerAddress: 8,
    handshakeMs: 0,
    group,
    onRefused: (m) => reports.push(`api: ${m}`),
  });
  const crlGuard = guardConnections(crl, {
    maxConnections: 100,
    maxPerAddress: 2,
    handshakeMs: 0,
    group,
    onRefused: (m) => reports.push(`crl: ${m}`),
  });
  await apiGuard.listen(0, "127.0.0.1");
  await crlGuard.listen(0, "127.0.0.1");
  const port = (api.address() as net.AddressInfo).port;
  const crlPort = (crl.address() as net.AddressInfo).port;
  // Another process on the host tries to take the API's port, again and again, for 9 s.
  const thief = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `const end = Date.now() + 9_000;
       while (Date.now() < end) {
         try {
           const l = Deno.listen({ hostname: "127.0.0.1", port: ${port} });
           console.log("taken");
           await new Promise((r) => setTimeout(r, 300));
           l.close();
           break;
         } catch { /* in use */ }
       }`,
    ],
    stdout: "piped",
    stderr: "null",
  }).output();
  try {
    // Meanwhile one client over the CRL's per-address cap, once a second: no certificate needed.
    for (let round = 0; round < 7; round++) {
      const over = [0, 1, 2].map(() => rawFrom(crlPort));
      await sleep(50);
      for (const c of over) c.socket.destroy();
      await sleep(1_150);
    }
    const out = new TextDecoder().decode((await thief).stdout);
    assert.equal(
      out.trim(),
      "",
      `another process took the API's port ${port}; the server says:\n${reports.join("\n")}`,
    );
  } finally {
    await thief;
    apiGuard.stop();
    crlGuard.stop();
    await Promise.all([api, crl].map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
});

Deno.test("guardConnections() does not count its own self-check as a refusal when that check's address is at its cap", async () => {
  const server = net.createServer((s) => s.on("error", () => {}));
  const reports: string[] = [];
  const guard = guardConnections(server, {
    maxConnections: 100,
    maxPerAddress: 1,
    handshakeMs: 0,
    quietMs: 300,
    onRefused: (m) => reports.push(m),
  });
  await guard.listen(0, "127.0.0.1");
  const port = (server.address() as net.AddressInfo).port;
  // 127.0.0.1, the address the check comes from, holds its one connection: the check is closed
  // at once, which shows the listener accepts; it was no client, so it is no refusal.
  const held = rawFrom(port);
  try {
    await held.connected;
    while (guard.open < 1) await sleep(10);
    await sleep(1_500);
    assert.deepEqual(reports, []);
    assert.equal(held.isClosed(), false);
  } finally {
    held.socket.destroy();
    guard.stop();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});
