/**
 * The device-behaviour fuzzer (issue 13): the fault-injecting device (fake-virtio-fs.ts) answers
 * with good replies, and a seeded share of them is mutated (reply-mutator.ts) before the client
 * sees it. Two targets, each through the one request engine:
 * - mount: the relay on a real /dev/fuse mount, an application (a Python process) making system
 *   calls on it: stat, O_DIRECT reads, directory listings, statvfs, access;
 * - api: the client API (VirtioFsClient) from this process: getattr, lookup, read, readdirplus, statfs;
 * - pci: the same calls through the real virtio-pci transport, the device a PCI function of this
 *   process (fake-pci-function.ts) taking MSI-X, the legacy interrupt and polling in turn, which
 *   besides mutating replies sets DEVICE_NEEDS_RESET and changes its configuration.
 *
 * What is counted: replies answered, replies mutated (by kind), mutated replies the client named in
 * a log line (each line must name the opcode, a field and a mutated request's unique: a line about
 * an unmutated reply is a false alarm), mutations the client had to catch and did not, application
 * calls and their errno, hangs (a call that did not return within hangMs), crashes (a queue thread
 * or the process failing), device failures (the mutations that break the device, each followed by
 * a remount), and the process's RSS and open descriptors before and after.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { ROOT, VirtioFsClient } from '../../client/client.ts';
import { unmount as unmountPath } from '../../client/frontend/fuse-mount.ts';
import { FuseRelay } from '../../client/frontend/relay.ts';
import { Opcode, opcodeName } from '../../client/protocol/index.ts';
import type { InterruptMode } from '../../client/transport/pci/pci-function.ts';
import { VirtioPciTransport } from '../../client/transport/pci/virtio-pci.ts';
import type { VirtioTransport } from '../../client/transport/transport.ts';
import { FakePciFunction } from './fake-pci-function.ts';
import { FILE_SIZE, FakeVirtioFs, HELLO, SUB, type FaultAction, type FakeReply, type FakeRequest } from './fake-virtio-fs.ts';
import { Rng, describeMutation, mutate, uncacheable, type DeviceEvent, type Mutation } from './reply-mutator.ts';

export interface FuzzOptions {
  seed: number;
  /** Mutated replies to send. */
  replies: number;
  /** Share of the replies that are mutated; default 0.5. */
  rate?: number;
  /** A call that has not returned after this long is a hang; default 10 s. */
  hangMs?: number;
  /** The client's request timeout (a reply never sent gives EIO/ETIMEDOUT after it); default hangMs / 5. */
  requestTimeoutMs?: number;
  progress?: (line: string) => void;
}

export interface FuzzReport {
  target: 'mount' | 'api' | 'pci';
  seed: number;
  seconds: number;
  answered: number;
  mutated: number;
  byKind: Map<string, { mutated: number; named: number }>;
  /** Mutated replies a log line named (opcode and field). */
  named: number;
  /** Mutations the client had to catch and did not name: each described (seed + bytes reproduce it). */
  missed: string[];
  /** Mutations a remount overtook: the client never saw the reply (or not for its timeout's length). */
  undelivered: number;
  /** Log lines about a malformed reply that name no mutated request. */
  falseAlarms: string[];
  /** Mutated replies named by more than one line. */
  namedTwice: string[];
  calls: number;
  callErrors: Map<string, number>;
  /** pci: configuration changes made, and the client's lines about them (fewer when changes come faster than it looks). */
  configChanges: number;
  configLines: number;
  /** Timeout lines about requests the device had not answered yet (a slow device, not a miss), with what the device was last made to do. */
  slowDevice: string[];
  hangs: string[];
  crashes: string[];
  deviceFailures: number;
  remounts: number;
  rssBefore: number;
  rssAfter: number;
  fdsBefore: number;
  fdsAfter: number;
}

/** Opcodes left alone: the session's own (INIT, DESTROY) and those without a reply. */
const SPARED = new Set<number>([Opcode.INIT, Opcode.DESTROY, Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT]);
/** A log line about one bad reply: "... (unique N) ..." with a field. */
const UNIQUE_IN_LINE = /\(unique (\d+)\)/;
/** A line about a request that got no reply: "OPCODE unique N: no reply ..." */
const UNIQUE_LEADING = /^\S+ unique (\d+): no reply/;

const fds = () => readdirSync('/proc/self/fd').length;

class Ledger {
  readonly mutations = new Map<string, Mutation>();
  readonly byKind = new Map<string, { mutated: number; named: number }>();
  readonly namedBy = new Map<string, number>();
  /** When the device put each reply on the used ring (a remount may come first). */
  readonly delivered = new Map<string, number>();
  /** When each held request was held, and when each mount ended; the mounts whose device failed. */
  readonly heldAt = new Map<string, number>();
  readonly ended = new Map<number, number>();
  readonly failedGenerations = new Set<number>();
  readonly falseAlarms: string[] = [];
  answered = 0;
  mutated = 0;
  deviceFailures = 0;
  configChanges = 0;
  configLines = 0;
  readonly slowDevice: string[] = [];
  generation = 0;
  active = true;
  /** pci: makes the device do what a mutation asks besides (or instead of) its reply. */
  onEvent: ((event: DeviceEvent) => void) | undefined;

  constructor(
    private readonly rng: Rng,
    private readonly target: number,
    private readonly rate: number,
    private readonly pci: boolean,
  ) {}

  get done(): boolean {
    return this.mutated >= this.target;
  }

  /** The fault hook: uncacheable good replies, a share of them mutated. */
  readonly hook = (request: FakeRequest, reply: FakeReply): FaultAction => {
    if (request.queue === 0 || SPARED.has(request.opcode)) return;
    uncacheable(request.opcode, reply.bytes);
    this.answered++;
    if (!this.active || this.done || this.rng.next() >= this.rate) return;
    for (let tries = 0; tries < 4; tries++) {
      const m = mutate(this.rng, request, reply, this.pci);
      if (!m) continue;
      this.mutated++;
      const key = `${this.generation}:${m.unique}`;
      this.mutations.set(key, m);
      if (m.hold) this.heldAt.set(key, performance.now());
      const k = this.byKind.get(m.kind) ?? { mutated: 0, named: 0 };
      k.mutated++;
      this.byKind.set(m.kind, k);
      if (m.expect === 'fatal') this.deviceFailures++;
      if (m.event === 'config-change') this.configChanges++;
      if (m.event) this.onEvent?.(m.event);
      return m.hold ? 'hold' : m.die ? 'die' : undefined;
    }
  };

  /** The fake device's completion hook: the reply reached the used ring. */
  readonly completed = (request: FakeRequest): void => {
    const key = `${this.generation}:${request.unique}`;
    this.delivered.set(key, performance.now());
  };

  /** The current mount is being torn down (`failed`: its device failed). */
  endGeneration(failed: boolean): void {
    this.ended.set(this.generation, performance.now());
    if (failed) this.failedGenerations.add(this.generation);
  }

  /** A client log line: which mutated reply it names, if any. */
  note(line: string, generation: number): void {
    if (line.includes('configuration changed')) this.configLines++;
    if (!/malformed reply|not translatable|no reply/.test(line)) return;
    const timedOut = UNIQUE_LEADING.exec(line)?.[1];
    const unique = UNIQUE_IN_LINE.exec(line)?.[1] ?? timedOut;
    const key = unique === undefined ? undefined : `${generation}:${unique}`;
    const m = key === undefined ? undefined : this.mutations.get(key);
    // A timeout line about a request the device had not answered yet is right, whatever the reply
    // was to be: the device (on a loaded machine, the same thread) was slower than the timeout.
    // About one whose reply was already on the used ring, it is a reply the client missed.
    if (timedOut !== undefined && !m?.hold && key !== undefined && !this.delivered.has(key)) {
      this.slowDevice.push(`${line} [mount ${generation}; ${this.recent(generation)}]`);
      return;
    }
    if (!m || (timedOut !== undefined && !m.hold)) {
      this.falseAlarms.push(`${line} [mount ${generation}; ${this.recent(generation)}]`);
      return;
    }
    this.namedBy.set(key!, (this.namedBy.get(key!) ?? 0) + 1);
    if (this.namedBy.get(key!) === 1) this.byKind.get(m.kind)!.named++;
  }

  /** What this mount's device was last made to do, to tell what led to a line. */
  private recent(generation: number): string {
    const last = [...this.mutations.entries()].filter(([k]) => k.startsWith(`${generation}:`)).slice(-4);
    return `its last mutations: ${last.map(([, r]) => `${opcodeName(r.opcode)} ${r.unique} ${r.kind}`).join('; ') || 'none'}`;
  }

  report(
    target: FuzzReport['target'],
    seed: number,
    started: number,
    requestTimeoutMs: number,
    rest: Pick<FuzzReport, 'calls' | 'callErrors' | 'hangs' | 'crashes' | 'remounts' | 'rssBefore' | 'fdsBefore'>,
  ): FuzzReport {
    const missed: string[] = [];
    const namedTwice: string[] = [];
    let undelivered = 0;
    const now = performance.now();
    for (const [key, m] of this.mutations) {
      const n = this.namedBy.get(key) ?? 0;
      if (m.expect === 'must' && n === 0) {
        // Owed a line only if the client saw the reply, or (never answered) had its timeout's time.
        const generation = Number(key.slice(0, key.indexOf(':')));
        const end = this.ended.get(generation) ?? now;
        // A device failure fails everything in flight at once, replies already on the used ring too.
        const seen = m.hold
          ? end - this.heldAt.get(key)! > 2 * requestTimeoutMs
          : this.delivered.has(key) && !(this.failedGenerations.has(generation) && end - this.delivered.get(key)! < 1000);
        if (seen) missed.push(describeMutation(m));
        else undelivered++;
      }
      if (n > 1) namedTwice.push(`${describeMutation(m)}: named ${n} times`);
    }
    return {
      target,
      seed,
      seconds: (performance.now() - started) / 1000,
      answered: this.answered,
      mutated: this.mutated,
      byKind: this.byKind,
      named: [...this.namedBy.values()].filter((n) => n > 0).length,
      undelivered,
      missed,
      falseAlarms: this.falseAlarms,
      namedTwice,
      deviceFailures: this.deviceFailures,
      configChanges: this.configChanges,
      configLines: this.configLines,
      slowDevice: this.slowDevice,
      rssAfter: process.memoryUsage().rss,
      fdsAfter: fds(),
      ...rest,
    };
  }
}

/** What both targets keep while they run. */
class Run {
  readonly hangMs: number;
  readonly requestTimeoutMs: number;
  readonly rng: Rng;
  readonly ledger: Ledger;
  readonly callErrors = new Map<string, number>();
  readonly hangs: string[] = [];
  readonly crashes: string[] = [];
  calls = 0;
  remounts = 0;
  private readonly started = performance.now();
  private readonly rssBefore = process.memoryUsage().rss;
  private readonly fdsBefore = fds();

  constructor(
    readonly options: FuzzOptions,
    pci = false,
  ) {
    this.hangMs = options.hangMs ?? 10_000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? Math.max(100, this.hangMs / 5);
    this.rng = new Rng(options.seed);
    this.ledger = new Ledger(this.rng, options.replies, options.rate ?? 0.5, pci);
  }

  /** One application call ended with `result` ('ok' or an error name). */
  called(result: string): void {
    this.calls++;
    if (result !== 'ok') this.callErrors.set(result, (this.callErrors.get(result) ?? 0) + 1);
  }

  report(target: FuzzReport['target']): FuzzReport {
    const { calls, callErrors, hangs, crashes, remounts, rssBefore, fdsBefore } = this;
    return this.ledger.report(target, this.options.seed, this.started, this.requestTimeoutMs, { calls, callErrors, hangs, crashes, remounts, rssBefore, fdsBefore });
  }
}

// ---- the mount target ----------------------------------------------------------------

/** The application: system calls on the mount in a seeded loop, one line before and after each. */
const WORKLOAD = String.raw`
import mmap, os, random, sys
root, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
buf = mmap.mmap(-1, 65536)
hello, sub = os.path.join(root, 'hello.txt'), os.path.join(root, 'sub')
def read_direct():
    fd = os.open(hello, os.O_RDONLY | os.O_DIRECT)
    try:
        os.preadv(fd, [memoryview(buf)[:rng.choice([4096, 16384, 65536])]], rng.randrange(0, ${FILE_SIZE} // 4096) * 4096)
    finally:
        os.close(fd)
ops = [
    ('stat', lambda: os.stat(hello)), ('stat-root', lambda: os.stat(root)), ('stat-sub', lambda: os.lstat(sub)),
    ('read', read_direct), ('read', read_direct), ('list', lambda: os.listdir(root)), ('list-sub', lambda: os.listdir(sub)),
    ('statvfs', lambda: os.statvfs(root)), ('access', lambda: os.access(hello, os.R_OK)), ('missing', lambda: os.stat(os.path.join(root, 'nope'))),
]
out = sys.stdout
while True:
    name, op = rng.choice(ops)
    out.write('B ' + name + '\n'); out.flush()
    try:
        op(); r = 'ok'
    except OSError as e:
        r = 'E' + str(e.errno)
    out.write('R ' + name + ' ' + r + '\n'); out.flush()
`;

interface Worker {
  child: ChildProcess;
  lastLine: number;
  pending: string | undefined;
  exited: boolean;
}

/** The fuzzer on a real /dev/fuse mount: the relay over the fault-injecting device. */
export async function fuzzMount(options: FuzzOptions): Promise<FuzzReport> {
  const run = new Run(options);
  const { hangMs, rng, ledger, hangs, crashes } = run;
  const mnt = mkdtempSync(join(tmpdir(), 'vfs-fuzz-'));

  let relay: FuseRelay | undefined;
  let gone: string | undefined;
  const mount = async () => {
    ledger.generation++;
    const generation = ledger.generation;
    const fake = new FakeVirtioFs({ fault: ledger.hook, onComplete: ledger.completed });
    relay = await FuseRelay.mount({
      transport: fake,
      mountpoint: mnt,
      // A request never answered gets EIO well inside the hang bound.
      timeoutMs: run.requestTimeoutMs,
      log: (line) => {
        if (/thread failed/.test(line)) crashes.push(line);
        ledger.note(line, generation);
      },
    });
    gone = undefined;
    void relay.closed.then((reason) => {
      if (ledger.generation === generation) gone = reason;
    });
  };
  const remount = async (why: string) => {
    options.progress?.(`remount: ${why}`);
    run.remounts++;
    // The client's own teardown and mount must finish too: one that does not is a hang.
    const old = relay;
    relay = undefined;
    ledger.endGeneration(gone !== undefined && gone !== 'unmounted');
    if (old) {
      const done = await deadline(old.unmount().then(() => true, () => true), hangMs);
      if (!done) {
        hangs.push(`unmount after '${why}': not done after ${hangMs} ms (seed ${options.seed}, mutated so far ${ledger.mutated}); status ${JSON.stringify(old.status())}`);
        detach(mnt);
      }
    }
    if (!(await deadline(mount().then(() => true), hangMs))) throw new Error(`mount after '${why}' did not finish in ${hangMs} ms`);
  };

  /** With mutation paused: does the mount answer? */
  const healthy = async (): Promise<boolean> => {
    ledger.active = false;
    try {
      const check = Promise.all([stat(join(mnt, 'hello.txt')), readdir(mnt), readFile(join(mnt, 'hello.txt'))]);
      const result = await Promise.race([check.then(([s, names, data]) => s.size === FILE_SIZE && names.includes('sub') && data.length === FILE_SIZE), sleep(hangMs).then(() => false)]);
      return result;
    } catch {
      return false;
    } finally {
      ledger.active = true;
    }
  };

  const startWorker = (seed: number): Worker => {
    const child = spawn('python3', ['-c', WORKLOAD, mnt, String(seed)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const w: Worker = { child, lastLine: performance.now(), pending: undefined, exited: false };
    child.once('exit', () => (w.exited = true));
    child.stderr!.on('data', () => {});
    createInterface({ input: child.stdout! }).on('line', (line) => {
      w.lastLine = performance.now();
      if (line.startsWith('B ')) w.pending = line.slice(2);
      else if (line.startsWith('R ')) {
        w.pending = undefined;
        run.called(line.slice(line.lastIndexOf(' ') + 1));
      }
    });
    return w;
  };
  const stopWorker = async (w: Worker) => {
    if (!w.exited) {
      w.child.kill('SIGKILL');
      await Promise.race([new Promise((r) => w.child.once('exit', r)), sleep(hangMs)]);
    }
  };

  await mount();
  let worker = startWorker(rng.int(0, 0x7fffffff));
  let lastReport = performance.now();
  let lastHealth = performance.now();
  let callsAtHealth = 0;
  let answeredAtHealth = 0;
  try {
    while (!ledger.done) {
      await sleep(20);
      const now = performance.now();
      if (worker.pending !== undefined && now - worker.lastLine > hangMs) {
        hangs.push(`${worker.pending}: no answer after ${hangMs} ms (seed ${options.seed}, mutated so far ${ledger.mutated})`);
        await stopWorker(worker);
        await remount('after a hang');
        worker = startWorker(rng.int(0, 0x7fffffff));
        continue;
      }
      const deviceGone = gone !== undefined;
      if (worker.exited || deviceGone || now - lastHealth > 500) {
        lastHealth = now;
        const progressed = run.calls > callsAtHealth;
        // Calls that no longer reach the device: the kernel has marked the nodes bad (a mutated
        // reply changed a node's type, say): only a new mount helps.
        const reachesDevice = ledger.answered > answeredAtHealth;
        callsAtHealth = run.calls;
        answeredAtHealth = ledger.answered;
        // A worker still starting (or between calls) has made no call yet: that is no verdict.
        if (deviceGone || (progressed && !reachesDevice) || (progressed && !(await healthy()))) {
          await stopWorker(worker);
          await remount(deviceGone ? 'the device failed' : !reachesDevice ? 'calls no longer reach the device' : 'the mount stopped answering');
          worker = startWorker(rng.int(0, 0x7fffffff));
        } else if (worker.exited) {
          worker = startWorker(rng.int(0, 0x7fffffff));
        }
      }
      if (options.progress && now - lastReport > 5000) {
        lastReport = now;
        options.progress(`${ledger.mutated}/${options.replies} mutated, ${ledger.answered} answered, ${run.calls} calls, ${run.remounts} remounts`);
      }
    }
  } finally {
    await stopWorker(worker);
    await relay?.unmount().catch(() => undefined);
    rmSync(mnt, { recursive: true, force: true });
  }
  return run.report('mount');
}

// ---- the client API target -------------------------------------------------------------

/** Interrupt modes the pci target takes in turn, one per device generation. */
const PCI_MODES: InterruptMode[] = ['msix', 'intx', 'polling'];

/**
 * The fuzzer through the client API: calls from this process, each awaited with a deadline.
 * `pci`: the device is a PCI function driven by the real virtio-pci transport (target 'pci').
 */
export async function fuzzApi(options: FuzzOptions, pci = false): Promise<FuzzReport> {
  const run = new Run(options, pci);
  const { hangMs, rng, ledger, hangs } = run;

  let fake: FakeVirtioFs;
  let client: VirtioFsClient;
  const connect = async () => {
    ledger.generation++;
    const generation = ledger.generation;
    fake = new FakeVirtioFs({ fault: ledger.hook, onComplete: ledger.completed });
    let transport: VirtioTransport = fake;
    if (pci) {
      const fn = new FakePciFunction(fake, { interrupts: PCI_MODES[generation % PCI_MODES.length] });
      ledger.onEvent = (event) => (event === 'needs-reset' ? fn.needsReset() : fn.changeConfig({ numRequestQueues: rng.int(1, 8), tag: `tag-${rng.int(0, 999)}` }));
      transport = new VirtioPciTransport(fn);
    }
    client = await VirtioFsClient.connect({ transport, log: (line) => ledger.note(line, generation), timeoutMs: run.requestTimeoutMs });
  };
  await connect();
  const ops: [string, () => Promise<unknown>][] = [
    ['getattr', () => client.getattr(ROOT)],
    ['lookup', () => client.lookup(ROOT, 'hello.txt')],
    ['read', () => client.read(HELLO, 100n + HELLO, rng.int(0, 70) * 4096, rng.pick([4096, 65536]))],
    ['readdirplus', () => client.readdirplus(ROOT, 100n + ROOT, 0n, 4096)],
    ['statfs', () => client.statfs()],
    ['getattr-sub', () => client.getattr(SUB)],
  ];
  try {
    while (!ledger.done) {
      const [name, op] = rng.pick(ops);
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        op().then(
          () => 'ok',
          (e: NodeJS.ErrnoException) => e.code ?? 'error',
        ),
        new Promise<string>((resolve) => (timer = setTimeout(() => resolve('hang'), hangMs))),
      ]);
      clearTimeout(timer);
      if (outcome === 'hang') {
        run.calls++;
        hangs.push(`${name}: no answer after ${hangMs} ms (seed ${options.seed}, mutated so far ${ledger.mutated})`);
      } else run.called(outcome);
      // A broken device (a used ring naming a chain never given) fails every request: start anew.
      if (outcome === 'hang' || fake!.failure !== undefined || client!.session.device.failed !== undefined) {
        ledger.endGeneration(outcome !== 'hang');
        await client!.close().catch(() => undefined);
        run.remounts++;
        await connect();
      }
    }
  } finally {
    await client!.close().catch(() => undefined);
  }
  return run.report(pci ? 'pci' : 'api');
}

/** Whether `promise` settled within `ms` (a timer keeps the process alive meanwhile). */
async function deadline(promise: Promise<boolean>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const result = await Promise.race([promise, new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)))]);
  clearTimeout(timer);
  return result;
}

/** Lazily detaches whatever is mounted at `path` (after a client that did not unmount). */
function detach(path: string): void {
  try {
    unmountPath(path);
  } catch {
    // nothing mounted
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The report as a few lines, for the npm script and test logs. */
export function formatReport(r: FuzzReport): string {
  const kinds = [...r.byKind].sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => `    ${k.padEnd(28)} ${String(v.mutated).padStart(7)} mutated, ${String(v.named).padStart(7)} named`);
  const errors = [...r.callErrors].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ') || 'none';
  const mib = (n: number) => (n / 2 ** 20).toFixed(1);
  return [
    `${r.target}: seed ${r.seed}, ${r.seconds.toFixed(1)} s: ${r.answered} replies answered, ${r.mutated} mutated, ${r.named} named in a log line`,
    ...(r.target === 'pci' ? [`  configuration changes ${r.configChanges}, lines about them ${r.configLines}`] : []),
    `  calls ${r.calls} (errors: ${errors}); hangs ${r.hangs.length}; crashes ${r.crashes.length}; device failures ${r.deviceFailures}; remounts ${r.remounts}`,
    `  missed ${r.missed.length}; false alarms ${r.falseAlarms.length}; named twice ${r.namedTwice.length}; overtaken by a remount ${r.undelivered}; timeouts before the device answered ${r.slowDevice.length}`,
    `  RSS ${mib(r.rssBefore)} -> ${mib(r.rssAfter)} MiB; open descriptors ${r.fdsBefore} -> ${r.fdsAfter}`,
    ...kinds,
    ...[...r.missed, ...r.falseAlarms, ...r.namedTwice, ...r.hangs, ...r.crashes].slice(0, 20).map((l) => `  ! ${l}`),
    ...r.slowDevice.slice(0, 5).map((l) => `  ~ ${l}`),
  ].join('\n');
}
