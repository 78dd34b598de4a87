// Mount-level benchmark: the same directory reached four ways in one run, on
// the same files: the directory itself (baseline), libfuse's C passthrough_ll
// (a plain FUSE daemon on /dev/fuse), and our mount with each frontend
// (`virtiofs-client mount --frontend relay|fuse-native`, each over its own
// QEMU virtiofsd on vhost-user, since a virtiofsd serves one connection; same
// options), and the relay over Debian trixie's Rust virtiofsd (relay-rust). fio runs the I/O workloads, a timed loop in this process the
// metadata one. Prints one table with each figure and the ratios
// <frontend>/passthrough_ll and <first frontend>/dir; then, from the same runs,
// the CPU time per operation of each process serving a mount (our client, its
// virtiofsd, passthrough_ll: /proc/<pid>/stat around each timed run) and fio's
// mean completion latency of one 4 KiB random read on every mount.
// Run: npm run bench:mount [-- --seconds 5 --size 512 --dir /var/tmp --frontends relay,fuse-native]
import type { PhaseSummary } from '../client/frontend/op-stats.ts';
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { availableParallelism, loadavg, release, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Virtiofsd } from '../client/backends/virtiofsd.ts';
import { Cleanup, runOk } from './lib/cleanup.ts';
import { CLOCK_TICKS, cpuTicks, usPerOp } from './lib/cpu.ts';
import { runFio, type FioJob } from './lib/fio.ts';
import { mountOurs, type OurMount } from './lib/our-mount.ts';
import { buildPassthroughLl, libfuseVersion, mountPassthroughLl } from './lib/passthrough-ll.ts';
import { rustVirtiofsd } from '../scripts/rust-virtiofsd/launch.ts';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    size: { type: 'string', default: '512' },
    dir: { type: 'string', default: tmpdir() },
    /** Only the workloads whose name contains this. */
    only: { type: 'string' },
    /** Which of our frontends to mount, comma-separated. */
    frontends: { type: 'string', default: 'relay,fuse-native,relay-rust' },
    help: { type: 'boolean', short: 'h' },
  },
});
/** Our mounts: each frontend over QEMU 7.2's C virtiofsd, and the relay over Debian trixie's Rust virtiofsd. */
const FRONTENDS = ['relay', 'fuse-native', 'relay-rust'] as const;
type Frontend = (typeof FRONTENDS)[number];
const isFrontend = (f: string): f is Frontend => (FRONTENDS as readonly string[]).includes(f);
const seconds = Number(values.seconds);
const sizeMiB = Number(values.size);
const frontendNames = [...new Set(values.frontends.split(',').map((f) => f.trim()).filter(Boolean))];
const usage =
  'usage: bench/mount.ts [--seconds <s>] [--size <MiB, a multiple of 4>] [--dir <parent of the work directory>]\n' +
  `                      [--only <workload name part>] [--frontends <${FRONTENDS.join(',')}> (default all)]\n` +
  '(quickest: --seconds 1 --size 8, and --only <workload>)';
if (values.help) {
  console.log(usage);
  process.exit(0);
}
if (
  !(seconds > 0) ||
  !Number.isInteger(sizeMiB) ||
  sizeMiB < 8 ||
  sizeMiB % 4 !== 0 ||
  frontendNames.length === 0 ||
  !frontendNames.every(isFrontend)
) {
  console.error(usage);
  process.exit(2);
}
/** Our frontends to measure, in the order given. */
const frontends = frontendNames as Frontend[];
const MiB = 1 << 20;
const CACHE_DIR = fileURLToPath(new URL('../node_modules/.cache/virtiofs-bench/', import.meta.url));
/** Files per batch of the metadata loop (create all, stat all, unlink all). */
const META_BATCH = 200;
const META_FILE = 4096;

type TargetName = 'dir' | 'passthrough_ll' | Frontend;
const TARGETS: TargetName[] = ['dir', 'passthrough_ll', ...frontends];
/** What each frontend's `status` counts: the relay carries FUSE opcodes, fuse-native serves libfuse callbacks. */
const COUNTED: Record<Frontend, string> = { relay: 'FUSE requests', 'fuse-native': 'libfuse callbacks', 'relay-rust': 'FUSE requests' };

/**
 * Runs the timed part of a measurement (a fio run, the metadata loop without its warm-up): the CPU
 * time of the processes serving the mount is sampled right before and after it.
 */
type Timed = <T>(run: () => Promise<T>) => Promise<T>;

interface Workload {
  name: string;
  unit: 'MiB/s' | 'ops/s' | 'files/s';
  /** What `ios` counts: one operation of the CPU-per-operation figures. */
  per: string;
  /** Measures one target whose view of the shared directory is `root`. */
  measure(target: TargetName, root: string, timed: Timed): Promise<{ value: number; ios?: number; clatUs?: number }>;
}

/** The processes serving a mount, by role: passthrough_ll's daemon, or our client and its virtiofsd. */
type Role = 'passthrough_ll' | 'client' | 'virtiofsd';

/** A figure taken. */
interface Measured {
  value: number;
  ios?: number;
  /** fio's mean completion latency, us. */
  clatUs?: number;
  requests?: Map<string, number>;
  /** The relay's client-side phases of the requests of this run (mean us). */
  phases?: PhaseSummary;
  /** CPU clock ticks each serving process used during the timed part. */
  cpu?: Map<Role, number>;
  /** Wall-clock seconds of the timed part. */
  timedSeconds?: number;
}

type Cell = Measured | { error: string; mountLog?: string };

/** One of our mounts with the virtiofsd behind it (its own: a virtiofsd serves one connection). */
interface Ours {
  mount: OurMount;
  daemon: Virtiofsd;
  /** Set if the virtiofsd exited before clean-up began. */
  daemonDied?: string;
}

/** The phases of the requests made between two status samples (the status gives cumulative means). */
function phasesBetween(a: PhaseSummary | undefined, b: PhaseSummary | undefined): PhaseSummary | undefined {
  if (!b) return undefined;
  const n0 = a?.requests ?? 0;
  const n = b.requests - n0;
  if (n <= 0) return undefined;
  const mean = (k: 'prepareUs' | 'deviceUs' | 'replyUs') => (b[k] * b.requests - (a ? a[k] * n0 : 0)) / n;
  return { requests: n, prepareUs: mean('prepareUs'), deviceUs: mean('deviceUs'), replyUs: mean('replyUs') };
}

const cleanup = new Cleanup();
cleanup.installHandlers();

function sh(command: string, args: string[]): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch (e) {
    return `(${command}: ${(e as Error).message.split('\n')[0]})`;
  }
}

/** Flushes dirty pages of every filesystem (outside any timing). */
async function sync(): Promise<void> {
  await runOk(cleanup, 'sync', []);
}

/** Reads a file through the directory itself, so the host page cache holds all of it. */
function warm(path: string): void {
  const fd = openSync(path, 'r');
  const buffer = Buffer.allocUnsafe(MiB);
  try {
    while (readSync(fd, buffer, 0, MiB, null) > 0);
  } finally {
    closeSync(fd);
  }
}

/** Writes `bytes` of incompressible data to `path` (laid out once, before any mount reads it). */
function layOut(path: string, bytes: number): void {
  const chunk = randomFillSync(Buffer.allocUnsafe(16 * MiB));
  const fd = openSync(path, 'w');
  try {
    for (let at = 0; at < bytes; at += chunk.length) {
      chunk.writeUInt32LE(at / chunk.length, 0); // no two chunks alike
      writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - at), at);
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * create (O_CREAT|O_EXCL) + write 4 KiB + close, then stat, then unlink, in
 * batches of META_BATCH fresh names, for `seconds`; returns files per second and files.
 * Synchronous fs calls from this process, the same for every target.
 */
async function metadataLoop(dir: string, timed: Timed): Promise<{ value: number; ios: number }> {
  const payload = Buffer.alloc(META_FILE, 0x61);
  const batch = (tag: string) => {
    const names = Array.from({ length: META_BATCH }, (_, i) => join(dir, `${tag}-${i}`));
    for (const n of names) {
      const fd = openSync(n, 'wx', 0o644);
      writeSync(fd, payload);
      closeSync(fd);
    }
    for (const n of names) statSync(n);
    for (const n of names) unlinkSync(n);
  };
  batch('warmup');
  return timed(async () => {
    let files = 0;
    const start = performance.now();
    const end = start + seconds * 1000;
    for (let b = 0; performance.now() < end; b++) {
      cleanup.check();
      batch(`b${b}`);
      files += META_BATCH;
      await new Promise((r) => setImmediate(r)); // let a Ctrl-C in
    }
    return { value: files / ((performance.now() - start) / 1000), ios: files };
  });
}

function fmt(n: number): string {
  return n.toLocaleString('en-US', { maximumFractionDigits: n >= 100 ? 0 : 1 });
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench:mount mounts filesystems: run it as root');
  for (const tool of ['fio', 'gcc', 'pkg-config']) {
    if (sh('sh', ['-c', `command -v ${tool} || true`]) === '') throw new Error(`${tool} is missing: run bash scripts/setup.sh --for-bench`);
  }

  // --- set-up (every step registers its undo with `cleanup`) ---------------------------------------
  const passthroughLl = await buildPassthroughLl(cleanup, CACHE_DIR);
  const work = mkdtempSync(join(resolve(values.dir), 'virtiofs-bench-mount-'));
  cleanup.add(`remove ${work}`, () => {
    const stillMounted = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .some((line) => line.split(' ')[4]?.startsWith(work));
    if (stillMounted) throw new Error(`something is still mounted under ${work}: not removing it (see /proc/self/mountinfo)`);
    rmSync(work, { recursive: true, force: true });
  });
  const data = join(work, 'data');
  const roots = Object.fromEntries(
    TARGETS.map((t) => [t, t === 'dir' ? data : join(work, `mnt-${t}`)] as const),
  ) as Record<TargetName, string>;
  for (const d of [...TARGETS.map((t) => roots[t]), ...TARGETS.map((t) => join(data, `meta-${t}`))]) mkdirSync(d, { recursive: true });
  const size = sizeMiB * MiB;
  console.error(`laying out ${sizeMiB} MiB read.dat and write.dat in ${data}...`);
  layOut(join(data, 'read.dat'), size);
  layOut(join(data, 'write.dat'), size);
  await sync();

  const ptll = await mountPassthroughLl(cleanup, passthroughLl, data, roots.passthrough_ll, ['cache=auto', 'default_permissions']);
  // Each frontend gets its own virtiofsd (same options); its unmount is registered after the daemon's
  // stop, so clean-up (newest first) unmounts before the device goes away.
  const ours = new Map<Frontend, Ours>();
  for (const f of frontends) {
    const daemon = await Virtiofsd.start({ sharedDir: data, cache: 'auto', ...(f === 'relay-rust' ? await rustVirtiofsd() : {}) });
    cleanup.add(`virtiofsd for ${f}`, () => daemon.stop());
    const entry: Partial<Ours> & { daemon: Virtiofsd } = { daemon };
    void daemon.exited.then(({ code, signal }) => {
      if (cleanup.started) return;
      entry.daemonDied = `virtiofsd of ${f} (pid ${daemon.pid}) exited during the run: ${signal ? `signal ${signal}` : `status ${code}`}\n${daemon.recentOutput()}`;
      console.error(entry.daemonDied);
    });
    entry.mount = await mountOurs(cleanup, daemon.socketPath, roots[f], ['--frontend', f === 'relay-rust' ? 'relay' : f]);
    ours.set(f, entry as Ours);
  }
  for (const t of TARGETS) statSync(join(roots[t], 'read.dat')); // each mount answers
  /** The processes whose CPU time is sampled around each timed run on `t` (none for the directory). */
  const servers = (t: TargetName): [Role, number | undefined][] => {
    if (t === 'dir') return [];
    if (t === 'passthrough_ll') return [['passthrough_ll', ptll.pid]];
    const o = ours.get(t)!;
    return [
      ['client', o.mount.relayPid],
      ['virtiofsd', o.daemon.pid],
    ];
  };

  const env = [
    `kernel ${release()}`,
    `${sh(process.env.VIRTIOFSD ?? '/usr/lib/qemu/virtiofsd', ['--version']).split('\n')[0]}, -o cache=auto, sandbox=chroot (one per frontend)`,
    ...(frontends.includes('relay-rust') ? [`relay-rust: Debian trixie's Rust virtiofsd (scripts/rust-virtiofsd), --cache=auto --sandbox=chroot`] : []),
    `passthrough_ll (libfuse ${await libfuseVersion(cleanup)}) -o cache=auto, multi-threaded`,
    sh('fio', ['--version']),
    `${availableParallelism()} CPUs`,
    `directory on ${sh('findmnt', ['-n', '-o', 'FSTYPE,SOURCE', '-T', data]).replace(/\s+/, ' ')}`,
  ];

  // --- workloads ------------------------------------------------------------------------------------
  // Reads: read.dat sits in the host page cache (read through the directory before each run, never
  // dropped): every target reads the same cached data, and the figure is the cost of the path to it.
  // On the mounts the FUSE-side page cache is what would hide that path: fio's invalidate=1 drops
  // it (fadvise DONTNEED) at the start and each time a job wraps around the file, so every block of a
  // pass crosses FUSE. On the directory itself that would drop the backing pages (disk reads), so the
  // baseline keeps invalidate=0: a page-cache copy.
  const fio = (job: Omit<FioJob, 'filename' | 'seconds' | 'invalidate'>, file: string, invalidateOnMounts: boolean) =>
    async (target: TargetName, root: string, timed: Timed) => {
      const r = await timed(() =>
        runFio(cleanup, { ...job, filename: join(root, file), seconds, invalidate: invalidateOnMounts && target !== 'dir' }),
      );
      return { value: job.bs === '4k' ? r.iops : r.bytesPerSecond / MiB, ios: r.ios, clatUs: r.clatMeanUs };
    };
  const reading = (job: Omit<FioJob, 'filename' | 'seconds' | 'invalidate'>) => {
    const measure = fio(job, 'read.dat', true);
    return async (target: TargetName, root: string, timed: Timed) => {
      warm(join(data, 'read.dat'));
      return measure(target, root, timed);
    };
  };
  // Writes: buffered, overwriting write.dat in place (laid out beforehand) for the whole run, with
  // invalidate=0 everywhere. What reaches the directory lands in the host page cache as dirty pages
  // (at most the file's size, under the kernel's dirty thresholds), so this measures the write path,
  // not the disk; `sync` flushes them before and after each run, outside the timing.
  const writing = (job: Omit<FioJob, 'filename' | 'seconds' | 'invalidate'>) => {
    const measure = fio(job, 'write.dat', false);
    return async (target: TargetName, root: string, timed: Timed) => {
      await sync();
      try {
        return await measure(target, root, timed);
      } finally {
        await sync();
      }
    };
  };
  const quarter = `${sizeMiB / 4}M`;
  /** The workload whose fio completion latency is shown per mount. */
  const LATENCY_WORKLOAD = 'rand read 4 KiB, 1 job';
  const workloads: Workload[] = [
    { name: 'seq read 1 MiB', unit: 'MiB/s', per: '1 MiB read', measure: reading({ rw: 'read', bs: '1M', size: `${sizeMiB}M` }) },
    { name: 'seq write 1 MiB', unit: 'MiB/s', per: '1 MiB write', measure: writing({ rw: 'write', bs: '1M', size: `${sizeMiB}M` }) },
    { name: LATENCY_WORKLOAD, unit: 'ops/s', per: '4 KiB read', measure: reading({ rw: 'randread', bs: '4k', size: `${sizeMiB}M` }) },
    {
      name: 'rand read 4 KiB, 4 jobs',
      unit: 'ops/s',
      per: '4 KiB read',
      measure: reading({ rw: 'randread', bs: '4k', size: quarter, numjobs: 4, offsetIncrement: quarter }),
    },
    {
      name: 'create+stat+unlink 4 KiB',
      unit: 'files/s',
      per: 'file',
      measure: async (target, root, timed) => {
        await sync();
        return metadataLoop(join(root, `meta-${target}`), timed);
      },
    },
  ];

  const loadAtStart = loadavg();
  const chosen = workloads.filter((w) => values.only === undefined || w.name.includes(values.only));
  if (chosen.length === 0) throw new Error(`no workload name contains '${values.only}': ${workloads.map((w) => w.name).join(', ')}`);
  const results = new Map<string, Cell>();
  for (const w of chosen) {
    for (const t of TARGETS) {
      cleanup.check();
      process.stderr.write(`${w.name.padEnd(26)} ${t.padEnd(15)} `);
      const mine = isFrontend(t) ? ours.get(t) : undefined;
      const before = await mine?.mount.counts();
      const phasesBefore = await mine?.mount.phases();
      const roles = servers(t);
      const cpu = new Map<Role, number>();
      let timedSeconds = 0;
      const timed: Timed = async (run) => {
        const pids = roles.map(([, pid]) => pid);
        const ticksBefore = cpuTicks(pids);
        const start = performance.now();
        const result = await run();
        timedSeconds += (performance.now() - start) / 1000;
        const ticksAfter = cpuTicks(pids);
        roles.forEach(([role], i) => {
          const [a, b] = [ticksAfter[i], ticksBefore[i]];
          if (a !== undefined && b !== undefined) cpu.set(role, (cpu.get(role) ?? 0) + a - b);
        });
        return result;
      };
      let cell: Cell;
      try {
        const { value, ios, clatUs } = await w.measure(t, roots[t], timed);
        cell = { value, ios, clatUs, ...(roles.length ? { cpu, timedSeconds } : {}) };
        if (mine && before) {
          const after = await mine.mount.counts();
          cell.requests = new Map([...after].map(([op, n]) => [op, n - (before.get(op) ?? 0)] as const).filter(([, n]) => n > 0));
          cell.phases = phasesBetween(phasesBefore, await mine.mount.phases());
        }
        process.stderr.write(`${fmt(value)} ${w.unit}\n`);
      } catch (e) {
        cleanup.check();
        const message = (e as Error).message.trim();
        cell = { error: message.split('\n').slice(-1)[0]! };
        process.stderr.write(`ERROR\n${message}\n`);
        if (mine) {
          cell.mountLog = mine.mount.logTail() + (mine.daemonDied ? `\n${mine.daemonDied}` : '');
          process.stderr.write(`${t} mount log (${mine.mount.log}), last lines:\n${cell.mountLog}\n`);
        }
      }
      results.set(`${w.name}/${t}`, cell);
    }
  }

  // --- report ---------------------------------------------------------------------------------------
  const show = (c: Cell | undefined) => (c === undefined ? '-' : 'error' in c ? 'ERROR' : fmt(c.value));
  const ratio = (a: Cell | undefined, b: Cell | undefined) =>
    a && b && 'value' in a && 'value' in b && b.value > 0 ? (a.value / b.value).toFixed(3) : '-';
  // A column per target, then each frontend against passthrough_ll, then the first frontend against dir.
  const ratios: [TargetName, TargetName, string][] = [
    ...frontends.map((f) => [f, 'passthrough_ll', `${f}/pt_ll`] as [TargetName, TargetName, string]),
    [frontends[0]!, 'dir', `${frontends[0]}/dir`],
  ];
  const header = ['workload', 'unit', ...TARGETS, ...ratios.map(([, , name]) => name)];
  const rows = chosen.map((w) => {
    const cell = (t: TargetName) => results.get(`${w.name}/${t}`);
    return [w.name, w.unit, ...TARGETS.map((t) => show(cell(t))), ...ratios.map(([a, b]) => ratio(cell(a), cell(b)))];
  });
  /** Prints a table as the main one: `left` left-aligned columns (workload, unit), then right-aligned figures. */
  const printTable = (head: string[], body: string[][], left = 2) => {
    const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
    const line = (cells: string[]) => cells.map((c, i) => (i < left ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
    console.log(line(head));
    console.log(line(widths.map((w) => '-'.repeat(w))));
    for (const r of body) console.log(line(r));
  };

  // CPU per operation: a row per workload and mount of ours, with passthrough_ll's figures (same workload) beside it.
  /** Below this many clock ticks (a tick's rounding each side) a CPU figure is marked as coarse. */
  const FEW_TICKS = 20;
  let coarse = false;
  /** CPU ticks `roles` used together during the timed part of `c`, if all were sampled. */
  const ticksOf = (c: Cell | undefined, roles: Role[]) =>
    c === undefined || 'error' in c || !c.cpu || roles.some((r) => !c.cpu!.has(r))
      ? undefined
      : roles.reduce((sum, r) => sum + c.cpu!.get(r)!, 0);
  const cpuFigure = (c: Cell | undefined, roles: Role[], figure: (ticks: number, c: Measured) => number | undefined) => {
    const ticks = ticksOf(c, roles);
    const value = ticks === undefined ? undefined : figure(ticks, c as Measured);
    if (value === undefined) return { shown: c && 'error' in c ? 'ERROR' : '-' };
    if (ticks! < FEW_TICKS) coarse = true;
    return { value, shown: `${fmt(value)}${ticks! < FEW_TICKS ? '*' : ''}` };
  };
  const perOp = (ticks: number, c: Measured) => (c.ios ? usPerOp(ticks, c.ios) : undefined);
  const busy = (ticks: number, c: Measured) => (c.timedSeconds ? (ticks / CLOCK_TICKS / c.timedSeconds) * 100 : undefined);
  const cpuHeader = [
    'workload',
    'mount',
    'per',
    'client us/op',
    'virtiofsd us/op',
    'total us/op',
    'passthrough_ll us/op',
    'total/pt_ll',
    'client %CPU',
    'virtiofsd %CPU',
    'passthrough_ll %CPU',
  ];
  const cpuTable = chosen.flatMap((w) => {
    const ptllCell = results.get(`${w.name}/passthrough_ll`);
    const ptll = cpuFigure(ptllCell, ['passthrough_ll'], perOp);
    return frontends.map((f) => {
      const c = results.get(`${w.name}/${f}`);
      const total = cpuFigure(c, ['client', 'virtiofsd'], perOp);
      return [
        w.name,
        f,
        w.per,
        cpuFigure(c, ['client'], perOp).shown,
        cpuFigure(c, ['virtiofsd'], perOp).shown,
        total.shown,
        ptll.shown,
        total.value !== undefined && ptll.value ? (total.value / ptll.value).toFixed(2) : '-',
        cpuFigure(c, ['client'], busy).shown,
        cpuFigure(c, ['virtiofsd'], busy).shown,
        cpuFigure(ptllCell, ['passthrough_ll'], busy).shown,
      ];
    });
  });

  console.log(`virtiofs-client mount benchmark: ${seconds} s per figure, one run, same files (${sizeMiB} MiB each)`);
  const load = (l: number[]) => l.map((x) => x.toFixed(2)).join(' ');
  console.log(`environment: ${env.join('; ')}`);
  console.log(`load average (1/5/15 min) at the start ${load(loadAtStart)}, at the end ${load(loadavg())}`);
  if (loadAtStart[0]! > 0.5) {
    console.log('NOTE: other work was running on this machine when the run started (the end figure includes our own');
    console.log('      load): the FUSE figures, three processes sharing the CPUs per request, suffer most from that.');
  }
  for (const [f, { mount }] of ours) {
    const lines = mount.negotiation.filter((l) => /^(FUSE|max_write|frontend)/.test(l)).map((l) => l.split(';')[0]!.replace(/\s+/g, ' '));
    console.log(`${f}: ${lines.join('; ')}`);
  }
  console.log('');
  printTable(header, rows);
  console.log('');
  console.log('How each figure was taken:');
  console.log('- dir = the directory itself; passthrough_ll = libfuse\'s example daemon on /dev/fuse (-o cache=auto,');
  console.log('  default_permissions); relay / fuse-native = virtiofs-client mount --frontend <it> -> vhost-user ->');
  console.log('  virtiofsd (-o cache=auto), a virtiofsd each (it serves one connection).');
  console.log('- fio: --ioengine=psync --direct=0 --time_based --runtime=' + seconds + '. Buffered I/O throughout (libaio would');
  console.log('  be synchronous on buffered files too); "4 jobs" = numjobs=4, each on its own quarter of the file.');
  console.log('- reads: read.dat is in the HOST page cache (re-read through dir before each run, never dropped);');
  console.log('  on the mounts fio invalidate=1 drops the FUSE-side page cache at start and at every wrap, so each');
  console.log('  block of a pass crosses FUSE; on dir invalidate=0 (else it would read the disk): a page-cache copy.');
  console.log('  Random reads get fadvise RANDOM (fio default: no readahead) and a random map (each block once a pass).');
  console.log('- seq write: overwrites write.dat in place, invalidate=0; the data lands in the host page cache as dirty');
  console.log('  pages (no fsync in the figure); `sync` runs before and after each run, outside the timing.');
  console.log(`- create+stat+unlink: this Node process, synchronous fs calls, batches of ${META_BATCH} fresh names: open(O_CREAT|O_EXCL),`);
  console.log(`  write ${META_FILE} bytes, close; stat each; unlink each. One figure = files/s through all three steps.`);
  console.log('  All mounts use default_permissions (ours always, as Linux\'s virtio_fs driver does; passthrough_ll is');
  console.log('  given -o default_permissions to match): the kernel checks permissions from cached attributes and asks');
  console.log('  for them again (GETATTR) once a create, write or unlink invalidated them; see the counts below.');

  console.log('');
  console.log('CPU time per operation of each process serving a mount, same runs: client = our virtiofs-client process,');
  console.log('virtiofsd = the device behind it, total = both, beside passthrough_ll (one process doing both) on the same');
  console.log('workload; %CPU = that CPU time over the timed run\'s wall-clock time (100 = one CPU busy throughout):');
  printTable(cpuHeader, cpuTable, 3);
  console.log(`- utime+stime from /proc/<pid>/stat (every thread of the process) plus that of its children, sampled`);
  console.log('  right before and after the fio run (fio\'s start-up included) or the metadata loop (its warm-up batch');
  console.log('  excluded), divided by the I/Os fio completed (total_ios) or the files made. That is the CPU of the');
  console.log('  process, system calls included (its /dev/fuse reads and writes, eventfd kicks, virtiofsd\'s file I/O),');
  console.log('  not the kernel work done in fio\'s own system calls (the FUSE request queueing and page copies).');
  console.log(`  The kernel counts it in clock ticks (${(1000 / CLOCK_TICKS).toFixed(0)} ms each, CLK_TCK ${CLOCK_TICKS}): a figure is good to about`);
  console.log('  two ticks over the run' + (coarse ? `; * = under ${FEW_TICKS} ticks in all, coarse (run longer with --seconds).` : '.'));

  const latencyCells = TARGETS.map((t) => results.get(`${LATENCY_WORKLOAD}/${t}`));
  if (latencyCells.some((c) => c !== undefined)) {
    const clat = (c: Cell | undefined) => (c && 'value' in c ? c.clatUs : undefined);
    const ptllClat = clat(results.get(`${LATENCY_WORKLOAD}/passthrough_ll`));
    const shown = (c: Cell | undefined, us: number | undefined) => (us !== undefined ? fmt(us) : c && 'error' in c ? 'ERROR' : '-');
    console.log('');
    console.log(`fio mean completion latency (clat mean) of one read, ${LATENCY_WORKLOAD}, same runs; then the extra latency`);
    console.log('per request vs passthrough_ll (<mount> - pt_ll):');
    printTable(
      ['workload', 'unit', ...TARGETS, ...frontends.map((f) => `${f} - pt_ll`)],
      [
        [
          LATENCY_WORKLOAD,
          'us',
          ...latencyCells.map((c) => shown(c, clat(c))),
          ...frontends.map((f) => {
            const c = results.get(`${LATENCY_WORKLOAD}/${f}`);
            const mine = clat(c);
            return shown(c, mine !== undefined && ptllClat !== undefined ? mine - ptllClat : undefined);
          }),
        ],
      ],
    );
    console.log('- psync: fio times each pread() whole (no separate submission latency), so this is the system call as the');
    console.log('  application sees it: kernel FUSE, the daemon(s), the host page cache copy. The difference to pt_ll is');
    console.log('  what our path (client process + vhost-user + virtiofsd) adds to one request over libfuse on /dev/fuse;');
    console.log('  the split inside it follows for the relays.');
    const relays = frontends.filter((f) => f !== 'fuse-native');
    const rows = chosen.flatMap((w) =>
      relays.flatMap((f) => {
        const c = results.get(`${w.name}/${f}`);
        if (!c || 'error' in c || !c.phases) return [];
        const p = c.phases;
        const inside = p.prepareUs + p.deviceUs + p.replyUs;
        return [[w.name, f, fmt(p.prepareUs), fmt(p.deviceUs), fmt(p.replyUs), fmt(inside), c.clatUs !== undefined && w.per === '4 KiB read' && w.name === LATENCY_WORKLOAD ? fmt(c.clatUs - inside) : '-']];
      }),
    );
    if (rows.length) {
      console.log('');
      console.log('Where one relayed request\'s time goes, mean us per request of each run (the relay\'s own clock, from status):');
      printTable(['workload', 'mount', 'prepare', 'device', 'reply', 'in client', 'clat - in client'], rows);
      console.log('- prepare: read off /dev/fuse -> on the virtqueue; device: -> its used entry seen (kick, the device\'s');
      console.log('  service, its notification, our wake-up); reply: -> written to /dev/fuse. clat - in client (1-job reads');
      console.log('  only): the kernel\'s side, FUSE queueing and the wake-ups of the relay thread and of fio.');
    }
  }

  for (const f of frontends) {
    console.log('');
    console.log(`${COUNTED[f]} ${f} handled during each run (from virtiofs-client status), per fio I/O or per file:`);
    for (const w of chosen) {
      const c = results.get(`${w.name}/${f}`);
      if (!c || 'error' in c || !c.requests || c.requests.size === 0) continue;
      const top = [...c.requests].sort((a, b) => b[1] - a[1]).slice(0, 7);
      const what = w.unit === 'files/s' ? 'files (+ a warm-up batch)' : 'fio I/Os';
      // The metadata figure's counts include its warm-up batch: divide by all the files made.
      const units = (c.ios ?? 0) + (w.unit === 'files/s' ? META_BATCH : 0);
      const each = units ? `; ${(top[0]![1] / units).toFixed(2)} ${top[0]![0]} each` : '';
      console.log(`  ${w.name.padEnd(26)} ${top.map(([op, n]) => `${op} ${fmt(n)}`).join(', ')}  (${fmt(c.ios ?? 0)} ${what}${each})`);
    }
  }
  const errors = [...results].filter((e): e is [string, { error: string; mountLog?: string }] => 'error' in e[1]);
  if (errors.length) {
    console.log('');
    for (const [key, c] of errors) {
      console.log(`ERROR ${key}: ${c.error}`);
      if (c.mountLog) console.log(`  mount log, last lines:\n${c.mountLog.replace(/^/gm, '    ')}`);
    }
    process.exitCode = 1;
  }
}

try {
  await main();
} catch (e) {
  if (!cleanup.aborted) {
    console.error(`bench:mount: ${(e as Error).message}`);
    process.exitCode = 1;
  }
} finally {
  await cleanup.run();
}
