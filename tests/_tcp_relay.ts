/**
 * A TCP relay to a local port, for tests that watch, cut or hold a client's
 * connection to the CA service without touching either end: the bytes are the
 * real TLS of the real processes.
 *
 * @module
 */
import net from "node:net";

/**
 * What the relay does with the service's bytes once `after()` holds (before, it
 * forwards them): `pass` forwards everything; `drop` cuts the connection that
 * they come on (its reply never arrives); `hold` keeps them and the connection
 * open, so the client waits until it gives up or is killed; `queue` keeps them
 * until {@linkcode TcpRelay.release} lets them through, with all later ones.
 */
export type RelayMode = "pass" | "drop" | "hold" | "queue";

/** Options of {@linkcode TcpRelay.start}. */
export interface TcpRelayOptions {
  /** Default: "pass". Can be changed later through {@linkcode TcpRelay.mode}. */
  mode?: RelayMode;
  /**
   * From when on the mode applies (checked at each chunk from the service; before
   * the CA's commit it sends only its side of the TLS handshake, its reply comes
   * after the index line). Default: from the start.
   */
  after?: () => boolean;
}

/** A relay listening on 127.0.0.1 (port 0) to `target` on 127.0.0.1. */
export class TcpRelay {
  /** What to do with the service's bytes (see {@linkcode RelayMode}). */
  mode: RelayMode;
  /** Connections accepted so far. */
  connections = 0;
  /** Connections whose replies were dropped, held or queued so far. */
  withheld = 0;
  #server: net.Server;
  #sockets = new Set<net.Socket>();
  #flushes: Array<() => void> = [];

  private constructor(server: net.Server, mode: RelayMode) {
    this.#server = server;
    this.mode = mode;
  }

  /** Starts a relay to `target`. */
  static async start(target: number, options: TcpRelayOptions = {}): Promise<TcpRelay> {
    const after = options.after ?? (() => true);
    const server = net.createServer();
    const relay = new TcpRelay(server, options.mode ?? "pass");
    server.on("connection", (client) => {
      relay.connections++;
      const upstream = net.connect(target, "127.0.0.1");
      for (const s of [client, upstream]) {
        relay.#sockets.add(s);
        s.on("error", () => {});
        s.on("close", () => relay.#sockets.delete(s));
      }
      let withheld = false;
      let ended = false;
      const queue: Uint8Array[] = [];
      const flush = () => {
        for (const d of queue.splice(0)) client.write(d);
        if (ended) client.end();
      };
      relay.#flushes.push(flush);
      client.on("data", (d: Uint8Array) => upstream.write(d));
      upstream.on("data", (d: Uint8Array) => {
        if (relay.mode === "pass" || !(withheld || after())) return void client.write(d);
        if (!withheld) relay.withheld++;
        withheld = true;
        if (relay.mode === "queue") return void queue.push(d);
        if (relay.mode === "drop") {
          client.destroy();
          upstream.destroy();
        }
      });
      client.on("close", () => upstream.destroy());
      upstream.on("end", () => {
        ended = true;
        if (relay.mode === "queue" ? !queue.length : !(withheld && relay.mode === "hold")) {
          client.end();
        }
      });
      upstream.on("close", () => {
        if (!withheld || relay.mode === "pass" || relay.mode === "drop") client.destroy();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return relay;
  }

  /** The port it listens on. */
  get port(): number {
    return (this.#server.address() as net.AddressInfo).port;
  }

  /** Lets every queued reply through, and all later ones (the mode becomes `pass`). */
  release(): void {
    this.mode = "pass";
    for (const flush of this.#flushes) flush();
  }

  /** Closes the relay and every connection through it. */
  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise((resolve) => this.#server.close(resolve));
  }
}
