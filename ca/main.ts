/**
 * `deno task ca`: the CA's command line. It parses flags, wires the pieces
 * together, prints and exits; the rules live in authority.ts.
 *
 * @module
 */
import {
  dispatch,
  err,
  intOption,
  noPositionals,
  oneOf,
  out,
  parseCommand,
  readBounded,
  runMain,
} from "../lib/cli.ts";
import { E2eError } from "../lib/errors.ts";
import { ensurePrivateDir, writeFileAtomic } from "../lib/fs.ts";
import { resolveHome, resolveUserPath } from "../lib/home.ts";
import type { LockOptions } from "../lib/lock.ts";
import { readPassphrase } from "../lib/passphrase.ts";
import { CertificateAuthority, checkCommonName } from "./authority.ts";
import { CA_KEY_TYPES, checkDays, REVOKE_REASONS } from "./policy.ts";
import { MAX_CSR_BYTES } from "../lib/csr.ts";
import { exists } from "../lib/fs.ts";
import { formatInvite } from "../lib/invite.ts";
import { nameArgument } from "../lib/names.ts";
import { InviteStore, type ListedInvite, parseDuration } from "./invites.ts";
import {
  CaService,
  claimServiceHome,
  DEFAULT_PORT,
  type ServeOptions,
  type ServiceStatus,
  serviceStatus,
} from "./service.ts";
import { CaPaths } from "./home.ts";
import { crlEntryNumber } from "./log.ts";
import { DEFAULT_MAILBOX_LIMITS } from "./mailbox.ts";
import { Buffer } from "node:buffer";
import { pemEncode } from "../lib/pem.ts";
import { parseCertificate, sha256Hex } from "../lib/x509.ts";

const USAGE = `Usage: deno task ca [command] [options]

Commands:
  serve   [--host 127.0.0.1] [--port 65433] [--name HOST]... [--rendezvous-ttl 5m]
          [--enroll-rate 10] [--crl-port 65434] [--mailbox-ttl 7d] [--mailbox-items 200]
          [--mailbox-bytes 67108864] [--mailbox-total 1073741824]
          [--relay-pairs 8] [--relay-total N] [--relay-idle 5m] [--relay-day-mib 1024]
          [--relay-buffer-mib 64] [--unread-mib 128] [--free-floor-mib 64]
          Run the CA service (HTTPS), and the CRL over plain HTTP on --crl-port
          (the URL every certificate issued names; the first --name is its host,
          and the host invites name).
          --enroll-rate: enrollment attempts allowed per address per minute
          (members behind one NAT share an address: raise it for a class).
          The mailbox keeps items for offline members for --mailbox-ttl, at most
          --mailbox-items items and --mailbox-bytes bytes per recipient,
          and --mailbox-total bytes for all recipients together (one
          sender's items at most a quarter of it).
          The relay joins members who cannot connect directly: at most
          --relay-pairs sessions per member, --relay-total in all (default a
          quarter of the connection cap), closed after --relay-idle without a
          byte, and --relay-day-mib MiB per member per UTC day; it holds at most
          --relay-buffer-mib MiB for sides that do not take what it read for
          them, all pairs together (past it, it reads their senders slower).
          Replies clients have not read hold at most --unread-mib MiB, all
          connections together (past it the connections holding the most are
          closed). Members' enrollments, renewals and mailbox posts are refused
          (507) when the disk of the CA home has less than --free-floor-mib MiB
          free (0: no floor), so revocation and the CRL always have room.
          The default command; creates the CA first when there is none.
          Certificates name the CRL URL and invites the address: for a long run,
          keep --name, --port and --crl-port the same at every start.
  invite  NAME [--ttl 24h] [--url HOST:PORT]
          Print a single-use invite URL for NAME to enroll with. It names the
          running service's address (else 127.0.0.1:65433, or --url). Enrolling
          with it replaces the name's certificate, if any (a lost key).
  invites [--json]
          The invites the CA holds: id (the start of the token's hash; the
          token is never stored), name, status (open, used with the serial it
          got, expired, cancelled), when made, when it expires and when it was
          used or cancelled; open first.
  invites cancel NAME|ID [--json]
          Withdraw the open invites for NAME, or the one whose id starts with
          ID (the 8 hex characters "invites" shows); its token is refused from then on.
          Safe while the service runs. Exit 1 when nothing open matches.
  init    [--key-type rsa-4096|ec-p256|ed25519] [--days N] [--cn NAME]
          Create the CA: an encrypted key and a self-signed certificate.
  sign    --name NAME CSR_FILE [--out FILE] [--days N] [--replace]
          [--allow-compromised-key]
          Sign a certificate request (use - for stdin); prints the certificate.
          A key a certificate of which was revoked as keyCompromise is refused
          (as by invites), unless --allow-compromised-key; so is a key another
          name holds a valid certificate for.
  revoke  NAME|SERIAL [--reason R]
          Revoke a certificate and publish a new CRL. R: unspecified (the
          default), keyCompromise, CACompromise, affiliationChanged,
          superseded or cessationOfOperation. keyCompromise also revokes
          every other valid certificate for the same key, and takes a serial
          revoked already (superseded, say): its reason becomes keyCompromise.
          One revoked as keyCompromise already is refused only when no other
          valid certificate for its key is left.
  crl     Print a fresh CRL (PEM); the service serves it from then on.
  list    [--json]  Every issued certificate with its status.
  log     [verify] [--entries N] [--json]
          The issuance log: its size, root and latest entries; "verify"
          recomputes the tree, checks the signed checkpoint, cross-checks
          every certificate entry with the openssl database and checks that
          the CA key signed every CRL entry, numbered upward (exit 1 on any
          problem).

Options for every command:
  --home DIR               State folder (default: $E2E_CHAT_HOME, else ~/.e2e-chat)
  --passphrase-file FILE   Read the CA passphrase from FILE
                           (else $E2E_CHAT_CA_PASSPHRASE, else a prompt on a terminal)
  -h, --help               Show this help
`;

const COMMON = {
  home: { type: "string" },
  "passphrase-file": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

const PASSPHRASE_ENV = "E2E_CHAT_CA_PASSPHRASE";

// A command that waits for a lock another process holds says so, once (lib/lock.ts never
// prints): it may wait up to 60 s, and should not look hung meanwhile. Not for `serve`, whose
// stderr is the service's log.
let toldWaiting = false;
const LOCK_NOTICE: LockOptions = {
  onWait: () => {
    if (toldWaiting) return;
    toldWaiting = true;
    err("e2e-chat: waiting for the CA lock (another e2e-chat command is using this CA)…\n")
      .catch(() => {});
  },
};

function main(args: string[]): Promise<number> {
  return dispatch(args, {
    program: "ca",
    usage: USAGE,
    commands: { init, serve, invite, invites, sign, revoke, crl, list, log },
    fallback: serve,
  });
}

// The relay's caps from `serve`'s flags; each flag left out keeps its default (ca/relay.ts).
function relayOptions(values: {
  "relay-pairs"?: string;
  "relay-total"?: string;
  "relay-idle"?: string;
  "relay-day-mib"?: string;
  "relay-buffer-mib"?: string;
}): ServeOptions["relay"] {
  const positive = (value: string | undefined, flag: string) => {
    const n = intOption(value, flag);
    if (n === 0) throw new E2eError("ERR_USAGE", `${flag} takes a whole number above 0`);
    return n;
  };
  const mib = positive(values["relay-day-mib"], "--relay-day-mib");
  const buffer = positive(values["relay-buffer-mib"], "--relay-buffer-mib");
  if (buffer !== undefined && !Number.isSafeInteger(buffer * 1024 * 1024)) {
    throw new E2eError("ERR_USAGE", "--relay-buffer-mib takes at most 8589934591");
  }
  const options = {
    pairsPerMember: positive(values["relay-pairs"], "--relay-pairs"),
    maxPairs: positive(values["relay-total"], "--relay-total"),
    idleMs: values["relay-idle"] ? parseDuration(values["relay-idle"]) : undefined,
    bytesPerDay: mib === undefined ? undefined : mib * 1024 * 1024,
    maxBufferedBytes: buffer === undefined ? undefined : buffer * 1024 * 1024,
  };
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
}

// The budget of unread replies and the disk's free-space floor from `serve`'s flags, in bytes.
function bufferOptions(values: { "unread-mib"?: string; "free-floor-mib"?: string }): ServeOptions {
  const unread = intOption(values["unread-mib"], "--unread-mib");
  if (unread === 0) throw new E2eError("ERR_USAGE", "--unread-mib takes a whole number above 0");
  const floor = intOption(values["free-floor-mib"], "--free-floor-mib");
  const MiB = 1024 * 1024;
  return {
    ...(unread === undefined ? {} : { unreadBytes: unread * MiB }),
    ...(floor === undefined ? {} : { freeFloorBytes: floor * MiB }),
  };
}

async function serve(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, {
    ...COMMON,
    host: { type: "string" },
    port: { type: "string" },
    name: { type: "string", multiple: true },
    "rendezvous-ttl": { type: "string" },
    "enroll-rate": { type: "string" },
    "crl-port": { type: "string" },
    "mailbox-ttl": { type: "string" },
    "mailbox-items": { type: "string" },
    "mailbox-bytes": { type: "string" },
    "mailbox-total": { type: "string" },
    "relay-pairs": { type: "string" },
    "relay-total": { type: "string" },
    "relay-idle": { type: "string" },
    "relay-day-mib": { type: "string" },
    "relay-buffer-mib": { type: "string" },
    "unread-mib": { type: "string" },
    "free-floor-mib": { type: "string" },
  });
  if (values.help) return await help();
  noPositionals(positionals);
  const home = resolveHome(values.home);
  const mailboxLimits = {
    ttlMs: values["mailbox-ttl"] ? parseDuration(values["mailbox-ttl"]) : undefined,
    maxItems: intOption(values["mailbox-items"], "--mailbox-items"),
    maxBytes: intOption(values["mailbox-bytes"], "--mailbox-bytes"),
    maxTotalBytes: intOption(values["mailbox-total"], "--mailbox-total"),
  };
  if (
    mailboxLimits.maxItems === 0 || mailboxLimits.maxBytes === 0 ||
    mailboxLimits.maxTotalBytes === 0
  ) {
    throw new E2eError(
      "ERR_USAGE",
      "--mailbox-items, --mailbox-bytes and --mailbox-total take a number from 1",
    );
  }
  if (
    mailboxLimits.maxTotalBytes !== undefined &&
    mailboxLimits.maxTotalBytes < DEFAULT_MAILBOX_LIMITS.maxItemBytes
  ) {
    throw new E2eError(
      "ERR_USAGE",
      `--mailbox-total takes at least ${DEFAULT_MAILBOX_LIMITS.maxItemBytes} (one largest item)`,
    );
  }
  const port = intOption(values.port, "--port") ?? DEFAULT_PORT;
  if (port > 65535) throw new E2eError("ERR_USAGE", "--port takes a number from 0 to 65535");
  const crlPort = intOption(values["crl-port"], "--crl-port");
  if (crlPort !== undefined && crlPort > 65535) {
    throw new E2eError("ERR_USAGE", "--crl-port takes a number from 0 to 65535");
  }
  const options: ServeOptions = {
    host: values.host,
    port,
    names: values.name,
    rendezvousTtlMs: values["rendezvous-ttl"] ? parseDuration(values["rendezvous-ttl"]) : undefined,
    enrollPerMinute: intOption(values["enroll-rate"], "--enroll-rate"),
    crlPort,
    mailbox: Object.fromEntries(
      Object.entries(mailboxLimits).filter(([, v]) => v !== undefined),
    ),
    relay: relayOptions(values),
    ...bufferOptions(values),
  };
  // The CA, opened once (its passphrase comes later), or none: serve makes one.
  let ca = await openIfAny(home);
  if (!ca) await ensurePrivateDir(home); // where the claim's lock file goes
  // One service per CA home (CaService.start): a second one, or one started at the same moment on
  // an empty home, is told so before it asks for a passphrase, creates or changes anything.
  const claim = await claimServiceHome(new CaPaths(home));
  try {
    ca ??= await openIfAny(home); // made while this one waited for the claim
    if (ca) {
      const passphrase = await caPassphrase(values);
      await ca.unlock(passphrase); // a wrong passphrase fails now, not at the first enrollment
    } else {
      await err(`e2e-chat: no CA in ${home}; creating one\n`);
      const passphrase = await caPassphrase(values, { create: true });
      await err("e2e-chat: generating an RSA-4096 key (this can take a few seconds)\n");
      ca = await CertificateAuthority.init(home, passphrase);
    }
  } catch (e) {
    claim.release();
    throw e;
  }
  return await serveUntilStopped(ca, { ...options, claim });
}

async function serveUntilStopped(ca: CertificateAuthority, options: ServeOptions): Promise<number> {
  const service = await CaService.start(ca, options);
  await out(
    `e2e-chat CA service listening on ${service.url}\n` +
      `CRL (plain HTTP, named in every certificate): ${service.crlUrl}\n` +
      `CA fingerprint (SHA-256): ${ca.certificate.fingerprint}\n` +
      `Invite a user with: deno task ca invite NAME\n`,
  );
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    Deno.addSignalListener("SIGINT", stop);
    Deno.addSignalListener("SIGTERM", stop);
  });
  await service.close();
  await err("e2e-chat: CA service stopped\n");
  return 0;
}

async function invite(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, {
    ...COMMON,
    ttl: { type: "string" },
    url: { type: "string" },
  });
  if (values.help) return await help();
  if (positionals.length !== 1) throw new E2eError("ERR_USAGE", "invite needs exactly one NAME");
  const name = nameArgument(positionals[0]);
  const ttl = parseDuration(values.ttl ?? "24h");
  const ca = await openCa(values);
  // The lock says whether the service runs; a service.json a killed one left is not where it is.
  const service = values.url ? undefined : await serviceStatus(ca.paths);
  const where = values.url ?? service?.address ?? `127.0.0.1:${DEFAULT_PORT}`;
  const m = /^(\[[0-9a-fA-F:]+\]|[a-zA-Z0-9.-]{1,253}):(\d{1,5})$/.exec(where);
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) {
    throw new E2eError("ERR_USAGE", `--url takes HOST:PORT, not ${JSON.stringify(where)}`, {
      hint:
        `the address members reach the CA service at, e.g. --url ca.example.org:${DEFAULT_PORT}`,
    });
  }
  const { token } = await new InviteStore(ca.paths, { lock: LOCK_NOTICE }).create(name, ttl);
  const url = formatInvite({
    host: m[1],
    port: Number(m[2]),
    name,
    fingerprint: ca.certificate.fingerprint,
    token,
  });
  await out(`${url}\n`);
  if (service && !service.address) await err(unknownAddress(service, where));
  return 0;
}

// Why an invite made without --url names the default address: no service runs (stopped, or
// killed and gone), or it has not written where it listens yet. The invite is made all the same:
// it is kept by the CA and works once the service runs, at the address it names.
function unknownAddress(service: ServiceStatus, where: string): string {
  const elsewhere = "if members reach the service elsewhere, make it again with --url HOST:PORT " +
    "(this one stays valid until it expires)";
  if (service.running) {
    const pid = service.pid ? ` (pid ${service.pid})` : "";
    return `e2e-chat: warning: the CA service on this home${pid} is still starting, so the ` +
      `invite names ${where}; ${elsewhere}\n`;
  }
  const pid = service.pid ? `, pid ${service.pid},` : "";
  const gone = service.lastAddress
    ? ` (the last one${pid} listened at ${service.lastAddress} and is gone)`
    : "";
  return `e2e-chat: warning: no CA service runs on this home${gone}, so the invite names ` +
    `${where}; ${elsewhere}\n` +
    "e2e-chat: hint: members can enroll only while it runs: deno task ca serve\n";
}

async function invites(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, { ...COMMON, json: { type: "boolean" } });
  if (values.help) return await help();
  const cancelling = positionals[0] === "cancel";
  if (cancelling ? positionals.length !== 2 : positionals.length !== 0) {
    throw new E2eError("ERR_USAGE", "invites takes no argument, or cancel NAME|ID");
  }
  // Needs no passphrase: invites never touch the key.
  const ca = await openCa(values);
  const store = new InviteStore(ca.paths, { lock: LOCK_NOTICE });
  const rows = cancelling ? await store.cancel(positionals[1]) : await store.list();
  if (values.json) {
    await out(JSON.stringify(rows) + "\n");
  } else if (cancelling) {
    await out(rows.map((r) => `Cancelled invite ${r.id} for "${r.name}"\n`).join(""));
  } else {
    await out(
      rows.length ? inviteTable(rows) : "No invites (deno task ca invite NAME makes one)\n",
    );
  }
  return 0;
}

function inviteTable(rows: ListedInvite[]): string {
  const table = [["ID", "NAME", "STATUS", "CREATED", "EXPIRES", "USED/CANCELLED", "SERIAL"]];
  for (const r of rows) {
    const ended = r.usedAt ?? r.cancelledAt ?? "";
    table.push([r.id, r.name, r.status, r.createdAt, r.expiresAt, ended, r.serial ?? ""]);
  }
  const widths = table[0].map((_, i) => Math.max(...table.map((row) => row[i].length)));
  return table.map((row) => row.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd())
    .join("\n") + "\n";
}

async function init(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, {
    ...COMMON,
    "key-type": { type: "string" },
    days: { type: "string" },
    cn: { type: "string" },
  });
  if (values.help) return await help();
  noPositionals(positionals);
  const keyType = oneOf(values["key-type"] ?? "rsa-4096", CA_KEY_TYPES, { what: "key type" });
  const home = resolveHome(values.home);
  // Said before a passphrase is asked for and a key made; init() checks again under the lock.
  const days = intOption(values.days, "--days");
  if (days !== undefined) checkDays(days);
  if (values.cn !== undefined) checkCommonName(values.cn);
  const dir = new CaPaths(home).dir;
  if (await exists(dir)) {
    throw new E2eError("ERR_CA_EXISTS", `Cannot create a CA: "${dir}" already exists`, {
      hint: "use another --home, or remove that folder to start over",
    });
  }
  const passphrase = await caPassphrase(values, { create: true });
  if (keyType === "rsa-4096") {
    await err("e2e-chat: generating an RSA-4096 key (this can take a few seconds)\n");
  }
  const ca = await CertificateAuthority.init(home, passphrase, {
    keyType,
    days,
    commonName: values.cn,
    lock: LOCK_NOTICE,
  });
  await out(
    `Created the CA in ${ca.paths.dir}\n` +
      `  subject:     CN=${ca.certificate.commonName}\n` +
      `  valid until: ${ca.certificate.notAfter.toISOString()}\n` +
      `  fingerprint: ${ca.certificate.fingerprint} (SHA-256)\n`,
  );
  return 0;
}

async function sign(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, {
    ...COMMON,
    name: { type: "string" },
    out: { type: "string" },
    days: { type: "string" },
    replace: { type: "boolean" },
    "allow-compromised-key": { type: "boolean" },
  });
  if (values.help) return await help();
  if (!values.name) throw new E2eError("ERR_USAGE", "sign needs --name NAME");
  nameArgument(values.name);
  if (positionals.length !== 1) {
    throw new E2eError("ERR_USAGE", "sign needs exactly one CSR_FILE (or - for stdin)");
  }
  const csr = await readInput(positionals[0]);
  const days = intOption(values.days, "--days");
  const ca = await openWithPassphrase(values);
  const { certificate, superseded } = await ca.sign(csr, values.name, {
    days,
    replace: values.replace,
    allowCompromisedKey: values["allow-compromised-key"],
  });
  for (const serial of superseded) await err(`e2e-chat: revoked serial ${serial} (superseded)\n`);
  if (values.out) {
    const path = resolveUserPath(values.out);
    await writeFileAtomic(path, certificate.pem, { mode: 0o644 }).catch((e) => {
      throw new E2eError(
        "ERR_FILE",
        `Issued serial ${certificate.serial}, but cannot write "${path}"`,
        {
          cause: e,
          hint: `the certificate is kept in ${ca.paths.certFile(certificate.serial)}`,
        },
      );
    });
    await err(`e2e-chat: issued serial ${certificate.serial} to "${values.name}" → ${path}\n`);
  } else {
    await out(certificate.pem);
  }
  return 0;
}

async function revoke(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, { ...COMMON, reason: { type: "string" } });
  if (values.help) return await help();
  if (positionals.length !== 1) throw new E2eError("ERR_USAGE", "revoke needs one NAME or SERIAL");
  const reason = oneOf(values.reason ?? "unspecified", REVOKE_REASONS, {
    what: "revocation reason", // a usage mistake: exit 2 (README)
  });
  const ca = await openWithPassphrase(values);
  const entry = await ca.revoke(positionals[0], { reason });
  const lines = [
    entry.already
      ? `Serial ${entry.serial} of "${entry.name}" was revoked as ${entry.reason} already`
      : entry.formerReason === undefined
      ? `Revoked serial ${entry.serial} of "${entry.name}" (${entry.reason})`
      : `Serial ${entry.serial} of "${entry.name}", revoked already (${entry.formerReason}), ` +
        `is now revoked as ${entry.reason}`,
    ...entry.sameKey.map((e) =>
      `Revoked serial ${e.serial} of "${e.name}" (${e.reason}): a certificate for the same key`
    ),
  ];
  await out(`${lines.join("\n")}; the CRL is updated\n`);
  return 0;
}

async function crl(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, COMMON);
  if (values.help) return await help();
  noPositionals(positionals);
  const ca = await openWithPassphrase(values);
  await out(await ca.crl());
  return 0;
}

async function list(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, { ...COMMON, json: { type: "boolean" } });
  if (values.help) return await help();
  noPositionals(positionals);
  const ca = await openCa(values);
  const rows = await ca.list();
  if (values.json) {
    await out(JSON.stringify(rows) + "\n");
    return 0;
  }
  const table = [["NAME", "SERIAL", "STATUS", "NOT AFTER", "SHA-256 FINGERPRINT"]];
  for (const r of rows) table.push([r.name, r.serial, r.status, r.notAfter, r.fingerprint]);
  const widths = table[0].map((_, i) => Math.max(...table.map((row) => row[i].length)));
  await out(
    table.map((row) => row.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd()).join("\n") +
      "\n",
  );
  return 0;
}

async function log(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, {
    ...COMMON,
    json: { type: "boolean" },
    entries: { type: "string" },
  });
  if (values.help) return await help();
  if (positionals.length > 1 || (positionals[0] ?? "verify") !== "verify") {
    throw new E2eError("ERR_USAGE", "log takes no argument, or verify");
  }
  // Reading the log needs no passphrase: it never touches a key.
  const ca = await openCa(values);
  const issuance = await ca.readLog();
  if (!issuance) {
    throw new E2eError("ERR_NOT_FOUND", "This CA has no issuance log yet", {
      hint: "the CA service makes it when it first starts: deno task ca serve",
    });
  }
  if (positionals[0] === "verify") {
    const report = await issuance.verify(await ca.database());
    if (values.json) await out(JSON.stringify(report) + "\n");
    else {
      await out(
        `${report.size} entries (${report.crls} of them CRLs), ${report.database} certificates ` +
          `in the database, checkpoint at ${report.checkpointSize}\nroot ${report.root}\n` +
          (report.problems.length
            ? report.problems.map((p) => `PROBLEM: ${p}\n`).join("")
            : "OK: every certificate entry is the database's, in order, every CRL entry the " +
              "CA key's, numbered upward, and the checkpoint matches\n"),
      );
    }
    return report.problems.length ? 1 : 0;
  }
  const { checkpoint } = await issuance.checkpoint();
  const count = Math.min(intOption(values.entries, "--entries") ?? 10, checkpoint.size);
  const latest = await issuance.entries(checkpoint.size - count, checkpoint.size);
  const rows = latest.map((der, i) => {
    const index = checkpoint.size - count + i;
    // A CRL the CA signed, logged before it was served: its number where a serial goes.
    if (issuance.isCrl(index)) {
      const number = crlEntryNumber(der);
      return {
        index,
        name: "(CRL)",
        serial: number === undefined ? "" : `number ${number.toString(16).toUpperCase()}`,
        fingerprint: sha256Hex(der),
      };
    }
    const info = parseCertificate(pemEncode(der, "CERTIFICATE"));
    return { index, name: info.commonName, serial: info.serial, fingerprint: info.fingerprint };
  });
  const root = Buffer.from(checkpoint.root).toString("hex");
  if (values.json) {
    await out(
      JSON.stringify({ origin: issuance.origin, size: checkpoint.size, root, latest: rows }) + "\n",
    );
    return 0;
  }
  await out(
    `${issuance.origin}\n${checkpoint.size} entries, root ${root}\n` +
      rows.map((r) =>
        `${String(r.index).padStart(6)}  ${r.name.padEnd(20)} ${r.serial}  ${r.fingerprint}`
      )
        .join("\n") +
      (rows.length ? "\n" : ""),
  );
  return 0;
}

async function openWithPassphrase(
  values: { home?: string; "passphrase-file"?: string },
): Promise<CertificateAuthority> {
  const home = resolveHome(values.home);
  await openCa(values); // a missing CA is reported before asking for a passphrase
  const passphrase = await caPassphrase(values);
  return await CertificateAuthority.open(home, { passphrase, lock: LOCK_NOTICE });
}

// The CA passphrase, from --passphrase-file, else E2E_CHAT_CA_PASSPHRASE, else asked for (a new
// one twice).
async function caPassphrase(
  values: { "passphrase-file"?: string },
  options: { create?: boolean } = {},
): Promise<string> {
  return await readPassphrase({
    file: values["passphrase-file"],
    onWarning: (message) => err(`e2e-chat: warning: ${message}\n`),
    envVar: PASSPHRASE_ENV,
    label: options.create ? "New CA passphrase" : "CA passphrase",
    confirm: options.create,
  });
}

// The CA of `home`, or none there yet (a home that is not the user's alone is refused all the same).
async function openIfAny(home: string): Promise<CertificateAuthority | undefined> {
  return await CertificateAuthority.open(home).catch((e) => {
    if (e instanceof E2eError && e.code === "ERR_CA_MISSING") return undefined;
    throw e;
  });
}

/**
 * Opens the CA of `--home`, else of `E2E_CHAT_HOME`, else ~/.e2e-chat. A home from
 * `E2E_CHAT_HOME` may be a member's (README's terminals export it for the client): the hint then
 * says where the home came from, rather than only to make a CA there.
 */
async function openCa(values: { home?: string }): Promise<CertificateAuthority> {
  return await CertificateAuthority.open(resolveHome(values.home)).catch((e) => {
    const env = Deno.env.get("E2E_CHAT_HOME");
    if (!(e instanceof E2eError) || e.code !== "ERR_CA_MISSING" || values.home || !env) throw e;
    throw new E2eError(e.code, e.message, {
      cause: e,
      hint: `E2E_CHAT_HOME names this home ("${env}"): unset it or pass --home DIR to use the ` +
        "CA's, or create a CA here with `deno task ca init`",
    });
  });
}

async function readInput(arg: string): Promise<Uint8Array> {
  let file: { read(p: Uint8Array): Promise<number | null>; close(): void };
  if (arg === "-") {
    file = Deno.stdin;
  } else {
    const path = resolveUserPath(arg);
    try {
      file = await Deno.open(path);
    } catch (e) {
      throw new E2eError("ERR_FILE", `Cannot read "${path}"`, {
        cause: e,
        hint: e instanceof Deno.errors.NotFound
          ? "no such file (a relative path starts in the folder you ran deno task in)"
          : undefined,
      });
    }
  }
  // Read at most one byte more than allowed, so a huge or endless input is refused cheaply.
  try {
    return await readBounded(file, MAX_CSR_BYTES + 1);
  } finally {
    if (arg !== "-") file.close();
  }
}

async function help(): Promise<number> {
  await out(USAGE);
  return 0;
}

if (import.meta.main) await runMain(() => main(Deno.args));
