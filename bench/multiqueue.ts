// Multiqueue: the same 4-job 4 KiB random-read load through the relay with 1 and with 2 request
// queues, on a device that offers 2 (the reference device, --queues 2, one thread per request
// queue, in front of QEMU's virtiofsd), in one run; and the relay straight on virtiofsd (one
// queue, no reference device), so that what the device adds shows. Prints ops/s for each, the
// ratio, and how the requests spread over the queue threads. Beside it, the same load on libfuse's C passthrough_ll served by one thread (-s)
// and by two (clone_fd: each its own /dev/fuse fd, as our queue threads): what one more serving
// thread buys a C daemon on this machine. Never a timed test.
// With --cache none (the default) every read reaches the daemon (virtiofsd -o cache=none,
// passthrough_ll -o cache=never): the request path is measured, not the page cache.
// Run: npm run bench:multiqueue [-- --seconds 5 --size 256 --cache none|auto --thread-pool-size N
//   --device-poll-us US --skip-c]  (--thread-pool-size: virtiofsd's; 0, its default, serves each
//   request on the queue's thread, which measured fastest here)
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Virtiofsd } from '../client/backends/virtiofsd.ts';
import { FuseRelay } from '../client/frontend/relay.ts';
import { Cleanup } from './lib/cleanup.ts';
import { buildPassthroughLl, mountPassthroughLl } from './lib/passthrough-ll.ts';
import { CLOCK_TICKS, cpuTicks } from './lib/cpu.ts';
import { runFio } from './lib/fio.ts';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    size: { type: 'string', default: '256' },
    jobs: { type: 'string', default: '4' },
    cache: { type: 'string', default: 'none' },
    'thread-pool-size': { type: 'string', default: '0' },
    'device-poll-us': { type: 'string', default: '50' },
    'skip-c': { type: 'boolean', default: false },
  },
});
if (values.cache !== 'none' && values.cache !== 'auto') throw new Error(`--cache ${values.cache}: expected none or auto`);
const cache = values.cache;
const seconds = Number(values.seconds);
const sizeMiB = Number(values.size);
const jobs = Number(values.jobs);
const threadPoolSize = Number(values['thread-pool-size']);
const CACHE_DIR = fileURLToPath(new URL('../node_modules/.cache/virtiofs-bench/', import.meta.url));
const cleanup = new Cleanup();
cleanup.installHandlers();

const work = mkdtempSync(join(tmpdir(), 'vfs-bench-mq-'));
cleanup.add('work directory', () => rmSync(work, { recursive: true, force: true }));
const shared = join(work, 'shared');
mkdirSync(shared);
writeFileSync(join(shared, 'read.dat'), Buffer.alloc(sizeMiB << 20, 0x5a));

/** Busy and total clock ticks of the whole machine (/proc/stat's cpu line; idle and iowait are not busy). */
function machineTicks(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: total - f[3]! - f[4]!, total };
}

/** virtiofsd, the reference device offering 2 request queues in front of it, our relay using `queues` of them. */
async function measure(queues: number): Promise<{ iops: number; spread: string; phases: string; cpu: string }> {
  const daemon = await Virtiofsd.start({ sharedDir: shared, cache, threadPoolSize });
  const socket = join(work, `refdev-${queues}.sock`);
  const device = spawn(process.execPath, ['--import', 'tsx', 'examples/reference-device/main.ts', '--socket', socket, '--backend', `vhost-user:${daemon.socketPath}`, '--queues', '2', '--poll-us', values['device-poll-us']!], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    device.stdout!.on('data', (c: Buffer) => c.toString().includes('listening on') && resolve());
    device.once('exit', (code) => reject(new Error(`reference device exited (${code})`)));
  });
  const mnt = join(work, `mnt-${queues}`);
  mkdirSync(mnt);
  const relay = await FuseRelay.mount({ transport: `vhost-user:${socket}`, mountpoint: mnt, requestQueues: queues });
  try {
    const ours0 = process.cpuUsage();
    const { iops, wallS, busy, ticks } = await timedLoad(mnt, [device.pid, daemon.pid]);
    const ours = process.cpuUsage(ours0);
    const pct = (t: number) => `${Math.round((t / CLOCK_TICKS / wallS) * 100)}%`;
    const cpu = `client ${Math.round(((ours.user + ours.system) / 1e6 / wallS) * 100)}%, reference device ${pct(ticks[0]!)}, virtiofsd ${pct(ticks[1]!)}; machine ${busy}% busy`;
    const status = relay.status();
    const p = status.phases;
    return {
      iops,
      spread: (status.queues ?? []).map((q) => `${q.name} ${q.requests}`).join(', '),
      phases: p ? `prepare ${p.prepareUs} us, device ${p.deviceUs} us, reply ${p.replyUs} us` : '-',
      cpu,
    };
  } finally {
    await relay.unmount();
    await new Promise((resolve) => device.once('exit', resolve));
    await daemon.stop();
  }
}

/** The relay with one request queue straight on virtiofsd, no reference device: what the device adds is the difference. */
async function measureDirect(): Promise<{ iops: number; phases: string; cpu: string }> {
  const daemon = await Virtiofsd.start({ sharedDir: shared, cache, threadPoolSize });
  const mnt = join(work, 'mnt-direct');
  mkdirSync(mnt);
  const relay = await FuseRelay.mount({ transport: `vhost-user:${daemon.socketPath}`, mountpoint: mnt, requestQueues: 1 });
  try {
    const ours0 = process.cpuUsage();
    const { iops, wallS, busy, ticks } = await timedLoad(mnt, [daemon.pid]);
    const ours = process.cpuUsage(ours0);
    const cpu = `client ${Math.round(((ours.user + ours.system) / 1e6 / wallS) * 100)}%, virtiofsd ${Math.round((ticks[0]! / CLOCK_TICKS / wallS) * 100)}%; machine ${busy}% busy`;
    const p = relay.status().phases;
    return { iops, phases: p ? `prepare ${p.prepareUs} us, device ${p.deviceUs} us, reply ${p.replyUs} us` : '-', cpu };
  } finally {
    await relay.unmount();
    await daemon.stop();
  }
}

/**
 * The fio load on `mnt`, timed, with the CPU of `pids` over it (clock ticks each) and how busy the
 * whole machine was (% of all its CPUs, fio included).
 */
async function timedLoad(mnt: string, pids: readonly (number | undefined)[]): Promise<{ iops: number; wallS: number; busy: number; ticks: number[] }> {
  const quarter = `${Math.floor(sizeMiB / jobs)}M`;
  const before = cpuTicks(pids);
  const machine0 = machineTicks();
  const t0 = performance.now();
  const r = await runFio(cleanup, { filename: join(mnt, 'read.dat'), rw: 'randread', bs: '4k', size: quarter, numjobs: jobs, offsetIncrement: quarter, seconds, invalidate: true });
  const wallS = (performance.now() - t0) / 1000;
  const after = cpuTicks(pids);
  const machine1 = machineTicks();
  return {
    iops: r.iops,
    wallS,
    busy: Math.round(((machine1.busy - machine0.busy) / (machine1.total - machine0.total)) * 100),
    ticks: after.map((t, i) => (t ?? 0) - (before[i] ?? 0)),
  };
}

/** The C analog: passthrough_ll serving the same file with one thread (-s) or two (clone_fd, max_threads=2). */
async function measureC(binary: string, threads: 1 | 2): Promise<{ iops: number; cpu: string }> {
  const mnt = join(work, `ptll-${threads}`);
  mkdirSync(mnt);
  const options = [cache === 'none' ? 'cache=never' : 'cache=auto', ...(threads === 2 ? ['clone_fd', 'max_threads=2', 'max_idle_threads=2'] : [])];
  const daemon = await mountPassthroughLl(cleanup, binary, shared, mnt, options, undefined, threads === 1 ? ['-s'] : []);
  try {
    const { iops, wallS, busy, ticks } = await timedLoad(mnt, [daemon.pid]);
    return { iops, cpu: `passthrough_ll ${Math.round((ticks[0]! / CLOCK_TICKS / wallS) * 100)}%; machine ${busy}% busy` };
  } finally {
    await daemon.stop();
  }
}

try {
  const load = loadavg()[0]!.toFixed(2);
  const binary = await buildPassthroughLl(cleanup, CACHE_DIR);
  const skip = { iops: NaN, cpu: 'skipped' };
  const c1 = values['skip-c'] ? skip : await measureC(binary, 1);
  const c2 = values['skip-c'] ? skip : await measureC(binary, 2);
  const direct = await measureDirect();
  const one = await measure(1);
  const two = await measure(2);
  console.log(`virtiofs-client multiqueue benchmark: rand read 4 KiB, ${jobs} jobs, ${seconds} s per figure, ${sizeMiB} MiB file, one run`);
  console.log(`device: examples/reference-device --queues 2 (one thread per request queue) in front of QEMU 7.2's virtiofsd (-o cache=${cache}, --thread-pool-size=${threadPoolSize}), device --poll-us ${values['device-poll-us']}; ${cpus().length} CPUs, load ${load} at the start`);
  console.log(`C analog, passthrough_ll -o cache=${cache === 'none' ? 'never' : 'auto'}: 1 thread (-s) ${Math.round(c1.iops).toLocaleString('en-US')} ops/s, 2 threads (clone_fd) ${Math.round(c2.iops).toLocaleString('en-US')} ops/s: ${(c2.iops / c1.iops).toFixed(3)}`);
  console.log(`CPU, C 1 thread:  ${c1.cpu}`);
  console.log(`CPU, C 2 threads: ${c2.cpu}`);
  console.log(`relay straight on virtiofsd, no reference device (1 queue): ${Math.round(direct.iops).toLocaleString('en-US')} ops/s  (${direct.phases}); CPU: ${direct.cpu}`);
  console.log(`relay, 1 request queue:  ${Math.round(one.iops).toLocaleString('en-US')} ops/s  (${one.spread}; ${one.phases})`);
  console.log(`relay, 2 request queues: ${Math.round(two.iops).toLocaleString('en-US')} ops/s  (${two.spread}; ${two.phases})`);
  console.log(`2 queues / 1 queue: ${(two.iops / one.iops).toFixed(3)}`);
  console.log(`CPU, 1 request queue:  ${one.cpu}`);
  console.log(`CPU, 2 request queues: ${two.cpu}`);
  console.log('(client, reference device, virtiofsd: % of one CPU over the timed run; machine: % of all CPUs, fio included)');
} finally {
  await cleanup.run();
}
