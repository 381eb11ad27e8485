/**
 * One budget for the bytes a server holds in replies its clients have not read
 * yet, all connections together: a per-connection cap on pipelined requests
 * still lets `connections × pipelined × largest reply` pile up in memory (with
 * the CA's 1,024 connections, 8 requests each and 8 MiB mailbox items: 64 GiB).
 *
 * What counts as held: a reply's body, plus {@linkcode REPLY_HEAD_BYTES} for its
 * head, from the moment it is handed to its response until the response
 * finishes (its socket has written every byte of it to the kernel) or its
 * socket closes. Measured on Deno 2.9.6 (lib/reply_budget_test.ts): a TLS
 * socket's `writableLength` holds the chunk being written until the client
 * reads it, so `finish` waits for the reader; but a reply pipelined behind it
 * waits in its response, not in the socket, where `writableLength` does not see
 * it — and when the socket closes such a response gets neither `finish` nor
 * `close`. So each reply is counted on its own, and whatever a socket still
 * held is released when it closes. Bytes the kernel took (a few MiB per
 * loopback connection) are the kernel's, and not counted.
 *
 * Over the budget, the connection holding the most unread bytes is closed, one
 * at a time until the reply fits (see {@linkcode ReplyBudget.admit} for why not
 * refuse the new reply instead, and for what that costs a reading client).
 *
 * @module
 */
import type { ServerResponse } from "node:http";
import type { Socket } from "node:net";

/** Bytes counted for a reply's head (status line and headers) besides its body. */
export const REPLY_HEAD_BYTES = 512;

/** Options of {@linkcode ReplyBudget}. */
export interface ReplyBudgetOptions {
  /** Told of each connection closed to stay within the budget, with what it held. Default: none. */
  onClose?: (socket: Socket, heldBytes: number) => void;
}

// What one socket holds; `open` is false once it closed (its late releases then count for nothing).
interface Holder {
  bytes: number;
  open: boolean;
}

/**
 * Counts the bytes of replies written and not yet taken by their clients, and
 * keeps their total within `maxBytes` by closing the connections that hold the
 * most.
 *
 * @example
 * ```ts
 * import https from "node:https";
 * import { ReplyBudget } from "./reply_budget.ts";
 * const budget = new ReplyBudget(64 * 1024 * 1024);
 * const body = new TextEncoder().encode("hello\n");
 * const server = https.createServer({}, (req, res) => {
 *   if (!budget.admit(req.socket, res, body.length)) return; // the connection was closed
 *   res.end(body);
 * });
 * server.close();
 * ```
 */
export class ReplyBudget {
  /** The most all connections' unread replies may hold, in bytes. */
  readonly maxBytes: number;
  #total = 0;
  #peak = 0;
  #holders = new WeakMap<Socket, Holder>();
  // The sockets that hold something now: the ones a closure chooses from.
  #holding = new Map<Socket, Holder>();
  #onClose?: (socket: Socket, heldBytes: number) => void;

  /** A budget of `maxBytes` (a whole number above 0). */
  constructor(maxBytes: number, options: ReplyBudgetOptions = {}) {
    if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0) {
      throw new RangeError(`A reply budget is a whole number of bytes above 0, not ${maxBytes}`);
    }
    this.maxBytes = maxBytes;
    this.#onClose = options.onClose;
  }

  /** Bytes held now, all connections together. */
  get held(): number {
    return this.#total;
  }

  /** The most ever held at once (never above {@linkcode ReplyBudget.maxBytes}). */
  get peak(): number {
    return this.#peak;
  }

  /**
   * Counts a reply of `bodyBytes` about to be written to `res` on `socket`
   * until `res` finishes or `socket` closes; true when it may be sent. When it
   * would take the total past the budget, connections are closed, the one
   * holding the most unread bytes first, until it fits; false when that was
   * `socket` itself (or `socket` is closed already): send nothing.
   *
   * Why close the biggest holders rather than refuse the new reply: a client
   * that reads holds next to nothing (its replies go to the kernel at once),
   * so the bytes held are mostly the non-readers'. Refusing new replies would
   * let a few of them, holding the budget, have every reading client refused
   * for as long as they like; closing them frees it.
   *
   * What it compares is each connection's bytes, not the non-readers' total:
   * connections are closed one at a time, the one holding the most first, and
   * `socket` itself as soon as it holds the most of those left while the reply
   * still does not fit. So a reading client is refused only a reply that does
   * not fit once every connection holding more than it is closed — but one
   * that holds more than each non-reader (a large mailbox item still on its way
   * to it, say) is closed before many smaller non-readers that together hold
   * far more.
   */
  admit(socket: Socket, res: ServerResponse, bodyBytes: number): boolean {
    if (socket.destroyed) return false;
    const cost = bodyBytes + REPLY_HEAD_BYTES;
    while (this.#total + cost > this.maxBytes) {
      const victim = this.#biggest();
      // Nothing else to free (the reply alone is over the budget), or the caller holds the most.
      if (!victim || victim === socket) {
        this.#close(socket);
        return false;
      }
      this.#close(victim);
    }
    const holder = this.#holder(socket);
    holder.bytes += cost;
    this.#holding.set(socket, holder);
    this.#total += cost;
    this.#peak = Math.max(this.#peak, this.#total);
    let left = cost;
    const release = () => {
      if (left && holder.open) {
        holder.bytes -= left;
        this.#total -= left;
        if (holder.bytes === 0) this.#holding.delete(socket);
      }
      left = 0;
    };
    res.once("finish", release);
    res.once("close", release);
    return true;
  }

  #biggest(): Socket | undefined {
    let most: Socket | undefined;
    let bytes = 0;
    for (const [socket, holder] of this.#holding) {
      if (holder.bytes > bytes) [most, bytes] = [socket, holder.bytes];
    }
    return most;
  }

  #holder(socket: Socket): Holder {
    let holder = this.#holders.get(socket);
    if (!holder) {
      const made: Holder = { bytes: 0, open: true };
      this.#holders.set(socket, made);
      // Every way a socket ends (a reset, an error, a destroy, our own closure) ends in "close".
      socket.once("close", () => this.#release(socket, made));
      holder = made;
    }
    return holder;
  }

  #release(socket: Socket, holder: Holder): void {
    if (!holder.open) return;
    holder.open = false;
    this.#total -= holder.bytes;
    holder.bytes = 0;
    this.#holding.delete(socket);
  }

  #close(socket: Socket): void {
    const holder = this.#holders.get(socket);
    const held = holder?.bytes ?? 0;
    // Released now, not at "close" (a turn later): the loop in admit() counts on it.
    if (holder) this.#release(socket, holder);
    this.#onClose?.(socket, held); // before the destroy, while the socket still has its address
    socket.destroy();
  }
}
