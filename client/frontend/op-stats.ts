/**
 * Per-opcode request counts and latency percentiles, for `virtiofs-client status`.
 *
 * Kept in a SharedArrayBuffer: each per-queue thread records into its own, allocating nothing per
 * request, and the main thread summarises all of them when asked (plain reads of numbers another
 * thread writes: a summary may be a request behind, never torn in a way that matters).
 */
import { opcodeName } from '../protocol/opcodes.ts';

/** Latencies kept per opcode: the most recent ones, enough for stable percentiles. */
const WINDOW = 512;
/** FUSE opcodes are below 64 (CUSE_INIT, 4096, is never relayed): one row each. */
const ROWS = 64;
const COUNT = 0;
const ERRORS = 1;
const LATENCIES = 2;
const ROW = LATENCIES + WINDOW;

export interface OpcodeSummary {
  opcode: string;
  count: number;
  errors: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
}

export class OpStats {
  readonly buffer: SharedArrayBuffer;
  private readonly cells: Float64Array;

  /** Pass another thread's `buffer` to read (or record into) its figures. */
  constructor(buffer: SharedArrayBuffer = new SharedArrayBuffer(ROWS * ROW * 8)) {
    this.buffer = buffer;
    this.cells = new Float64Array(buffer);
  }

  record(opcode: number, latencyMs: number, failed: boolean): void {
    const row = (opcode >>> 0 < ROWS ? opcode : 0) * ROW;
    const count = this.cells[row + COUNT]!;
    this.cells[row + LATENCIES + (count % WINDOW)] = latencyMs;
    this.cells[row + COUNT] = count + 1;
    if (failed) this.cells[row + ERRORS]!++;
  }

  /** Busiest opcodes first, over every OpStats given (one per thread). */
  static summary(all: readonly OpStats[]): OpcodeSummary[] {
    const out: OpcodeSummary[] = [];
    for (let opcode = 0; opcode < ROWS; opcode++) {
      let count = 0;
      let errors = 0;
      const latencies: number[] = [];
      for (const s of all) {
        const row = opcode * ROW;
        const n = s.cells[row + COUNT]!;
        if (n === 0) continue;
        count += n;
        errors += s.cells[row + ERRORS]!;
        latencies.push(...s.cells.subarray(row + LATENCIES, row + LATENCIES + Math.min(n, WINDOW)));
      }
      if (count === 0) continue;
      latencies.sort((a, b) => a - b);
      const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0;
      out.push({ opcode: opcodeName(opcode), count, errors, p50Ms: at(0.5), p90Ms: at(0.9), p99Ms: at(0.99) });
    }
    return out.sort((a, b) => b.count - a.count);
  }

  /** Requests recorded, every opcode together. */
  total(): number {
    let n = 0;
    for (let opcode = 0; opcode < ROWS; opcode++) n += this.cells[opcode * ROW + COUNT]!;
    return n;
  }

  summary(): OpcodeSummary[] {
    return OpStats.summary([this]);
  }
}
