/**
 * Where a passphrase comes from: a file named by a flag, an environment
 * variable, or a prompt on the terminal that does not echo. Never argv.
 *
 * @module
 */
import { E2eError } from "./errors.ts";
import { resolveUserPath } from "./home.ts";

/** The shortest passphrase accepted when a new key is encrypted. */
export const MIN_PASSPHRASE_LENGTH = 8;

/** Options of {@linkcode readPassphrase}. */
export interface PassphraseOptions {
  /** A file whose first line is the passphrase (`--passphrase-file`). Default: none. */
  file?: string;
  /** The environment variable to read. Default: none. */
  envVar?: string;
  /** What the prompt asks for. Default: "Passphrase". */
  label?: string;
  /** Ask twice and check the length, for a new key. Default: false. */
  confirm?: boolean;
  /** The hint when there is no source. Default: how to give a passphrase. */
  hint?: string;
  /** What `file` holds, for the error when it cannot be read. Default: "passphrase file". */
  fileLabel?: string;
  /**
   * Told when `file` can be read by other users (its mode allows group or other access); it is
   * used all the same. One they can write to, or that another user (not root) owns, is refused
   * (the owner needs `--allow-sys=uid` to be checked); group-writable passes when the group is
   * the owner's private one (/etc/passwd and /etc/group, read with `--allow-read`, say no one
   * else is in it), as OpenSSH allows. Default: none.
   */
  onWarning?: (message: string) => void | Promise<void>;
}

/**
 * Reads a passphrase from the first source that is there: `file`, then `envVar`,
 * then a no-echo prompt when stdin is a terminal; else throws `ERR_PASSPHRASE_REQUIRED`.
 *
 * @example
 * ```ts
 * import { readPassphrase } from "./passphrase.ts";
 * const passphrase = await readPassphrase({ envVar: "E2E_CHAT_CA_PASSPHRASE" });
 * ```
 */
export async function readPassphrase(options: PassphraseOptions = {}): Promise<string> {
  const label = options.label ?? "Passphrase";
  let passphrase: string | undefined;
  if (options.file !== undefined) {
    const path = resolveUserPath(options.file);
    const what = options.fileLabel ?? "passphrase file";
    const cannotRead = (e: unknown) =>
      new E2eError("ERR_FILE", `Cannot read the ${what} "${path}"`, {
        cause: e,
        hint: e instanceof Deno.errors.NotFound
          ? "there is no such file: a relative path starts in the folder the command ran in"
          : undefined,
      });
    // Looked at before it is opened: opening a named pipe waits for a writer, and another user's
    // would have us wait on them. (A pipe of our own, as `--passphrase-file <(…)` makes, is fine.)
    let seen: Deno.FileInfo;
    try {
      seen = await Deno.stat(path);
    } catch (e) {
      throw cannotRead(e);
    }
    await checkFile(seen, path, options, { warn: false });
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      throw cannotRead(e);
    }
    let text: string;
    try {
      // The file opened is the one checked (its owner and mode) and read: no path looked up twice.
      const opened = await file.stat();
      if (opened.dev !== seen.dev || opened.ino !== seen.ino) {
        throw new E2eError(
          "ERR_FILE",
          `Cannot use the ${what} "${path}": it changed as it was opened`,
          {
            hint:
              "something replaced it meanwhile: check who may write in its folder, and try again",
          },
        );
      }
      await checkFile(opened, path, options);
      text = new TextDecoder().decode(await readAll(file));
    } catch (e) {
      throw e instanceof E2eError ? e : cannotRead(e);
    } finally {
      file.close();
    }
    passphrase = text.split(/\r?\n/, 1)[0];
  } else if (options.envVar && Deno.env.get(options.envVar)) {
    passphrase = Deno.env.get(options.envVar);
  } else if (Deno.stdin.isTerminal()) {
    passphrase = await prompt(`${label}: `);
    if (options.confirm && await prompt(`${label} (again): `) !== passphrase) {
      throw new E2eError("ERR_PASSPHRASE_MISMATCH", "The two passphrases differ");
    }
  } else {
    throw new E2eError("ERR_PASSPHRASE_REQUIRED", `${label} required and stdin is not a terminal`, {
      hint: options.hint ??
        `set ${options.envVar ?? "the passphrase variable"} or pass --passphrase-file FILE`,
    });
  }
  if (!passphrase) throw new E2eError("ERR_PASSPHRASE_REQUIRED", `${label} is empty`);
  if (options.confirm && passphrase.length < MIN_PASSPHRASE_LENGTH) {
    throw new E2eError(
      "ERR_PASSPHRASE_WEAK",
      `${label} too short: use at least ${MIN_PASSPHRASE_LENGTH} characters`,
    );
  }
  return passphrase;
}

async function readAll(file: Deno.FsFile): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(16 * 1024);
  for (let n = await file.read(buffer); n !== null; n = await file.read(buffer)) {
    chunks.push(buffer.slice(0, n));
  }
  const out = new Uint8Array(chunks.reduce((sum, c) => sum + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

// A secret's file others may write to could hold their passphrase (as ssh refuses such a key
// file), and so could one another user owns (its owner may rewrite it, or chmod it, at will):
// both are refused. One others may read is warned of, and used: refusing it would stop scripts
// that work today. `info` is the open file's (fstat), not a second look-up of its path; or, with
// `warn` false, what its path named just before it was opened (no warning then: it comes after).
async function checkFile(
  info: Deno.FileInfo,
  path: string,
  options: PassphraseOptions,
  { warn = true }: { warn?: boolean } = {},
): Promise<void> {
  const { mode } = info;
  if (mode === null) return; // (Windows: no mode bits)
  const what = options.fileLabel ?? "passphrase file";
  const uid = currentUid();
  if (uid !== undefined && info.uid !== null && info.uid !== uid && info.uid !== 0) {
    throw new E2eError(
      "ERR_FILE",
      `Cannot use the ${what} "${path}": another user owns it (uid ${info.uid})`,
      { hint: `use a file of your own (chmod 600), not "${path}"` },
    );
  }
  const octal = `0${(mode & 0o777).toString(8)}`;
  // Group-writable is fine when the group is the owner's private one (Debian's user private
  // groups), as OpenSSH allows: no one else is in it.
  if ((mode & 0o002) || ((mode & 0o020) && !await isPrivateGroup(info.uid, info.gid))) {
    throw new E2eError(
      "ERR_FILE",
      `Cannot use the ${what} "${path}": other users can write to it (mode ${octal}${
        mode & 0o002 ? "" : `; its group, gid ${info.gid}, is not the owner's private group`
      })`,
      { hint: `chmod 600 "${path}"` },
    );
  }
  if (warn && (mode & 0o044)) {
    await options.onWarning?.(
      `The ${what} "${path}" can be read by other users (mode ${octal}): chmod 600 it`,
    );
  }
}

// Whether `gid` is the private group of the user `uid`, as /etc/passwd and /etc/group say; false
// when they cannot be read (no --allow-read for them, no such files: users from a directory
// service are not looked up).
async function isPrivateGroup(uid: number | null, gid: number | null): Promise<boolean> {
  if (uid === null || gid === null) return false;
  let passwd: string, group: string;
  try {
    [passwd, group] = await Promise.all([
      Deno.readTextFile("/etc/passwd"),
      Deno.readTextFile("/etc/group"),
    ]);
  } catch {
    return false;
  }
  return privateGroup(uid, gid, passwd, group);
}

/**
 * Whether `gid` is the private group of the user `uid`, given the text of `/etc/passwd` and
 * `/etc/group`: it is that user's primary group, no other user has it as primary group, and it
 * lists no member but that user.
 *
 * @example
 * ```ts
 * import { privateGroup } from "./passphrase.ts";
 * const passwd = "alice:x:1000:1000::/home/alice:/bin/sh\n";
 * console.log(privateGroup(1000, 1000, passwd, "alice:x:1000:\n")); // true
 * console.log(privateGroup(1000, 1000, passwd, "alice:x:1000:bob\n")); // false
 * ```
 */
export function privateGroup(uid: number, gid: number, passwd: string, group: string): boolean {
  const users = fields(passwd, 7).map(([name, , u, g]) => ({ name, uid: id(u), gid: id(g) }));
  const owner = users.filter((u) => u.uid === uid);
  if (owner.length !== 1 || owner[0].gid !== gid) return false;
  if (users.some((u) => u.gid === gid && u.uid !== uid)) return false;
  const groups = fields(group, 4).filter(([, , g]) => id(g) === gid);
  return groups.length > 0 &&
    groups.every(([, , , members]) =>
      members.split(",").every((m) => m === "" || m === owner[0].name)
    );
}

// The lines of a colon-separated file with at least `count` fields (others are skipped: "+" lines
// of NIS, comments, blanks).
function fields(text: string, count: number): string[][] {
  return text.split("\n").map((line) => line.split(":")).filter((f) =>
    f.length >= count && !f[0].startsWith("#") && !f[0].startsWith("+") && !f[0].startsWith("-")
  );
}

// A user or group id field: NaN (equal to none) unless it is digits.
function id(field: string): number {
  return /^\d{1,10}$/.test(field) ? Number(field) : NaN;
}

// This process's user id; undefined where it cannot be known (Windows, or no --allow-sys=uid).
function currentUid(): number | undefined {
  try {
    return Deno.uid() ?? undefined;
  } catch {
    return undefined;
  }
}

async function prompt(question: string): Promise<string> {
  const encoder = new TextEncoder();
  await Deno.stderr.write(encoder.encode(question));
  Deno.stdin.setRaw(true);
  const bytes: number[] = [];
  const buffer = new Uint8Array(64);
  try {
    loop: while (true) {
      const n = await Deno.stdin.read(buffer);
      if (n === null) break;
      for (const byte of buffer.subarray(0, n)) {
        if (byte === 0x0d || byte === 0x0a) break loop;
        if (byte === 0x03 || byte === 0x04) {
          throw new E2eError("ERR_PASSPHRASE_REQUIRED", "Passphrase entry cancelled");
        }
        if (byte === 0x7f || byte === 0x08) bytes.pop();
        else bytes.push(byte);
      }
    }
  } finally {
    Deno.stdin.setRaw(false);
    await Deno.stderr.write(encoder.encode("\n"));
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}
