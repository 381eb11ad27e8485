/**
 * Product code timed in a process of its own, so that it never runs on the
 * benchmark's event loop (and a CA probe runs as the CA service does: a small
 * process of its own). Each mode prints one JSON line.
 *
 * `deno run _probe.ts sign HOME CSR_DIR SEQ_NAMES CONC_NAMES` — where an
 * enrollment's time goes, on a copy of a CA home (names comma separated,
 * CSR_DIR/NAME.csr each; the passphrase comes in E2E_CHAT_CA_PASSPHRASE):
 *
 * - `signSeq` / `signConc8`: CertificateAuthority.sign(), one at a time and 8
 *   at once (cert/s) — the authority alone, no HTTP and no invite;
 * - `opensslMs`: the `openssl ca` run of a signing, started from Deno through
 *   lib/openssl.ts in a fresh folder, with the arguments authority.ts uses;
 * - `transactionMs`: ca/store.ts transaction() with one sign folder and
 *   nothing to commit (lock, clean-up, folders);
 * - `fsyncMs`: appending one index-sized line to a file and fsyncing it;
 * - `redeemMs`: InviteStore.redeem() with a no-op signing (and `records`, the
 *   invites.json size it ran against);
 * - `parseMs`: parseCsr() with the key check plus parseCertificate().
 *
 * `deno run _probe.ts auth HOME SERIALS_FILE` — µs per
 * CertificateAuthority.isCurrent() (the check of every authenticated
 * request) for serials from the file, one per line: `{"us": …}`.
 *
 * `deno run _probe.ts join KEY_TYPE HOME_PREFIX INVITE…` — client/identity.ts
 * enroll() for each invite in turn, in this one process (HOME_PREFIX-0, -1,
 * …): `[ms, …]`; the first pays the process's cold start.
 *
 * @module
 */
import { join } from "node:path";
import { CertificateAuthority } from "../../ca/authority.ts";
import { InviteStore } from "../../ca/invites.ts";
import { checkKey, leafExtensions } from "../../ca/policy.ts";
import { CaPaths, transaction } from "../../ca/store.ts";
import { parseCsr } from "../../lib/csr.ts";
import { openssl, PASSPHRASE_ARG, startOpenssl } from "../../lib/openssl.ts";
import { parseCertificate } from "../../lib/x509.ts";
import { enroll } from "../../client/identity.ts";
import { parseInvite } from "../../lib/invite.ts";
import type { ClientKeyType } from "../../client/keys.ts";

const CONCURRENCY = 8;

async function timeEach(count: number, fn: (i: number) => Promise<unknown>): Promise<number> {
  const started = performance.now();
  for (let i = 0; i < count; i++) await fn(i);
  return (performance.now() - started) / count;
}

function print(value: unknown): void {
  const bytes = new TextEncoder().encode(JSON.stringify(value) + "\n");
  let n = 0;
  while (n < bytes.length) n += Deno.stdout.writeSync(bytes.subarray(n));
}

async function sign(args: string[]): Promise<void> {
  const [home, csrDir, seqList, concList] = args;
  const passphrase = Deno.env.get("E2E_CHAT_CA_PASSPHRASE") ?? "";
  const seq = seqList.split(",");
  const conc = concList.split(",");
  const csr = async (n: string) => await Deno.readTextFile(join(csrDir, `${n}.csr`));
  const paths = new CaPaths(home);
  const ca = await CertificateAuthority.open(home, { passphrase });
  ca.keepOpensslWarm(); // as the service does

  // The authority alone; the first two signings warm up.
  await ca.sign(await csr(seq[0]), seq[0]);
  await ca.sign(await csr(seq[1]), seq[1]);
  const rest = seq.slice(2);
  const seqCsrs = await Promise.all(rest.map(csr));
  let t = performance.now();
  for (let i = 0; i < rest.length; i++) await ca.sign(seqCsrs[i], rest[i]);
  const signSeq = rest.length / (performance.now() - t) * 1000;
  const concCsrs = await Promise.all(conc.map(csr));
  let next = 0;
  t = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < conc.length) {
      const i = next++;
      await ca.sign(concCsrs[i], conc[i]);
    }
  }));
  const signConc8 = conc.length / (performance.now() - t) * 1000;
  await ca.stopWarmOpenssl();

  // openssl ca alone, started from Deno, in a folder like a transaction's sign folder.
  const scratch = await Deno.makeTempDir({ dir: home, prefix: ".probe-" });
  const count = rest.length;
  const opensslMs = await timeEach(count, async (i) => {
    const dir = join(scratch, `sign-${i}`);
    await Deno.mkdir(join(dir, "certs"), { recursive: true });
    await Deno.writeTextFile(join(dir, "index.txt"), "");
    await Deno.writeTextFile(join(dir, "index.txt.attr"), "unique_subject = no\n");
    await Deno.writeFile(join(dir, "request.der"), parseCsr(seqCsrs[i]).der);
    await Deno.writeTextFile(join(dir, "extensions.cnf"), leafExtensions(rest[i], "ec"));
    await openssl([
      ...["ca", "-config", paths.config, "-keyfile", paths.key, "-cert", paths.cert],
      ...["-passin", PASSPHRASE_ARG, "-batch", "-in", "request.der", "-inform", "DER"],
      ...["-notext", "-out", "issued.pem", "-subj", `/CN=${rest[i]}`, "-utf8", "-days", "7"],
      ...["-extfile", "extensions.cnf", "-extensions", "leaf"],
    ], { cwd: dir, passphrase });
  });
  // The same run started ahead, as the service keeps two: only the time from handing it the
  // request's extensions until its certificate is there (its start-up is not timed).
  let opensslWarmMs = 0;
  for (let i = 0; i < count; i++) {
    const dir = join(scratch, `warm-${i}`);
    await Deno.mkdir(join(dir, "certs"), { recursive: true });
    await Deno.writeTextFile(join(dir, "index.txt"), "");
    await Deno.writeFile(join(dir, "request.der"), parseCsr(seqCsrs[i]).der);
    const run = startOpenssl([
      ...["ca", "-config", paths.config, "-keyfile", paths.key, "-cert", paths.cert],
      ...["-passin", PASSPHRASE_ARG, "-batch", "-in", "request.der", "-inform", "DER"],
      ...["-notext", "-out", "issued.pem", "-utf8", "-days", "7"],
      ...["-extfile", "/dev/stdin", "-extensions", "leaf"],
    ], { cwd: dir, passphrase });
    await new Promise((r) => setTimeout(r, 100));
    const started = performance.now();
    await run.finish(leafExtensions(rest[i], "ec"));
    opensslWarmMs += (performance.now() - started) / count;
  }
  const transactionMs = await timeEach(count, () => transaction(paths, (tx) => tx.signFolder()));
  const line = new TextEncoder().encode(
    "V\t261202210755Z\t\t323A8EDE417B8744312AA728B6616E8C32DAF05A\tunknown\t/CN=someone\n",
  );
  const fsyncMs = await timeEach(count, async () => {
    using file = await Deno.open(join(scratch, "append.txt"), { append: true, create: true });
    await file.write(line);
    await file.sync();
  });
  const issued = await Deno.readTextFile(join(scratch, "sign-0", "issued.pem"));
  const parseMs = await timeEach(count, (i) => {
    parseCsr(seqCsrs[i], { checkKey });
    parseCertificate(issued);
    return Promise.resolve();
  });
  await Deno.remove(scratch, { recursive: true });

  const store = new InviteStore(paths);
  const tokens: string[] = [];
  for (let i = 0; i < count; i++) tokens.push((await store.create(`probe-${i}`, 3_600_000)).token);
  const records = JSON.parse(await Deno.readTextFile(join(paths.dir, "invites.json"))).invites
    .length;
  const redeemMs = await timeEach(
    count,
    (i) => store.redeem(tokens[i], (name) => Promise.resolve(name)),
  );
  const result = {
    signSeq,
    signConc8,
    opensslMs,
    opensslWarmMs,
    transactionMs,
    fsyncMs,
    redeemMs,
    records,
    parseMs,
  };
  print(result);
}

async function auth(args: string[]): Promise<void> {
  const [home, serialsFile] = args;
  const serials = (await Deno.readTextFile(serialsFile)).split("\n").filter(Boolean);
  const ca = await CertificateAuthority.open(home);
  await ca.isCurrent(serials[0]);
  const calls = 200;
  const started = performance.now();
  for (let i = 0; i < calls; i++) await ca.isCurrent(serials[(i * 7919) % serials.length]);
  print({ us: (performance.now() - started) / calls * 1000 });
}

async function joins(args: string[]): Promise<void> {
  const [keyType, prefix, ...invites] = args;
  const times: number[] = [];
  for (const [i, invite] of invites.entries()) {
    const t0 = performance.now();
    await enroll(`${prefix}-${i}`, parseInvite(invite), { keyType: keyType as ClientKeyType });
    times.push(performance.now() - t0);
  }
  print(times);
}

if (import.meta.main) {
  const [mode, ...rest] = Deno.args;
  if (mode === "sign") await sign(rest);
  else if (mode === "auth") await auth(rest);
  else if (mode === "join") await joins(rest);
  else throw new TypeError(`Unknown probe ${JSON.stringify(mode)}`);
}
