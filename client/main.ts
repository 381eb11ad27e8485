/**
 * `deno task client`: the client's command line. For now it makes the
 * client's key and certificate request; enrollment and chat follow.
 *
 * @module
 */
import { out, parseCommand, runMain } from "../lib/cli.ts";
import { E2eError } from "../lib/errors.ts";
import { resolveHome } from "../lib/home.ts";
import { CLIENT_KEY_TYPES, type ClientKeyType, makeKeyAndCsr } from "./keys.ts";

const USAGE = `Usage: deno task client <command> [options]

Commands:
  csr NAME [--key-type ec-p256|rsa-2048|ed25519]
        Make a private key (kept in HOME/id, mode 0600) and a certificate
        request for NAME; prints the request's path. Give it to the CA admin:
        deno task ca sign --name NAME HOME/id/request.csr

Options:
  --home DIR   State folder (default: $E2E_CHAT_HOME, else ~/.e2e-chat)
  -h, --help   Show this help
`;

async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  if (command === undefined || command === "help" || command === "-h" || command === "--help") {
    await out(USAGE);
    return 0;
  }
  if (command !== "csr") {
    throw new E2eError("ERR_USAGE", `Unknown command ${JSON.stringify(command)}`, {
      hint: "run `deno task client --help`",
    });
  }
  const { values, positionals } = parseCommand(rest, {
    home: { type: "string" },
    "key-type": { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    await out(USAGE);
    return 0;
  }
  if (positionals.length !== 1) throw new E2eError("ERR_USAGE", "csr needs exactly one NAME");
  const keyType = values["key-type"] ?? "ec-p256";
  if (!(CLIENT_KEY_TYPES as readonly string[]).includes(keyType)) {
    throw new E2eError("ERR_USAGE", `Unknown key type ${JSON.stringify(keyType)}`, {
      hint: `use one of ${CLIENT_KEY_TYPES.join(", ")}`,
    });
  }
  const { csrPath } = await makeKeyAndCsr(resolveHome(values.home), positionals[0], {
    keyType: keyType as ClientKeyType,
  });
  await out(`${csrPath}\n`);
  return 0;
}

if (import.meta.main) await runMain(() => main(Deno.args));
