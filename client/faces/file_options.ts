/**
 * The file flags of `client chat` and `client web`: the auto-accept size, the
 * quotas, the free-space floor and the send stall limit, parsed into the
 * options of the chat core.
 *
 * @module
 */
import { E2eError } from "../../lib/errors.ts";
import type { ChatOptions } from "../chat.ts";
import { DEFAULT_FILE_LIMITS, type FileLimits, formatSize, parseSize } from "../files.ts";
import { SEND_STALL_MS } from "../peer.ts";

/** The flags, for node:util parseArgs. */
export const FILE_FLAGS = {
  "auto-accept": { type: "string" },
  "peer-quota": { type: "string" },
  "peer-files": { type: "string" },
  "total-quota": { type: "string" },
  "total-files": { type: "string" },
  "free-floor": { type: "string" },
  "send-stall": { type: "string" },
} as const;

/** The parsed values of {@linkcode FILE_FLAGS}. */
export type FileFlagValues = { [K in keyof typeof FILE_FLAGS]?: string };

/** The usage text of the flags. */
export const FILE_USAGE = `File options (chat, web):
  --auto-accept SIZE  take files up to SIZE from a pinned key without asking
                      (default ${formatSize(DEFAULT_FILE_LIMITS.autoAccept)}; 0 asks for every file)
  --peer-quota SIZE   bytes taken from one peer per run (default ${
  formatSize(DEFAULT_FILE_LIMITS.peerBytes)
})
  --peer-files N      files taken from one peer per run (default ${DEFAULT_FILE_LIMITS.peerFiles})
  --total-quota SIZE  bytes taken from all peers per run (default ${
  formatSize(DEFAULT_FILE_LIMITS.totalBytes)
})
  --total-files N     files taken from all peers per run (default ${DEFAULT_FILE_LIMITS.totalFiles})
  --free-floor SIZE   free space to keep on the downloads disk (default ${
  formatSize(DEFAULT_FILE_LIMITS.freeFloor)
})
  --send-stall SECS   abort a file, or messages past 4 MiB unsent, the peer reads
                      nothing of for SECS (default ${SEND_STALL_MS / 1000})`;

/**
 * The chat options the flags ask for (defaults left to the core).
 *
 * @example
 * ```ts
 * import { fileOptions } from "./file_options.ts";
 * fileOptions({ "auto-accept": "10MiB" }); // { files: { autoAccept: 10485760 } }
 * ```
 */
export function fileOptions(values: FileFlagValues): Pick<ChatOptions, "files" | "sendStallMs"> {
  const files: Partial<FileLimits> = {};
  const size = (flag: keyof FileFlagValues, key: keyof FileLimits) => {
    const text = values[flag];
    if (text !== undefined) files[key] = parseSize(text);
  };
  const count = (flag: keyof FileFlagValues, key: keyof FileLimits) => {
    const text = values[flag];
    if (text === undefined) return;
    if (!/^\d{1,9}$/.test(text)) {
      throw new E2eError(
        "ERR_USAGE",
        `--${flag} takes a whole number, not ${JSON.stringify(text)}`,
      );
    }
    files[key] = Number(text);
  };
  size("auto-accept", "autoAccept");
  size("peer-quota", "peerBytes");
  count("peer-files", "peerFiles");
  size("total-quota", "totalBytes");
  count("total-files", "totalFiles");
  size("free-floor", "freeFloor");
  const stall = values["send-stall"];
  if (stall !== undefined && !/^\d{1,5}(\.\d{1,3})?$/.test(stall) || Number(stall) === 0) {
    throw new E2eError(
      "ERR_USAGE",
      `--send-stall takes a number of seconds above 0, not ${JSON.stringify(stall)}`,
    );
  }
  return {
    ...(Object.keys(files).length ? { files } : {}),
    ...(stall === undefined ? {} : { sendStallMs: Number(stall) * 1000 }),
  };
}
