/**
 * Where e2e-chat keeps its state, and how user-given paths are resolved.
 *
 * @module
 */
import { isAbsolute, join, resolve } from "node:path";
import { E2eError } from "./errors.ts";

/**
 * Resolves a path the user typed: `deno task` runs in the project folder, so
 * relative paths are taken from `INIT_CWD` (the user's own folder) when set.
 *
 * @example
 * ```ts
 * import { resolveUserPath } from "./home.ts";
 * console.log(resolveUserPath("req.csr"));
 * ```
 */
export function resolveUserPath(path: string): string {
  if (isAbsolute(path)) return path;
  return resolve(Deno.env.get("INIT_CWD") || Deno.cwd(), path);
}

/**
 * The home directory: `flag` (from `--home`), else `E2E_CHAT_HOME`, else `~/.e2e-chat`.
 *
 * @example
 * ```ts
 * import { resolveHome } from "./home.ts";
 * console.log(resolveHome(undefined));
 * ```
 */
export function resolveHome(flag: string | undefined): string {
  const chosen = flag || Deno.env.get("E2E_CHAT_HOME");
  if (chosen) return resolveUserPath(chosen);
  const userHome = Deno.env.get("HOME");
  if (!userHome) {
    throw new E2eError("ERR_HOME", "Cannot find a home directory: HOME is not set", {
      hint: "pass --home DIR or set E2E_CHAT_HOME",
    });
  }
  return join(userHome, ".e2e-chat");
}
