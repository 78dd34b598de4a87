// The relay on a real /dev/fuse mount over the virtio-pci transport, the device a PCI function of
// this process (test/helpers/fake-pci-function.ts): the relay's queue threads ring its doorbells by
// storing to the mapped notify register and wait on MSI-X vector eventfds of their own (or are woken
// by the main thread on INTx and polling), as over VFIO and UIO in a guest. Then the device sets
// DEVICE_NEEDS_RESET with a read in flight: the reader gets an error, the relay says why once and
// takes the mount down.
import test from 'ava';
import { execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mountsAt } from '../../client/frontend/fuse-mount.ts';
import { FuseRelay } from '../../client/frontend/relay.ts';
import type { InterruptMode } from '../../client/transport/pci/pci-function.ts';
import { VirtioPciTransport } from '../../client/transport/pci/virtio-pci.ts';
import { FakePciFunction } from '../helpers/fake-pci-function.ts';
import { FakeVirtioFs, fileData, until } from '../helpers/fake-virtio-fs.ts';
import { requireRoot } from '../helpers/virtiofsd.ts';

const FILE = Buffer.from(fileData());
/** Every application call returns within this here (replies take microseconds). */
const APP_TIMEOUT_MS = 10_000;

function app(command: string, ...args: string[]): { child: ChildProcess; done: Promise<{ status: number; stdout: Buffer; stderr: string; ms: number }> } {
  const started = performance.now();
  let child!: ChildProcess;
  const done = new Promise<{ status: number; stdout: Buffer; stderr: string; ms: number }>((resolve, reject) => {
    child = execFile(command, args, { encoding: 'buffer', timeout: APP_TIMEOUT_MS, killSignal: 'SIGKILL' }, (error, stdout, stderr) => {
      if (error && (error as { killed?: boolean }).killed) reject(new Error(`${command} ${args.join(' ')} did not return within ${APP_TIMEOUT_MS} ms`));
      else resolve({ status: error ? Number((error as { code?: number }).code ?? 1) : 0, stdout, stderr: stderr.toString(), ms: performance.now() - started });
    });
  });
  return { child, done };
}

async function withPciMount(mode: InterruptMode, fn: (m: { mnt: string; fn: FakePciFunction; fake: FakeVirtioFs; relay: FuseRelay; logs: string[] }) => Promise<void>): Promise<void> {
  const mnt = mkdtempSync(join(tmpdir(), `vfs-relay-pci-${mode}-`));
  const fake = new FakeVirtioFs({ maxQueues: 3 });
  const pci = new FakePciFunction(fake, { interrupts: mode });
  const logs: string[] = [];
  const relay = await FuseRelay.mount({ transport: new VirtioPciTransport(pci), mountpoint: mnt, requestQueues: 2, log: (line) => logs.push(line) });
  try {
    await fn({ mnt, fn: pci, fake, relay, logs });
  } finally {
    await relay.unmount();
    rmSync(mnt, { recursive: true, force: true });
  }
}

for (const mode of ['msix', 'intx', 'polling'] as const) {
  test.serial(`${mode}: the relay's queue threads drive the PCI function through a mount`, async (t) => {
    if (!requireRoot(t)) return;
    await withPciMount(mode, async ({ mnt, fn, fake, relay }) => {
      const cat = await app('cat', join(mnt, 'hello.txt')).done;
      t.is(cat.status, 0, cat.stderr);
      t.true(cat.stdout.equals(FILE), 'the whole file reads back byte-exact');
      // Several readers at once (which queue thread takes each request is the kernel's choice:
      // under load one may take them all).
      const readers = await Promise.all(Array.from({ length: 6 }, (_, i) => app('dd', `if=${join(mnt, 'hello.txt')}`, 'bs=4096', `skip=${i * 8}`, 'count=8', 'iflag=direct', 'status=none').done));
      for (const r of readers) t.is(r.status, 0, r.stderr);
      t.deepEqual((await app('ls', mnt).done).stdout.toString().split('\n').filter(Boolean), ['hello.txt', 'sub']);
      const status = relay.status();
      t.is(status.interrupts, mode);
      const queues = (status.queues ?? []).filter((q) => q.name.startsWith('request'));
      t.is(queues.length, 2, 'two request queues, a thread each');
      t.true(queues.reduce((n, q) => n + q.requests, 0) >= 7, `the requests went through the queue threads: ${queues.map((q) => `${q.name} ${q.requests}`).join(', ')}`);
      if (mode === 'msix') t.true([...fn.interruptsRaised.keys()].every((v) => v >= 0), 'no legacy interrupt');
      t.deepEqual(fake.violations, []);
    });
  });

  test.serial(`${mode}: DEVICE_NEEDS_RESET with a read in flight: the reader gets an error, one line says why, the mount goes away`, async (t) => {
    if (!requireRoot(t)) return;
    await withPciMount(mode, async ({ mnt, fn, fake, logs }) => {
      t.is((await app('stat', '-c', '%s', join(mnt, 'hello.txt')).done).status, 0);
      fake.fault = (r) => (r.opcode === 15 /* READ */ ? 'hold' : undefined);
      const reader = app('dd', `if=${join(mnt, 'hello.txt')}`, 'bs=4096', 'count=1', 'iflag=direct', 'status=none');
      await until(() => fake.held.length === 1, 5000, 'the read to reach the device');
      const reset = performance.now();
      fn.needsReset();
      const r = await reader.done;
      const ms = performance.now() - reset;
      t.not(r.status, 0, 'the read fails');
      t.regex(r.stderr, /Input\/output error|Transport endpoint is not connected|Software caused connection abort|No such device/, r.stderr);
      t.log(`reader: ${r.stderr.trim()} (${Math.round(ms)} ms after the reset)`);
      t.true(ms < (mode === 'polling' ? 5000 : 3000), `the reader ended ${Math.round(ms)} ms after DEVICE_NEEDS_RESET`);
      await until(() => mountsAt(mnt).length === 0, 5000, 'the mount to go away');
      t.false(readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${mnt} `));
      const lines = logs.filter((l) => l.includes('DEVICE_NEEDS_RESET'));
      t.is(lines.length, 1, `the relay says why, once: ${logs.join('\n')}`);
    });
  });
}
