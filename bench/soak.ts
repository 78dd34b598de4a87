// A long run: millions of mixed requests through one relay mount over QEMU's C virtiofsd (-o xattr,
// posix_lock), from 4 processes: create+write+stat+unlink, 4 KiB O_DIRECT reads, 1 MiB writes and
// reads, listings of a 2,000-entry directory, xattr set/get/list/remove, POSIX lock/unlock. The relay
// runs in this process; every few seconds it prints the requests so far, this process's RSS and
// JS heap, its open descriptors and threads, and the requests in flight (every slot must come back).
// At the end: growth of each from the first sample after warm-up (10 % of the requests) to the last.
// Never a timed test. Run: npm run bench:soak [-- --requests 2000000 --processes 4]
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Virtiofsd } from '../client/backends/virtiofsd.ts';
import { FuseRelay } from '../client/frontend/relay.ts';
import { Cleanup } from './lib/cleanup.ts';

const { values } = parseArgs({ options: { requests: { type: 'string', default: '2000000' }, processes: { type: 'string', default: '4' }, every: { type: 'string', default: '5' } } });
const target = Number(values.requests);
const processes = Number(values.processes);
const everyS = Number(values.every);
const cleanup = new Cleanup();
cleanup.installHandlers();

const WORKLOAD = String.raw`
import fcntl, os, random, struct, sys
root, me = sys.argv[1], int(sys.argv[2])
rng = random.Random(me)
buf = bytearray(1 << 20)
import mmap
aligned = mmap.mmap(-1, 4096)
big = os.path.join(root, 'big.dat')
def meta():
    p = os.path.join(root, 'meta', '%d-%d' % (me, rng.randrange(1 << 30)))
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644); os.write(fd, buf[:4096]); os.close(fd)
    os.stat(p); os.unlink(p)
def small_read():
    fd = os.open(big, os.O_RDONLY | os.O_DIRECT)
    try: os.preadv(fd, [aligned], rng.randrange(0, 64 * 256) * 4096)
    finally: os.close(fd)
def large_write():
    fd = os.open(big, os.O_WRONLY)
    try: os.pwrite(fd, buf, rng.randrange(0, 64) << 20)
    finally: os.close(fd)
def large_read():
    fd = os.open(big, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.pread(fd, 1 << 20, rng.randrange(0, 64) << 20)
    finally: os.close(fd)
def listing():
    os.listdir(os.path.join(root, 'many'))
def xattrs():
    p = os.path.join(root, 'x-%d' % me)
    os.setxattr(p, 'user.k', b'v' * rng.randrange(1, 200)); os.getxattr(p, 'user.k'); os.listxattr(p); os.removexattr(p, 'user.k')
def lock():
    fd = os.open(os.path.join(root, 'lock-%d' % me), os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0))
        fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack('hhqqi', fcntl.F_UNLCK, 0, 0, 0, 0))
    finally: os.close(fd)
ops = [meta, meta, small_read, small_read, small_read, large_write, large_read, listing, xattrs, lock]
errors = 0
while True:
    try: rng.choice(ops)()
    except OSError as e:
        errors += 1
        if errors < 5: print('error', e, flush=True)
`;

interface Sample {
  seconds: number;
  requests: number;
  rssMiB: number;
  heapMiB: number;
  fds: number;
  threads: number;
  inFlight: number;
}

function sample(relay: FuseRelay, started: number): Sample {
  const status = relay.status();
  const threads = Number(/Threads:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]);
  const m = process.memoryUsage();
  return {
    seconds: (performance.now() - started) / 1000,
    requests: status.operations.reduce((n, o) => n + o.count, 0),
    rssMiB: m.rss / 2 ** 20,
    heapMiB: m.heapUsed / 2 ** 20,
    fds: readdirSync('/proc/self/fd').length,
    threads,
    inFlight: status.inFlight,
  };
}

const row = (s: Sample) =>
  `${s.seconds.toFixed(0).padStart(6)} s  ${s.requests.toLocaleString('en-US').padStart(11)} requests  RSS ${s.rssMiB.toFixed(1).padStart(6)} MiB  heap ${s.heapMiB.toFixed(1).padStart(5)} MiB  fds ${String(s.fds).padStart(3)}  threads ${String(s.threads).padStart(2)}  in flight ${s.inFlight}`;

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench:soak mounts a filesystem: run it as root');
  const work = mkdtempSync(join(tmpdir(), 'vfs-soak-'));
  cleanup.add('work directory', () => rmSync(work, { recursive: true, force: true }));
  const shared = join(work, 'shared');
  const mnt = join(work, 'mnt');
  mkdirSync(shared);
  mkdirSync(mnt);
  mkdirSync(join(shared, 'meta'));
  mkdirSync(join(shared, 'many'));
  for (let i = 0; i < 2000; i++) writeFileSync(join(shared, 'many', `entry-with-a-longer-name-${i}`), '');
  writeFileSync(join(shared, 'big.dat'), Buffer.alloc(64 << 20, 0x5a));
  for (let p = 0; p < processes; p++) {
    writeFileSync(join(shared, `x-${p}`), '');
    writeFileSync(join(shared, `lock-${p}`), '');
  }
  const daemon = await Virtiofsd.start({ sharedDir: shared, cache: 'auto', xattr: true, posixLock: true });
  cleanup.add('virtiofsd', () => daemon.stop());
  const log: string[] = [];
  const relay = await FuseRelay.mount({ transport: `vhost-user:${daemon.socketPath}`, mountpoint: mnt, log: (l) => log.push(l) });
  cleanup.add('the mount', () => relay.unmount());
  const workers: ChildProcess[] = [];
  const output: string[] = [];
  for (let p = 0; p < processes; p++) {
    const child = spawn('python3', ['-c', WORKLOAD, mnt, String(p)], { stdio: ['ignore', 'pipe', 'inherit'] });
    child.stdout!.on('data', (c: Buffer) => output.push(`process ${p}: ${c.toString().trim()}`));
    workers.push(child);
    cleanup.add(`worker ${p}`, () => void child.kill('SIGKILL'));
  }
  const started = performance.now();
  const samples: Sample[] = [];
  console.log(`virtiofs-client soak: ${target.toLocaleString('en-US')} requests, ${processes} processes, relay over QEMU 7.2's virtiofsd; load ${loadavg()[0]!.toFixed(2)} at the start`);
  for (;;) {
    await new Promise((r) => setTimeout(r, everyS * 1000));
    cleanup.check();
    const s = sample(relay, started);
    samples.push(s);
    console.log(row(s));
    if (s.requests >= target) break;
  }
  for (const w of workers) w.kill('SIGKILL');
  await Promise.all(workers.map((w) => new Promise((r) => (w.exitCode !== null ? r(null) : w.once('exit', r)))));
  await new Promise((r) => setTimeout(r, 500));
  const last = sample(relay, started);
  console.log(`${row(last)}  (writers stopped)`);
  const warm = samples.find((s) => s.requests >= target / 10) ?? samples[0]!;
  const end = samples[samples.length - 1]!;
  const perM = (a: number, b: number) => (((b - a) / (end.requests - warm.requests)) * 1e6).toFixed(2);
  console.log('');
  console.log(`from ${warm.requests.toLocaleString('en-US')} requests (warm) to ${end.requests.toLocaleString('en-US')}:`);
  console.log(`  RSS ${warm.rssMiB.toFixed(1)} -> ${end.rssMiB.toFixed(1)} MiB (${perM(warm.rssMiB, end.rssMiB)} MiB per million requests)`);
  console.log(`  JS heap ${warm.heapMiB.toFixed(1)} -> ${end.heapMiB.toFixed(1)} MiB; descriptors ${warm.fds} -> ${end.fds}; threads ${warm.threads} -> ${end.threads}`);
  console.log(`  in flight once the writers stopped: ${last.inFlight} (every slot back: ${last.inFlight === 0})`);
  console.log(`  requests per second: ${Math.round(end.requests / end.seconds).toLocaleString('en-US')}`);
  const ops = relay.status().operations.filter((o) => o.count > 0).map((o) => `${o.opcode} ${o.count.toLocaleString('en-US')}${o.errors ? ` (${o.errors} errors)` : ''}`);
  console.log(`  by opcode: ${ops.join(', ')}`);
  if (output.length) console.log(`  worker messages: ${output.slice(0, 8).join('; ')}`);
  if (log.length) console.log(`  client log: ${log.slice(0, 8).join('; ')}`);
}

main()
  .catch((e: unknown) => {
    console.error(`bench:soak: ${(e as Error).message}`);
    process.exitCode = 1;
  })
  .finally(() => cleanup.run());
