/**
 * `deno task fuzz`: property-based fuzzing of every parser and policy
 * (tests/fuzz/properties.ts) with fast-check. Prints one line per property
 * and, last, `N cases, 0 failures`; exits non-zero on a failure, printing the
 * seed, the counterexample's path and the command that replays it.
 *
 * Flags: `--seed=N` (default: random, printed; with `=`, so a negative N is not read as flags), `--only TEXT` (properties
 * whose name contains TEXT), `--path P` (replay one counterexample, with
 * `--seed` and `--only`), `--scale X` (multiply every property's cases).
 *
 * @module
 */
import fc from "fast-check";
import { parseArgs } from "node:util";
import { allProperties } from "./properties.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    seed: { type: "string" },
    only: { type: "string" },
    path: { type: "string" },
    scale: { type: "string" },
  },
});
const seed = values.seed !== undefined
  ? Number(values.seed)
  : crypto.getRandomValues(new Uint32Array(1))[0] | 0;
const scale = Number(values.scale ?? "1");
if (!Number.isInteger(seed) || !(scale > 0)) {
  throw new TypeError("--seed takes a whole number and --scale a positive number");
}

const write = (line: string) => Deno.stdout.writeSync(new TextEncoder().encode(line + "\n"));
write(`fuzz: seed ${seed}`);
let cases = 0;
let failures = 0;
for (const p of await allProperties()) {
  if (values.only && !p.name.includes(values.only)) continue;
  const started = performance.now();
  let details: fc.RunDetails<unknown[]>;
  try {
    details = await fc.check(p.property as fc.IProperty<unknown[]>, {
      seed,
      numRuns: Math.max(1, Math.round(p.runs * scale)),
      ...(values.path ? { path: values.path, endOnFailure: true } : {}),
    });
  } catch (e) {
    // A generator that throws is a defect of the fuzz itself: reported, and counted.
    failures++;
    write(`fuzz: FAILED ${p.name}: the generator threw: ${e}`);
    write(`  replay: deno task fuzz --seed=${seed} --only ${JSON.stringify(p.name.slice(0, 40))}`);
    continue;
  }
  cases += details.numRuns;
  const ms = (performance.now() - started).toFixed(0);
  if (details.failed) {
    failures++;
    write(`fuzz: FAILED ${p.name}`);
    write(`  counterexample: ${fc.stringify(details.counterexample)}`);
    write(`  error: ${String(details.errorInstance).split("\n").slice(0, 6).join("\n  ")}`);
    write(
      `  replay: deno task fuzz --seed=${details.seed} --only ${
        JSON.stringify(p.name.slice(0, 40))
      } --path ${JSON.stringify(details.counterexamplePath)}`,
    );
  } else {
    write(`fuzz: ok ${p.name}: ${details.numRuns} cases (${ms} ms)`);
  }
}
write(`${cases} cases, ${failures} failures`);
Deno.exit(failures ? 1 : 0);
