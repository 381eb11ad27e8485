/**
 * The issuance log's costs (docs/TRANSPARENCY.md):
 *
 * - `sign_with_log` against `sign_without_log`: the same in-process signings on
 *   two EC CAs of the same run, one with its log open (every commit appends and
 *   signs a checkpoint) and one without — the log's whole cost on issuance;
 * - `inclusion_verify` and the proof's size at `size` entries, beside one SHA-256
 *   of a certificate;
 * - `client_audit`: LogMonitor.audit() reading every entry of a `size`-entry log
 *   (copies of a real certificate, served in pages by an in-process stand-in of
 *   the CA with a checkpoint signed by the real log key), beside hashing the same
 *   entries into a tree and nothing else.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createHash, createPrivateKey } from "node:crypto";
import { join } from "node:path";
import { CertificateAuthority } from "../../ca/authority.ts";
import type { CaClient } from "../../client/ca_client.ts";
import { LogMonitor } from "../../client/transparency.ts";
import { signCheckpoint } from "../../lib/checkpoint.ts";
import { logOrigin } from "../../lib/log_proof.ts";
import { leafHash, MerkleTree, verifyInclusion } from "../../lib/merkle.ts";
import { pemDecode } from "../../lib/pem.ts";
import { trustAnchor } from "../../lib/tls.ts";
import { makeCsr, newKeyPem, PASSPHRASE } from "../_helpers.ts";
import type { Report } from "./_report.ts";
import { median } from "./_stats.ts";
import type { Workspace } from "./_world.ts";

/** Sizes of the log section. */
export interface LogSizes {
  /** Signings per CA and round. */
  signs: number;
  /** Rounds of signings. */
  rounds: number;
  /** Entries of the big log. */
  size: number;
}

/** Runs the log section. */
export async function benchLog(ws: Workspace, report: Report, sizes: LogSizes): Promise<void> {
  report.section("issuance log");
  const dir = ws.path("log");
  await Deno.mkdir(dir, { recursive: true });
  const [plain, logged] = await Promise.all([
    CertificateAuthority.init(join(dir, "plain"), PASSPHRASE, { keyType: "ec-p256" }),
    CertificateAuthority.init(join(dir, "logged"), PASSPHRASE, { keyType: "ec-p256" }),
  ]);
  await logged.openLog();
  ws.log(`log: ${sizes.rounds} rounds of ${sizes.signs} signings on a CA with and without a log`);
  // A key for each name: the CA certifies a key for one name at a time.
  const requests = await Promise.all(
    Array.from({ length: sizes.signs }, (_, i) => makeCsr(`l${i}`, { keyPem: newKeyPem() })),
  );
  const perSign = async (ca: CertificateAuthority) => {
    const t0 = performance.now();
    for (const [i, { csr }] of requests.entries()) {
      await ca.sign(csr, `l${i}`, { replace: true });
    }
    return (performance.now() - t0) / requests.length;
  };
  const withLog: number[] = [];
  const without: number[] = [];
  await perSign(plain);
  await perSign(logged);
  for (let r = 0; r < sizes.rounds; r++) {
    // Alternate which goes first, so neither always runs on a warmer machine.
    if (r % 2) {
      without.push(await perSign(plain));
      withLog.push(await perSign(logged));
    } else {
      withLog.push(await perSign(logged));
      without.push(await perSign(plain));
    }
  }
  report.add("sign_without_log", median(without), "ms", {
    rounds: without,
    note: "one ca.sign() (openssl ca, commit, fsync) on an EC CA without a log",
  });
  report.add("sign_with_log", median(withLog), "ms", {
    baseline: ["sign_without_log", median(without)],
    target: { op: "<=", ratio: 1.1 },
    rounds: withLog,
    note: "the same on a CA whose log appends and signs a checkpoint after every commit",
  });

  // A big log: copies of one real certificate (its leaf hash does not matter to the costs).
  const der = pemDecode(
    (await logged.sign((await makeCsr("big")).csr, "big")).certificate.pem,
    "CERTIFICATE",
  )!;
  ws.log(`log: a tree of ${sizes.size} entries`);
  const t0 = performance.now();
  const tree = new MerkleTree();
  for (let i = 0; i < sizes.size; i++) tree.append(leafHash(der));
  const buildMs = performance.now() - t0;
  const index = Math.floor(sizes.size / 3);
  const proof = tree.inclusionProof(index, sizes.size);
  const root = tree.root();
  const leaf = tree.leaf(index);
  const verifyUs: number[] = [];
  const hashUs: number[] = [];
  for (let r = 0; r < 5; r++) {
    let t = performance.now();
    for (let i = 0; i < 1000; i++) verifyInclusion(index, sizes.size, leaf, proof, root);
    verifyUs.push((performance.now() - t) * 1000 / 1000);
    t = performance.now();
    for (let i = 0; i < 1000; i++) createHash("sha256").update(der).digest();
    hashUs.push((performance.now() - t) * 1000 / 1000);
  }
  report.add("sha256_of_certificate", median(hashUs), "µs", {
    note: `one SHA-256 of a ${der.length}-byte certificate`,
  });
  report.add("inclusion_verify", median(verifyUs), "µs", {
    baseline: ["sha256_of_certificate", median(hashUs)],
    note: `verifying an inclusion proof of ${proof.length} hashes at ${sizes.size} entries`,
  });
  const checkpointBytes = 230;
  report.add("inclusion_proof_bytes", proof.length * 32 + checkpointBytes, "bytes", {
    baseline: ["certificate_bytes", der.length],
    note:
      `${proof.length} hashes of 32 bytes and a signed checkpoint of about ${checkpointBytes} bytes`,
  });
  report.add("tree_build", buildMs, "ms", { note: `appending ${sizes.size} leaf hashes` });

  // client audit over the big log.
  const signer = {
    name: logOrigin(logged.certificate.fingerprint),
    key: createPrivateKey({
      key: await Deno.readTextFile(logged.paths.logKey),
      passphrase: PASSPHRASE,
    }),
  };
  const checkpoint = signCheckpoint({ origin: signer.name, size: sizes.size, root }, signer);
  const b64 = Buffer.from(der).toString("base64");
  const logKeyPem = await Deno.readTextFile(logged.paths.logCert);
  const standIn = {
    logKey: () => Promise.resolve(logKeyPem),
    checkpoint: () => Promise.resolve(checkpoint),
    consistency: () => Promise.resolve([]),
    logEntries: (s: number, e: number) =>
      Promise.resolve(Array.from({ length: Math.min(256, e - s) }, () => b64)),
  } as unknown as CaClient;
  const audits: number[] = [];
  const hashes: number[] = [];
  for (let r = 0; r < 3; r++) {
    const monitor = await LogMonitor.open(
      join(dir, `audit-${r}.json`),
      trustAnchor(logged.certificate.pem),
      standIn,
    );
    let t = performance.now();
    await monitor.audit("someone", "00");
    audits.push(performance.now() - t);
    t = performance.now();
    const plainTree = new MerkleTree();
    for (let i = 0; i < sizes.size; i++) {
      plainTree.append(leafHash(new Uint8Array(Buffer.from(b64, "base64"))));
    }
    hashes.push(performance.now() - t);
  }
  report.add("hash_all_entries", median(hashes), "ms", {
    rounds: hashes,
    note: `decoding and hashing ${sizes.size} base64 entries into a tree, nothing else`,
  });
  report.add("client_audit", median(audits), "ms", {
    baseline: ["hash_all_entries", median(hashes)],
    rounds: audits,
    note: `LogMonitor.audit() over ${sizes.size} entries (in-process CA stand-in, no network): ` +
      "hashing, parsing every certificate, checking its name",
  });
}
