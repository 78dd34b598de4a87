// A PCI device that reports trouble the PCI way: DEVICE_NEEDS_RESET announced with a configuration
// change interrupt, a configuration that changes while the driver runs (or while it reads it), a
// function that vanishes (every register reads all ones). The real VirtioPciTransport drives a
// function of this process (test/helpers/fake-pci-function.ts) register by register, with MSI-X,
// the legacy interrupt, and no interrupts at all (polling).
import test, { type ExecutionContext } from 'ava';
import { ROOT, VirtioFsClient } from '../../client/client.ts';
import type { InterruptMode } from '../../client/transport/pci/pci-function.ts';
import { VirtioPciTransport } from '../../client/transport/pci/virtio-pci.ts';
import { FakePciFunction } from '../helpers/fake-pci-function.ts';
import { FakeVirtioFs, HELLO, fileData, until } from '../helpers/fake-virtio-fs.ts';

const MODES: InterruptMode[] = ['msix', 'intx', 'polling'];
const HELLO_FH = 100n + HELLO;
/** How often VirtioPciTransport looks at the device status by itself (its health timer). */
const HEALTH_LOOK_MS = 500;

interface PciClient {
  fn: FakePciFunction;
  fake: FakeVirtioFs;
  client: VirtioFsClient;
  logs: string[];
}

async function connectPci(interrupts: InterruptMode, requestQueues = 1): Promise<PciClient> {
  const fake = new FakeVirtioFs({ maxQueues: 3 });
  const fn = new FakePciFunction(fake, { interrupts });
  const logs: string[] = [];
  const client = await VirtioFsClient.connect({ transport: new VirtioPciTransport(fn), log: (line) => logs.push(line), requestQueues });
  return { fn, fake, client, logs };
}

/** The time a configuration-change signal needs to be acted on: an interrupt now, the health timer when polling. */
function noticeWithinMs(mode: InterruptMode): number {
  return mode === 'polling' ? HEALTH_LOOK_MS * 2 + 1000 : 1000;
}

async function settle(p: Promise<unknown>): Promise<{ ok: boolean; error?: Error & { code?: string }; ms: number }> {
  const t0 = performance.now();
  try {
    await p;
    return { ok: true, ms: performance.now() - t0 };
  } catch (error) {
    return { ok: false, error: error as Error & { code?: string }, ms: performance.now() - t0 };
  }
}

for (const mode of MODES) {
  test(`${mode}: the fake PCI function serves requests through the real virtio-pci transport`, async (t) => {
    const { fn, fake, client } = await connectPci(mode, 2);
    try {
      const attr = await client.getattr(ROOT);
      t.is(attr.ino, ROOT);
      const data = await client.read(HELLO, HELLO_FH, 0, 8192);
      t.deepEqual(Buffer.from(data), Buffer.from(fileData().subarray(0, 8192)));
      // Both request queues carried requests.
      await Promise.all(Array.from({ length: 8 }, () => client.getattr(HELLO)));
      t.true(new Set(fake.requests.map((r) => r.queue)).size >= 2, 'requests on both request queues');
      const raised = [...fn.interruptsRaised.keys()];
      if (mode === 'msix') t.true(raised.length > 0 && raised.every((v) => v >= 1), `queue vectors only: ${raised.join(',')}`);
      if (mode === 'intx') t.deepEqual(raised, [-1]);
      if (mode === 'polling') t.deepEqual(raised, []);
      t.deepEqual(fake.violations, []);
    } finally {
      await client.close();
    }
    t.true(fake.closed, 'closing the client released the function');
  });

  test(`${mode}: DEVICE_NEEDS_RESET fails the request in flight with EIO, says why once, and later requests fail at once`, async (t) => {
    const { fn, fake, client, logs } = await connectPci(mode);
    try {
      fake.fault = () => 'hold';
      const inFlight = client.read(HELLO, HELLO_FH, 0, 4096);
      await until(() => fake.held.length === 1, 2000, 'the read to reach the device');
      fn.needsReset();
      const outcome = await settle(inFlight);
      t.false(outcome.ok);
      t.is(outcome.error?.code, 'EIO', outcome.error?.message);
      t.regex(outcome.error?.message ?? '', /needs reset \(DEVICE_NEEDS_RESET\)/);
      t.true(outcome.ms < noticeWithinMs(mode), `failed after ${outcome.ms.toFixed(0)} ms`);
      if (mode === 'msix') t.true((fn.interruptsRaised.get(0) ?? 0) >= 1, 'the config vector was raised');
      const lines = logs.filter((l) => l.includes('DEVICE_NEEDS_RESET'));
      t.is(lines.length, 1, lines.join('\n'));

      const seen = fake.requests.length;
      const later = await settle(client.getattr(ROOT));
      t.false(later.ok);
      t.is(later.error?.code, 'EIO');
      t.true(later.ms < 250, `failed after ${later.ms.toFixed(0)} ms`);
      t.is(fake.requests.length, seen, 'nothing more reached the device');
    } finally {
      await client.close();
    }
  });

  test(`${mode}: a configuration change is said field by field and requests go on`, async (t) => {
    const { fn, client, logs } = await connectPci(mode);
    try {
      await client.getattr(ROOT);
      fn.changeConfig({ numRequestQueues: 4, tag: 'renamed' });
      await until(() => logs.some((l) => l.includes('configuration changed')), noticeWithinMs(mode), 'the change to be noticed');
      const lines = logs.filter((l) => l.includes('configuration changed'));
      t.is(lines.length, 1, lines.join('\n'));
      t.regex(lines[0]!, /virtio_fs_config\.tag 'fake-pci' -> 'renamed'/);
      t.regex(lines[0]!, /virtio_fs_config\.num_request_queues 2 -> 4/);
      t.is((await client.getattr(HELLO)).ino, HELLO);
      // A change that leaves every field as it was still moves the generation on: said, harmless.
      fn.changeConfig({});
      await until(() => logs.filter((l) => l.includes('configuration changed')).length === 2, noticeWithinMs(mode), 'the second change');
      t.regex(logs.filter((l) => l.includes('configuration changed'))[1]!, /no field differs/);
      t.is((await client.getattr(HELLO)).ino, HELLO);
      t.is(client.session.device.failed, undefined);
    } finally {
      await client.close();
    }
  });
}

test('status reading all ones (the function vanished) fails requests with ENODEV', async (t) => {
  const { fn, fake, client, logs } = await connectPci('msix');
  try {
    fake.fault = () => 'hold';
    const inFlight = client.getattr(HELLO);
    await until(() => fake.held.length === 1, 2000, 'the request to reach the device');
    fn.vanished = true;
    const outcome = await settle(inFlight);
    t.false(outcome.ok);
    t.is(outcome.error?.code, 'ENODEV', outcome.error?.message);
    t.regex(outcome.error?.message ?? '', /vanished \(status reads 0xff\)/);
    t.true(outcome.ms < noticeWithinMs('polling'), `failed after ${outcome.ms.toFixed(0)} ms`);
    t.true(logs.some((l) => l.includes('vanished')), logs.join('\n'));
  } finally {
    await client.close();
  }
});

function readWithTornGenerations(t: ExecutionContext, times: number): void {
  const fake = new FakeVirtioFs({ maxQueues: 2 });
  const fn = new FakePciFunction(fake, { interrupts: 'polling', tag: 'before' });
  const transport = new VirtioPciTransport(fn);
  try {
    fn.changeWhileRead(times, { tag: 'after', numRequestQueues: 7 });
    const config = transport.readConfig();
    // Whatever generation it settles on, fields from two generations are never mixed.
    t.deepEqual(config, { tag: 'after', numRequestQueues: 7 });
  } finally {
    transport.close();
  }
}

test('a configuration that changes while it is read is read again until the generation holds', (t) => {
  readWithTornGenerations(t, 1);
  readWithTornGenerations(t, 3);
});
