/**
 * An exclusive lock that serializes every writer of a state directory: other
 * processes (through `flock`, released by the kernel if the holder dies) and
 * other callers in this process (through a promise queue, because a blocked
 * `flock` would tie up one of Deno's worker threads per waiter).
 *
 * @module
 */
import { E2eError } from "./errors.ts";

const queues = new Map<string, Promise<unknown>>();

/** Options of {@linkcode withLock}. */
export interface LockOptions {
  /** Milliseconds to wait for another process before giving up. Default: 60000. */
  timeoutMs?: number;
  /**
   * Called once when another process has held the lock for about a second and
   * this caller still waits, so a command can say why it is silent (this module
   * never prints). Not called when the lock is taken sooner. Default: none.
   */
  onWait?: () => void;
}

/** How long a caller waits for another process before {@linkcode LockOptions.onWait} runs, ms. */
export const LOCK_WAIT_NOTICE_MS = 1_000;

/**
 * Runs `fn` while holding the exclusive lock on the file at `path` (created 0600 if missing), or
 * on the folder at `path` itself (which then gets no lock file).
 *
 * @example Serializing writers
 * ```ts
 * import { withLock } from "./lock.ts";
 * await withLock("/tmp/example.lock", async () => {
 *   // only one holder at a time, across processes
 * });
 * ```
 */
export function withLock<T>(
  path: string,
  fn: () => Promise<T>,
  options: LockOptions = {},
): Promise<T> {
  const previous = queues.get(path) ?? Promise.resolve();
  const run = previous.catch(() => {}).then(() => lockFile(path, fn, options));
  const tail = run.catch(() => {});
  queues.set(path, tail);
  tail.then(() => {
    if (queues.get(path) === tail) queues.delete(path);
  });
  return run;
}

/**
 * Takes the exclusive lock on the file at `path` (created 0600 if missing) and holds it until the
 * returned function is called or the process ends: a lock held as long as a service runs. Throws
 * `ERR_LOCK_TIMEOUT` when another process holds it for `timeoutMs`.
 *
 * @example One service per folder
 * ```ts
 * import { holdLock } from "./lock.ts";
 * const release = await holdLock("/tmp/example-service.lock", { timeoutMs: 5_000 });
 * release();
 * ```
 */
export async function holdLock(path: string, options: LockOptions = {}): Promise<() => void> {
  const file = await acquire(path, options);
  return () => file.close(); // closing releases the flock
}

async function lockFile<T>(path: string, fn: () => Promise<T>, options: LockOptions): Promise<T> {
  const file = await acquire(path, options);
  try {
    return await fn();
  } finally {
    file.close(); // closing releases the flock
  }
}

async function acquire(path: string, options: LockOptions): Promise<Deno.FsFile> {
  const timeoutMs = options.timeoutMs ?? 60_000;
  // Synchronous open: a local file, opened several times per enrollment.
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true, write: true, create: true, mode: 0o600 });
  } catch (e) {
    if (!(e instanceof Deno.errors.IsADirectory)) throw e;
    file = Deno.openSync(path, { read: true }); // flock works on a folder's descriptor too
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  let notice: ReturnType<typeof setTimeout> | undefined;
  const locked = file.lock(true).then(() => true);
  const timedOut = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  const onWait = options.onWait;
  if (onWait && timeoutMs > LOCK_WAIT_NOTICE_MS) notice = setTimeout(onWait, LOCK_WAIT_NOTICE_MS);
  try {
    if (!await Promise.race([locked, timedOut])) {
      // The pending flock keeps the fd and a worker thread until the holder lets go; close then.
      locked.finally(() => file.close()).catch(() => {});
      throw new E2eError("ERR_LOCK_TIMEOUT", `Cannot lock "${path}": another process holds it`, {
        hint: "wait for the other e2e-chat command to finish",
      });
    }
  } finally {
    clearTimeout(timer);
    clearTimeout(notice);
  }
  return file;
}

/**
 * Whether another holder has the lock on the file at `path` now (a missing file: no), without
 * waiting and without keeping it: a shared try-lock, let go at once. So whether a process runs
 * can be asked of the lock it holds: one killed, SIGKILL included, holds it no longer, whatever
 * files it left.
 *
 * @example Is a service running?
 * ```ts
 * import { holdLock, isLocked } from "./lock.ts";
 * const release = await holdLock("/tmp/example-held.lock");
 * console.log(await isLocked("/tmp/example-held.lock")); // true
 * release();
 * ```
 */
export async function isLocked(path: string): Promise<boolean> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
  try {
    return !await file.tryLock(false);
  } finally {
    file.close(); // closing lets go of the shared lock, if taken
  }
}
