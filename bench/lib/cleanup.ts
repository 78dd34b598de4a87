/**
 * Everything a benchmark sets up (mounts, daemons, temporary files) registers
 * how to undo it here; the steps run newest first, once, on the normal way
 * out, on an error, and on Ctrl-C / SIGTERM / SIGHUP. After a signal no new
 * child process may start (`spawnChecked` refuses), so a workload that was
 * interrupted cannot start the next one on a mount being taken down.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { VirtiofsError } from '../../ffi/errors.ts';

export class Interrupted extends VirtiofsError {
  override name = 'Interrupted';
  readonly code = 'EINTR';
}

interface Step {
  name: string;
  run: () => Promise<void> | void;
}

export class Cleanup {
  private readonly steps: Step[] = [];
  private readonly children = new Set<ChildProcess>();
  private running: Promise<void> | undefined;
  /** Set once a signal arrived: nothing new may start. */
  aborted: NodeJS.Signals | undefined;

  /** Registers an undo step; returns a function that runs it now (and drops it from the list). */
  add(name: string, run: () => Promise<void> | void): () => Promise<void> {
    const step = { name, run };
    this.steps.push(step);
    return async () => {
      const i = this.steps.indexOf(step);
      if (i < 0) return;
      this.steps.splice(i, 1);
      await step.run();
    };
  }

  /** Throws if a signal asked us to stop. */
  check(): void {
    if (this.aborted) throw new Interrupted(`interrupted by ${this.aborted}`);
  }

  /**
   * Starts a child process: refused once interrupted. A transient one (a
   * command, a fio run) is terminated (SIGTERM, then SIGKILL) before the undo
   * steps run; a daemon (`transient: false`) is left to the step that owns it,
   * so it can be unmounted first.
   */
  spawnChecked(command: string, args: readonly string[], options: SpawnOptions = {}, transient = true): ChildProcess {
    this.check();
    const child = spawn(command, args, options);
    if (!transient) return child;
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    child.once('error', () => this.children.delete(child));
    return child;
  }

  /** Whether clean-up has begun (daemons going away now is expected). */
  get started(): boolean {
    return this.running !== undefined;
  }

  /** Runs every step newest first; a failing step is reported and the others still run. */
  run(): Promise<void> {
    this.running ??= (async () => {
      await Promise.all([...this.children].map((c) => terminate(c)));
      while (this.steps.length > 0) {
        const step = this.steps.pop()!;
        try {
          await step.run();
        } catch (e) {
          console.error(`cleanup: ${step.name}: ${(e as Error).message}`);
        }
      }
    })();
    return this.running;
  }

  /** On SIGINT/SIGTERM/SIGHUP and on a crash: clean up, then exit (128 + signal number, or 1). */
  installHandlers(): void {
    const numbers: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      process.on(signal, () => {
        if (this.aborted) {
          console.error(`\n${signal} again: still cleaning up (each step gives up after a few seconds)`);
          return;
        }
        this.aborted = signal;
        console.error(`\n${signal}: stopping, unmounting and cleaning up...`);
        void this.run().finally(() => process.exit(128 + (numbers[signal] ?? 0)));
      });
    }
    const crash = (what: string) => (e: unknown) => {
      console.error(`${what}: ${(e as Error)?.stack ?? String(e)}`);
      this.aborted ??= 'SIGTERM';
      void this.run().finally(() => process.exit(1));
    };
    process.on('uncaughtException', crash('uncaught exception'));
    process.on('unhandledRejection', crash('unhandled rejection'));
  }
}

/** Whether process `pid` still exists (and is not a zombie of ours already reaped). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Waits up to `ms` for `pid` to be gone; returns whether it is. */
export async function waitGone(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (alive(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

/** Ends a process that is not our child: SIGTERM, then SIGKILL after `graceMs`. */
export async function endProcess(pid: number, graceMs = 3000): Promise<void> {
  if (!alive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  if (await waitGone(pid, graceMs)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  await waitGone(pid, 2000);
}

/** Ends a child process: SIGTERM, then SIGKILL after `graceMs`; resolves once it has exited. */
export async function terminate(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

export interface Output {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (through `cleanup`, so Ctrl-C ends it) and collects its output. */
export function run(cleanup: Cleanup, command: string, args: readonly string[], options: SpawnOptions = {}): Promise<Output> {
  return new Promise((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = cleanup.spawnChecked(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    } catch (e) {
      reject(e);
      return;
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (c: Buffer) => out.push(c));
    child.stderr?.on('data', (c: Buffer) => err.push(c));
    child.once('error', reject);
    child.once('close', (code, signal) =>
      resolve({ code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() }),
    );
  });
}

/** Like `run`, but a non-zero exit is an error carrying the command's stderr. */
export async function runOk(cleanup: Cleanup, command: string, args: readonly string[], options: SpawnOptions = {}): Promise<Output> {
  const r = await run(cleanup, command, args, options);
  cleanup.check();
  if (r.code !== 0) {
    const why = r.signal ? `killed by ${r.signal}` : `exit status ${r.code}`;
    throw new Error(`${command} ${args.join(' ')}: ${why}\n${(r.stderr || r.stdout).trim()}`);
  }
  return r;
}
