/**
 * `web`: how long a peer's message takes to show in the web page (docs/WEB.md),
 * beside the JSON face's figure for the same path in the same run. bob (JSON
 * face) is connected to alice (web face, her page open in chromium through
 * playwright-core) and to carol (JSON face); one ping is a line written to bob's
 * stdin, ended by the message's node in alice's page DOM (web_rtt) or by the
 * `message` event on carol's stdout (json_oneway). Needs chromium: without it
 * the section is skipped with a note, except under CI=true where it fails.
 *
 * @module
 */
import { chromiumPath, launchBrowser } from "../_browser.ts";
import { type Proc, runDeno, spawnDeno, type TimedLine } from "./_procs.ts";
import type { Report } from "./_report.ts";
import { spreadOverRounds } from "./_stats.ts";
import type { Service, Workspace } from "./_world.ts";

/** Sizes of the web benchmark. */
export interface WebSizes {
  /** Pings to each side before the measured rounds. */
  warmPings: number;
  /** Pings per round, to each side. */
  pingsPerRound: number;
  /** Rounds. */
  pingRounds: number;
  /** How long any one step may take, ms. */
  waitMs: number;
}

const URL_LINE = /^http:\/\/127\.0\.0\.1:\d+\/session\?token=[0-9a-f]{64}$/;

/** Reads JSON event lines of a `client chat --json` process until one matches. */
async function waitEvent(
  proc: Proc,
  match: (e: Record<string, unknown>) => boolean,
  ms: number,
): Promise<TimedLine & { event: Record<string, unknown> }> {
  const until = performance.now() + ms;
  while (true) {
    const line = await proc.nextLine(Math.max(1, until - performance.now()));
    let event: Record<string, unknown>;
    try {
      event = JSON.parse(line.text);
    } catch {
      continue;
    }
    if (event.type === "error") throw new Error(`${proc.label} reported ${line.text}`);
    if (match(event)) return { ...line, event };
  }
}

/** The web benchmark, on `service`. */
export async function benchWeb(
  ws: Workspace,
  report: Report,
  sizes: WebSizes,
  service: Service,
): Promise<void> {
  report.section("web (µs)");
  const chromium = await chromiumPath();
  if (!chromium) {
    if (Deno.env.get("CI") === "true") throw new Error("chromium is not on PATH");
    report.notes.push("web: skipped, chromium is not on PATH (apt-get install chromium)");
    return;
  }
  const names = ["web-alice", "web-bob", "web-carol"] as const;
  const homes = Object.fromEntries(names.map((n) => [n, ws.path(n)])) as Record<string, string>;
  ws.log("web: three users join");
  const invites = await ws.invites(service.home, [...names]);
  for (const n of names) {
    await runDeno("client/main.ts", ws.clientFlags, ["join", invites.get(n)!, "--home", homes[n]]);
  }
  const procs: Proc[] = [];
  const browser = await launchBrowser(chromium);
  try {
    const alice = spawnDeno("client web (alice)", "client/main.ts", ws.clientFlags, [
      "web",
      "--home",
      homes["web-alice"],
    ]);
    const json = (n: string) => {
      const p = spawnDeno(`client chat (${n})`, "client/main.ts", ws.clientFlags, [
        "chat",
        "--json",
        "--home",
        homes[n],
      ]);
      procs.push(p);
      return p;
    };
    procs.push(alice);
    const bob = json("web-bob");
    const carol = json("web-carol");
    let url = "";
    while (!url) {
      const line = await alice.nextLine(sizes.waitMs);
      if (URL_LINE.test(line.text)) url = line.text;
    }
    await waitEvent(bob, (e) => e.type === "ready", sizes.waitMs);
    await waitEvent(carol, (e) => e.type === "ready", sizes.waitMs);

    const page = await browser.newPage();
    page.setDefaultTimeout(sizes.waitMs);
    await page.goto(url);
    // The page calls back as soon as a message node is in the timeline.
    const seen = new Map<string, (t: number) => void>();
    await page.exposeFunction("__benchSeen", (text: string) => {
      const t = performance.now();
      seen.get(text)?.(t);
      seen.delete(text);
    });

    ws.log("web: bob invites alice (the page accepts) and carol");
    await bob.write("/chat web-alice\n");
    await waitEvent(bob, (e) => e.type === "invited", sizes.waitMs);
    await page.getByRole("button", { name: "Accept", exact: true }).click();
    await waitEvent(bob, (e) => e.type === "connected" && e.peer === "web-alice", sizes.waitMs);
    await bob.write("/chat web-carol\n");
    await waitEvent(bob, (e) => e.type === "invited", sizes.waitMs);
    await waitEvent(carol, (e) => e.type === "invite", sizes.waitMs);
    await carol.write("/accept web-bob\n");
    await waitEvent(bob, (e) => e.type === "connected" && e.peer === "web-carol", sizes.waitMs);
    await page.getByRole("log", { name: "Messages" }).waitFor();
    // A string, so that this file type-checks without the DOM library.
    await page.evaluate(`
      new MutationObserver((records) => {
        for (const r of records) {
          for (const n of r.addedNodes) {
            const text = n.querySelector?.(".text")?.textContent;
            if (text) globalThis.__benchSeen(text);
          }
        }
      }).observe(document.querySelector('[role="log"]'), { childList: true });
    `);

    const pingWeb = async (i: number) => {
      const text = `w${i}`;
      const arrived = new Promise<number>((resolve) => seen.set(text, resolve));
      const t0 = performance.now();
      await bob.write(`/msg web-alice ${text}\n`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const t = await Promise.race([
        arrived,
        new Promise<never>((_, reject) =>
          timer = setTimeout(
            () => reject(new Error(`${text} never reached the page`)),
            sizes.waitMs,
          )
        ),
      ]).finally(() => clearTimeout(timer));
      return (t - t0) * 1000;
    };
    const pingJson = async (i: number) => {
      const text = `j${i}`;
      const t0 = performance.now();
      await bob.write(`/msg web-carol ${text}\n`);
      const { t } = await waitEvent(
        carol,
        (e) => e.type === "message" && e.text === text,
        sizes.waitMs,
      );
      return (t - t0) * 1000;
    };
    ws.log("web: warm-up");
    for (let i = 0; i < sizes.warmPings; i++) {
      await pingWeb(i);
      await pingJson(i);
    }
    const web: number[][] = [];
    const jsonRounds: number[][] = [];
    for (let r = 0; r < sizes.pingRounds; r++) {
      ws.log(`web: round ${r + 1}/${sizes.pingRounds}`);
      const a: number[] = [];
      const b: number[] = [];
      // Interleaved, so both see the same load.
      for (let i = 0; i < sizes.pingsPerRound; i++) {
        a.push(await pingWeb(1e6 + r * 1e4 + i));
        b.push(await pingJson(1e6 + r * 1e4 + i));
      }
      web.push(a);
      jsonRounds.push(b);
    }
    const w = spreadOverRounds(web);
    const j = spreadOverRounds(jsonRounds);
    const pings = sizes.pingRounds * sizes.pingsPerRound;
    report.add("json_oneway_p50", j.p50, "µs", {
      rounds: j.rounds.map((x) => x.p50),
      note: `a line on bob's stdin (/msg) → the \`message\` event on carol's stdout (JSON face); ` +
        `${pings} pings; p50/p99 per round, median over rounds`,
    });
    report.add("json_oneway_p99", j.p99, "µs", { rounds: j.rounds.map((x) => x.p99) });
    report.add("web_rtt_p50", w.p50, "µs", {
      baseline: ["json_oneway_p50", j.p50],
      rounds: w.rounds.map((x) => x.p50),
      note: "the same line on bob's stdin → the message's node in alice's page DOM (web face, " +
        "chromium; a MutationObserver calls back over playwright's pipe, included)",
    });
    report.add("web_rtt_p99", w.p99, "µs", {
      baseline: ["json_oneway_p99", j.p99],
      rounds: w.rounds.map((x) => x.p99),
    });
    await page.close();
  } finally {
    await browser.close().catch(() => {});
    for (const p of procs) await p.stop(3_000);
  }
}
