/**
 * The layout of a CA home: every path the CA's modules read or write, in one
 * place (docs/CA.md describes the same tree). Nothing else joins file names
 * onto the home.
 *
 * @module
 */
import { join } from "node:path";

/**
 * Paths of the CA under a home directory.
 *
 * @example
 * ```ts
 * import { CaPaths } from "./home.ts";
 * const paths = new CaPaths("/tmp/home");
 * console.log(paths.cert); // "/tmp/home/ca/ca.crt"
 * console.log(paths.serviceInfo); // "/tmp/home/ca/service.json"
 * ```
 */
export class CaPaths {
  /** The home directory. */
  readonly home: string;
  /** HOME/ca, mode 0700. */
  readonly dir: string;

  /**
   * The paths of the CA under `home`. `dir` is where the CA folder is: HOME/ca,
   * except while `init` builds a new CA in a staging folder it then renames there.
   */
  constructor(home: string, dir: string = join(home, "ca")) {
    this.home = home;
    this.dir = dir;
  }
  /** The encrypted CA key (0600). */
  get key(): string {
    return join(this.dir, "ca.key");
  }
  /** The self-signed CA certificate. */
  get cert(): string {
    return join(this.dir, "ca.crt");
  }
  /** The openssl configuration. */
  get config(): string {
    return join(this.dir, "openssl.cnf");
  }
  /** openssl's index of issued certificates. */
  get index(): string {
    return join(this.dir, "index.txt");
  }
  /** openssl's index attributes (`unique_subject = no`). */
  get indexAttr(): string {
    return join(this.dir, "index.txt.attr");
  }
  /** The next CRL number (openssl's). */
  get crlnumber(): string {
    return join(this.dir, "crlnumber");
  }
  /**
   * The key identity of each issued serial (ca/store.ts `readKeyIds`): derived from certs/, so
   * that a process need not parse every certificate; rebuilt when missing or damaged.
   */
  get keyIds(): string {
    return join(this.dir, "key-ids");
  }
  /** Issued certificates, one SERIAL.pem each. */
  get certs(): string {
    return join(this.dir, "certs");
  }
  /** The latest CRL, PEM. */
  get crl(): string {
    return join(this.dir, "crl.pem");
  }
  /** Scratch space for transactions. */
  get tmp(): string {
    return join(this.dir, "tmp");
  }
  /**
   * Folders where `openssl ca` signs, one per signing, outside any transaction
   * (the commit takes the certificate and index line from there).
   */
  get signing(): string {
    return join(this.tmp, "signing");
  }
  /** Changes whenever index.txt is replaced (not when lines are appended). */
  get generation(): string {
    return join(this.dir, "index.gen");
  }
  /** The lock every writer takes; beside the CA dir so that init can take it too. */
  get lock(): string {
    return join(this.home, ".ca.lock");
  }
  /** Invites, as SHA-256 of each token (0600): the snapshot the journal continues. */
  get invites(): string {
    return join(this.dir, "invites.json");
  }
  /** The changes to invites since the snapshot, one JSON line each (0600; ca/invites.ts). */
  get invitesJournal(): string {
    return join(this.dir, "invites.journal");
  }
  /**
   * Held (flock) by the CA service while it runs, with its pid in it: one service per CA home
   * (ca/service.ts `claimServiceHome`).
   */
  get serviceLock(): string {
    return join(this.home, ".service.lock");
  }
  /** The lock of invites.json, apart from the CA lock so that invites never wait for openssl. */
  get invitesLock(): string {
    return join(this.home, ".invites.lock");
  }
  /** The issuance log's folder (ca/log.ts), 0700. */
  get logDir(): string {
    return join(this.dir, "log");
  }
  /** The log's entries: each a 4-byte big-endian length and a certificate's DER. */
  get logEntries(): string {
    return join(this.logDir, "entries");
  }
  /** The latest signed checkpoint (C2SP signed note). */
  get logCheckpoint(): string {
    return join(this.logDir, "checkpoint");
  }
  /** The log's Ed25519 key, encrypted under the CA passphrase like ca.key, 0600. */
  get logKey(): string {
    return join(this.logDir, "log.key");
  }
  /** The log key's certificate, issued by the CA to "e2e-chat log". */
  get logCert(): string {
    return join(this.logDir, "log.crt");
  }
  /**
   * Where the running service listens, and its pid (for `ca invite`); removed when it stops, left
   * behind when it is killed (ca/service.ts `serviceStatus` asks the service lock whether it runs).
   */
  get serviceInfo(): string {
    return join(this.dir, "service.json");
  }
  /**
   * The CRL URL that certificates carry as their distribution point, written by
   * `ca serve`; kept when it stops, since issued certificates keep naming it.
   */
  get crlUrl(): string {
    return join(this.dir, "crl-url.txt");
  }
  /** The service's own key and certificate (0700). */
  get serviceDir(): string {
    return join(this.dir, "service");
  }
  /** The service's TLS key (0600). */
  get serviceKey(): string {
    return join(this.serviceDir, "key.pem");
  }
  /** The service's TLS certificate. */
  get serviceCert(): string {
    return join(this.serviceDir, "cert.pem");
  }
  /** The mailbox (ca/mailbox.ts), 0700: one 0700 folder per recipient. */
  get mailbox(): string {
    return join(this.dir, "mailbox");
  }
  /** The items waiting for `name`: ID.cms (the CMS item) and ID.json (its record), 0600. */
  mailboxOf(name: string): string {
    return join(this.mailbox, name);
  }
  /** The file of an issued certificate. */
  certFile(serial: string): string {
    return join(this.certs, `${serial}.pem`);
  }
}
