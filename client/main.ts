/**
 * `deno task client`: the client's command line. It parses flags, wires the
 * pieces together, prints and exits.
 *
 * @module
 */
import {
  dispatch,
  err,
  noPositionals,
  oneOf,
  out,
  parseCommand,
  readStdinLine,
  runMain,
  splitCommand,
} from "../lib/cli.ts";
import { E2eError } from "../lib/errors.ts";
import { resolveHome, resolveUserPath } from "../lib/home.ts";
import { readPassphrase } from "../lib/passphrase.ts";
import type { Chat } from "./chat.ts";
import type { ChatEvent } from "./events.ts";
import type { FileFlagValues } from "./faces/file_options.ts";
import type { WebServer } from "./faces/web/server.ts";
import { ClientHome } from "./home.ts";
import { nameArgument } from "../lib/names.ts";
import { parseCaAddress, parseInvite } from "../lib/invite.ts";
import type { EarlierCertificate, Identity, PassphraseSource } from "./identity.ts";
import type { ClientKeyType } from "./keys.ts";

// Each command imports the modules it uses (TLS, keys, the chat core, the faces, the page's
// server with npm:ws) when it runs: `join` loads none of the chat's.

const USAGE = `Usage: deno task client [command] [options]

Commands:
  chat [--listen HOST:PORT | --no-listen] [--relay auto|always|never] [--downloads DIR]
       [--json] [FILE OPTIONS]
        Chat peer to peer (the default command: "deno task client" alone). Type /help inside.
  web [--port N] [--open] [--listen HOST:PORT | --no-listen] [--relay auto|always|never]
      [--downloads DIR] [FILE OPTIONS]
        Chat from a web page: serves it on 127.0.0.1 (port 0 picks one) and
        prints the address to open (it holds this run's secret). --open hands
        it to the system browser (xdg-open, or open on macOS).
      --relay: how to reach a peer whose invitation you accept: auto (default)
        connects directly and falls back to the CA's relay after 3 s or a
        failure; always goes through the relay; never fails instead. The relay
        carries only the peers' own TLS: the CA cannot read it.
      --no-listen: do not listen at all; peers you invite reach you through
        the relay.
  join [INVITE | - | --invite-file FILE] [--key-type ec-p256|rsa-2048|ed25519]
       [--encrypt-key] [--passphrase-file FILE]
        Enroll with the invite line your admin gave you. Without INVITE it is
        asked for (not echoed); "-" reads it from stdin. (On the command line it
        works too, but other local users can see it in the process list.)
        Checks the CA's fingerprint first, makes your key here (it never
        leaves HOME/id; a key "csr" made there is used instead). The key is
        encrypted under a passphrase with --encrypt-key (asked for),
        --passphrase-file FILE or $E2E_CHAT_PASSPHRASE.
        A join cut off after it sent its request: run it again with the same
        invite; it goes on with the key it made (kept in HOME/joining).
        A HOME/id holding anything but what a cut-off key write leaves is
        refused as existing.
  whoami [--json]
        Your name, certificate fingerprint and validity, and where things are.
  lookup NAME [--json]
        NAME's certificate and fingerprint, from the CA's directory.
  renew
        A new certificate for your key.
  passwd [--new-passphrase-file FILE | --remove]
        Encrypt your key under a new passphrase (asked for twice, or from FILE or
        $E2E_CHAT_NEW_PASSPHRASE), or with --remove store it unencrypted.
  audit [--json]
        Read the CA's whole issuance log, rebuild its tree and check it against
        the signed checkpoint; exit 1 if the CA issued a certificate for your
        name with a key that is not yours, or showed an inconsistent log.
  move-ca HOST:PORT
        Your CA's service moved: use its new address from now on (give
        https://HOST:PORT or HOST:PORT). Changed only once that address proves
        it is your CA's service (its certificate comes from the CA you pinned)
        and holds your current certificate.
  csr NAME [--key-type ec-p256|rsa-2048|ed25519] [--encrypt-key] [--passphrase-file FILE]
        Only make a key and a request, for an admin to sign by hand with
        deno task ca sign --name NAME HOME/id/request.csr
        To chat from this home, join with an invite: join uses this key.
        Cut off after the key was written, run it again: it makes that key's
        request (another --key-type than that key's is refused).

Options:
  --home DIR              State folder (default: $E2E_CHAT_HOME, else ~/.e2e-chat)
  --passphrase-file FILE  The passphrase of an encrypted key is the first line of FILE
                          (else $E2E_CHAT_PASSPHRASE, else a prompt); asked only when the key
                          is encrypted, by every command that uses it
  -h, --help              Show this help
`;

/** The whole help: the file options' part comes from the chat's modules, loaded for it only. */
async function usage(): Promise<string> {
  const { FILE_USAGE } = await import("./faces/file_options.ts");
  return `${USAGE}\n${FILE_USAGE}\n`;
}

const COMMON = {
  home: { type: "string" },
  help: { type: "boolean", short: "h" },
  "passphrase-file": { type: "string" },
} as const;

/** Prints a warning (of a passphrase file others can read, say) and goes on. */
function warn(message: string): Promise<void> {
  return err(`e2e-chat: warning: ${message}\n`);
}

/** The environment variable holding the passphrase of the client's key. */
const PASSPHRASE_ENV = "E2E_CHAT_PASSPHRASE";
/** The environment variable holding the new passphrase for `passwd`. */
const NEW_PASSPHRASE_ENV = "E2E_CHAT_NEW_PASSPHRASE";

// Every command that uses the key asks for its passphrase this one way, and only if it is encrypted.
function keyPassphrase(file: string | undefined): PassphraseSource {
  return () =>
    readPassphrase({
      onWarning: warn,
      file,
      envVar: PASSPHRASE_ENV,
      label: "Passphrase of your key",
      hint: `set ${PASSPHRASE_ENV} or pass --passphrase-file FILE`,
    });
}

async function loadIdentity(
  values: { home?: string; "passphrase-file"?: string },
): Promise<Identity> {
  const { Identity } = await import("./identity.ts");
  return await Identity.load(resolveHome(values.home), {
    passphrase: keyPassphrase(values["passphrase-file"]),
  });
}

// A new key is encrypted when the user asks for it or gives a passphrase; otherwise not, as before.
async function newKeyPassphrase(
  values: { "encrypt-key"?: boolean; "passphrase-file"?: string },
): Promise<string | undefined> {
  const file = values["passphrase-file"];
  if (!values["encrypt-key"] && file === undefined && !Deno.env.get(PASSPHRASE_ENV)) {
    return undefined;
  }
  return await readPassphrase({
    onWarning: warn,
    file,
    envVar: PASSPHRASE_ENV,
    label: "New passphrase for your key",
    confirm: true,
    hint: `set ${PASSPHRASE_ENV} or pass --passphrase-file FILE`,
  });
}

async function main(args: string[]): Promise<number> {
  const { command } = splitCommand(args);
  return await dispatch(args, {
    program: "client",
    // Printed by `help` alone (and the fallback): other commands do not load it.
    usage: command === "help" || command === "-h" || command === "--help" ? await usage() : "",
    commands: {
      join: joinCommand,
      chat,
      web,
      whoami,
      lookup,
      renew,
      "move-ca": moveCa,
      csr,
      audit,
      passwd,
    },
    // No command is `chat` (README), in a home that has not joined too: its error and hint.
    fallback: chat,
  });
}

async function joinCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, {
    ...COMMON,
    "key-type": { type: "string" },
    "invite-file": { type: "string" },
    "encrypt-key": { type: "boolean" },
  });
  if (values.help) return await help();
  if (positionals.length > 1) throw new E2eError("ERR_USAGE", "join takes one INVITE");
  // The invite holds a secret: from a prompt (no echo), stdin ("-") or --invite-file it
  // stays out of the process list; on the command line it works but is visible there.
  const given = positionals[0];
  const invite = parseInvite(unquote(
    given === "-" ? await readStdinLine() : given ?? await readPassphrase({
      onWarning: warn,
      file: values["invite-file"],
      label: "Invite (the e2e-chat://… line)",
      hint: 'give the invite, "-" to read it from stdin, or --invite-file FILE',
      fileLabel: "invite file",
    }),
  ));
  const { enroll } = await import("./identity.ts");
  const identity = await enroll(resolveHome(values.home), invite, {
    keyType: await keyType(values["key-type"]),
    passphrase: await newKeyPassphrase(values),
  }).catch((e) => {
    if (!(e instanceof E2eError) || e.code !== "ERR_TOKEN_INVALID") throw e;
    throw new E2eError(e.code, e.message, {
      cause: e,
      hint: `ask your admin for a new invite (deno task ca invite ${invite.name}): ` +
        "each one works once, and only until it expires",
    });
  });
  await out(
    `Joined ${identity.caUrl} as "${identity.name}"\n` +
      `  CA fingerprint:          ${identity.caFingerprint} (matches the invite)\n` +
      `  certificate fingerprint: ${identity.certificate.fingerprint}\n` +
      `  valid until:             ${identity.certificate.notAfter.toISOString()}\n` +
      `  key (never sent):        ${identity.keyPath}${
        identity.keyEncrypted ? " (encrypted)" : ""
      }\n`,
  );
  return 0;
}

/**
 * The invite without one pair of quotes around it: pasted at the prompt or read from a file as
 * it is written for a shell (README's `join 'e2e-chat://…'`), the quotes are not the shell's.
 */
function unquote(text: string): string {
  const m = /^\s*(['"])(.*)\1\s*$/s.exec(text);
  return m ? m[2] : text;
}

/** The flags of `chat` that `web` takes too (startChat() reads them). */
async function chatFlags() {
  const { FILE_FLAGS } = await import("./faces/file_options.ts");
  return {
    ...COMMON,
    listen: { type: "string" },
    "no-listen": { type: "boolean" },
    relay: { type: "string" },
    downloads: { type: "string" },
    ...FILE_FLAGS,
  } as const;
}

async function chat(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, {
    ...await chatFlags(),
    json: { type: "boolean" },
  });
  if (values.help) return await help();
  noPositionals(positionals);
  const [{ CommandRunner }, { flushEvents, jsonEvent, runJsonInput }, { Terminal }] = await Promise
    .all([
      import("./faces/commands.ts"),
      import("./faces/json.ts"),
      import("./faces/terminal.ts"),
    ]);
  const id = await loadIdentity(values);
  const show = values.json ? jsonEvent : undefined;
  const terminal = show ? undefined : new Terminal(id.name);
  const emit = show ?? ((e: ChatEvent) => terminal!.show(e));
  const session = await startChat(id, values, emit);
  // The key changes kept from earlier runs are said at start, like the page shows them.
  terminal?.keyChanges((peer) => session.keyChanges(peer));
  const commands = new CommandRunner(session, emit);
  await Promise.race([terminal ? terminal.run(commands) : runJsonInput(commands), stopSignal()]);
  emit({ type: "bye" });
  await session.stop();
  flushEvents();
  return 0;
}

async function web(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, {
    ...await chatFlags(),
    port: { type: "string" },
    open: { type: "boolean" },
  });
  if (values.help) return await help();
  noPositionals(positionals);
  const port = Number(values.port ?? "0");
  if (!/^\d{1,5}$/.test(values.port ?? "0") || port > 65535) {
    throw new E2eError(
      "ERR_USAGE",
      `--port takes a port number, not ${JSON.stringify(values.port)}`,
    );
  }
  const [{ openInBrowser }, page] = await Promise.all([
    import("./faces/web/open.ts"),
    import("./faces/web/server.ts"),
  ]);
  const id = await loadIdentity(values);
  // Until the page's server runs, what the core says is kept for the first page.
  const early: ChatEvent[] = [];
  let forward = (e: ChatEvent): void => void early.push(e);
  const session = await startChat(id, values, (e) => forward(e));
  let server: WebServer;
  try {
    server = await page.WebServer.start(session, {
      port,
      uploads: id.home.uploads,
      notices: early.flatMap((e) => e.type === "warning" && !e.about ? [e.message] : []),
      identityNotices: early.flatMap((e) =>
        e.type === "warning" && e.about === "identity" ? [e.message] : []
      ),
    });
  } catch (e) {
    await session.stop();
    throw e;
  }
  forward = () => {};
  const stop = stopSignal();
  await out(`e2e-chat: ${id.name}'s chat page (keep this address to yourself):\n${server.url}\n`);
  if (values.open) {
    await openInBrowser(server.url).catch((e) =>
      err(
        `e2e-chat: warning: Cannot open a browser: ${e instanceof Error ? e.message : e}\n` +
          "e2e-chat: hint: open the address above in your browser yourself\n",
      )
    );
  }
  await stop;
  await server.stop();
  await session.stop();
  return 0;
}

/** Renews the certificate if a third of its life is left, then starts the chat core. */
async function startChat(
  identity: Identity,
  values:
    & { listen?: string; "no-listen"?: boolean; relay?: string; downloads?: string }
    & FileFlagValues,
  emit: (e: ChatEvent) => void,
): Promise<Chat> {
  const [{ Chat }, { RELAY_MODES }, { fileOptions }] = await Promise.all([
    import("./chat.ts"),
    import("./relay.ts"),
    import("./faces/file_options.ts"),
  ]);
  const [listenHost, listenPort] = parseListen(values.listen ?? "127.0.0.1:0");
  if (values["no-listen"] && values.listen !== undefined) {
    throw new E2eError("ERR_USAGE", "--no-listen and --listen exclude each other");
  }
  const relay = oneOf(values.relay ?? "auto", RELAY_MODES, { what: "relay mode" });
  if (values["no-listen"] && relay === "never") {
    throw new E2eError("ERR_USAGE", "--no-listen needs the relay: not with --relay never");
  }
  let id = identity;
  // A renewal whose log check did not finish left the CA's new certificate aside (the one we
  // hold is superseded): finish it. Otherwise renew before it runs out (a third of its life left).
  const pending = await id.renewalPending();
  if (pending || id.lifeLeft() < 1 / 3) {
    try {
      const earlier: EarlierCertificate[] = [];
      id = await id.renew({ onEarlier: (e) => earlier.push(e) });
      emit({
        type: "warning",
        message: `Renewed your certificate: valid until ${id.certificate.notAfter.toISOString()}`,
        about: "identity",
      });
      for (const e of earlier.filter((e) => !e.asked)) {
        const { message, hint } = await unaskedWords(id.name, e.issuedAt);
        emit({ type: "warning", message: `${message}: ${hint}`, about: "identity" });
      }
    } catch (e) {
      if (id.lifeLeft() === 0) refusedCertificate(id)(e);
      if (pending) {
        throw new E2eError(
          e instanceof E2eError ? e.code : "ERR_FILE", // the CA away, its refusal, our files
          `Cannot finish the renewal of your certificate: ${e instanceof Error ? e.message : e}`,
          {
            cause: e,
            hint: "the CA replaced the certificate this client holds with the one kept in " +
              "id/renewal.json, whose issuance-log check did not pass yet: run deno task client " +
              "renew again once the CA service answers",
          },
        );
      }
      emit({
        type: "warning",
        message: `Cannot renew your certificate yet: ${e instanceof Error ? e.message : e}`,
        about: "identity",
      });
    }
  }
  return await Chat.start(id, {
    listenHost,
    listenPort,
    noListen: values["no-listen"] ?? false,
    relay,
    downloads: values.downloads ? resolveUserPath(values.downloads) : undefined,
    onEvent: emit,
    ...fileOptions(values),
  }).catch(refusedCertificate(id));
}

function stopSignal(): Promise<void> {
  return new Promise<void>((resolve) => {
    Deno.addSignalListener("SIGINT", resolve);
    Deno.addSignalListener("SIGTERM", resolve);
  });
}

function parseListen(text: string): [string, number] {
  const m = /^(\[[0-9a-fA-F:]+\]|[0-9.]+|localhost):(\d{1,5})$/.exec(text);
  if (!m || Number(m[2]) > 65535) {
    throw new E2eError(
      "ERR_USAGE",
      `--listen takes HOST:PORT (an IP address), not ${JSON.stringify(text)}`,
    );
  }
  return [m[1].replace(/^\[|\]$/g, ""), Number(m[2])];
}

async function whoami(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, { ...COMMON, json: { type: "boolean" } });
  if (values.help) return await help();
  noPositionals(positionals);
  const { Identity } = await import("./identity.ts");
  const id = await Identity.load(resolveHome(values.home));
  const info = {
    name: id.name,
    fingerprint: id.certificate.fingerprint,
    keyFingerprint: id.certificate.keyFingerprint,
    serial: id.certificate.serial,
    notBefore: id.certificate.notBefore.toISOString(),
    notAfter: id.certificate.notAfter.toISOString(),
    expired: id.certificate.notAfter.getTime() <= Date.now(),
    certPath: id.certPath,
    keyPath: id.keyPath,
    keyEncrypted: id.keyEncrypted,
    caPath: id.caPath,
    caUrl: id.caUrl,
    caFingerprint: id.caFingerprint,
  };
  if (values.json) {
    await out(JSON.stringify(info) + "\n");
    return 0;
  }
  await out(
    `${info.name}${
      info.expired
        ? " (certificate expired, so it cannot be renewed: ask your admin for a new invite)"
        : ""
    }\n` +
      `  certificate fingerprint: ${info.fingerprint}\n` +
      `  key fingerprint:         ${info.keyFingerprint}\n` +
      `  valid until:             ${info.notAfter}\n` +
      `  certificate:             ${info.certPath}\n` +
      `  key:                     ${info.keyPath}${info.keyEncrypted ? " (encrypted)" : ""}\n` +
      `  CA:                      ${info.caUrl} (${info.caFingerprint})\n`,
  );
  return 0;
}

async function lookup(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, { ...COMMON, json: { type: "boolean" } });
  if (values.help) return await help();
  if (positionals.length !== 1) throw new E2eError("ERR_USAGE", "lookup needs exactly one NAME");
  const name = nameArgument(positionals[0]);
  const [{ checkDirectoryAnswer }, { LogMonitor }, { Revocation }] = await Promise.all([
    import("./directory.ts"),
    import("./transparency.ts"),
    import("./revocation.ts"),
  ]);
  const id = await loadIdentity(values);
  const client = id.client();
  const warnings: string[] = [];
  const monitor = await LogMonitor.open(id.home.logState, id.anchor, client);
  const revocation = new Revocation({
    fetch: () => monitor.loggedCrl(),
    issuer: id.anchor.x509,
    numberFile: id.home.crlNumber,
    onWarning: (message) => warnings.push(message),
  });
  // The CRL first: a CA service whose TLS certificate it lists is not asked for the answer.
  client.checkServiceRevocation(revocation);
  await revocation.refresh();
  // Why there is no CRL (one refused as a replay, say) before the error that there is none;
  // without one, the service is not asked (client/ca_client.ts checkServiceRevocation).
  for (const message of warnings) await err(`e2e-chat: warning: ${message}\n`);
  const reply = await client.lookup(name).catch(refusedCertificate(id));
  // While an alarm of the log stands, nothing the CA says is shown, as the chat connects to none.
  monitor.requireNoAlarm();
  // The directory's answer is checked by the function the chat checks it with before
  // connecting: a current CRL, our CA, that name, valid now, not revoked, and in the CA's
  // issuance log (what is shown can be compared).
  const cert = await checkDirectoryAnswer(reply, name, {
    anchor: id.anchor,
    revocation,
    log: monitor,
  });
  if (values.json) {
    await out(
      JSON.stringify({
        name,
        fingerprint: cert.fingerprint,
        keyFingerprint: cert.keyFingerprint,
        serial: cert.serial,
        notAfter: cert.notAfter.toISOString(),
        certificate: cert.pem,
      }) + "\n",
    );
    return 0;
  }
  await out(
    `${name}\n  certificate fingerprint: ${cert.fingerprint}\n` +
      `  key fingerprint:         ${cert.keyFingerprint}\n` +
      `  valid until:             ${cert.notAfter.toISOString()}\n${cert.pem}`,
  );
  return 0;
}

async function audit(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, { ...COMMON, json: { type: "boolean" } });
  if (values.help) return await help();
  noPositionals(positionals);
  const [{ LogMonitor }, { Revocation }] = await Promise.all([
    import("./transparency.ts"),
    import("./revocation.ts"),
  ]);
  const id = await loadIdentity(values);
  const client = id.client();
  const monitor = await LogMonitor.open(id.home.logState, id.anchor, client)
    .catch(refusedCertificate(id));
  // The CRL, for the CA service's own certificate (the look itself reads the CRLs in the log).
  const warnings: string[] = [];
  const revocation = new Revocation({
    fetch: () => monitor.loggedCrl(),
    issuer: id.anchor.x509,
    numberFile: id.home.crlNumber,
    onWarning: (message) => warnings.push(message),
  });
  // A CA service whose TLS certificate is on the CRL is not asked for the log.
  client.checkServiceRevocation(revocation);
  await revocation.refresh();
  for (const message of warnings) await err(`e2e-chat: warning: ${message}\n`);
  // Evidence found while the CRL was checked (a fork, entries that do not make the checkpoint)
  // is reported, CRL or not; without it, no CRL is an error.
  let current = true;
  try {
    revocation.requireCurrent();
  } catch (e) {
    if (!monitor.alarms.length) refusedCertificate(id)(e);
    current = false;
  }
  let result;
  try {
    if (current) result = await monitor.audit(id.name, id.certificate.keyFingerprint);
  } catch (e) {
    if (!(e instanceof E2eError && e.code === "ERR_LOG_ALARM")) refusedCertificate(id)(e);
  }
  const alarms = monitor.alarms;
  if (values.json) {
    await out(JSON.stringify({ ...result, alarms }) + "\n");
  } else {
    await out(
      (result
        ? `Read all ${result.entries} entries of the CA's issuance log: they make its signed ` +
          `checkpoint, which is consistent with every one this client saw before.\n`
        : "") +
        alarms.map((a) => `ALARM: ${a.message}\n`).join("") +
        (alarms.length ? "" : `No certificate for "${id.name}" but yours.\n`),
    );
  }
  return alarms.length ? 1 : 0;
}

async function renew(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, COMMON);
  if (values.help) return await help();
  noPositionals(positionals);
  const loaded = await loadIdentity(values);
  const earlier: EarlierCertificate[] = [];
  const id = await loaded.renew({ onEarlier: (e) => earlier.push(e) })
    .catch(refusedCertificate(loaded));
  const [lost] = earlier.filter((e) => e.asked);
  await out(
    `Renewed "${id.name}": valid until ${id.certificate.notAfter.toISOString()}\n` +
      `  certificate fingerprint: ${id.certificate.fingerprint}\n` +
      (lost
        ? `  issued at ${lost.issuedAt.toISOString()} to an earlier renewal from this home, ` +
          "whose reply was lost\n"
        : ""),
  );
  for (const e of earlier.filter((e) => !e.asked)) {
    const { message, hint } = await unaskedWords(id.name, e.issuedAt);
    await err(`e2e-chat: warning: ${message}\ne2e-chat: hint: ${hint}\n`);
  }
  return 0;
}

// What to tell a member whose renewal got a certificate a renewal of another home made.
async function unaskedWords(
  name: string,
  issuedAt: Date,
): Promise<{ message: string; hint: string }> {
  const { unaskedRenewalWords } = await import("./ca_client.ts");
  return unaskedRenewalWords(name, issuedAt);
}

async function moveCa(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, COMMON);
  if (values.help) return await help();
  if (positionals.length !== 1) {
    throw new E2eError("ERR_USAGE", "move-ca needs the CA service's new address, HOST:PORT");
  }
  const caUrl = parseCaAddress(positionals[0]);
  const loaded = await loadIdentity(values);
  if (caUrl === loaded.caUrl) {
    await out(`Your CA is already at ${caUrl}: nothing to change\n`);
    return 0;
  }
  const id = await loaded.moveCa(caUrl).catch(refusedCertificate(loaded)).catch((e) => {
    // The usual hint for an unreachable CA says to run move-ca: what was just run.
    if (!(e instanceof E2eError) || e.code !== "ERR_NETWORK") throw e;
    throw new E2eError(e.code, e.message, {
      cause: e,
      detail: e.detail,
      hint: "check the new address with your admin; nothing was changed",
    });
  });
  await out(
    `Your CA is now at ${id.caUrl} (was ${loaded.caUrl})\n` +
      `  CA fingerprint: ${id.caFingerprint} (the same CA: its service proved it)\n`,
  );
  return 0;
}

async function csr(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, {
    ...COMMON,
    "key-type": { type: "string" },
    "encrypt-key": { type: "boolean" },
  });
  if (values.help) return await help();
  if (positionals.length !== 1) throw new E2eError("ERR_USAGE", "csr needs exactly one NAME");
  const name = nameArgument(positionals[0]);
  const { makeKeyAndCsr } = await import("./keys.ts");
  const { csrPath } = await makeKeyAndCsr(resolveHome(values.home), name, {
    // Not given: the default for a new key, the key's own type for a key an earlier run left.
    keyType: values["key-type"] === undefined ? undefined : await keyType(values["key-type"]),
    passphrase: await newKeyPassphrase(values),
  });
  await out(`${csrPath}\n`);
  return 0;
}

async function passwd(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, {
    ...COMMON,
    "new-passphrase-file": { type: "string" },
    remove: { type: "boolean" },
  });
  if (values.help) return await help();
  noPositionals(positionals);
  if (values.remove && values["new-passphrase-file"] !== undefined) {
    throw new E2eError("ERR_USAGE", "passwd takes --remove or --new-passphrase-file, not both");
  }
  const [{ isEncryptedKey, unlockKey }, { changePassphrase }] = await Promise.all([
    import("../lib/keys.ts"),
    import("./keys.ts"),
  ]);
  const home = resolveHome(values.home);
  // Only the key: this works in a home that has just made a request (`csr`) too.
  const keyPath = new ClientHome(home).id.key;
  let text: string;
  try {
    text = await Deno.readTextFile(keyPath);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    throw new E2eError("ERR_NOT_ENROLLED", `No key at "${keyPath}"`, {
      hint: "join first: deno task client join",
    });
  }
  const passphrase = isEncryptedKey(text)
    ? await keyPassphrase(values["passphrase-file"])()
    : undefined;
  // The current passphrase is checked before a new one is asked for.
  await unlockKey(keyPath, { passphrase, what: `your key "${keyPath}"` });
  const newPassphrase = values.remove ? undefined : await readPassphrase({
    onWarning: warn,
    file: values["new-passphrase-file"],
    envVar: NEW_PASSPHRASE_ENV,
    label: "New passphrase for your key",
    confirm: true,
    hint: `set ${NEW_PASSPHRASE_ENV}, pass --new-passphrase-file FILE, or --remove`,
  });
  const { encrypted } = await changePassphrase(home, { passphrase, newPassphrase });
  await out(
    encrypted
      ? `Your key "${keyPath}" is encrypted under the new passphrase\n`
      : `Your key "${keyPath}" is stored unencrypted\n`,
  );
  return 0;
}

/**
 * Rethrows an error; the CA's refusal of our own certificate (ERR_FORBIDDEN on a members' route)
 * gets a hint, since its cause may be a certificate for our name that we did not ask for.
 */
function refusedCertificate(id: Identity): (e: unknown) => never {
  return (e) => {
    if (!(e instanceof E2eError) || e.hint) throw e;
    if (e.code === "ERR_UNAUTHENTICATED" && id.lifeLeft() === 0) {
      // The service takes no expired certificate, not even to renew it (docs/CA.md).
      throw new E2eError(e.code, e.message, { cause: e, hint: expiredHint(id) });
    }
    if (e.code !== "ERR_FORBIDDEN") throw e;
    throw new E2eError(e.code, e.message, {
      cause: e,
      hint: `your certificate was revoked, or replaced by another for "${id.name}"; if you did ` +
        "not ask for that, tell your admin: someone else may now hold your name",
    });
  };
}

/** What a member whose certificate expired can do: it cannot renew itself. */
function expiredHint(id: Identity): string {
  return `your certificate expired on ${id.certificate.notAfter.toISOString()}, and an expired ` +
    `one cannot be renewed: ask your admin for a new invite (deno task ca invite ${id.name}) ` +
    "and join with it in another --home";
}

async function keyType(value: string | undefined): Promise<ClientKeyType> {
  const { CLIENT_KEY_TYPES } = await import("./keys.ts");
  return oneOf(value ?? "ec-p256", CLIENT_KEY_TYPES, { what: "key type" });
}

async function help(): Promise<number> {
  await out(await usage());
  return 0;
}

if (import.meta.main) await runMain(() => main(Deno.args));
