/**
 * Small statistics for the benchmarks: percentiles and medians over rounds.
 *
 * @module
 */

/** The p-th percentile (0–100) of `values`, nearest rank; NaN when empty. */
export function percentile(values: number[], p: number): number {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

/** The median of `values`; NaN when empty. */
export function median(values: number[]): number {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** p50 and p99 of one round of samples. */
export interface Spread {
  /** Median. */
  p50: number;
  /** 99th percentile. */
  p99: number;
}

/** p50 and p99 of each round, then the median of each across rounds. */
export function spreadOverRounds(rounds: number[][]): Spread & { rounds: Spread[] } {
  const each = rounds.map((r) => ({ p50: percentile(r, 50), p99: percentile(r, 99) }));
  return {
    p50: median(each.map((s) => s.p50)),
    p99: median(each.map((s) => s.p99)),
    rounds: each,
  };
}
