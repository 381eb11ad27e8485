/**
 * The client task's narrow `--allow-env` list against what the runtime itself
 * reads. The terminal face colours its text with node's `styleText`, which on a
 * terminal asks `getColorDepth()`, and that reads a fixed set of variables
 * (which ones depends on the terminal or CI service). A name missing from the
 * list stops `deno task client` at its first coloured line on a real terminal —
 * which the other tests, run without one and with NO_COLOR, never reach.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { childEnv, ROOT, taskFlags, withTempDir } from "./_harness.ts";

// What styleText() does on a terminal, without needing one.
const PROBE =
  'import tty from "node:tty";\nconsole.log(tty.WriteStream.prototype.getColorDepth());\n';

// Terminals and CI services as node's getColorDepth() tells them apart; each reads other variables.
const TERMINALS: Record<string, Record<string, string>> = {
  "an xterm": { TERM: "xterm-256color" },
  "a terminal that says nothing": {},
  "GitHub Actions": { TERM: "xterm", CI: "true", GITHUB_ACTIONS: "true" },
  "a CI service that names itself": { CI: "true", CI_NAME: "codeship" },
  "Azure Pipelines": { TF_BUILD: "True", AGENT_NAME: "agent-1" },
  "TeamCity": { TEAMCITY_VERSION: "2024.1" },
  "iTerm": { TERM_PROGRAM: "iTerm.app", TERM_PROGRAM_VERSION: "3.5.0" },
  "tmux": { TMUX: "/tmp/tmux-0/default,1,0" },
};

Deno.test("the client task may read every variable its terminal's colour check reads", async (t) => {
  await withTempDir(async (dir) => {
    const probe = join(dir, "probe.ts");
    await Deno.writeTextFile(probe, PROBE);
    const flags = await taskFlags("client");
    const { NO_COLOR: _, ...env } = childEnv();
    for (const [where, vars] of Object.entries(TERMINALS)) {
      await t.step(`on ${where}`, async () => {
        const out = await new Deno.Command(Deno.execPath(), {
          args: ["run", "--quiet", ...flags, probe],
          cwd: dir,
          clearEnv: true,
          env: { ...env, ...vars },
          stdout: "piped",
          stderr: "piped",
        }).output();
        const stderr = new TextDecoder().decode(out.stderr);
        assert.equal(out.code, 0, `exit ${out.code}; stderr: ${stderr}`);
        assert.match(new TextDecoder().decode(out.stdout), /^(1|4|8|24)\n$/);
      });
    }
  });
});

Deno.test("the compiled client gets the client task's environment permissions", async () => {
  const tasks = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json"))).tasks;
  const envFlag = (text: string) => text.split(/\s+/).find((w) => w.startsWith("--allow-env="));
  const compiled = String(tasks.compile).split("&&").find((part) =>
    part.includes("client/main.ts")
  );
  assert.ok(compiled, "the compile task builds client/main.ts");
  assert.equal(envFlag(compiled), envFlag(tasks.client));
});
