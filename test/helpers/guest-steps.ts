/**
 * The steps of a guest run and their deadlines (used by test/helpers/vm.ts; no QEMU in here).
 *
 * A step begins when its marker arrives on the console (host clock) and ends when the next one does.
 * The guest's speed is measured at the start of each run: the 'calibrate' step is its first `node -e 0`.
 * Steps before it have a fixed deadline; every later step gets `budget` x the calibration, never less
 * than a floor. Past a deadline, `expiry()` tells which step, how long it ran, and whether the guest
 * looked slow (console output, or QEMU busy computing) or stuck (console silent and QEMU idle).
 */
import { cpus, loadavg } from 'node:os';

/** `@@VIRTIOFS-VM-STEP <token> <budget|-> <name>`, printed by scripts/vm/init.sh and vm_step (guest-lib.sh). */
export const STEP_MARKER = '@@VIRTIOFS-VM-STEP';
/** The step whose duration is the calibration. */
export const CALIBRATION_STEP = 'calibrate';

export interface StepPolicy {
  /** Deadline of each step before the calibration is known (QEMU start, kernel, init, calibration). */
  bootStepMs: number;
  /** The least deadline of a calibrated step. */
  stepFloorMs: number;
  /** Budget, in calibrations, of a step that declares none. */
  defaultBudget: number;
  /** From the script's exit status to QEMU's exit. */
  poweroffMs: number;
  /** The whole run, from QEMU's start. */
  capMs: number;
}

export interface GuestStep {
  name: string;
  /** When it began: ms after QEMU's start, when its marker reached the host. */
  atMs: number;
  /** How long it ran (the last one: until the run ended). */
  ms: number;
  /** The deadline it had, ms. */
  limitMs: number;
  /** Where that deadline came from: 'boot', '12 x calibration', 'floor', 'poweroff'. */
  limitFrom: string;
  /** QEMU's CPU seconds per second during the step (0: guest idle; up to the vCPU count), when sampled. */
  cpu?: number;
  /** Set when the run ended inside this step for a reason other than its natural end. */
  note?: string;
}

export interface StepExpiry {
  /** 'step': the step's own deadline; 'cap': the whole run's. */
  kind: 'step' | 'cap';
  step: GuestStep;
  /** 'slow' or 'stuck', with the evidence. */
  verdict: 'slow' | 'stuck';
  /** Human-readable: which step, since when, the calibration, the steps before, the evidence. */
  message: string;
}

interface CpuSample {
  at: number;
  cpuMs: number;
}

/** Parses a console line for a step marker of this run: { name, budget }. */
export function parseStepMarker(line: string, token: string): { name: string; budget?: number } | undefined {
  const at = line.indexOf(`${STEP_MARKER} ${token} `);
  if (at < 0) return undefined;
  const m = /^(\S+) (\S+)/.exec(line.slice(at + STEP_MARKER.length + token.length + 2));
  if (!m) return undefined;
  const budget = Number(m[1]);
  return { name: m[2]!, budget: m[1] !== '-' && Number.isFinite(budget) && budget > 0 ? budget : undefined };
}

export class StepClock {
  private readonly started: number;
  private readonly steps: GuestStep[] = [];
  private current: GuestStep;
  private calibration: number | undefined;
  private lastOutput: number | undefined;
  private readonly samples: CpuSample[] = [];
  private stepCpuStart: CpuSample | undefined;

  constructor(
    private readonly policy: StepPolicy,
    /** ms clock; tests pass a fake one. */
    private readonly now: () => number = Date.now,
    firstStep = 'qemu',
  ) {
    this.started = now();
    this.current = { name: firstStep, atMs: 0, ms: 0, limitMs: policy.bootStepMs, limitFrom: 'boot' };
  }

  /** The calibration (ms), once the calibration step has ended. */
  get calibrationMs(): number | undefined {
    return this.calibration;
  }

  /** ms since QEMU's start. */
  elapsed(): number {
    return this.now() - this.started;
  }

  /** Ends the current step, starts `name`. `budget`: its deadline in calibrations. */
  begin(name: string, budget?: number): void {
    const ended = this.close();
    if (ended.name === CALIBRATION_STEP) this.calibration = Math.max(1, ended.ms);
    const at = this.elapsed();
    this.current = { name, atMs: at, ms: 0, ...this.limitFor(name, budget) };
  }

  /** The guest printed something. */
  output(): void {
    this.lastOutput = this.now();
  }

  /** QEMU's cumulative CPU time (user + system), ms. */
  cpu(cpuMs: number): void {
    const sample = { at: this.now(), cpuMs };
    this.samples.push(sample);
    this.stepCpuStart ??= sample;
    // Keep a minute of history: enough for the "recent" window.
    while (this.samples.length > 2 && sample.at - this.samples[0]!.at > 60_000) this.samples.shift();
  }

  /** The step running now. */
  get running(): string {
    return this.current.name;
  }

  /** A deadline passed? (The step's own, or the whole run's cap.) */
  expiry(): StepExpiry | undefined {
    const now = this.elapsed();
    const ran = now - this.current.atMs;
    let kind: StepExpiry['kind'];
    if (now >= this.policy.capMs) kind = 'cap';
    else if (ran >= this.current.limitMs) kind = 'step';
    else return undefined;
    const step = { ...this.current, ms: ran, cpu: this.stepCpu() };
    const { verdict, evidence } = this.diagnose();
    const limit =
      kind === 'cap'
        ? `the run's cap of ${this.policy.capMs} ms (QEMU start to exit) was reached in step '${step.name}', after ${ran} ms in it`
        : `step '${step.name}' ran past its deadline: ${ran} ms, deadline ${step.limitMs} ms (${step.limitFrom})`;
    const before = this.steps.map((s) => `${s.name} ${s.ms}`).join(', ') || 'none';
    const calibration = this.calibration === undefined ? 'not measured yet' : `${this.calibration} ms (first node -e 0 in the guest)`;
    const message = [
      `${limit}; the guest looked ${verdict.toUpperCase()}: ${evidence}`,
      `calibration: ${calibration}`,
      `steps before it (ms): ${before}`,
    ].join('\n');
    return { kind, step, verdict, message };
  }

  /** Ends the run: the list of steps, the last one cut at now (with `note`, if given). */
  finish(note?: string): GuestStep[] {
    const last = this.close();
    if (note) last.note = note;
    return this.steps;
  }

  private close(): GuestStep {
    const step = { ...this.current, ms: this.elapsed() - this.current.atMs, cpu: this.stepCpu() };
    this.steps.push(step);
    this.stepCpuStart = this.samples.at(-1);
    return step;
  }

  private limitFor(name: string, budget: number | undefined): Pick<GuestStep, 'limitMs' | 'limitFrom'> {
    if (name === 'poweroff') return { limitMs: this.policy.poweroffMs, limitFrom: 'poweroff' };
    if (this.calibration === undefined) return { limitMs: this.policy.bootStepMs, limitFrom: 'boot' };
    const b = budget ?? this.policy.defaultBudget;
    const ms = Math.round(b * this.calibration);
    return ms >= this.policy.stepFloorMs
      ? { limitMs: ms, limitFrom: `${b} x calibration` }
      : { limitMs: this.policy.stepFloorMs, limitFrom: `floor (${b} x calibration = ${ms} ms)` };
  }

  /** QEMU CPU-s per s since the step began. */
  private stepCpu(): number | undefined {
    const last = this.samples.at(-1);
    const first = this.stepCpuStart;
    if (!last || !first || last.at - first.at < 200) return undefined;
    return round2((last.cpuMs - first.cpuMs) / (last.at - first.at));
  }

  private diagnose(): { verdict: 'slow' | 'stuck'; evidence: string } {
    const now = this.now();
    const load = `host load ${loadavg()[0]!.toFixed(1)} on ${cpus().length} CPUs`;
    // The evidence window: the step's last 10 s; the run's, when the step is too young to tell.
    const stepAge = now - (this.started + this.current.atMs);
    const windowMs = Math.min(10_000, stepAge >= 1000 ? stepAge : now - this.started);
    const silentFor = now - (this.lastOutput ?? this.started);
    if (silentFor < windowMs) {
      return { verdict: 'slow', evidence: `the console was still producing output (last ${silentFor} ms ago); ${load}` };
    }
    const recent = this.recentCpu(windowMs);
    const silence = `the console had been silent for ${silentFor} ms`;
    if (recent === undefined) return { verdict: 'stuck', evidence: `${silence} (QEMU's CPU time not sampled); ${load}` };
    const cpu = `QEMU used ${recent.rate} CPU-s/s over the last ${Math.round(recent.windowMs / 1000)} s`;
    if (recent.rate >= 0.25) return { verdict: 'slow', evidence: `${silence}, but the guest kept computing (${cpu}); ${load}` };
    return { verdict: 'stuck', evidence: `${silence} and the guest was idle (${cpu}); ${load}` };
  }

  private recentCpu(windowMs: number): { rate: number; windowMs: number } | undefined {
    const last = this.samples.at(-1);
    if (!last) return undefined;
    const first = this.samples.find((s) => last.at - s.at <= windowMs) ?? last;
    if (last.at - first.at < 400) return undefined;
    return { rate: round2((last.cpuMs - first.cpuMs) / (last.at - first.at)), windowMs: last.at - first.at };
  }
}

/** The steps as a compact table: name, ms, deadline, QEMU CPU. */
export function formatSteps(steps: readonly GuestStep[]): string {
  const width = Math.max(4, ...steps.map((s) => s.name.length));
  const rows = steps.map(
    (s) =>
      `${s.name.padEnd(width)} ${String(s.ms).padStart(7)} ${String(s.limitMs).padStart(7)} ${(s.cpu === undefined ? '-' : s.cpu.toFixed(2)).padStart(5)}` +
      (s.note ? `  ${s.note}` : ''),
  );
  return [`${'step'.padEnd(width)} ${'ms'.padStart(7)} ${'limit'.padStart(7)} ${'cpu'.padStart(5)}`, ...rows].join('\n');
}

function round2(n: number): number {
  return Math.round(n * 100) / 100;
}
