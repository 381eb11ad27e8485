/**
 * The web face under test: `client/main.ts web` run as its own process with the
 * `client` task's permissions, and Debian's `chromium` driven by
 * `npm:playwright-core` (pinned in deno.json). The one place web tests and the
 * bench take processes, users and the CA service from the shared helpers, so
 * they are easy to repoint.
 *
 * @module
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import { join } from "node:path";
import type { Browser, BrowserContext, Locator, Page, WebSocketRoute } from "playwright-core";
import {
  ChatClient,
  childEnv,
  concurrentSteps,
  ROOT,
  sleep,
  taskFlags,
  underUlimit,
  waitUntil,
  within,
} from "./_harness.ts";
import { initCa, type Service, startService } from "./_service_helpers.ts";
import { joinUser, RawPeer, revoke, type User, whoami } from "./_chat_helpers.ts";

export { ChatClient, initCa, joinUser, revoke, type Service, sleep, startService };
export { waitUntil };
export { type User, whoami, within };
export type { Browser, BrowserContext, Locator, Page };

const URL_LINE = /^(http:\/\/127\.0\.0\.1:(\d+)\/session\?token=([0-9a-f]{64}))$/m;
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 5_000;

/** Where `chromium` is (`command -v chromium`), or undefined. */
export async function chromiumPath(): Promise<string | undefined> {
  const out = await new Deno.Command("sh", {
    args: ["-c", "command -v chromium || command -v chromium-browser"],
  }).output();
  const path = new TextDecoder().decode(out.stdout).trim().split("\n")[0];
  return out.success && path ? path : undefined;
}

/** Options of {@linkcode launchBrowser}. */
export interface LaunchOptions {
  /** More chromium arguments. Default: none. */
  args?: string[];
}

/**
 * Launches chromium (headless, `--no-sandbox`: tests may run as root) through
 * playwright-core. Playwright probes `/proc/sys/fs/binfmt_misc/WSLInterop` when
 * it loads, a path Deno lets only `--allow-all` read, and Deno's `existsSync`
 * then throws instead of answering false as Node's does: for the duration of the
 * import, `existsSync` gets Node's behaviour back, so the tests keep narrow permissions.
 */
export async function launchBrowser(
  executablePath: string,
  options: LaunchOptions = {},
): Promise<Browser> {
  const existsSync = fs.existsSync;
  fs.existsSync = ((path: fs.PathLike) => {
    try {
      return existsSync(path);
    } catch {
      return false;
    }
  }) as typeof fs.existsSync;
  let chromium;
  try {
    ({ chromium } = await import("playwright-core"));
  } finally {
    fs.existsSync = existsSync;
  }
  return await chromium.launch({
    executablePath,
    args: ["--no-sandbox", ...options.args ?? []],
    timeout: 60_000,
  });
}

/** Options of {@linkcode WebClient.start}. */
export interface WebStartOptions {
  /** More arguments after `web --home H`. Default: `--port 0`. */
  args?: string[];
  /** Run it under `ulimit -n` of this many open files (flood tests). Default: the inherited limit. */
  ulimitFiles?: number;
}

/** `client/main.ts web --home H` as its own process; it prints the URL to open. */
export class WebClient {
  /** The user it runs as. */
  readonly user: User;
  /** The URL it printed (with this run's token). */
  readonly url: string;
  /** Its HTTP port on 127.0.0.1. */
  readonly port: number;
  /** The token in the URL. */
  readonly token: string;
  #child: Deno.ChildProcess;
  #out: { stdout: string; stderr: string };
  #exited = false;

  private constructor(
    user: User,
    child: Deno.ChildProcess,
    out: { stdout: string; stderr: string },
    m: RegExpExecArray,
  ) {
    this.user = user;
    this.#child = child;
    this.#out = out;
    child.status.then(() => this.#exited = true);
    this.url = m[1];
    this.port = Number(m[2]);
    this.token = m[3];
  }

  /** Starts the web face of `user` and waits for its URL line. */
  static async start(user: User, options: WebStartOptions = {}): Promise<WebClient> {
    const [command, args] = underUlimit(options.ulimitFiles, Deno.execPath(), [
      "run",
      "--quiet",
      ...await taskFlags("client"),
      join(ROOT, "client/main.ts"),
      "web",
      "--home",
      user.home,
      ...options.args ?? ["--port", "0"],
    ]);
    const child = new Deno.Command(command, {
      args,
      cwd: ROOT,
      clearEnv: true,
      env: childEnv({}),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const out = { stdout: "", stderr: "" };
    const pump = async (stream: ReadableStream<Uint8Array>, key: "stdout" | "stderr") => {
      const decoder = new TextDecoder();
      try {
        for await (const chunk of stream) out[key] += decoder.decode(chunk, { stream: true });
      } catch { /* killed */ }
    };
    pump(child.stdout, "stdout");
    pump(child.stderr, "stderr");
    let exited = false;
    child.status.then(() => exited = true);
    const until = Date.now() + START_TIMEOUT_MS;
    while (!URL_LINE.test(out.stdout)) {
      if (exited || Date.now() > until) {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
        await child.status;
        throw new assert.AssertionError({
          message: `client web did not start\nstdout: ${out.stdout}\nstderr: ${out.stderr}`,
        });
      }
      await sleep(20);
    }
    return new WebClient(user, child, out, URL_LINE.exec(out.stdout)!);
  }

  /** Whether the process has ended. */
  get exited(): boolean {
    return this.#exited;
  }

  /** The user name. */
  get name(): string {
    return this.user.name;
  }

  /** http://127.0.0.1:PORT */
  get origin(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** What it printed so far. */
  get stdout(): string {
    return this.#out.stdout;
  }

  /** What it wrote on stderr so far. */
  get stderr(): string {
    return this.#out.stderr;
  }

  /** The process id (to stop and continue it). */
  get pid(): number {
    return this.#child.pid;
  }

  /** Sends a signal. */
  signal(signal: Deno.Signal): void {
    try {
      this.#child.kill(signal);
    } catch { /* gone */ }
  }

  /** SIGTERM, then SIGKILL after 5 s; safe to call twice. */
  async stop(): Promise<void> {
    this.signal("SIGCONT");
    this.signal("SIGTERM");
    const status = await within(this.#child.status, STOP_TIMEOUT_MS, null);
    if (!status) {
      this.signal("SIGKILL");
      await this.#child.status;
    }
  }
}

/** Opens the page of `web` in a new context (its own cookies): the URL, then the redirect. */
export async function openPage(
  browser: Browser,
  web: WebClient,
  viewport = { width: 1200, height: 800 },
): Promise<Page> {
  const context = await browser.newContext({ viewport, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  await page.goto(web.url);
  await page.getByRole("heading", { name: web.name, exact: true, level: 1 }).waitFor();
  return page;
}

/** A page whose link to its client can be held: {@linkcode openGatedPage}. */
export interface GatedPage {
  page: Page;
  /**
   * From now on what the client sends the page waits, its heartbeat apart (a page that hears
   * nothing for 6 s starts afresh): the page goes stale, as behind a slow link, while what it
   * sends goes on at once.
   */
  hold(): void;
  /** What waited reaches the page, in order, and what follows goes straight on. */
  release(): void;
}

/**
 * {@linkcode openPage}, its WebSocket passed through playwright's route so that the test can
 * hold what the client says: the page acts on what it last heard while the client has moved on
 * (a key changed again, a card answered in another tab), as when two things happen at once.
 */
export async function openGatedPage(browser: Browser, web: WebClient): Promise<GatedPage> {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  let held: Array<Parameters<WebSocketRoute["send"]>[0]> | undefined;
  let route: WebSocketRoute | undefined;
  await page.routeWebSocket(/\/ws$/, (ws) => {
    route = ws;
    const server = ws.connectToServer();
    server.onMessage((m) => {
      if (held && m !== JSON.stringify({ type: "alive" })) held.push(m);
      else ws.send(m);
    });
  });
  await page.goto(web.url);
  await page.getByRole("heading", { name: web.name, exact: true, level: 1 }).waitFor();
  return {
    page,
    hold: () => held ??= [],
    release: () => {
      const waiting = held ?? [];
      held = undefined;
      for (const m of waiting) route?.send(m);
    },
  };
}

/** A fresh folder with a CA service on it, stopped and removed afterwards. */
export async function withWebWorld<T>(
  fn: (service: Service, dir: string) => Promise<T>,
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "e2e-chat-web-test-" });
  let service: Service | undefined;
  try {
    const home = join(dir, "ca-home");
    await initCa(home);
    service = await startService(home, { args: ["--enroll-rate", "1000"] });
    return await fn(service, dir);
  } finally {
    await service?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** A scenario's world: the service, its own folder, and everything it started (closed in reverse). */
export class Scene {
  readonly service: Service;
  readonly dir: string;
  readonly browser: Browser;
  #stops: Array<() => Promise<void>> = [];

  constructor(service: Service, dir: string, browser: Browser) {
    this.service = service;
    this.dir = dir;
    this.browser = browser;
  }

  async join(...names: string[]): Promise<User[]> {
    return await Promise.all(names.map((n) => joinUser(this.service, n, join(this.dir, n))));
  }

  async web(user: User, args?: string[]): Promise<WebClient> {
    const web = await WebClient.start(user, { args });
    this.#stops.push(() => web.stop());
    return web;
  }

  async json(user: User): Promise<ChatClient> {
    const c = await ChatClient.start(user);
    this.#stops.push(() => c.stop());
    return c;
  }

  async page(web: WebClient, viewport?: { width: number; height: number }): Promise<Page> {
    const page = await openPage(this.browser, web, viewport);
    this.#stops.push(() => page.context().close());
    return page;
  }

  /** {@linkcode openGatedPage}, closed with the scene. */
  async gatedPage(web: WebClient): Promise<GatedPage> {
    const gated = await openGatedPage(this.browser, web);
    this.#stops.push(() => gated.page.context().close());
    return gated;
  }

  raw(port: number, user: User): Promise<RawPeer> {
    return Promise.all([Deno.readTextFile(user.certPath), Deno.readTextFile(user.keyPath)])
      .then(([cert, key]) => {
        const peer = RawPeer.connect(port, { cert, key });
        this.#stops.push(() => Promise.resolve(peer.destroy()));
        return peer;
      });
  }

  async close(): Promise<void> {
    await Promise.all(this.#stops.reverse().map((s) => s().catch(() => {})));
  }
}

/**
 * Scenes that run at once, at most. Each starts two or three client processes and a page: fifteen
 * at once on two cores kept a chat's start from saying `ready` within its 15 s (a CI failure).
 */
export const SCENES_AT_ONCE = 5;

/**
 * Runs each scenario as a test step, {@linkcode SCENES_AT_ONCE} at a time, each in a Scene of
 * its own under `dir`: each finishes and cleans up even when another fails.
 */
export async function runScenes(
  t: Deno.TestContext,
  service: Service,
  dir: string,
  browser: Browser,
  scenarios: Scenario[],
): Promise<void> {
  await concurrentSteps(
    t,
    scenarios.map(([name, fn], i) => [name, async () => {
      const scene = new Scene(service, join(dir, `scene-${i}`), browser);
      await Deno.mkdir(scene.dir);
      try {
        await fn(scene);
      } finally {
        await scene.close();
      }
    }]),
    { atOnce: SCENES_AT_ONCE },
  );
}

/** A scenario of {@linkcode webTest}: a step's name and what it does in its own Scene. */
export type Scenario = [string, (scene: Scene) => Promise<void>];

/**
 * Registers one test that runs `scenarios` at once in chromium (resolving rebind.test to
 * 127.0.0.1, for the DNS-rebinding checks) against a real CA service. Without chromium it is
 * skipped with a message, except under CI=true, where it fails.
 */
export async function webTest(name: string, scenarios: Scenario[]): Promise<void> {
  const chromium = await chromiumPath();
  const CI = Deno.env.get("CI") === "true";
  if (!chromium && !CI) {
    // deno-lint-ignore no-console
    console.log(`skipping "${name}": chromium is not on PATH (apt-get install chromium)`);
  }
  Deno.test({
    name,
    ignore: !chromium && !CI,
    async fn(t) {
      assert.ok(chromium, "CI=true and chromium is not on PATH: the web tests cannot run");
      const browser = await launchBrowser(chromium, {
        args: ["--host-resolver-rules=MAP rebind.test 127.0.0.1"],
      });
      try {
        await withWebWorld(async (service, dir) => {
          await runScenes(t, service, dir, browser, scenarios);
        });
      } finally {
        await browser.close();
      }
    },
  });
}

/** Types `text` into the page's message box, sends it, and waits until the page shows it. */
export async function sendFromPage(page: Page, text: string): Promise<void> {
  const box = page.getByRole("textbox", { name: "Message", exact: true });
  await box.fill(text);
  await box.press("Enter");
  await page.locator(".item.mine", { hasText: text }).waitFor();
}

/**
 * The page invites `peer` with "Chat with" / "Start chat"; the peer accepts on its JSON face once
 * the page says it invited them. Not before: an earlier invitation from the page that the peer
 * never took up is still listed until it expires, and accepting that one before the page's client
 * holds the new one gets the connection refused by it ("not invited": the accept fails).
 */
export async function invitePeer(page: Page, alice: User, peer: ChatClient): Promise<void> {
  await page.getByRole("textbox", { name: "Chat with" }).fill(peer.name);
  await page.getByRole("button", { name: "Start chat", exact: true }).click();
  await page.getByRole("status").filter({ hasText: `Invited ${peer.name}:` }).waitFor();
  await peer.expect({ type: "invite", from: alice.name });
  await peer.send(`/accept ${alice.name}`);
  await peer.expect({ type: "connected", peer: alice.name });
}

/** {@linkcode invitePeer}, then waits until the page can send to them. */
export async function startChat(page: Page, alice: User, peer: ChatClient): Promise<void> {
  await invitePeer(page, alice, peer);
  await page.getByRole("textbox", { name: "Message", exact: true }).and(
    page.locator(":enabled"),
  ).waitFor();
}

/** The page's timeline of the open conversation (role `log`, "Messages"). */
export function timeline(page: Page): Locator {
  return page.getByRole("log", { name: "Messages" });
}

/** Stops the client process (SIGSTOP) until the page says it lost it, then lets it go on and
 * waits for the page to say nothing of it again. */
export async function stallClient(page: Page, web: WebClient): Promise<void> {
  web.signal("SIGSTOP");
  try {
    await page.getByRole("alert").filter({ hasText: "Lost the chat client" }).waitFor({
      timeout: 15_000,
    });
  } finally {
    web.signal("SIGCONT");
  }
  await page.getByRole("alert").filter({ hasText: "Lost" }).waitFor({
    state: "hidden",
    timeout: 15_000,
  });
}
