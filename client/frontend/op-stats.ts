/** Per-opcode request counts and latency percentiles, for `virtiofs-client status`. */
import { opcodeName } from '../protocol/opcodes.ts';

/** Latencies kept per opcode: the most recent ones, enough for stable percentiles. */
const WINDOW = 2048;

interface OpcodeStats {
  count: number;
  errors: number;
  latenciesMs: Float64Array;
}

export interface OpcodeSummary {
  opcode: string;
  count: number;
  errors: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
}

export class OpStats {
  private readonly byOpcode = new Map<number, OpcodeStats>();

  record(opcode: number, latencyMs: number, failed: boolean): void {
    let s = this.byOpcode.get(opcode);
    if (!s) this.byOpcode.set(opcode, (s = { count: 0, errors: 0, latenciesMs: new Float64Array(WINDOW) }));
    s.latenciesMs[s.count % WINDOW] = latencyMs;
    s.count++;
    if (failed) s.errors++;
  }

  /** Busiest opcodes first. */
  summary(): OpcodeSummary[] {
    return [...this.byOpcode.entries()]
      .map(([opcode, s]) => {
        const sorted = s.latenciesMs.slice(0, Math.min(s.count, WINDOW)).sort();
        const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
        return { opcode: opcodeName(opcode), count: s.count, errors: s.errors, p50Ms: at(0.5), p90Ms: at(0.9), p99Ms: at(0.99) };
      })
      .sort((a, b) => b.count - a.count);
  }
}
