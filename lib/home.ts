/**
 * Where e2e-chat keeps its state, and how user-given paths are resolved.
 *
 * @module
 */
import { isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { E2eError } from "./errors.ts";

/**
 * Resolves a path the user typed: `deno task` runs in the project folder, so
 * relative paths are taken from `INIT_CWD` (the user's own folder) when set —
 * but only when the current folder is the project's. Run any other way (a
 * compiled binary, `deno run` from elsewhere) the current folder is the user's,
 * and an `INIT_CWD` is one inherited from an outer `npm run` or `deno task`,
 * which names some other folder. (`deno task` itself keeps an `INIT_CWD` it
 * inherits, as npm does: run from inside another task or npm script that
 * changed folder, give absolute paths.)
 *
 * @example
 * ```ts
 * import { resolveUserPath } from "./home.ts";
 * console.log(resolveUserPath("req.csr"));
 * ```
 */
export function resolveUserPath(path: string): string {
  if (isAbsolute(path)) return path;
  const cwd = Deno.cwd();
  const initCwd = Deno.env.get("INIT_CWD");
  return resolve(initCwd && sameFolder(cwd, PROJECT) ? initCwd : cwd, path);
}

// The folder `deno task` runs our tasks in: the one of deno.json, above lib/.
const PROJECT = new URL("..", import.meta.url);

function sameFolder(path: string, url: URL): boolean {
  if (url.protocol !== "file:") return false;
  try {
    return Deno.realPathSync(path) === Deno.realPathSync(fileURLToPath(url));
  } catch {
    return false;
  }
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
