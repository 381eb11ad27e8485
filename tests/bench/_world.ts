/**
 * The world the benchmarks run in: a private temporary folder, CAs made by
 * `ca init`, services started by `ca serve`, invites made by `ca invite`,
 * certificate requests made beforehand with openssl. Everything lives under
 * one folder that {@linkcode Workspace.cleanup} removes.
 *
 * @module
 */
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { leafExtensions } from "../../ca/policy.ts";
import { tlv } from "../../lib/_der_builder.ts";
import { pemEncode } from "../../lib/pem.ts";
import { bash, type Proc, runDeno, spawnDeno, taskFlags } from "./_procs.ts";

/** The environment variable the CA passphrase travels in (never argv). */
const PASSPHRASE_ENV = "E2E_CHAT_CA_PASSPHRASE";

/** A running CA service (`ca serve`). */
export class Service {
  /** The CA home. */
  readonly home: string;
  /** https://127.0.0.1:PORT */
  readonly url: string;
  /** Its port. */
  readonly port: number;
  /** The CA certificate, PEM. */
  readonly caPem: string;
  /** The process. */
  readonly proc: Proc;
  /** Server-side time of each successful enrollment, by name, from the service log (ms). */
  readonly enrollMs: Map<string, number>;

  /** Wraps a started service. */
  constructor(
    home: string,
    url: string,
    caPem: string,
    proc: Proc,
    enrollMs: Map<string, number>,
  ) {
    this.home = home;
    this.url = url;
    this.port = Number(new URL(url).port);
    this.caPem = caPem;
    this.proc = proc;
    this.enrollMs = enrollMs;
  }

  /** Stops it (SIGTERM, as a user's Ctrl-C). */
  async stop(): Promise<void> {
    try {
      this.proc.child.kill("SIGTERM");
    } catch { /* gone */ }
    await this.proc.stop(5_000);
  }
}

/** The benchmark's private folder and the CLI flags. */
export class Workspace {
  /** The temporary folder. */
  readonly dir: string;
  /** The CA passphrase (random, per run). */
  readonly passphrase: string;
  /** `deno task ca` permission flags. */
  readonly caFlags: string[];
  /** `deno task client` permission flags. */
  readonly clientFlags: string[];
  #log: (line: string) => void;

  private constructor(
    dir: string,
    caFlags: string[],
    clientFlags: string[],
    log: (line: string) => void,
  ) {
    this.dir = dir;
    this.passphrase = randomBytes(18).toString("base64url");
    this.caFlags = caFlags;
    this.clientFlags = clientFlags;
    this.#log = log;
  }

  /** Makes the folder. */
  static async create(log: (line: string) => void): Promise<Workspace> {
    const dir = await Deno.makeTempDir({ prefix: "e2e-chat-bench-" });
    return new Workspace(dir, await taskFlags("ca"), await taskFlags("client"), log);
  }

  /** A path inside the folder. */
  path(...parts: string[]): string {
    return join(this.dir, ...parts);
  }

  /** Progress, on stderr. */
  log(line: string): void {
    this.#log(line);
  }

  /** The environment of CA commands: the passphrase, by environment only. */
  caEnv(): Record<string, string> {
    return { [PASSPHRASE_ENV]: this.passphrase };
  }

  /** `ca init` in a new home; returns the home. */
  async initCa(name: string, keyType: "rsa-4096" | "ec-p256"): Promise<string> {
    const home = this.path(name);
    await runDeno("ca/main.ts", this.caFlags, ["init", "--key-type", keyType, "--home", home], {
      env: this.caEnv(),
    });
    return home;
  }

  /** `ca serve --port 0 --enroll-rate 100000 --relay-day-mib 1048576` for `home`; waits for its URL. */
  async serve(home: string, label: string): Promise<Service> {
    const enrollMs = new Map<string, number>();
    const profile = Deno.env.get("E2E_BENCH_PROFILE");
    const proc = spawnDeno(
      label,
      "ca/main.ts",
      // E2E_BENCH_PROFILE=DIR: the service writes a V8 CPU profile there as it exits.
      profile ? [...this.caFlags, "--cpu-prof", `--cpu-prof-dir=${profile}`] : this.caFlags,
      // The relay section carries more than the default daily budget of 1 GiB per member.
      [
        "serve",
        "--port",
        "0",
        "--home",
        home,
        "--enroll-rate",
        "100000",
        "--relay-day-mib",
        "1048576",
      ],
      {
        env: this.caEnv(),
        onStderrLine: (line) => {
          const m = / POST \/v1\/enroll 200 (\S+) ([\d.]+)ms$/.exec(line);
          if (m) enrollMs.set(m[1], Number(m[2]));
        },
      },
    );
    const first = await proc.nextLine(60_000);
    const m = /listening on (https:\/\/127\.0\.0\.1:\d+)/.exec(first.text);
    if (!m) throw new Error(`${label} printed ${JSON.stringify(first.text)}`);
    await proc.nextLine(10_000);
    proc.onLine = () => {};
    const caPem = await Deno.readTextFile(join(home, "ca", "ca.crt"));
    return new Service(home, m[1], caPem, proc, enrollMs);
  }

  /** One `ca invite NAME` process per name, `parallel` at a time; returns name → invite line. */
  async invites(home: string, names: string[], parallel = 2): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    let next = 0;
    const worker = async () => {
      while (next < names.length) {
        const name = names[next++];
        const { stdout } = await runDeno(
          "ca/main.ts",
          this.caFlags,
          ["invite", name, "--home", home],
          { timeoutMs: 60_000 },
        );
        out.set(name, stdout.trim());
      }
    };
    await Promise.all(Array.from({ length: parallel }, worker));
    return out;
  }

  /**
   * EC P-256 certificate requests for `names` (`DIR/NAME.csr`, one openssl
   * process each, as a member would make them) and, for the openssl
   * baseline, the leaf profile of each name (`DIR/NAME.cnf`).
   */
  async csrs(dir: string, names: string[]): Promise<void> {
    await Deno.mkdir(dir, { recursive: true });
    for (const name of names) {
      await Deno.writeTextFile(join(dir, `${name}.cnf`), leafExtensions(name, "ec"));
    }
    // A few openssl loops at once: this is set-up, not measured.
    const parts = 2;
    await Promise.all(Array.from({ length: parts }, (_, p) =>
      bash(
        `cd "$1"; shift
         for n in "$@"; do
           openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\
             -keyout /dev/null -subj "/CN=$n" -out "$n.csr" 2>/dev/null || exit 1
         done`,
        [dir, ...names.filter((_, i) => i % parts === p)],
      )));
  }

  /** Removes the folder. */
  async cleanup(): Promise<void> {
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/** The token of an invite line. */
export function inviteToken(invite: string): string {
  const token = /[?&]token=([A-Za-z0-9_-]{43})/.exec(invite)?.[1];
  if (!token) throw new Error("An invite line without a token");
  return token;
}

/** Copies a folder tree (modes kept by copyFile; folders 0700). */
export async function copyDir(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true, mode: 0o700 });
  for await (const entry of Deno.readDir(from)) {
    const a = join(from, entry.name);
    const b = join(to, entry.name);
    if (entry.isDirectory) await copyDir(a, b);
    else if (entry.isFile) await Deno.copyFile(a, b);
  }
}

/**
 * `count` synthetic lines of openssl's index.txt (ca/store.ts parseIndex):
 * status V, expiry in a week, a random 160-bit serial, "unknown", /CN=userN.
 */
export function syntheticIndex(count: number): { index: string; serials: string[] } {
  const expires = new Date(Date.now() + 7 * 86_400_000).toISOString()
    .replace(/[-:T]/g, "").slice(2, 14) + "Z";
  const lines: string[] = [];
  const serials: string[] = [];
  for (let i = 0; i < count; i++) {
    const serial = randomBytes(20);
    serial[0] &= 0x7f;
    const hex = serial.toString("hex").toUpperCase();
    serials.push(hex);
    lines.push(`V\t${expires}\t\t${hex}\tunknown\t/CN=user${i}`);
  }
  return { index: lines.join("\n") + "\n", serials };
}

/**
 * A stand-in certificate file for each synthetic index line: DER that carries the serial where a
 * certificate does (all the issuance log reads of it), so the CA's log can take the lines in.
 */
export async function syntheticCertificates(certsDir: string, serials: string[]): Promise<void> {
  for (const hex of serials) {
    const serial = new Uint8Array(hex.match(/../g)!.map((b) => parseInt(b, 16)));
    const der = tlv(0x30, tlv(0x30, tlv(0xa0, tlv(0x02, new Uint8Array([2]))), tlv(0x02, serial)));
    await Deno.writeTextFile(join(certsDir, `${hex}.pem`), pemEncode(der, "CERTIFICATE"));
  }
}
