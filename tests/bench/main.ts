/**
 * `deno task bench`: e2e-chat's benchmarks, each figure next to a baseline
 * measured in the same run, with their ratio and the target.
 *
 *     deno task bench                 # the full run (several minutes)
 *     deno task bench --quick         # every benchmark at a tiny size (CI)
 *     deno task bench --json          # one JSON object instead of the table
 *     deno task bench --json-file F   # the table, and the JSON object written to F too
 *     deno task bench --only chat,join,mailbox
 *
 * Sections: enroll (RSA-4096 and EC P-256 CAs), scale (enroll_at_scale),
 * chat (connect, rtt, msgs, file), relay (file and rtt through the CA's relay beside direct),
 * web (web_rtt beside the JSON face), join (keygen/join)
 * and log (the issuance log's cost on signing, proof size and checks at 100,000 entries,
 * client audit), mailbox (post → delivered for a member online but not connected, beside the
 * direct round trip), room (a message to a room of 10 beside nine 1:1 sends). Everything runs in a
 * temporary folder with real processes; the folder is removed and every
 * child is stopped at the end, after a failure, on Ctrl-C or on the watchdog.
 * A section that fails is reported and the others still run; the exit code
 * is then 1. Targets missed do not change the exit code: this measures, it
 * does not gate.
 *
 * @module
 */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { benchChat, type ChatSizes } from "./chat.ts";
import { benchEnroll, benchEnrollAtScale, type EnrollSizes } from "./enroll.ts";
import { benchJoin } from "./join.ts";
import { benchLog, type LogSizes } from "./log.ts";
import { benchMailbox, type MailboxSizes } from "./mailbox.ts";
import { benchRoom, type RoomSizes } from "./room.ts";
import { benchRelay } from "./relay.ts";
import { benchWeb, type WebSizes } from "./web.ts";
import { readProc, run, stopAll } from "./_procs.ts";
import { Report } from "./_report.ts";
import { type Service, Workspace } from "./_world.ts";

const SECTIONS = [
  "enroll",
  "scale",
  "chat",
  "relay",
  "web",
  "join",
  "log",
  "mailbox",
  "room",
] as const;
type Section = typeof SECTIONS[number];

/** Sizes of one run. */
interface Settings {
  mode: "quick" | "full";
  enroll: EnrollSizes;
  caTypes: Array<"rsa-4096" | "ec-p256">;
  chat: ChatSizes;
  web: WebSizes;
  joinRounds: number;
  log: LogSizes;
  mailbox: MailboxSizes;
  room: RoomSizes;
  watchdogMs: number;
}

const MiB = 1 << 20;

function settings(quick: boolean): Settings {
  if (quick) {
    return {
      mode: "quick",
      enroll: {
        warmSeq: 2,
        warmConc: 8,
        seqPerRound: 5,
        concPerRound: 8,
        rounds: 2,
        scaleLines: 2_000,
        scalePerRound: 5,
        scaleRounds: 2,
      },
      caTypes: ["rsa-4096", "ec-p256"],
      chat: {
        connectRounds: 3,
        warmPings: 20,
        pingsPerRound: 100,
        pingRounds: 2,
        msgsPerRound: 500,
        msgRounds: 2,
        fileBytes: 2 * MiB,
        fileSmallBytes: 1 * MiB,
        fileRounds: 2,
        rssRounds: 1,
        waitMs: 15_000,
      },
      web: { warmPings: 5, pingsPerRound: 20, pingRounds: 2, waitMs: 20_000 },
      joinRounds: 1,
      log: { signs: 5, rounds: 2, size: 1_000 },
      mailbox: { warm: 2, perRound: 5, rounds: 2, waitMs: 20_000 },
      room: { members: 10, sendsPerRound: 5, rounds: 2, burst: 50, waitMs: 30_000 },
      watchdogMs: 5 * 60_000,
    };
  }
  return {
    mode: "full",
    enroll: {
      warmSeq: 10,
      warmConc: 16,
      seqPerRound: 30,
      concPerRound: 64,
      rounds: 7,
      scaleLines: 20_000,
      scalePerRound: 30,
      scaleRounds: 7,
    },
    caTypes: ["rsa-4096", "ec-p256"],
    chat: {
      connectRounds: 30,
      warmPings: 500,
      pingsPerRound: 1_000,
      pingRounds: 6,
      msgsPerRound: 50_000,
      msgRounds: 5,
      fileBytes: 256 * MiB,
      fileSmallBytes: 32 * MiB,
      fileRounds: 5,
      rssRounds: 2,
      waitMs: 60_000,
    },
    web: { warmPings: 50, pingsPerRound: 200, pingRounds: 5, waitMs: 60_000 },
    joinRounds: 5,
    log: { signs: 30, rounds: 5, size: 100_000 },
    mailbox: { warm: 5, perRound: 40, rounds: 5, waitMs: 60_000 },
    room: { members: 10, sendsPerRound: 50, rounds: 5, burst: 2_000, waitMs: 60_000 },
    watchdogMs: 20 * 60_000,
  };
}

const encoder = new TextEncoder();

function stderr(line: string): void {
  Deno.stderr.writeSync(encoder.encode(line + "\n"));
}

function stdout(text: string): void {
  const bytes = encoder.encode(text);
  let n = 0;
  while (n < bytes.length) n += Deno.stdout.writeSync(bytes.subarray(n));
}

/** Where the figures come from: cores, CPU, memory, deno and openssl versions. */
async function machine(): Promise<Record<string, unknown>> {
  const cpuinfo = await readProc("/proc/cpuinfo").catch(() => "");
  const meminfo = await readProc("/proc/meminfo").catch(() => "");
  const kernel = await readProc("/proc/sys/kernel/osrelease").catch(() => "?");
  const openssl = await run("openssl", ["version"]).then((r) => r.stdout.trim(), () => "?");
  // The product code measured: the commit, and whether lib/, ca/ or client/ had changes on top.
  const commit = await run("git", ["rev-parse", "--short", "HEAD"]).then(
    (r) => r.stdout.trim(),
    () => "?",
  );
  const dirty = await run("git", ["status", "--porcelain", "--", "lib", "ca", "client"]).then(
    (r) => r.stdout.trim() !== "",
    () => false,
  );
  return {
    nproc: navigator.hardwareConcurrency,
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "?",
    memTotalMiB: Math.round(Number(/^MemTotal:\s+(\d+)/m.exec(meminfo)?.[1] ?? 0) / 1024),
    os: `${Deno.build.os} ${kernel.trim()} ${Deno.build.arch}`,
    deno:
      `deno ${Deno.version.deno} (v8 ${Deno.version.v8}, typescript ${Deno.version.typescript})`,
    openssl,
    loadavgAtStart: (await readProc("/proc/loadavg").catch(() => "?")).trim(),
    commit: `${commit}${dirty ? " + uncommitted changes in lib/ ca/ client/" : ""}`,
  };
}

/** Runs the benchmarks; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean" },
      json: { type: "boolean" },
      "json-file": { type: "string" },
      only: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    stdout(
      "Usage: deno task bench [--quick] [--json] [--json-file FILE] [--only enroll,scale,chat,relay,web,join,log,mailbox,room]\n",
    );
    return 0;
  }
  const only = (values.only ?? SECTIONS.join(",")).split(",").map((s) => s.trim());
  for (const s of only) {
    if (!(SECTIONS as readonly string[]).includes(s)) {
      stderr(`e2e-chat: error: Unknown section "${s}" (use ${SECTIONS.join(", ")})`);
      return 2;
    }
  }
  const set = settings(values.quick ?? false);
  const report = new Report();
  report.machine = await machine();
  report.settings = { ...set, sections: only };
  const started = performance.now();
  const ws = await Workspace.create((line) =>
    stderr(`bench ${((performance.now() - started) / 1000).toFixed(0).padStart(4)}s: ${line}`)
  );

  let stopping = false;
  const abort = async (why: string, code: number) => {
    if (stopping) return;
    stopping = true;
    stderr(`e2e-chat: error: bench ${why}; stopping every process and removing ${ws.dir}`);
    await stopAll();
    await ws.cleanup();
    Deno.exit(code);
  };
  const onSignal = () => abort("interrupted", 130);
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const watchdog = setTimeout(
    () => abort(`did not finish in ${set.watchdogMs / 60_000} minutes`, 1),
    set.watchdogMs,
  );

  let main: Service | undefined;
  let attempt = 0;
  const mainService = async () => {
    if (!main) {
      const home = await ws.initCa(`ca-main-${attempt++}`, "rsa-4096");
      main = await ws.serve(home, "ca serve (chat)");
    }
    return main;
  };
  const sections: Record<Section, () => Promise<void>> = {
    enroll: async () => {
      for (const type of set.caTypes) await benchEnroll(ws, report, set.enroll, type);
    },
    scale: () => benchEnrollAtScale(ws, report, set.enroll),
    chat: async () => benchChat(ws, report, set.chat, await mainService()),
    relay: async () => benchRelay(ws, report, set.chat, await mainService()),
    web: async () => benchWeb(ws, report, set.web, await mainService()),
    join: async () => benchJoin(ws, report, set.joinRounds, await mainService()),
    log: () => benchLog(ws, report, set.log),
    mailbox: async () => benchMailbox(ws, report, set.mailbox, await mainService()),
    room: async () => benchRoom(ws, report, set.room, await mainService()),
  };
  try {
    for (const name of SECTIONS) {
      if (!only.includes(name)) continue;
      try {
        await sections[name]();
      } catch (e) {
        const message = e instanceof Error ? e.message : String(e);
        report.errors.push({ section: name, message });
        stderr(`e2e-chat: error: bench section ${name} failed: ${message}`);
        await stopAll();
        main = undefined;
      }
    }
  } finally {
    await stopAll();
    await ws.cleanup();
    clearTimeout(watchdog);
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
  report.settings.seconds = Math.round((performance.now() - started) / 1000);
  report.machine.loadavgAtEnd = (await readProc("/proc/loadavg").catch(() => "?")).trim();
  const json = JSON.stringify(report.toJSON(), null, 2) + "\n";
  // A path as the user typed it: `deno task` runs in the repository, INIT_CWD is where they were.
  const file = values["json-file"];
  if (file) await Deno.writeTextFile(resolve(Deno.env.get("INIT_CWD") ?? Deno.cwd(), file), json);
  if (values.json) stdout(json);
  else {
    const m = report.machine;
    stdout(
      `e2e-chat benchmarks (${set.mode}, ${report.settings.seconds} s)\n` +
        `machine: ${m.nproc} cores, ${m.cpu}, ${m.memTotalMiB} MiB, ${m.os}\n` +
        `${m.deno}; ${m.openssl}\nproduct code: ${m.commit}\n` +
        `load average at start: ${m.loadavgAtStart}; at end: ${m.loadavgAtEnd}\n\n` +
        report.toTable(),
    );
  }
  return report.errors.length ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
