// Multiqueue: the same 4-job 4 KiB random-read load through the relay with 1 and with 2 request
// queues, on a device that offers 2 (the reference device, --queues 2, in front of QEMU's
// virtiofsd), in one run. Prints ops/s for each, the ratio, and how the requests spread over the
// queue threads. Never a timed test.
// Run: npm run bench:multiqueue [-- --seconds 5 --size 256]
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Virtiofsd } from '../client/backends/virtiofsd.ts';
import { FuseRelay } from '../client/frontend/relay.ts';
import { Cleanup } from './lib/cleanup.ts';
import { runFio } from './lib/fio.ts';

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '5' }, size: { type: 'string', default: '256' }, jobs: { type: 'string', default: '4' } } });
const seconds = Number(values.seconds);
const sizeMiB = Number(values.size);
const jobs = Number(values.jobs);
const cleanup = new Cleanup();
cleanup.installHandlers();

const work = mkdtempSync(join(tmpdir(), 'vfs-bench-mq-'));
cleanup.add('work directory', () => rmSync(work, { recursive: true, force: true }));
const shared = join(work, 'shared');
mkdirSync(shared);
writeFileSync(join(shared, 'read.dat'), Buffer.alloc(sizeMiB << 20, 0x5a));

/** virtiofsd, the reference device offering 2 request queues in front of it, our relay using `queues` of them. */
async function measure(queues: number): Promise<{ iops: number; spread: string; phases: string }> {
  const daemon = await Virtiofsd.start({ sharedDir: shared, cache: 'auto' });
  const socket = join(work, `refdev-${queues}.sock`);
  const device = spawn(process.execPath, ['--import', 'tsx', 'examples/reference-device/main.ts', '--socket', socket, '--backend', `vhost-user:${daemon.socketPath}`, '--queues', '2'], {
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
    const quarter = `${Math.floor(sizeMiB / jobs)}M`;
    const r = await runFio(cleanup, { filename: join(mnt, 'read.dat'), rw: 'randread', bs: '4k', size: quarter, numjobs: jobs, offsetIncrement: quarter, seconds, invalidate: true });
    const status = relay.status();
    const p = status.phases;
    return {
      iops: r.iops,
      spread: (status.queues ?? []).map((q) => `${q.name} ${q.requests}`).join(', '),
      phases: p ? `prepare ${p.prepareUs} us, device ${p.deviceUs} us, reply ${p.replyUs} us` : '-',
    };
  } finally {
    await relay.unmount();
    await new Promise((resolve) => device.once('exit', resolve));
    await daemon.stop();
  }
}

try {
  const load = loadavg()[0]!.toFixed(2);
  const one = await measure(1);
  const two = await measure(2);
  console.log(`virtiofs-client multiqueue benchmark: rand read 4 KiB, ${jobs} jobs, ${seconds} s per figure, ${sizeMiB} MiB file, one run`);
  console.log(`device: examples/reference-device --queues 2 in front of QEMU 7.2's virtiofsd (-o cache=auto); ${cpus().length} CPUs, load ${load} at the start`);
  console.log(`relay, 1 request queue:  ${Math.round(one.iops).toLocaleString('en-US')} ops/s  (${one.spread}; ${one.phases})`);
  console.log(`relay, 2 request queues: ${Math.round(two.iops).toLocaleString('en-US')} ops/s  (${two.spread}; ${two.phases})`);
  console.log(`2 queues / 1 queue: ${(two.iops / one.iops).toFixed(3)}`);
} finally {
  await cleanup.run();
}
