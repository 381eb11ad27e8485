/**
 * Files between peers: safe names, hashing, and receiving into a partial file
 * that becomes the real one only after its size and SHA-256 matched.
 *
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { basename, join } from "node:path";
import { E2eError } from "../lib/errors.ts";

/**
 * Makes an announced file name safe to create in the downloads folder: no path,
 * no `..`, no NUL or control characters, no leading dot, at most 200 bytes.
 *
 * @example
 * ```ts
 * import { safeFileName } from "./files.ts";
 * safeFileName("../../etc/passwd"); // "passwd"
 * ```
 */
export function safeFileName(name: string): string {
  // deno-lint-ignore no-control-regex
  let safe = name.replace(/[\u0000-\u001f\u007f-\u009f]/g, "")
    .replace(/[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]/g, "") // bidi: "exe.txt" shown as "txt.exe"
    .replace(/\\/g, "/");
  safe = safe.split("/").filter((p) => p && p !== "." && p !== "..").pop() ?? "";
  safe = safe.replace(/^[.\s]+/, "").replace(/[\s.]+$/, "");
  // Cut whole characters, never half a surrogate pair.
  const chars = [...safe];
  while (new TextEncoder().encode(chars.join("")).length > 200) chars.pop();
  safe = chars.join("");
  return safe || "file";
}

/**
 * The SHA-256 (hex) and size of a file, read in chunks.
 *
 * @example
 * ```ts
 * import { hashFile } from "./files.ts";
 * const { sha256, size } = await hashFile("README.md");
 * ```
 */
export async function hashFile(path: string): Promise<{ sha256: string; size: number }> {
  const hash = createHash("sha256");
  let size = 0;
  using file = await Deno.open(path);
  const buffer = new Uint8Array(256 * 1024);
  while (true) {
    const n = await file.read(buffer);
    if (n === null) break;
    hash.update(buffer.subarray(0, n));
    size += n;
  }
  return { sha256: hash.digest("hex"), size };
}

/** A file being received into `dir`. */
export class IncomingFile {
  /** The name as announced (unsafe; for display through a sanitizer only). */
  readonly announced: string;
  /** Bytes announced. */
  readonly size: number;
  /** SHA-256 announced. */
  readonly sha256: string;
  /** Bytes received so far. */
  received = 0;
  #dir: string;
  #partial: string;
  #file: Deno.FsFile;
  #hash: Hash;

  private constructor(
    dir: string,
    partial: string,
    file: Deno.FsFile,
    announced: string,
    size: number,
    sha256: string,
  ) {
    this.#dir = dir;
    this.#partial = partial;
    this.#file = file;
    this.#hash = createHash("sha256");
    this.announced = announced;
    this.size = size;
    this.sha256 = sha256;
  }

  /** Starts receiving into `dir` (created 0700 if missing) under a `.partial-*` name, mode 0600. */
  static async start(
    dir: string,
    announced: string,
    size: number,
    sha256: string,
  ): Promise<IncomingFile> {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    const partial = join(dir, `.partial-${crypto.randomUUID()}`);
    const file = await Deno.open(partial, { write: true, createNew: true, mode: 0o600 });
    return new IncomingFile(dir, partial, file, announced, size, sha256);
  }

  /** Appends bytes; refuses more than announced. */
  async write(bytes: Uint8Array): Promise<void> {
    if (this.received + bytes.length > this.size) {
      throw new E2eError("ERR_BAD_REQUEST", "Malformed frame: more file data than announced");
    }
    this.#hash.update(bytes);
    let n = 0;
    while (n < bytes.length) n += await this.#file.write(bytes.subarray(n));
    this.received += bytes.length;
  }

  /** Checks size and SHA-256, then moves the file to a free final name; returns its path. */
  async finish(): Promise<string> {
    await this.#file.sync();
    this.#file.close();
    const digest = this.#hash.digest("hex");
    if (this.received !== this.size || digest !== this.sha256) {
      await Deno.remove(this.#partial).catch(() => {});
      throw new E2eError(
        "ERR_BAD_REQUEST",
        this.received !== this.size
          ? `File ended after ${this.received} of ${this.size} bytes`
          : "File's SHA-256 does not match what was announced",
      );
    }
    const name = safeFileName(this.announced);
    const dot = name.lastIndexOf(".");
    const [stem, ext] = dot > 0 ? [name.slice(0, dot), name.slice(dot)] : [name, ""];
    for (let i = 0; i < 10_000; i++) {
      const target = join(this.#dir, i === 0 ? name : `${stem} (${i})${ext}`);
      try {
        await Deno.link(this.#partial, target); // link() never overwrites
        await Deno.remove(this.#partial);
        return target;
      } catch (e) {
        if (!(e instanceof Deno.errors.AlreadyExists)) {
          await Deno.remove(this.#partial).catch(() => {});
          throw e;
        }
      }
    }
    await Deno.remove(this.#partial).catch(() => {});
    throw new E2eError("ERR_FILE", `No free name for "${name}" in "${this.#dir}"`);
  }

  /** Gives up: closes and deletes the partial file. */
  async abort(): Promise<void> {
    try {
      this.#file.close();
    } catch { /* already closed */ }
    await Deno.remove(this.#partial).catch(() => {});
  }
}

/** Deletes partial files a killed client left in `dir`. */
export async function removeStalePartials(dir: string): Promise<void> {
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (entry.isFile && entry.name.startsWith(".partial-")) {
        await Deno.remove(join(dir, entry.name)).catch(() => {});
      }
    }
  } catch { /* no folder yet */ }
}

/** The name announced for a local path. */
export function announcedName(path: string): string {
  return basename(path);
}
