/**
 * `client web --open`: hands the page's address to the system's opener. Besides
 * lib/openssl.ts this is the one place the client starts a process; it runs a
 * fixed program (`xdg-open`, or `open` on macOS), with the address as its only
 * argument, and only when the user asked for it. The client task allows exactly
 * these programs (deno.json `--allow-run=openssl,xdg-open,open`).
 *
 * @module
 */
import { E2eError } from "../../../lib/errors.ts";

const OPEN_TIMEOUT_MS = 10_000;

/**
 * Opens `url` (an http://127.0.0.1 address) in the system browser.
 *
 * @example Open the page in the system browser
 * ```ts
 * import { openInBrowser } from "./open.ts";
 * await openInBrowser("http://127.0.0.1:8080/");
 * ```
 */
export async function openInBrowser(url: string): Promise<void> {
  if (!/^http:\/\/127\.0\.0\.1:\d+\//.test(url)) throw new TypeError("Not a loopback address");
  const program = Deno.build.os === "darwin" ? "open" : "xdg-open";
  try {
    const { code } = await new Deno.Command(program, {
      args: [url],
      stdin: "null",
      stdout: "null",
      stderr: "null",
      signal: AbortSignal.timeout(OPEN_TIMEOUT_MS),
    }).output();
    if (code !== 0) throw new Error(`exit code ${code}`);
  } catch (e) {
    throw new E2eError("ERR_USAGE", `${program} failed: ${e instanceof Error ? e.message : e}`, {
      hint: "open the address by hand",
    });
  }
}
