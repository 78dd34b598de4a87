/**
 * Per-opcode request counts and latency percentiles, for `virtiofs-client status`.
 *
 * Kept in a SharedArrayBuffer: each per-queue thread records into its own, allocating nothing per
 * request, and the main thread summarises all of them when asked (plain reads of numbers another
 * thread writes: a summary may be a request behind, never torn in a way that matters).
 */
import { Opcode, opcodeName } from '../protocol/opcodes.ts';

/** Latencies kept per opcode: the most recent ones, enough for stable percentiles. */
const WINDOW = 512;
/** FUSE opcodes are below 64 (CUSE_INIT, 4096, is never relayed): one row each. */
const ROWS = 64;
const COUNT = 0;
const ERRORS = 1;
/** Requests whose latency was measured (all, or a sample where the clock is slow: machine-costs.ts). */
const TIMED = 2;
const LATENCIES = 3;
const ROW = LATENCIES + WINDOW;
/** After the rows: requests timed in phases, then the sums of each phase (ms). */
const PHASES_AT = ROWS * ROW;
const PHASE_COUNT = 0;
const PHASE_PREPARE = 1;
const PHASE_DEVICE = 2;
const PHASE_REPLY = 3;
const CELLS = PHASES_AT + 4;

/**
 * Where a relayed request's time goes inside the client, mean per request (us): `prepare` from
 * reading it off /dev/fuse to putting it on the virtqueue, `device` from there to finding its used
 * entry (kick, the device's service, its notification, our wake-up), `reply` from there to the
 * reply written to /dev/fuse. What an application sees beyond their sum is the kernel's side:
 * FUSE queueing and the wake-ups of the reading thread and of the application.
 */
export interface PhaseSummary {
  requests: number;
  prepareUs: number;
  deviceUs: number;
  replyUs: number;
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
  readonly buffer: SharedArrayBuffer;
  private readonly cells: Float64Array;

  /** Pass another thread's `buffer` to read (or record into) its figures. */
  constructor(buffer: SharedArrayBuffer = new SharedArrayBuffer(CELLS * 8)) {
    this.buffer = buffer;
    this.cells = new Float64Array(buffer);
  }

  /** A request that finished after `latencyMs`. */
  record(opcode: number, latencyMs: number, failed: boolean): void {
    const row = (opcode >>> 0 < ROWS ? opcode : 0) * ROW;
    const timed = this.cells[row + TIMED]!;
    this.cells[row + LATENCIES + (timed % WINDOW)] = latencyMs;
    this.cells[row + TIMED] = timed + 1;
    this.count(opcode, failed);
  }

  /** A request that finished untimed: counted, no latency. */
  count(opcode: number, failed: boolean): void {
    const row = (opcode >>> 0 < ROWS ? opcode : 0) * ROW;
    this.cells[row + COUNT]!++;
    if (failed) this.cells[row + ERRORS]!++;
  }

  /** One request's phases (ms), see PhaseSummary. */
  recordPhases(prepareMs: number, deviceMs: number, replyMs: number): void {
    const c = this.cells;
    c[PHASES_AT + PHASE_COUNT]!++;
    c[PHASES_AT + PHASE_PREPARE] = c[PHASES_AT + PHASE_PREPARE]! + prepareMs;
    c[PHASES_AT + PHASE_DEVICE] = c[PHASES_AT + PHASE_DEVICE]! + deviceMs;
    c[PHASES_AT + PHASE_REPLY] = c[PHASES_AT + PHASE_REPLY]! + replyMs;
  }

  /** Mean phases over every OpStats given; undefined when none recorded any. */
  static phases(all: readonly OpStats[]): PhaseSummary | undefined {
    let n = 0;
    let prepare = 0;
    let device = 0;
    let reply = 0;
    for (const s of all) {
      n += s.cells[PHASES_AT + PHASE_COUNT]!;
      prepare += s.cells[PHASES_AT + PHASE_PREPARE]!;
      device += s.cells[PHASES_AT + PHASE_DEVICE]!;
      reply += s.cells[PHASES_AT + PHASE_REPLY]!;
    }
    if (n === 0) return undefined;
    const us = (ms: number) => Math.round((ms / n) * 1000 * 100) / 100;
    return { requests: n, prepareUs: us(prepare), deviceUs: us(device), replyUs: us(reply) };
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
        latencies.push(...s.cells.subarray(row + LATENCIES, row + LATENCIES + Math.min(s.cells[row + TIMED]!, WINDOW)));
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

  /** FORGET and BATCH_FORGET requests recorded (what went to the hiprio queue). */
  forgets(): number {
    return this.cells[Opcode.FORGET * ROW + COUNT]! + this.cells[Opcode.BATCH_FORGET * ROW + COUNT]!;
  }

  summary(): OpcodeSummary[] {
    return OpStats.summary([this]);
  }
}
