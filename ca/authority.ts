/**
 * The certificate authority: owns the rules (who gets which certificate) and
 * drives openssl's own CA machinery to carry them out.
 *
 * @module
 */
import { createPrivateKey, type KeyObject, randomBytes, X509Certificate } from "node:crypto";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import type { NoteKey } from "../lib/checkpoint.ts";
import {
  type CertificateRequest,
  parseCsr,
  parseCsrAsync,
  subjectIsCommonName,
} from "../lib/csr.ts";
import { CRL_REASON_CODES, parseCrl } from "../lib/crl.ts";
import { E2eError } from "../lib/errors.ts";
import { ensurePrivateDir, exists, othersMayRename, syncDir, writeFileAtomic } from "../lib/fs.ts";
import { generateKey, makeRequest } from "../lib/keys.ts";
import type { LockOptions } from "../lib/lock.ts";
import { checkName } from "../lib/names.ts";
import {
  openssl,
  OpensslError,
  type OpensslRun,
  PASSPHRASE_ARG,
  startOpenssl,
} from "../lib/openssl.ts";
import { pemDecode } from "../lib/pem.ts";
import { type Credentials, LOG_CN, SERVICE_CN } from "../lib/tls.ts";
import {
  type CertificateInfo,
  keyFingerprint,
  normalizeSerialHex,
  parseCertificate,
  sha256Hex,
} from "../lib/x509.ts";
import {
  type CaKeyType,
  checkDays,
  checkKey,
  CRL_URL_PATTERN,
  DEFAULT_CA_DAYS,
  DEFAULT_CERT_DAYS,
  type KeyKind,
  leafExtensions,
  logExtensions,
  OPENSSL_CNF,
  type RevokeReason,
  serviceExtensions,
} from "./policy.ts";
import { CaPaths } from "./home.ts";
import { IssuanceLog, logOrigin } from "./log.ts";
import {
  changeReason,
  IndexCache,
  type IndexEntry,
  locked,
  parseIndex,
  readIndex,
  readKeyIds,
  signingFolder,
  type Transaction,
  transaction,
  writeKeyIds,
} from "./store.ts";

/** Options of {@linkcode CertificateAuthority.init}. */
export interface InitOptions {
  /** Key type of the CA. Default: "rsa-4096", as the original project. */
  keyType?: CaKeyType;
  /** Validity of the CA certificate in days. Default: 1826. */
  days?: number;
  /** Common name of the CA. Default: "e2e-chat CA". */
  commonName?: string;
  /** How to wait for the CA lock (say, a notice when it is held). Default: 60 s, silently. */
  lock?: LockOptions;
}

/** Options of {@linkcode CertificateAuthority.open}. */
export interface OpenOptions {
  /** The CA passphrase, needed only for sign, revoke and crl. Default: none. */
  passphrase?: string;
  /** How to wait for the CA lock (say, a notice when it is held). Default: 60 s, silently. */
  lock?: LockOptions;
}

/** Options of {@linkcode CertificateAuthority.sign}. */
export interface SignOptions {
  /** Validity in days. Default: 7. */
  days?: number;
  /** Revoke a valid certificate of the same name with a different key. Default: false. */
  replace?: boolean;
  /**
   * Called with the new certificate after openssl signed it and before the
   * commit makes it count (the index line); the commit waits for it, and fails
   * if it throws. An invite's redemption records the serial here. Default: none.
   */
  beforeCommit?: (certificate: CertificateInfo) => Promise<void>;
  /**
   * The serial of the certificate that authorized this request (a renewal by
   * its holder): the signing is refused with `ERR_FORBIDDEN` unless that is
   * the name's valid certificate when the request is checked and still when it
   * commits, so a renewal never outlives a revocation. Default: none.
   */
  renews?: string;
  /**
   * Sign even when a certificate for the request's key was revoked as `keyCompromise` (`ca sign
   * --allow-compromised-key`): by default such a key is refused (`ERR_KEY_REJECTED`), whatever
   * the name. Default: false.
   */
  allowCompromisedKey?: boolean;
}

/** Options of {@linkcode CertificateAuthority.checkRequest}. */
export interface CheckRequestOptions {
  /** Accept a key a certificate of which was revoked as `keyCompromise`. Default: false. */
  allowCompromisedKey?: boolean;
}

/** A request that passed {@linkcode CertificateAuthority.checkRequest}. */
export interface CheckedRequest {
  /** The request. */
  request: CertificateRequest;
  /** Its key's kind. */
  kind: KeyKind;
  /** What identifies its key in the CA's refusals (see keyIdentity). */
  keyId: string;
}

/** Options of {@linkcode CertificateAuthority.revoke}. */
export interface RevokeOptions {
  /** The reason recorded in the CRL. Default: "unspecified". */
  reason?: RevokeReason;
}

// The index's entries by key (Authority's #keyIndex): built from the entries array `of`, `done`
// of them so far; the valid ones by key id, and those revoked as keyCompromise.
interface KeyIndex {
  of?: IndexEntry[];
  done: number;
  valid: Map<string, IndexEntry[]>;
  compromised: IndexEntry[];
}

/** What {@linkcode CertificateAuthority.revoke} did: the certificate's entry as it is now. */
export interface Revocation extends IndexEntry {
  /**
   * The reason it had, when it was revoked already (superseded, say) and a revocation as
   * `keyCompromise` changed that reason. Default: none (revoked now).
   */
  formerReason?: string;
  /**
   * True when it was revoked as `keyCompromise` already (by hand, or by a CA from before the
   * cascade): only the others for its key (`sameKey`, never empty then) were revoked now.
   * Default: false.
   */
  already?: boolean;
  /** The other unexpired certificates for its key, revoked with it (as `keyCompromise`). */
  sameKey: IndexEntry[];
}

/** The result of a signing. */
export interface Issued {
  /** The new certificate. */
  certificate: CertificateInfo;
  /** Serials revoked (superseded) to keep one valid certificate per name. */
  superseded: string[];
}

/** One issued certificate as `list` reports it. */
export interface ListedCertificate {
  /** The user name. */
  name: string;
  /** Serial number, uppercase hex. */
  serial: string;
  /** valid, revoked or expired (as of now). */
  status: "valid" | "revoked" | "expired";
  /** End of validity, ISO 8601. */
  notAfter: string;
  /** When it was revoked, ISO 8601, for revoked ones. */
  revokedAt?: string;
  /** Why it was revoked, for revoked ones. */
  reason?: string;
  /** SHA-256 of the certificate DER, 64 lowercase hex characters ("" if the file is missing). */
  fingerprint: string;
}

/** What an issuance writes: the subject, the extensions and who it supersedes. */
interface IssueSpec {
  subject: string;
  extensions: string;
  days: number;
  supersede: (current: IndexEntry) => Promise<void>;
  beforeCommit?: (certificate: CertificateInfo) => Promise<void>;
  renews?: string;
  /** The name's valid certificates stay valid: the caller supersedes them later. */
  keep?: boolean;
  /**
   * The request's key (its keyIdentity), refused at the commit, under the lock, when a
   * certificate for it was revoked as keyCompromise meanwhile (unless `allowCompromised`), or
   * another name got a valid certificate for it meanwhile. Default: not looked at.
   */
  key?: { id: string; allowCompromised: boolean };
}

/** A signing waiting in the queue. */
interface SignJob {
  der: Uint8Array;
  spec: IssueSpec;
  passphrase: string;
  resolve(issued: Issued): void;
  reject(error: unknown): void;
}

/** A signing done, waiting for its commit. */
interface Signed {
  job: SignJob;
  /** Its signing folder (see signingFolder in store.ts). */
  folder: string;
  /** The valid certificates of the name when it was checked. */
  current: IndexEntry[];
  certificate: CertificateInfo;
}

// A CA home that someone else may change is not one to trust: whoever may rename in HOME (its
// owner, or anyone when it is writable by others) can put a CA of their own in place of HOME/ca
// — with a key they hold, which `unlock()` takes like ours — or swap its index and invites.
async function checkOwnHome(paths: CaPaths): Promise<void> {
  for (const dir of [paths.home, paths.dir]) {
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(dir);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) continue; // reported as a missing CA, or made now
      throw e;
    }
    const who = othersMayRename(info, Deno.uid(), { group: false, sticky: false });
    if (who) {
      const why = who === "owner" ? "it belongs to another user" : "other users may write in it";
      throw new E2eError("ERR_HOME", `Cannot use the CA in "${dir}": ${why}`, {
        hint: `a CA home must be yours alone: check what changed in it, then chown it to ` +
          `yourself and chmod 700 "${dir}"`,
      });
    }
  }
}

/** How many checked requests checkRequest() remembers (the most recent ones). */
const CHECKED_KEEP = 64;
/** At most this many openssl signings run at once (more would only queue for the CPU). */
const MAX_SIGNING = 4;
/** At most this many signings commit together. */
const MAX_BATCH = 16;
/** How many `openssl ca` runs a service keeps started ahead while signings come in. */
const WARM_SIGNERS = 2;
/** A run started ahead and not used this long is stopped (its start date was set when it started). */
const WARM_IDLE_MS = 30_000;

/**
 * An `openssl ca` started ahead in a signing folder of its own: it has loaded
 * its configuration, the CA key and certificate, and waits on stdin for the
 * extensions of the request it will sign (`request.der` in its folder).
 */
interface WarmSigner {
  dir: string;
  run: OpensslRun;
  days: number;
  timer?: ReturnType<typeof setTimeout>;
}

/**
 * A CA in `HOME/ca`, created by {@linkcode CertificateAuthority.init} or opened
 * by {@linkcode CertificateAuthority.open}. Operations that use the CA key need
 * the passphrase given when opening.
 *
 * @example Creating a CA and signing a request
 * ```ts
 * import { CertificateAuthority } from "./authority.ts";
 * const ca = await CertificateAuthority.init("/tmp/home", "a long passphrase", { keyType: "ec-p256" });
 * const { certificate } = await ca.sign(await Deno.readFile("alice.csr"), "alice");
 * console.log(certificate.pem);
 * ```
 */
export class CertificateAuthority {
  /** The CA's paths. */
  readonly paths: CaPaths;
  /** The CA certificate. */
  readonly certificate: CertificateInfo;
  #passphrase?: string;
  #index: IndexCache;
  #queue: SignJob[] = [];
  #busy = new Set<string>();
  #signing = 0;
  #signed: Signed[] = [];
  #committing = false;
  #log?: IssuanceLog;
  #logSigner?: NoteKey;
  #signingKey?: Promise<string>;
  #checked = new Map<string, CheckedRequest>();
  // The key identity of certificates looked at, by normalized serial (never changes): read from
  // their files here, or known at their signing.
  #keyIds = new Map<string, string>();
  // Those of the key-ids file (read once), and whether #keyIds holds some that it lacks.
  #savedKeyIds?: Promise<Map<string, string>>;
  #keyIdsUnsaved = false;
  // Certificates whose file has no key to read (missing, or not a certificate): never read again.
  #noKeyId = new Set<string>();
  // The index's entries by key, kept in step with the entries array of #index (which only grows
  // until a revocation replaces it): the valid ones by key id, and those revoked as keyCompromise.
  // A check then looks at the few entries of its key instead of every certificate issued.
  #keyIndex: KeyIndex = { done: 0, valid: new Map(), compromised: [] };
  #keyIndexing: Promise<unknown> = Promise.resolve();
  #lock: LockOptions;
  #keepWarm = false;
  #warm: WarmSigner[] = [];
  #warmStarts = new Set<Promise<void>>();
  #discarding = new Set<Promise<void>>();
  #warmIdleMs = WARM_IDLE_MS;
  #warmKeyPem?: Promise<{ pem: string; secret: string }>;

  private constructor(
    paths: CaPaths,
    certificate: CertificateInfo,
    options: OpenOptions = {},
  ) {
    this.paths = paths;
    this.certificate = certificate;
    this.#passphrase = options.passphrase;
    this.#lock = options.lock ?? {};
    this.#index = new IndexCache(paths);
  }

  /** Creates a new CA under `home`; refuses when one exists. Nothing is left behind on failure. */
  static async init(
    home: string,
    passphrase: string,
    options: InitOptions = {},
  ): Promise<CertificateAuthority> {
    const paths = new CaPaths(home);
    const keyType = options.keyType ?? "rsa-4096";
    const days = checkDays(options.days ?? DEFAULT_CA_DAYS);
    const commonName = checkCommonName(options.commonName ?? "e2e-chat CA");
    await ensurePrivateDir(home);
    await checkOwnHome(paths);
    return await locked(paths, async () => {
      if (await exists(paths.dir)) {
        throw new E2eError("ERR_CA_EXISTS", `Cannot create a CA: "${paths.dir}" already exists`, {
          hint: "use another --home, or remove that folder to start over",
        });
      }
      // Build the whole CA in a sibling folder and rename it into place: all or nothing.
      const stage = await Deno.makeTempDir({ dir: home, prefix: ".ca-init-" });
      const staged = new CaPaths(home, stage);
      try {
        await Deno.chmod(stage, 0o700);
        for (const dir of [staged.certs, staged.tmp]) await Deno.mkdir(dir, { mode: 0o700 });
        const files: Array<[string, string, number]> = [
          [staged.config, OPENSSL_CNF, 0o644],
          [staged.index, "", 0o600],
          [staged.indexAttr, "unique_subject = no\n", 0o600],
          [staged.crlnumber, crlNumberFrom(""), 0o600],
        ];
        for (const [file, text, mode] of files) await Deno.writeTextFile(file, text, { mode });
        await generateKey(staged.key, keyType, { passphrase });
        const digest = keyType === "ed25519" ? [] : ["-sha256"];
        // openssl.cnf names the database relative to the CA folder: openssl runs inside it.
        await openssl([
          ...["req", "-x509", "-new", "-key", staged.key, "-passin", PASSPHRASE_ARG, "-utf8"],
          ...["-config", staged.config, "-extensions", "v3_ca", "-days", String(days)],
          ...["-subj", `/CN=${escapeDn(commonName)}`, ...digest, "-out", staged.cert],
        ], { cwd: stage, passphrase });
        await openssl([
          ...["ca", "-config", staged.config, "-keyfile", staged.key, "-cert", staged.cert],
          ...["-passin", PASSPHRASE_ARG, "-gencrl", "-out", staged.crl],
        ], { cwd: stage, passphrase });
        // openssl's backups of the files it rewrote.
        for (const leftover of [staged.crlnumber, staged.index, staged.indexAttr]) {
          await Deno.remove(`${leftover}.old`).catch(() => {});
        }
        // openssl creates its files with the umask's mode (0666 under umask 000): set ours,
        // public files readable by all, the database for us alone (docs/SECURITY.md, "Files").
        for (const file of [staged.cert, staged.crl]) await Deno.chmod(file, 0o644);
        for (const file of [staged.crlnumber, staged.index, staged.indexAttr]) {
          await Deno.chmod(file, 0o600);
        }
        // On disk before the CA exists by name, and its name after: openssl and the key's writer
        // do not fsync, and a CA reported created must not come back from a power cut keyless.
        await syncTree(stage);
        await Deno.rename(stage, paths.dir);
        await syncDir(home);
      } catch (e) {
        await Deno.remove(stage, { recursive: true }).catch(() => {});
        throw e;
      }
      const certificate = parseCertificate(await Deno.readTextFile(paths.cert));
      return new CertificateAuthority(paths, certificate, { passphrase, lock: options.lock });
    }, options.lock);
  }

  /** Opens the CA under `home`; the passphrase is needed only for sign, revoke and crl. */
  static async open(home: string, options: OpenOptions = {}): Promise<CertificateAuthority> {
    const paths = new CaPaths(home);
    await checkOwnHome(paths);
    let pem: string;
    try {
      pem = await Deno.readTextFile(paths.cert);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new E2eError("ERR_CA_MISSING", `No CA in "${paths.dir}"`, {
          hint: "create one with `deno task ca init`, or pass the right --home",
        });
      }
      throw e;
    }
    return new CertificateAuthority(paths, parseCertificate(pem), options);
  }

  /**
   * Checks the passphrase by decrypting the CA key once; throws `ERR_BAD_PASSPHRASE`. Given
   * `passphrase`, checks that one and keeps it for what needs it (sign, revoke, crl): for a CA
   * opened before the passphrase was asked for (`ca serve` claims its home first). Default: the
   * one given to open().
   */
  async unlock(passphrase?: string): Promise<void> {
    const checked = passphrase ?? this.#requirePassphrase();
    await this.#openssl(["pkey", "-in", this.paths.key, "-passin", PASSPHRASE_ARG, "-noout"], {
      passphrase: checked,
    });
    this.#passphrase = checked;
  }

  /**
   * Signs a certificate request for `name` under the policy: the request's
   * signature verifies, its only common name is `name`, its key is allowed; the
   * CA sets every extension itself. A name keeps one valid certificate: the old
   * one is revoked as superseded, which needs `replace` when the key changes.
   */
  async sign(csr: Uint8Array | string, name: string, options: SignOptions = {}): Promise<Issued> {
    const { request, kind, keyId } = await this.checkRequest(csr, name, {
      allowCompromisedKey: options.allowCompromisedKey,
    });
    // Near the CA's own end a certificate gets what the CA has left, not a refusal.
    const days = checkDays(
      options.days ?? Math.min(DEFAULT_CERT_DAYS, this.#maxDays()),
      this.#maxDays(),
    );
    const issued = await this.#issue(request.der, {
      subject: name,
      extensions: leafExtensions(name, kind, await this.crlUrl()),
      days,
      beforeCommit: options.beforeCommit,
      renews: options.renews,
      // Checked again at the commit: a revocation as keyCompromise, or another name's
      // certificate for the key, may land while it is signed.
      key: { id: keyId, allowCompromised: options.allowCompromisedKey ?? false },
      supersede: async (entry) => {
        const old = parseCertificate(await Deno.readTextFile(this.paths.certFile(entry.serial)));
        if (old.keyFingerprint !== request.keyFingerprint && !options.replace) {
          throw new E2eError(
            "ERR_NAME_TAKEN",
            `Cannot sign request: name "${name}" already has a valid certificate`,
            {
              hint:
                `pass --replace to revoke it (serial ${entry.serial}) and issue one for the new key`,
            },
          );
        }
      },
    });
    // After the commit, outside the lock, and only when something was issued (a refusal changes
    // no file): the key ids this process had to read from certificates.
    await this.#saveKeyIds();
    return issued;
  }

  /**
   * Checks a request against the policy for `name` without signing it: what
   * {@linkcode CertificateAuthority.sign} refuses, this refuses the same way, including a key
   * a certificate of which was revoked as `keyCompromise` (unless `options` allow it) and a key
   * another name holds a valid certificate for (one key, one name at a time).
   */
  async checkRequest(
    csr: Uint8Array | string,
    name: string,
    options: CheckRequestOptions = {},
  ): Promise<CheckedRequest> {
    const checked = await this.#checkRequestCached(csr, name);
    const refusal = await this.#keyRefusal(await this.#index.entries(), checked.keyId, name, {
      allowCompromised: options.allowCompromisedKey ?? false,
    });
    if (refusal) throw refusal.error;
    return checked;
  }

  /**
   * The serial of a certificate for the key `publicKey` that was revoked as `keyCompromise`
   * (for RSA: a certificate for its modulus, whatever the exponent), or undefined. Reads the
   * committed database; each certificate's file is read once.
   */
  async compromisedSerial(publicKey: KeyObject): Promise<string | undefined> {
    const entries = await this.#index.entries();
    const refusal = await this.#keyRefusal(entries, keyIdentity(publicKey), "", {
      allowCompromised: false,
      compromisedOnly: true,
    });
    return refusal?.serial;
  }

  // Why `entries` forbid a certificate for the key `keyId` to `name`: a certificate for the key
  // revoked as keyCompromise (unless allowed), or an unexpired valid one of another name (one key
  // is one member's: it must not sign as two). Undefined when nothing does.
  async #keyRefusal(
    entries: IndexEntry[],
    keyId: string,
    name: string,
    options: { allowCompromised: boolean; compromisedOnly?: boolean },
  ): Promise<{ error: E2eError; serial: string } | undefined> {
    const index = await this.#keyIndexOf(entries);
    if (!options.allowCompromised) {
      for (const entry of index.compromised) {
        if (await this.#keyIdOf(entry.serial, { fresh: true }) !== keyId) continue;
        return { error: compromisedKey(entry.serial), serial: entry.serial };
      }
    }
    if (options.compromisedOnly) return undefined;
    const now = Date.now();
    const other = (index.valid.get(keyId) ?? []).find((entry) =>
      entry.name !== name && entry.expires.getTime() > now
    );
    return other && { error: keyOfAnotherName(other), serial: other.serial };
  }

  // #keyIndex brought up to `entries` (the array of #index: the same one while it only grows),
  // one update at a time: the entries added since are indexed, all of them when it was replaced.
  #keyIndexOf(entries: IndexEntry[]): Promise<KeyIndex> {
    const next = this.#keyIndexing.catch(() => {}).then(async () => {
      let index = this.#keyIndex;
      if (index.of !== entries || index.done > entries.length) {
        index = this.#keyIndex = { of: entries, done: 0, valid: new Map(), compromised: [] };
      }
      while (index.done < entries.length) {
        const entry = entries[index.done];
        if (entry.status === "R" && entry.reason === "keyCompromise") {
          index.compromised.push(entry);
        } else if (entry.status === "V") {
          const id = await this.#keyIdOf(entry.serial);
          if (id !== undefined) {
            const list = index.valid.get(id);
            if (list) list.push(entry);
            else index.valid.set(id, [entry]);
          }
        }
        index.done++;
      }
      return index;
    });
    this.#keyIndexing = next;
    return next;
  }

  // The key identity of the certificate `serial`, or undefined when its file cannot be read
  // (nothing to compare). From the key-ids file when it has it (parsing every certificate in each
  // process costs ~0.1 ms apiece), unless `fresh`: a key revoked as keyCompromise is always read
  // from its certificate, so that no entry of that file (damaged, or written by hand) can get a
  // compromised key certified again, nor keep a certificate for it valid.
  async #keyIdOf(serial: string, options: { fresh?: boolean } = {}): Promise<string | undefined> {
    const at = normalizeSerialHex(serial);
    const known = this.#keyIds.get(at);
    if (known !== undefined) return known;
    if (this.#noKeyId.has(at)) return undefined;
    const saved = await (this.#savedKeyIds ??= readKeyIds(this.paths));
    const listed = saved.get(at);
    if (listed !== undefined && !options.fresh) return listed;
    let id: string;
    try {
      const pem = await Deno.readTextFile(this.paths.certFile(serial));
      id = keyIdentity(parseCertificate(pem).x509.publicKey);
    } catch {
      // A certificate's file never changes once its serial is committed.
      this.#noKeyId.add(at);
      return undefined;
    }
    this.#keyIds.set(at, id);
    // Those read `fresh` are never taken from the file: no need to write it for them.
    if (!options.fresh) this.#keyIdsUnsaved = true;
    return id;
  }

  // Writes the key-ids file anew when this process read key ids it lacks; a failure only costs
  // the next process the same reading.
  async #saveKeyIds(): Promise<void> {
    if (!this.#keyIdsUnsaved || !this.#savedKeyIds) return;
    this.#keyIdsUnsaved = false;
    const saved = await this.#savedKeyIds;
    for (const [serial, id] of this.#keyIds) saved.set(serial, id);
    await writeKeyIds(this.paths, saved).catch(() => {});
  }

  async #checkRequestCached(
    csr: Uint8Array | string,
    name: string,
  ): Promise<CheckedRequest> {
    checkName(name);
    // The service checks a request before it reserves the invite, and sign() checks it again:
    // the second time is a lookup (parsing and verifying an EC request costs ~0.4 ms of CPU).
    const key = typeof csr === "string" ? `${name}\n${csr}` : undefined;
    const known = key === undefined ? undefined : this.#checked.get(key);
    if (known) return known;
    const checked = await this.#checkRequest(csr, name);
    if (key !== undefined) {
      if (this.#checked.size >= CHECKED_KEEP) {
        this.#checked.delete(this.#checked.keys().next().value!);
      }
      this.#checked.set(key, checked);
    }
    return checked;
  }

  async #checkRequest(
    csr: Uint8Array | string,
    name: string,
  ): Promise<CheckedRequest> {
    let kind: KeyKind = "ec";
    // The signature is checked off this thread (WebCrypto, for ECDSA): the service's event loop
    // goes on meanwhile.
    const request = await parseCsrAsync(csr, { checkKey: (key) => (kind = checkKey(key)) });
    const cns = request.commonNames;
    if (cns.length !== 1 || cns[0] !== name) {
      const found = cns.length === 0
        ? "no common name"
        : `common name${cns.length > 1 ? "s" : ""} ${cns.map((c) => JSON.stringify(c)).join(", ")}`;
      throw new E2eError(
        "ERR_CSR_NAME_MISMATCH",
        `Cannot sign request: it has ${found}, not "${name}"`,
      );
    }
    return { request, kind, keyId: keyIdentity(request.publicKey) };
  }

  /** The CRL URL new certificates carry (`ca serve` records it), or undefined when none is recorded. */
  crlUrl(): Promise<string | undefined> {
    // Synchronous: one line of a local file, read for every certificate issued.
    let url = "";
    try {
      url = Deno.readTextFileSync(this.paths.crlUrl).trim();
    } catch {
      // none recorded
    }
    return Promise.resolve(CRL_URL_PATTERN.test(url) ? url : undefined);
  }

  /**
   * Issues the CA service its own TLS certificate for `hosts` (DNS names and IP
   * addresses), with a fresh key kept in `HOME/ca/service/` (0600). Its subject
   * is {@linkcode SERVICE_CN}, which no user name can be. Earlier service
   * certificates stay valid: the service supersedes them with
   * {@linkcode retireServiceCertificates} once it presents this one, so that no
   * client holds a CRL that lists the certificate it still presents.
   */
  async issueServiceCertificate(hosts: string[], options: { days?: number } = {}): Promise<
    Credentials & { certificate: CertificateInfo }
  > {
    const paths = this.paths;
    await ensurePrivateDir(paths.serviceDir);
    const keyPath = join(paths.serviceDir, `key-${crypto.randomUUID()}.pem`);
    await generateKey(keyPath, "ec-p256");
    try {
      const csr = await makeRequest(keyPath, SERVICE_CN);
      const request = parseCsr(csr);
      const { certificate } = await this.#issue(request.der, {
        subject: SERVICE_CN,
        extensions: serviceExtensions(hosts, await this.crlUrl()),
        // A CA with under 30 days left (`ca init --days 20`) gives the service what it has left.
        days: checkDays(options.days ?? Math.min(30, this.#maxDays()), this.#maxDays()),
        supersede: async () => {},
        keep: true,
      });
      // On disk before they take their names, and the names after: a power cut must not leave a
      // current certificate beside an empty key, which would stop every start of the service.
      await syncDir(keyPath); // an fsync of what the path opens: here the key file
      await Deno.rename(keyPath, paths.serviceKey);
      await writeFileAtomic(paths.serviceCert, certificate.pem);
      await syncDir(paths.serviceDir);
      return {
        key: await Deno.readTextFile(paths.serviceKey),
        cert: certificate.pem,
        certificate,
      };
    } finally {
      await Deno.remove(keyPath).catch(() => {});
    }
  }

  /**
   * Supersedes every valid service certificate but `serial`, the one the service presents now
   * (revoked `superseded`, one new CRL); nothing when there is none. Returns their serials.
   */
  async retireServiceCertificates(serial: string): Promise<string[]> {
    const keep = normalizeSerialHex(serial);
    const others = (entries: IndexEntry[]) =>
      validFor(entries, SERVICE_CN).filter((e) => normalizeSerialHex(e.serial) !== keep);
    if (!others(await this.#index.entries()).length) return [];
    const passphrase = this.#requirePassphrase();
    return await this.#transaction(async (tx) => {
      const old = others(await this.#index.entries());
      if (!old.length) return [];
      const work = await tx.fullCopy();
      for (const e of old) await this.#revokeIn(work, e.serial, "superseded", passphrase);
      await this.#gencrl(work, passphrase);
      return old.map((e) => e.serial);
    });
  }

  /**
   * Revokes the valid certificate of a name, or a certificate by serial. Regenerates the CRL.
   * As `keyCompromise`, it also revokes every other unexpired valid certificate for the same key
   * (`sameKey`), and takes a certificate revoked already for another reason (superseded by a
   * renewal, say): its reason becomes `keyCompromise` (`formerReason` says what it was), so the
   * CRL says so and the key is never certified again. A certificate revoked as `keyCompromise`
   * already is taken again for the others for its key (`already`), and refused only when none
   * is left valid.
   */
  async revoke(nameOrSerial: string, options: RevokeOptions = {}): Promise<Revocation> {
    const passphrase = this.#requirePassphrase();
    const reason = options.reason ?? "unspecified";
    let refusal: E2eError | undefined;
    const revoked = await this.#transaction(async (tx) => {
      const entries = await this.#index.entries();
      const serial = serialOf(nameOrSerial);
      const target = validFor(entries, nameOrSerial)[0] ??
        entries.find((e) => serial !== "" && normalizeSerialHex(e.serial) === serial);
      if (!target) {
        refusal = new E2eError(
          "ERR_NOT_FOUND",
          `Cannot revoke: no valid certificate for ${JSON.stringify(nameOrSerial)}`,
          { hint: "see `deno task ca list` for names and serials" },
        );
      } else if (target.status === "R" && reason !== "keyCompromise") {
        refusal = alreadyRevoked(target.serial);
      }
      // A compromised key is compromised in every certificate for it (a renewal's, another
      // name's from before one key had one name): none of them stays valid. Looked for again
      // when the target is keyCompromise already (revoked so by hand, or by an older CA).
      const keyId = target && !refusal && reason === "keyCompromise"
        ? await this.#keyIdOf(target.serial, { fresh: true })
        : undefined;
      const sameKey: IndexEntry[] = [];
      const now = Date.now();
      for (const e of keyId === undefined ? [] : entries) {
        if (e.status !== "V" || e.expires.getTime() <= now || e.serial === target!.serial) continue;
        if (await this.#keyIdOf(e.serial, { fresh: true }) === keyId) sameKey.push(e);
      }
      const again = target?.status === "R" && target.reason === "keyCompromise";
      if (target && again && !sameKey.length) refusal = alreadyRevoked(target.serial);
      if (!target || refusal) {
        // A revocation killed after its index and before its CRL left crl.pem behind, and its
        // retry lands here: bring the CRL level (committed, though the retry is refused).
        if (this.#crlBehind(entries)) await this.#gencrl(await tx.fullCopy(), passphrase);
        return undefined;
      }
      const work = await tx.fullCopy();
      // Revoked as keyCompromise already (`again`), its index line stays: only the other
      // certificates for its key are revoked.
      if (target.status === "R" && !again) {
        // openssl ca revokes a certificate once: the reason of its index line changes instead
        // (its revocation date stays), which its CRLs list and checkRequest() reads.
        const index = join(work, "index.txt");
        await Deno.writeTextFile(
          index,
          changeReason(await Deno.readTextFile(index), target.serial, "keyCompromise"),
        );
      } else if (target.status !== "R") {
        await this.#revokeIn(work, target.serial, reason, passphrase);
      }
      for (const e of sameKey) await this.#revokeIn(work, e.serial, "keyCompromise", passphrase);
      const index = await readIndexAt(work);
      const after = index.find((e) => e.serial === target.serial);
      if (after?.status !== "R" || after.reason !== reason) {
        throw new E2eError("ERR_OPENSSL", "openssl ca did not record the revocation");
      }
      await this.#gencrl(work, passphrase);
      return {
        ...after,
        ...(target.status === "R" && !again ? { formerReason: target.reason } : {}),
        ...(again ? { already: true } : {}),
        sameKey: index.filter((e) => sameKey.some((s) => s.serial === e.serial)),
      };
    });
    if (!revoked) throw refusal;
    return revoked;
  }

  // Whether crl.pem misses a revocation the index holds, or lists one with another reason than
  // the index's (a reason changed to keyCompromise, killed before its CRL), or cannot be read.
  #crlBehind(entries: IndexEntry[]): boolean {
    try {
      const crl = parseCrl(Deno.readTextFileSync(this.paths.crl), this.certificate.x509);
      return entries.some((e) => {
        if (e.status !== "R") return false;
        const serial = normalizeSerialHex(e.serial);
        if (!crl.revoked.has(serial)) return true;
        // An entry without a reasonCode says unspecified (RFC 5280 §5.3.1).
        const expected = CRL_REASON_CODES[e.reason ?? "unspecified"];
        return expected !== undefined && (crl.reasons.get(serial) ?? 0) !== expected;
      });
    } catch {
      return true;
    }
  }

  /** Generates a fresh CRL (PEM) listing every revoked serial, and stores it as crl.pem. */
  async crl(): Promise<string> {
    const passphrase = this.#requirePassphrase();
    return await this.#transaction(async (tx) => {
      const work = await tx.fullCopy();
      await this.#gencrl(work, passphrase);
      return await Deno.readTextFile(join(work, "crl.pem"));
    });
  }

  /** Every certificate ever issued, oldest first, with its status as of now. */
  async list(): Promise<ListedCertificate[]> {
    const now = Date.now();
    const out: ListedCertificate[] = [];
    for (const entry of await readIndex(this.paths)) {
      let fingerprint = "";
      try {
        const text = await Deno.readTextFile(this.paths.certFile(entry.serial));
        const der = pemDecode(text, "CERTIFICATE");
        if (der) fingerprint = sha256Hex(der);
      } catch { /* a missing file shows as an empty fingerprint */ }
      out.push({
        name: entry.name,
        serial: entry.serial,
        status: entry.status === "R"
          ? "revoked"
          : entry.expires.getTime() <= now
          ? "expired"
          : "valid",
        notAfter: entry.expires.toISOString(),
        ...(entry.revokedAt
          ? { revokedAt: entry.revokedAt.toISOString(), reason: entry.reason }
          : {}),
        fingerprint,
      });
    }
    return out;
  }

  /** The valid certificate of `name`, or undefined. Reads the committed database (cached; see IndexCache). */
  async current(name: string): Promise<CertificateInfo | undefined> {
    const entry = validFor(await this.#index.entries(), name).at(-1);
    if (!entry) return undefined;
    return parseCertificate(await Deno.readTextFile(this.paths.certFile(entry.serial)));
  }

  /** Whether `serial` is in the database, valid and not expired (cached, so cheap per request). */
  async isCurrent(serial: string): Promise<boolean> {
    const entry = await this.#index.find(serial);
    return entry?.status === "V" && entry.expires.getTime() > Date.now();
  }

  /**
   * Whether the key of certificate `serial` is still its member's: `serial` is current, or
   * was superseded (or expired) and the name's current certificate has the same key — a
   * renewal, which connections made with the old one outlive. A revocation for any other
   * reason, or a new key for the name, is never outlived.
   */
  async keyIsCurrent(serial: string): Promise<boolean> {
    const entry = await this.#index.find(serial);
    if (!entry) return false;
    if (entry.status === "V" && entry.expires.getTime() > Date.now()) return true;
    if (entry.status === "R" && entry.reason !== "superseded") return false;
    try {
      const current = await this.current(entry.name);
      if (!current) return false;
      const old = parseCertificate(await Deno.readTextFile(this.paths.certFile(entry.serial)));
      return old.keyFingerprint === current.keyFingerprint;
    } catch {
      return false; // a certificate that cannot be read keeps nothing open
    }
  }

  /**
   * The issuance log (ca/log.ts), made on first use: an Ed25519 key encrypted
   * under the CA passphrase like ca.key, certified by the CA as "e2e-chat log",
   * then every certificate of the database appended and a checkpoint signed.
   * From then on every commit that issues appends to it (in any process).
   */
  async openLog(): Promise<IssuanceLog> {
    const passphrase = this.#requirePassphrase();
    if (!await exists(this.paths.logCert)) {
      await ensurePrivateDir(this.paths.logDir);
      if (!await exists(this.paths.logKey)) {
        await generateKey(this.paths.logKey, "ed25519", { passphrase });
      }
      // The key on disk before a certificate names it: a log.crt without its key stops every
      // commit at the log's checkpoint.
      await syncTree(this.paths.logDir);
      await syncDir(this.paths.dir); // log/'s own name
      const csr = await makeRequest(this.paths.logKey, LOG_CN, { passphrase });
      const { certificate } = await this.#issue(parseCsr(csr).der, {
        subject: LOG_CN,
        extensions: logExtensions(),
        days: this.#maxDays(),
        supersede: async () => {},
      });
      await writeFileAtomic(this.paths.logCert, certificate.pem, { mode: 0o644 });
      await locked(this.paths, () => this.#syncLog(), this.#lock);
      // The names of log.crt, and of the entries and checkpoint the first sync made.
      await syncDir(this.paths.logDir);
      return this.#log!;
    }
    await locked(this.paths, () => this.#syncLog(), this.#lock);
    return this.#log!;
  }

  /** The issuance log when it exists (read-only: no passphrase needed), else undefined. */
  async readLog(): Promise<IssuanceLog | undefined> {
    if (this.#log) {
      await this.#log.refresh();
      return this.#log;
    }
    if (!await exists(this.paths.logCert)) return undefined;
    const key = new X509Certificate(await Deno.readTextFile(this.paths.logCert)).publicKey;
    this.#log = await IssuanceLog.open(this.paths, {
      name: logOrigin(this.certificate.fingerprint),
      key,
    });
    return this.#log;
  }

  /** The committed database, oldest line first. */
  async database(): Promise<IndexEntry[]> {
    return await this.#index.entries();
  }

  // Every transaction that commits brings the log (where there is one) level with the database.
  #transaction<T>(fn: (tx: Transaction) => Promise<T>): Promise<T> {
    return transaction(this.paths, async (tx) => {
      tx.afterCommit(() => this.#syncLog());
      return await fn(tx);
    }, this.#lock);
  }

  async #syncLog(): Promise<void> {
    const log = await this.readLog();
    if (!log) return;
    this.#logSigner ??= {
      name: log.origin,
      key: createPrivateKey({
        key: await Deno.readTextFile(this.paths.logKey),
        format: "pem",
        passphrase: this.#requirePassphrase(),
      }),
    };
    await log.sync(await this.#index.entries(), this.#logSigner);
  }

  // Signings flow through two stages. Signing: each request is checked against the
  // committed database and signed by openssl in a folder of its own, outside the lock, up to
  // MAX_SIGNING at once (a second request for a name waits until the first is settled).
  // Committing: signed certificates queue for one transaction at a time, which takes all that
  // are waiting, so the commit of one group overlaps the signing of the next (group commit).
  #issue(der: Uint8Array, spec: IssueSpec): Promise<Issued> {
    const passphrase = this.#requirePassphrase();
    return new Promise<Issued>((resolve, reject) => {
      this.#queue.push({ der, spec, passphrase, resolve, reject });
      this.#pump();
    });
  }

  #pump(): void {
    for (let i = 0; i < this.#queue.length && this.#signing < MAX_SIGNING; i++) {
      const job = this.#queue[i];
      if (this.#busy.has(job.spec.subject)) continue;
      this.#queue.splice(i--, 1);
      this.#busy.add(job.spec.subject);
      this.#signing++;
      this.#sign(job).finally(() => {
        this.#signing--;
        this.#pump();
      });
    }
  }

  // Settles `job` exactly once and lets the next request for its name go.
  #settle(job: SignJob, outcome: { issued?: Issued; error?: unknown }): void {
    this.#busy.delete(job.spec.subject);
    if (outcome.issued) job.resolve(outcome.issued);
    else job.reject(outcome.error ?? new E2eError("ERR_INTERNAL", "Signing was not carried out"));
    this.#pump();
  }

  async #sign(job: SignJob): Promise<void> {
    let folder: string | undefined;
    try {
      // Checked now to refuse early, and again under the lock in case another process changed it.
      const current = job.spec.keep ? [] : validFor(await this.#index.entries(), job.spec.subject);
      checkRenewal(job.spec, current);
      for (const entry of current) await job.spec.supersede(entry);
      const warm = this.#takeWarm(job);
      let certificate: CertificateInfo | undefined;
      if (warm) {
        folder = warm.dir;
        // A run started ahead that fails is not trusted with the outcome: the signing runs again.
        certificate = await this.#signIn(folder, job, warm).catch(() => undefined);
        if (!certificate) removeFolder(folder);
      }
      if (!certificate) {
        folder = await signingFolder(this.paths);
        certificate = await this.#signIn(folder, job);
      }
      // Its key's identity, known now: a later check need not read its file.
      this.#keyIds.set(
        normalizeSerialHex(certificate.serial),
        keyIdentity(certificate.x509.publicKey),
      );
      this.#signed.push({ job, folder: folder!, current, certificate });
      this.#commitAll();
    } catch (error) {
      if (folder) removeFolder(folder);
      this.#settle(job, { error });
    }
  }

  async #commitAll(): Promise<void> {
    if (this.#committing) return;
    this.#committing = true;
    try {
      while (this.#signed.length) await this.#commit(this.#signed.splice(0, MAX_BATCH));
    } finally {
      this.#committing = false;
    }
  }

  async #commit(batch: Signed[]): Promise<void> {
    // Every job is settled exactly once, whatever fails and wherever.
    const outcome = new Map<Signed, { issued?: Issued; error?: unknown }>();
    let culprit: Signed | undefined; // a signing whose refusal failed the whole transaction
    try {
      await this.#transaction(async (tx) => {
        // A log whose entries changed under this process takes nothing more: refused before the
        // commit, so no certificate is committed (and no token used) that the log cannot take.
        this.#log?.checkUnchanged();
        const entries = await this.#index.entries();
        // Only a successful signing supersedes: revoke the old certificates, then one CRL.
        // A revocation that fails costs only its own job.
        let revoked = false;
        // The keys of this commit's signings so far: another name's is refused as well.
        const keys = new Map<string, { name: string; serial: string }>();
        for (const r of batch) {
          try {
            const key = r.job.spec.key;
            if (key) {
              const refusal = await this.#keyRefusal(entries, key.id, r.job.spec.subject, {
                allowCompromised: key.allowCompromised,
              });
              if (refusal) throw refusal.error;
              const twin = keys.get(key.id);
              if (twin && twin.name !== r.job.spec.subject) throw keyOfAnotherName(twin);
            }
            const current = r.job.spec.keep ? [] : validFor(entries, r.job.spec.subject);
            checkRenewal(r.job.spec, current);
            for (const entry of current) {
              if (!r.current.some((e) => e.serial === entry.serial)) {
                await r.job.spec.supersede(entry);
              }
            }
            for (const entry of current) {
              await this.#revokeIn(
                await tx.fullCopy(),
                entry.serial,
                "superseded",
                r.job.passphrase,
              );
              revoked = true;
            }
            const adopted = tx.adopt(r.folder);
            const hook = r.job.spec.beforeCommit;
            // A hook that refuses (an invite's token used meanwhile) fails its own signing
            // only, not the others of the group; unless that signing revoked a certificate in
            // the full copy, which then must not commit either.
            const alone = current.length === 0;
            if (hook) {
              tx.beforeIndex(() =>
                hook(r.certificate).catch((error) => {
                  if (!alone) {
                    culprit = r;
                    throw error;
                  }
                  adopted.discard();
                  outcome.set(r, { error });
                })
              );
            }
            outcome.set(r, {
              issued: { certificate: r.certificate, superseded: current.map((e) => e.serial) },
            });
            if (key) keys.set(key.id, { name: r.job.spec.subject, serial: r.certificate.serial });
          } catch (error) {
            outcome.set(r, { error });
          }
        }
        if (revoked) await this.#gencrl(await tx.fullCopy(), batch[0].job.passphrase);
      });
    } catch (error) {
      // Nothing was committed: a job that had succeeded fails with the transaction. When one
      // signing's refusal (its token used or cancelled meanwhile) took the others down, they
      // are told to try again, not given its refusal: their own requests were fine.
      const others = culprit === undefined ? error : new E2eError(
        "ERR_INTERNAL",
        "Not committed: another signing of the same commit was refused; try again",
        { cause: error },
      );
      for (const r of batch) {
        if (r === culprit) outcome.set(r, { error });
        else if (!outcome.get(r)?.error) outcome.set(r, { error: others });
      }
    }
    // Removed before the callers hear back, so that a settled signing leaves nothing behind
    // (synchronously: a few small local files, a fraction of the CPU of asynchronous calls).
    for (const r of batch) removeFolder(r.folder);
    for (const r of batch) this.#settle(r.job, outcome.get(r) ?? {});
  }

  async #signIn(dir: string, job: SignJob, warm?: WarmSigner): Promise<CertificateInfo> {
    const { spec, der, passphrase } = job;
    // Small local files: synchronous calls cost a fraction of the CPU of asynchronous ones.
    Deno.writeFileSync(join(dir, "request.der"), der);
    if (warm) {
      // Its subject is the request's own, which #takeWarm() found to be exactly CN=name.
      await this.#openssl(() => warm.run.finish(spec.extensions));
    } else {
      Deno.writeTextFileSync(join(dir, "extensions.cnf"), spec.extensions);
      const key = await this.#plainKey(passphrase);
      await this.#openssl([
        ...["ca", "-config", this.paths.config, "-keyfile", "/dev/stdin", "-cert", this.paths.cert],
        ...signArgs(spec.days),
        ...["-subj", `/CN=${escapeDn(spec.subject)}`, "-extfile", "extensions.cnf"],
      ], { cwd: dir, stdin: key }); // the key comes unlocked: openssl is not given the passphrase
    }
    let certificate: CertificateInfo;
    try {
      certificate = parseCertificate(Deno.readTextFileSync(join(dir, "issued.pem")));
    } catch (e) {
      // openssl exits 0 even when it could not write the whole file: find out why.
      throw await diskFull(dir) ??
        new E2eError("ERR_OPENSSL", "openssl ca wrote no complete certificate", { cause: e });
    }
    // Synchronous: the sign folder's index holds one line (an asynchronous read costs more CPU).
    const recorded = parseIndex(Deno.readTextFileSync(join(dir, "index.txt"))).some((e) =>
      normalizeSerialHex(e.serial) === normalizeSerialHex(certificate.serial) && e.status === "V" &&
      e.name === spec.subject
    );
    if (!recorded) throw new E2eError("ERR_OPENSSL", "openssl ca did not record the certificate");
    return certificate;
  }

  // The CA key, decrypted once and handed to each signing's openssl through its stdin pipe:
  // openssl then skips the key derivation and decryption of every run (about 1 ms of CPU).
  // The plain key never touches the disk, an argument, the environment or a log.
  #plainKey(passphrase: string): Promise<string> {
    this.#signingKey ??= Deno.readTextFile(this.paths.key).then((pem) => {
      try {
        return createPrivateKey({ key: pem, format: "pem", passphrase })
          .export({ type: "pkcs8", format: "pem" }) as string;
      } catch (e) {
        throw new E2eError("ERR_BAD_PASSPHRASE", "Cannot unlock the CA key: wrong passphrase", {
          cause: e,
        });
      }
    });
    const pending = this.#signingKey;
    // A failure is not kept: the next signing tries again.
    pending.catch(() => {
      if (this.#signingKey === pending) this.#signingKey = undefined;
    });
    return pending;
  }

  /**
   * From now on, keeps two `openssl ca` runs started ahead while signings come
   * in (the service does; a one-off command does not): a run's start-up —
   * loading openssl, its configuration, the CA key and certificate, about half
   * of a signing's time — then overlaps the previous signing's commit instead
   * of delaying the next request. A run waits for its request's extensions on
   * stdin; it reads the CA key from its folder, encrypted under a secret of
   * this process's (see #warmKey), and is stopped after `idleMs` unused
   * (default 30 s; its start date was set when it started). A request whose
   * subject is not exactly `CN=name` as a UTF8String is signed the usual way.
   * The first call removes the key copies that runs of a killed process left.
   */
  keepOpensslWarm(options: { idleMs?: number } = {}): void {
    if (!this.#keepWarm && !this.#warm.length && !this.#warmStarts.size) {
      removeKeyCopies(this.paths);
    }
    this.#keepWarm = true;
    this.#warmIdleMs = options.idleMs ?? WARM_IDLE_MS;
  }

  /** Stops the runs started ahead and starts no more; the service calls it when it closes. */
  async stopWarmOpenssl(): Promise<void> {
    this.#keepWarm = false;
    await Promise.all(this.#warmStarts);
    for (const warm of this.#warm.splice(0)) this.#discardWarm(warm);
    // Also those the idle timer or a signing of other days began to stop.
    await Promise.all(this.#discarding);
  }

  // A run started ahead for this job, if one fits it; either way, the next ones start.
  #takeWarm(job: SignJob): WarmSigner | undefined {
    if (!this.#keepWarm) return undefined;
    const fits = subjectIsCommonName(job.der, job.spec.subject);
    const i = fits ? this.#warm.findIndex((w) => w.days === job.spec.days) : -1;
    const [warm] = i < 0 ? [] : this.#warm.splice(i, 1);
    if (warm) clearTimeout(warm.timer);
    // Runs of other days (started by a service certificate's renewal, say) would hold both
    // places until idle and keep every signing meanwhile cold: they make way for these days.
    if (fits && !warm) { for (const other of this.#warm.splice(0)) this.#discardWarm(other); }
    // The next ones start now, while this run signs (started during the commit instead, they
    // slowed the commit by more than they saved). A request that could not use one (a subject of
    // another form) starts none.
    while (fits && this.#warm.length + this.#warmStarts.size < WARM_SIGNERS) {
      const start: Promise<void> = this.#startWarm(job.spec.days, job.passphrase).then(
        async (started) => {
          if (this.#keepWarm) this.#warm.push(started);
          else await this.#discardWarm(started);
        },
        () => {/* the next signing runs cold, and tries again */},
      ).finally(() => this.#warmStarts.delete(start));
      this.#warmStarts.add(start);
    }
    return warm;
  }

  async #startWarm(days: number, passphrase: string): Promise<WarmSigner> {
    const key = await this.#warmKey(passphrase);
    const dir = await signingFolder(this.paths);
    try {
      Deno.writeTextFileSync(join(dir, "key.pem"), key.pem, { mode: 0o600 });
      const run = startOpenssl([
        ...["ca", "-config", this.paths.config, "-cert", this.paths.cert],
        ...["-keyfile", "key.pem", "-passin", PASSPHRASE_ARG],
        ...signArgs(days),
        ...["-extfile", "/dev/stdin"],
      ], { cwd: dir, passphrase: key.secret, timeoutMs: this.#warmIdleMs + 120_000 });
      const warm: WarmSigner = { dir, run, days };
      warm.timer = setTimeout(() => {
        const i = this.#warm.indexOf(warm);
        if (i >= 0) this.#discardWarm(this.#warm.splice(i, 1)[0]);
      }, this.#warmIdleMs);
      Deno.unrefTimer(warm.timer);
      // One that dies while it waits (killed, out of memory) would hold its place, and fail the
      // signing that takes it: it makes way at once.
      run.exited.then(() => {
        const i = this.#warm.indexOf(warm);
        if (i >= 0) this.#discardWarm(this.#warm.splice(i, 1)[0]);
      });
      return warm;
    } catch (e) {
      removeFolder(dir);
      throw e;
    }
  }

  // The CA key for runs started ahead, which keep their stdin for the request: encrypted under a
  // random secret that only this process and the runs (in their environment) ever hold, so what
  // a run's folder holds is of no use once the process is gone. The secret is random, so the
  // key derivation can be the cheap one of the traditional PEM forms (MD5, one pass: 0.2 ms of
  // a run's CPU, against 1.3 ms for the CA key's PBKDF2); Ed25519 has no such form.
  #warmKey(passphrase: string): Promise<{ pem: string; secret: string }> {
    this.#warmKeyPem ??= this.#plainKey(passphrase).then((plain) => {
      const key = createPrivateKey(plain);
      const type = key.asymmetricKeyType === "rsa"
        ? "pkcs1"
        : key.asymmetricKeyType === "ec"
        ? "sec1"
        : "pkcs8";
      const secret = randomBytes(32).toString("base64url");
      const pem = key.export({
        type: type as "pkcs1" | "sec1" | "pkcs8",
        format: "pem",
        cipher: "aes-256-cbc",
        passphrase: secret,
      }) as string;
      return { pem, secret };
    });
    const pending = this.#warmKeyPem;
    pending.catch(() => {
      if (this.#warmKeyPem === pending) this.#warmKeyPem = undefined;
    });
    return pending;
  }

  #discardWarm(warm: WarmSigner): Promise<void> {
    clearTimeout(warm.timer);
    const done: Promise<void> = warm.run.cancel().then(() => removeFolder(warm.dir))
      .finally(() => this.#discarding.delete(done));
    this.#discarding.add(done);
    return done;
  }

  #maxDays(): number {
    const left = (this.certificate.notAfter.getTime() - Date.now()) / 86_400_000;
    return Math.max(1, Math.floor(left));
  }

  #requirePassphrase(): string {
    if (this.#passphrase === undefined) {
      throw new E2eError(
        "ERR_PASSPHRASE_REQUIRED",
        "The CA passphrase is required for this operation",
      );
    }
    return this.#passphrase;
  }

  async #revokeIn(work: string, serial: string, reason: string, passphrase: string) {
    await this.#ca(work, passphrase, [
      ...["-revoke", this.paths.certFile(serial), "-crl_reason", reason],
    ]);
  }

  async #gencrl(work: string, passphrase: string): Promise<void> {
    const numberFile = join(work, "crlnumber");
    await Deno.writeTextFile(numberFile, crlNumberFrom(await Deno.readTextFile(numberFile)), {
      mode: 0o600,
    });
    await this.#ca(work, passphrase, ["-gencrl", "-out", "crl.pem"]);
  }

  async #ca(work: string, passphrase: string, args: string[]): Promise<void> {
    await this.#openssl([
      ...["ca", "-config", this.paths.config, "-keyfile", this.paths.key],
      ...["-cert", this.paths.cert, "-passin", PASSPHRASE_ARG, ...args],
    ], { cwd: work, passphrase });
  }

  async #openssl(
    args: string[] | (() => Promise<unknown>),
    options: { cwd?: string; passphrase?: string; stdin?: string } = {},
  ): Promise<void> {
    try {
      await (typeof args === "function" ? args() : openssl(args, options));
    } catch (e) {
      if (e instanceof OpensslError && e.badPassphrase) {
        throw new E2eError("ERR_BAD_PASSPHRASE", "Cannot unlock the CA key: wrong passphrase", {
          cause: e,
        });
      }
      throw e;
    }
  }
}

// fsync of every file and folder under `dir`, `dir` itself last.
async function syncTree(dir: string): Promise<void> {
  for await (const entry of Deno.readDir(dir)) {
    const path = join(dir, entry.name);
    if (entry.isDirectory) await syncTree(path);
    else if (entry.isFile) await syncDir(path); // an fsync of what the path opens, file or folder
  }
  await syncDir(dir);
}

// A signing folder no longer needed; one that cannot be removed is left to the clean-up.
function removeFolder(path: string): void {
  try {
    Deno.removeSync(path, { recursive: true });
  } catch { /* removed later, once old (store.ts) */ }
}

// The CA key copies (key.pem) that runs started ahead by a process killed since left in their
// signing folders, which a later transaction removes only once ten minutes old, and one process
// only once: a service restarted at once would keep them for good. A run of another process that
// is still starting fails without its copy, and its signing runs cold (one already started has
// read it).
function removeKeyCopies(paths: CaPaths): void {
  try {
    for (const entry of Deno.readDirSync(paths.signing)) {
      try {
        Deno.removeSync(join(paths.signing, entry.name, "key.pem"));
      } catch { /* none there */ }
    }
  } catch { /* no signing folder yet */ }
}

// A probe write tells a full disk apart from other failures.
async function diskFull(dir: string): Promise<E2eError | undefined> {
  try {
    await Deno.writeFile(join(dir, ".space-probe"), new Uint8Array(64 * 1024));
    return undefined;
  } catch (e) {
    if (!(e instanceof Error) || !/os error 28/.test(e.message)) return undefined;
    return new E2eError("ERR_FILE", `Cannot sign: no space left on the device holding "${dir}"`, {
      cause: e,
    });
  }
}

function validFor(entries: IndexEntry[], name: string): IndexEntry[] {
  const now = Date.now();
  return entries.filter((e) => e.name === name && e.status === "V" && e.expires.getTime() > now);
}

// A renewal goes ahead only while the certificate that authorized it is the name's valid one.
function checkRenewal(spec: IssueSpec, current: IndexEntry[]): void {
  if (spec.renews === undefined) return;
  const serial = normalizeSerialHex(spec.renews);
  if (current.some((e) => normalizeSerialHex(e.serial) === serial)) return;
  throw new E2eError(
    "ERR_FORBIDDEN",
    `Cannot sign request: serial ${spec.renews} is no longer the valid certificate of ${
      JSON.stringify(spec.subject)
    }`,
  );
}

async function readIndexAt(work: string): Promise<IndexEntry[]> {
  return parseIndex(await Deno.readTextFile(join(work, "index.txt")));
}

/**
 * Checks the CA certificate's common name (`ca init --cn`): 1 to 64 characters, none a control.
 *
 * @example
 * ```ts
 * import { checkCommonName } from "./authority.ts";
 * checkCommonName("Our CA"); // "Our CA"
 * ```
 */
export function checkCommonName(cn: string): string {
  // deno-lint-ignore no-control-regex
  if (cn.length < 1 || cn.length > 64 || /[\u0000-\u001f\u007f]/.test(cn)) {
    throw new E2eError("ERR_USAGE", "Invalid CA common name: use 1 to 64 printable characters");
  }
  return cn;
}

// openssl's -subj syntax: "/" separates RDNs, "+" joins them, "\" escapes.
function escapeDn(value: string): string {
  return value.replace(/[\\/+=]/g, (c) => `\\${c}`);
}

// A serial as given on the command line (hex, colons allowed), or "" when it is not one.
function serialOf(text: string): string {
  return /^[0-9A-Fa-f]{1,64}$/.test(text.replace(/:/g, "")) ? normalizeSerialHex(text) : "";
}

// The refusal of a request whose key's certificate `serial` was revoked as keyCompromise.
function alreadyRevoked(serial: string): E2eError {
  return new E2eError("ERR_ALREADY_REVOKED", `Cannot revoke: serial ${serial} is already revoked`);
}

function compromisedKey(serial: string): E2eError {
  return new E2eError(
    "ERR_KEY_REJECTED",
    `Cannot sign request: its key's certificate (serial ${serial}) was revoked as ` +
      "keyCompromise: that key is never certified again",
    { hint: "make a new key (a join in another home makes one) and sign a request from it" },
  );
}

// The refusal of a request whose key the valid certificate `other` certifies for another name.
function keyOfAnotherName(other: { name: string; serial: string }): E2eError {
  return new E2eError(
    "ERR_KEY_REJECTED",
    `Cannot sign request: its key has a valid certificate for ${JSON.stringify(other.name)} ` +
      `(serial ${other.serial}): a key is certified for one name at a time`,
    {
      hint: "make a new key (a join in another home makes one) and sign a request from it",
    },
  );
}

/**
 * What identifies a public key in the CA's refusals (a key revoked as compromised, a key of
 * another name): the SHA-256 of its SPKI, as {@linkcode CertificateInfo.keyFingerprint}; for RSA
 * that of its modulus alone, since whoever knows the factors of n holds the private key for any
 * public exponent.
 */
function keyIdentity(key: KeyObject): string {
  if (key.asymmetricKeyType === "rsa" || key.asymmetricKeyType === "rsa-pss") {
    try {
      const n = key.export({ format: "jwk" }).n;
      if (n) return `rsa-n:${sha256Hex(new Uint8Array(Buffer.from(n, "base64url")))}`;
    } catch { /* no JWK form (RSA-PSS on some runtimes): the SPKI then */ }
  }
  return keyFingerprint(key);
}

// Clocks drift: a certificate valid from five minutes ago works on a peer whose clock is behind.
// The arguments of `openssl ca` that sign `request.der` in a signing folder: its own empty
// index, our extensions (section leaf), the days and a start date five minutes back.
function signArgs(days: number): string[] {
  return [
    ...["-batch", "-in", "request.der", "-inform", "DER", "-notext", "-out", "issued.pem", "-utf8"],
    ...["-days", String(days), "-startdate", backdated(), "-extensions", "leaf"],
  ];
}

/** How far back the CA dates a certificate's notBefore from when it signs it, ms (clock drift). */
export const BACKDATE_MS = 5 * 60_000;

/**
 * When the CA signed `certificate`, to the second: its notBefore plus {@linkcode BACKDATE_MS}
 * (what `POST /v1/renew` says of a certificate issued before the request, docs/API.md).
 *
 * @example
 * ```ts
 * import { issuedAt } from "./authority.ts";
 * const at = issuedAt({ notBefore: new Date("2026-12-02T09:36:07Z") });
 * console.log(at.toISOString()); // 2026-12-02T09:41:07.000Z
 * ```
 */
export function issuedAt(certificate: Pick<CertificateInfo, "notBefore">): Date {
  return new Date(certificate.notBefore.getTime() + BACKDATE_MS);
}

function backdated(): string {
  const d = new Date(Date.now() - BACKDATE_MS);
  return d.toISOString().replace(/[-:T]/g, "").slice(0, 14) + "Z";
}

/**
 * What the `crlnumber` file must hold before a CRL is signed (`text` is what it holds): the clock
 * in milliseconds, or what it holds when that is larger (more than one CRL in a millisecond, or
 * the clock set back). Members refuse a CRL numbered below one they accepted
 * (client/revocation.ts), and a CA restored from an older copy still numbers its next CRL above
 * every CRL it signed since that copy. Even-length upper-case hex, as openssl writes it.
 */
function crlNumberFrom(text: string): string {
  const held = /^[0-9A-Fa-f]+$/.test(text.trim()) ? BigInt(`0x${text.trim()}`) : 0n;
  const now = BigInt(Date.now());
  const hex = (held > now ? held : now).toString(16).toUpperCase();
  return `${hex.length % 2 ? "0" : ""}${hex}\n`;
}
