// Driver-level benchmark: the client API against a real virtiofsd, beside the
// same operations done natively (stat(2), pread(2)) on the same directory in
// the same run. Prints each figure and the ratio to its baseline.
// Run: npm run bench:driver [-- --seconds 2]
import { randomBytes } from 'node:crypto';
import { closeSync, constants, mkdtempSync, openSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { open as openAsync, stat as statAsync } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Virtiofsd } from '../client/backends/virtiofsd.ts';
import { ROOT, VirtioFsClient } from '../client/client.ts';
import { DEFAULT_POLL_US } from '../client/virtio/virtio-fs-device.ts';

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '2' }, 'busy-poll': { type: 'boolean', default: false }, 'poll-us': { type: 'string', default: String(DEFAULT_POLL_US) } } });
const seconds = Number(values.seconds);
const BLOCK = 128 * 1024;
const FILE_SIZE = 64 << 20;

/** Runs `op` with `depth` concurrent loops for the configured time; returns operations per second. */
async function rate(depth: number, op: (i: number) => Promise<unknown> | unknown): Promise<number> {
  const end = performance.now() + seconds * 1000;
  let count = 0;
  const loop = async (lane: number) => {
    for (let i = lane; performance.now() < end; i += depth) {
      await op(i);
      count++;
    }
  };
  const start = performance.now();
  await Promise.all(Array.from({ length: depth }, (_, lane) => loop(lane)));
  return count / ((performance.now() - start) / 1000);
}

const dir = mkdtempSync(join(tmpdir(), 'vfs-bench-'));
writeFileSync(join(dir, 'small'), 'x');
writeFileSync(join(dir, 'big'), randomBytes(FILE_SIZE));
const daemon = await Virtiofsd.start({ sharedDir: dir, cache: 'auto' });
const client = await VirtioFsClient.connect({ transport: `vhost-user:${daemon.socketPath}`, busyPoll: values['busy-poll'], pollUs: Number(values['poll-us']) });
try {
  const small = await client.lookup(ROOT, 'small');
  const big = await client.lookup(ROOT, 'big');
  const { fh } = await client.open(big.nodeid, constants.O_RDONLY);
  const blocks = FILE_SIZE / BLOCK;
  const fd = openSync(join(dir, 'big'), 'r');
  const handle = await openAsync(join(dir, 'big'), 'r');
  const buffers = Array.from({ length: 32 }, () => Buffer.allocUnsafe(BLOCK));

  const rows: [string, number, number, string][] = [];
  for (const depth of [1, 32]) {
    const native = depth === 1 ? await rate(1, () => statSync(join(dir, 'small'))) : await rate(depth, () => statAsync(join(dir, 'small')));
    const ours = await rate(depth, () => client.getattr(small.nodeid));
    rows.push([`GETATTR  QD${depth}`, ours, native, 'ops/s']);
  }
  for (const depth of [1, 32]) {
    const native =
      depth === 1
        ? await rate(1, (i) => readSync(fd, buffers[0]!, 0, BLOCK, (i % blocks) * BLOCK))
        : await rate(depth, (i) => handle.read(buffers[i % 32]!, 0, BLOCK, (i % blocks) * BLOCK));
    const ours = await rate(depth, (i) => client.read(big.nodeid, fh, (i % blocks) * BLOCK, BLOCK));
    const mb = (ops: number) => (ops * BLOCK) / (1 << 20);
    rows.push([`READ 128K QD${depth}`, mb(ours), mb(native), 'MiB/s']);
  }
  closeSync(fd);
  await handle.close();

  console.log(`virtiofs-client driver benchmark: ${seconds} s per figure, virtiofsd cache=auto, busy-poll ${values['busy-poll'] ? 'on' : 'off'}, poll ${values['poll-us']} us after a lone request`);
  console.log(`${'operation'.padEnd(16)} ${'virtio-fs'.padStart(12)} ${'native'.padStart(12)} ${'ratio'.padStart(7)}  unit`);
  for (const [name, ours, native, unit] of rows) {
    console.log(`${name.padEnd(16)} ${ours.toFixed(0).padStart(12)} ${native.toFixed(0).padStart(12)} ${(ours / native).toFixed(3).padStart(7)}  ${unit}`);
  }
  console.log('native = stat(2)/pread(2) on the shared directory itself (QD32 through the libuv threadpool).');
} finally {
  await client.close();
  await daemon.stop();
  rmSync(dir, { recursive: true, force: true });
}
