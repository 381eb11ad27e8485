/**
 * The benchmark report: every figure with the baseline measured in the same
 * run, their ratio and the target; printed as a table or as one JSON object.
 *
 * @module
 */

/** A target on the ratio value / baseline. */
export interface Target {
  /** ">=" when more is better (throughput), "<=" when less is (latency, cost). */
  op: ">=" | "<=";
  /** The bound on the ratio. */
  ratio: number;
}

/** One measured figure. */
export interface Figure {
  /** Name, e.g. "enroll_seq". */
  name: string;
  /** The section it belongs to. */
  section: string;
  /** The value (median over rounds unless the note says otherwise). */
  value: number;
  /** Unit of value and baseline. */
  unit: string;
  /** Name of the baseline figure. */
  baseline?: string;
  /** The baseline's value, same unit, same run. */
  baselineValue?: number;
  /** value / baselineValue. */
  ratio?: number;
  /** What the ratio should be. */
  target?: Target;
  /** Whether the target is met. */
  met?: boolean;
  /** How it was measured, or what it shows. */
  note?: string;
  /** Per-round values, when there were rounds. */
  rounds?: number[];
  /** The figures that explain this one (printed under the table when its target is missed). */
  breakdown?: string[];
}

/** Options of {@linkcode Report.add}. */
export interface AddOptions {
  /** Baseline name and value. */
  baseline?: [string, number];
  /** The target on value / baseline. */
  target?: Target;
  /** A note. */
  note?: string;
  /** Per-round values. */
  rounds?: number[];
  /** The figures that explain this one, by name (they may be added later). */
  breakdown?: string[];
}

/** The figures of one run, with the machine they ran on. */
export class Report {
  /** Where it ran. */
  machine: Record<string, unknown> = {};
  /** quick or full, sizes. */
  settings: Record<string, unknown> = {};
  /** Every figure, in order. */
  readonly figures: Figure[] = [];
  /** Sections that failed, with the error. */
  readonly errors: Array<{ section: string; message: string }> = [];
  /** Observations printed under the table. */
  readonly notes: string[] = [];
  #section = "";

  /** Figures added from now on belong to `name`. */
  section(name: string): void {
    this.#section = name;
  }

  /** Adds a figure; computes ratio and whether the target is met. */
  add(name: string, value: number, unit: string, options: AddOptions = {}): Figure {
    const figure: Figure = { name, section: this.#section, value, unit };
    if (options.baseline) {
      const [base, baseValue] = options.baseline;
      figure.baseline = base;
      figure.baselineValue = baseValue;
      figure.ratio = value / baseValue;
    }
    if (options.target && figure.ratio !== undefined) {
      figure.target = options.target;
      figure.met = Number.isFinite(figure.ratio) &&
        (options.target.op === ">="
          ? figure.ratio >= options.target.ratio
          : figure.ratio <= options.target.ratio);
    }
    if (options.note) figure.note = options.note;
    if (options.rounds) figure.rounds = options.rounds.map(round3);
    if (options.breakdown) figure.breakdown = options.breakdown;
    this.figures.push(figure);
    return figure;
  }

  /** The report as one JSON-serializable object. */
  toJSON(): Record<string, unknown> {
    const figures: Record<string, unknown> = {};
    for (const f of this.figures) {
      const { name, ...rest } = f;
      figures[name] = {
        ...rest,
        value: round3(f.value),
        ...(f.baselineValue !== undefined ? { baselineValue: round3(f.baselineValue) } : {}),
        ...(f.ratio !== undefined ? { ratio: round3(f.ratio) } : {}),
      };
    }
    return {
      machine: this.machine,
      settings: this.settings,
      figures,
      targets: {
        met: this.figures.filter((f) => f.met === true).map((f) => f.name),
        missed: this.figures.filter((f) => f.met === false).map((f) => f.name),
      },
      notes: this.notes,
      errors: this.errors,
    };
  }

  /** The report as a readable table. */
  toTable(): string {
    const header = ["figure", "value", "baseline", "ratio", "target", "met?"];
    const rows: string[][] = [];
    let section = "";
    const sectionRows: number[] = [];
    for (const f of this.figures) {
      if (f.section !== section) {
        section = f.section;
        sectionRows.push(rows.length);
        rows.push([`[${section}]`, "", "", "", "", ""]);
      }
      rows.push([
        f.name,
        `${num(f.value)} ${f.unit}`,
        f.baseline ? `${f.baseline} ${num(f.baselineValue!)}` : "",
        f.ratio !== undefined ? `${num(f.ratio)}×` : "",
        f.target ? `${f.target.op === ">=" ? "≥" : "≤"} ${f.target.ratio}×` : "",
        f.met === undefined ? "" : f.met ? "yes" : "NO",
      ]);
    }
    const all = [header, ...rows];
    const widths = header.map((_, i) => Math.max(...all.map((r) => [...r[i]].length)));
    const line = (r: string[]) =>
      r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ")
        .trimEnd();
    const out = [line(header), widths.map((w) => "-".repeat(w)).join("  ")];
    rows.forEach((r, i) => out.push(sectionRows.includes(i) ? r[0] : line(r)));
    const met = this.figures.filter((f) => f.met === true).length;
    const missed = this.figures.filter((f) => f.met === false);
    out.push("");
    out.push(
      `targets: ${met} met, ${missed.length} missed${
        missed.length ? ` (${missed.map((f) => f.name).join(", ")})` : ""
      }`,
    );
    for (const f of missed) {
      const parts = (f.breakdown ?? []).map((n) => this.figures.find((x) => x.name === n))
        .filter((x) => x !== undefined);
      if (!parts.length) continue;
      out.push(`  ${f.name} (${num(f.ratio!)}×, target ${f.target!.op} ${f.target!.ratio}×):`);
      for (const x of parts) {
        const base = x.baseline
          ? ` vs ${x.baseline} ${num(x.baselineValue!)}: ${num(x.ratio!)}×`
          : "";
        out.push(`    ${x.name} ${num(x.value)} ${x.unit}${base}`);
      }
    }
    const noted = this.figures.filter((f) => f.note);
    if (noted.length) {
      out.push("", "how each figure is measured:");
      for (const f of noted) out.push(`  ${f.name}: ${f.note}`);
    }
    if (this.notes.length) out.push("", "observations:", ...this.notes.map((n) => `  ${n}`));
    for (const e of this.errors) out.push("", `FAILED ${e.section}: ${e.message}`);
    return out.join("\n") + "\n";
  }
}

function round3(v: number): number {
  return Number.isFinite(v) ? Math.round(v * 1000) / 1000 : v;
}

/** A number for the table: three significant digits or whole thousands. */
export function num(v: number): string {
  if (!Number.isFinite(v)) return "n/a";
  const a = Math.abs(v);
  if (a >= 1000) return Math.round(v).toLocaleString("en-US");
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  return v.toFixed(3);
}
