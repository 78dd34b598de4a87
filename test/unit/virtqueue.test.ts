import test from 'ava';
import { BufferPool } from '../../client/virtio/buffer-pool.ts';
import {
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
} from '../../client/virtio/features.ts';
import { splitRingLayout } from '../../client/virtio/ring-layout.ts';
import { Virtqueue, VirtqueueError, type UsedRingProblem, type VirtqueueOptions } from '../../client/virtio/virtqueue.ts';
import { FakeDma } from '../helpers/fake-dma.ts';
import { fakeDeviceFor } from '../helpers/fake-split-ring-device.ts';

const DIRECT = VIRTIO_F_VERSION_1;
const INDIRECT = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC;
const ALL = INDIRECT | VIRTIO_RING_F_EVENT_IDX;

function setup(size: number, options: VirtqueueOptions, dma = new FakeDma(1 << 16), offset = 0) {
  const queue = new Virtqueue<string>({ name: 'request0', region: dma, offset, size, ...options });
  const device = fakeDeviceFor(dma, queue, options.features);
  return { dma, queue, device };
}

function noProblems(problem: UsedRingProblem<unknown>): never {
  throw new Error(`unexpected used-ring problem: ${problem.reason}`);
}

test('layout follows the spec sizes and alignments', (t) => {
  t.like(splitRingLayout(8, 0), { descTable: 0, availRing: 128, usedRing: 152, indirectTables: 222, totalBytes: 222 });
  t.like(splitRingLayout(8, 4), { usedRing: 152, indirectTables: 224, indirectTableBytes: 64, totalBytes: 224 + 8 * 64 });
  t.like(splitRingLayout(256, 0), { availRing: 4096, usedRing: 4616, totalBytes: 6670 });
  t.is(splitRingLayout(32768, 0).totalBytes, 16 * 32768 + 6 + 2 * 32768 + 6 + 8 * 32768 + 2 /* pad to 4 */);
  t.is(Virtqueue.bytesNeeded(8, { features: DIRECT }), 222);
  t.is(Virtqueue.bytesNeeded(8, { features: INDIRECT, maxIndirectSegments: 4 }), 736);
  // Default table length is min(16, size).
  t.is(Virtqueue.bytesNeeded(4, { features: INDIRECT }), splitRingLayout(4, 4).totalBytes);
});

test('exposes the device addresses of the three parts', (t) => {
  const { queue } = setup(8, { features: DIRECT }, new FakeDma(4096, { base: 0x7f00_0000_0000n }), 1024);
  t.is(queue.descTableAddress, 0x7f00_0000_0000n + 1024n);
  t.is(queue.availRingAddress, 0x7f00_0000_0000n + 1024n + 128n);
  t.is(queue.usedRingAddress, 0x7f00_0000_0000n + 1024n + 152n);
});

test('rejects bad configurations with BAD_CONFIG', (t) => {
  const dma = new FakeDma(1 << 16);
  const bad = (size: number, options: VirtqueueOptions, offset = 0, region = dma) =>
    t.throws(() => new Virtqueue({ name: 'q', region, offset, size, ...options }), { instanceOf: VirtqueueError })!;
  for (const size of [0, 3, 100, 65536, 1.5]) t.is(bad(size, { features: DIRECT }).code, 'BAD_CONFIG');
  t.regex(bad(8, { features: 0n }).message, /VERSION_1/);
  t.regex(bad(8, { features: DIRECT | VIRTIO_F_RING_PACKED }).message, /PACKED/);
  t.regex(bad(8, { features: DIRECT | VIRTIO_F_IN_ORDER }).message, /IN_ORDER/);
  t.regex(bad(8, { features: INDIRECT, maxIndirectSegments: 9 }).message, /indirect/);
  t.regex(bad(8, { features: DIRECT }, 8).message, /aligned/);
  t.regex(bad(1024, { features: DIRECT }, 0, new FakeDma(4096)).message, /does not fit/);
  t.regex(bad(8, { features: DIRECT }, 0, new FakeDma(4096, { base: 0x10008n })).message, /16-aligned/);
  // Pages scattered: indirect table 5 straddles the boundary between region pages 1 and 2.
  const scattered = new FakeDma(18 * 4096, { pageOrder: Array.from({ length: 18 }, (_, i) => 17 - i) });
  t.regex(bad(256, { features: INDIRECT }, 0, scattered).message, /indirect table 5 is not device-contiguous/);
});

test('a request round-trips: device reads the readable bytes, writes the writable ones', (t) => {
  const { dma, queue, device } = setup(8, { features: DIRECT });
  dma.bytes.set([1, 2, 3, 4], 4096);
  dma.bytes.set([5, 6], 4200);
  t.true(queue.add([4096, 4, 4200, 2], [8192, 8, 8300, 8], 'lookup'));
  t.is(queue.freeDescriptors, 4);
  t.is(queue.inFlightCount, 1);

  const [chain, ...rest] = device.popAll();
  t.is(rest.length, 0);
  t.false(chain!.indirect);
  t.deepEqual([...device.read(chain!)], [1, 2, 3, 4, 5, 6]);
  t.deepEqual(chain!.writable, [{ offset: 8192, length: 8 }, { offset: 8300, length: 8 }]);
  const written = device.write(chain!, new Uint8Array([9, 9, 9, 9, 9, 9, 9, 9, 7, 7]));
  device.complete([chain!.head, written]);

  const done: [string, number][] = [];
  t.is(queue.drainUsed((token, len) => done.push([token, len]), noProblems), 1);
  t.deepEqual(done, [['lookup', 10]]);
  t.deepEqual([...dma.bytes.subarray(8300, 8302)], [7, 7]);
  t.is(queue.freeDescriptors, 8);
  t.is(queue.inFlightCount, 0);
  t.is(queue.drainUsed(() => t.fail(), noProblems), 0);
});

test('indirect descriptors: one ring slot for multi-segment requests, direct for one segment or too many', (t) => {
  const { queue, device } = setup(8, { features: INDIRECT, maxIndirectSegments: 4 });
  t.true(queue.usesIndirectDescriptors);
  t.true(queue.add([0x1000, 16], [0x2000, 16, 0x3000, 100], 'three'));
  t.is(queue.freeDescriptors, 7);
  t.true(queue.add([0x1100, 16], [], 'one'));
  t.is(queue.freeDescriptors, 6);
  t.true(queue.add([0x1200, 1, 0x1300, 1, 0x1400, 1], [0x4000, 1, 0x4100, 1], 'five'));
  t.is(queue.freeDescriptors, 1);

  const [three, one, five] = device.popAll();
  t.true(three!.indirect);
  t.deepEqual(three!.readable, [{ offset: 0x1000, length: 16 }]);
  t.deepEqual(three!.writable, [{ offset: 0x2000, length: 16 }, { offset: 0x3000, length: 100 }]);
  t.false(one!.indirect);
  t.deepEqual(one!.writable, []);
  t.false(five!.indirect);
  t.is(five!.readable.length + five!.writable.length, 5);

  device.complete([five!.head, 2], [three!.head, 116], [one!.head, 0]);
  const done: [string, number][] = [];
  queue.drainUsed((token, len) => done.push([token, len]), noProblems);
  t.deepEqual(done, [['five', 2], ['three', 116], ['one', 0]]);
  t.is(queue.freeDescriptors, 8);
});

test('a full queue makes add return false without side effects, and accepts again after completions', (t) => {
  const direct = setup(8, { features: DIRECT });
  t.true(direct.queue.add([0x1000, 8], [0x1040, 8, 0x1080, 8], 'a'));
  t.true(direct.queue.add([0x1100, 8], [0x1140, 8, 0x1180, 8], 'b'));
  t.false(direct.queue.add([0x1200, 8], [0x1240, 8, 0x1280, 8], 'c'));
  t.is(direct.queue.freeDescriptors, 2);
  t.true(direct.queue.add([0x1200, 8], [0x1240, 8], 'two segments still fit'));
  t.false(direct.queue.add([0x1300, 8], [], 'nothing left'));
  t.is(direct.device.pendingAvailable(), 3);
  const first = direct.device.pop()!;
  direct.device.complete([first.head, 16]);
  direct.queue.drainUsed(() => {}, noProblems);
  t.true(direct.queue.add([0x1200, 8], [0x1240, 8, 0x1280, 8], 'c'));

  const indirect = setup(8, { features: INDIRECT, maxIndirectSegments: 4 });
  for (let i = 0; i < 8; i++) t.true(indirect.queue.add([0x1000 + i * 64, 8], [0x1008 + i * 64, 8, 0x1010 + i * 64, 8], `r${i}`));
  t.false(indirect.queue.add([0x2000, 8], [0x2008, 8, 0x2010, 8], 'ninth'));
  t.is(indirect.queue.inFlightCount, 8);
});

test('segment lists are validated before anything is written', (t) => {
  const { queue, device } = setup(8, { features: DIRECT });
  const code = (fn: () => unknown) => t.throws(fn, { instanceOf: VirtqueueError })!.code;
  t.is(code(() => queue.add([0], [], 'odd')), 'BAD_SEGMENTS');
  t.is(code(() => queue.add([0, 0], [], 'empty segment')), 'BAD_SEGMENTS');
  t.is(code(() => queue.add([0.5, 4], [], 'fractional')), 'BAD_SEGMENTS');
  t.is(code(() => queue.add([], [], 'no segments')), 'BAD_SEGMENTS');
  t.is(code(() => queue.add([0, 8], [65530, 8], 'past the end')), 'SEGMENT_OUT_OF_REGION');
  t.is(code(() => queue.add([-8, 8], [], 'negative')), 'SEGMENT_OUT_OF_REGION');
  t.is(code(() => queue.add(new Array(18).fill(8), [], 'nine segments')), 'CHAIN_TOO_LONG');
  t.is(queue.freeDescriptors, 8);
  t.is(device.pendingAvailable(), 0);
});

for (const [label, features] of [
  ['direct', DIRECT],
  ['indirect', INDIRECT],
] as const) {
  test(`scattered pages (${label}): a segment that crosses runs becomes one descriptor per run, at the region's device addresses`, (t) => {
    const dma = new FakeDma(4 * 4096, { pageOrder: [2, 3, 0, 1], base: 0x1_0000_0000n });
    const { queue, device } = setup(8, { features }, dma);
    // Region pages 0-1 and 2-3 are contiguous runs; 1 -> 2 is not.
    t.true(queue.add([8000, 400], [4000, 200, 6000, 10000], 'straddles'));
    t.is(queue.freeDescriptors, features === DIRECT ? 8 - 5 : 7);
    const chain = device.pop()!;
    t.deepEqual(chain.readable, [{ offset: 8000, length: 192 }, { offset: 8192, length: 208 }]);
    t.deepEqual(chain.writable, [{ offset: 4000, length: 200 }, { offset: 6000, length: 2192 }, { offset: 8192, length: 7808 }]);
    // The device address of a piece is its run's: region 8192 is device page 0 of base 2^32.
    t.is(dma.deviceAddress(8192), 0x1_0000_0000n);
    t.true(queue.add([4000, 200], [8192, 4096], 'inside one run each'));
    const second = device.pop()!;
    t.deepEqual(second.readable, [{ offset: 4000, length: 200 }]);
    t.deepEqual(second.writable, [{ offset: 8192, length: 4096 }]);
  });
}

test('scattered pages: a chain counts its pieces against the free descriptors and the indirect table', (t) => {
  const dma = new FakeDma(4 * 4096, { pageOrder: [2, 3, 0, 1] });
  const direct = setup(4, { features: DIRECT }, dma);
  t.true(direct.queue.add([0, 16384], [], 'the whole region: two runs, two descriptors'));
  t.is(direct.queue.freeDescriptors, 2);
  t.false(direct.queue.add([0, 100], [8000, 400], 'three pieces, two free'));
  t.is(direct.queue.freeDescriptors, 2, 'a refused add changes nothing');
  t.deepEqual(direct.device.pop()!.readable, [{ offset: 0, length: 8192 }, { offset: 8192, length: 8192 }]);

  // Two readable segments fit a 2-entry indirect table; split into three pieces they do not: direct chain.
  const indirect = setup(8, { features: INDIRECT, maxIndirectSegments: 2 }, new FakeDma(4 * 4096, { pageOrder: [2, 3, 0, 1] }));
  t.true(indirect.queue.add([0, 100], [8000, 400], 'three pieces'));
  t.is(indirect.queue.freeDescriptors, 5);
  t.deepEqual(indirect.device.pop()!.writable, [{ offset: 8000, length: 192 }, { offset: 8192, length: 208 }]);
});

test('works over a SharedArrayBuffer too', (t) => {
  const { queue, device } = setup(4, { features: ALL }, new FakeDma(1 << 14, { shared: true }));
  t.true(queue.add([4096, 8], [4200, 8], 'shared'));
  device.complete([device.pop()!.head, 8]);
  const done: string[] = [];
  queue.drainUsed((token) => done.push(token), noProblems);
  t.deepEqual(done, ['shared']);
});

for (const [label, features] of [
  ['direct', DIRECT],
  ['indirect + event idx', ALL],
] as const) {
  test(`${label}: 70000 requests through an 8-entry queue wrap the 16-bit indexes`, (t) => {
    const dma = new FakeDma(1 << 16);
    const pool = new BufferPool({ region: dma, offset: 0x4000, slotSize: 32, slotCount: 4 });
    const { queue, device } = setup(8, { features, maxIndirectSegments: 3 }, dma);
    const total = 70000;
    const slotOf = new Map<string, number>();
    const readable = [0, 8];
    const writable = [0, 4, 0, 4];
    let sent = 0;
    let received = 0;
    const onComplete = (token: string, len: number) => {
      const slot = slotOf.get(token)!;
      const reply = dma.view.getUint32(pool.slotOffset(slot) + 16, true);
      if (len !== 8 || reply !== Number(token) + 1) t.fail(`request ${token}: len ${len}, reply ${reply}`);
      if (dma.view.getUint32(pool.slotOffset(slot) + 20, true) !== 0xfeed) t.fail('second writable segment');
      slotOf.delete(token);
      pool.release(slot);
      received++;
    };
    while (received < total) {
      // Fill until the pool (4 slots) or the queue (2 direct 3-descriptor chains) runs out.
      for (let slot = pool.acquire(); slot >= 0; slot = pool.acquire()) {
        const at = pool.slotOffset(slot);
        readable[0] = at;
        writable[0] = at + 16;
        writable[2] = at + 20;
        dma.view.setUint32(at, sent, true); // request contents before publishing
        if (sent === total || !queue.add(readable, writable, String(sent))) {
          pool.release(slot);
          break;
        }
        slotOf.set(String(sent++), slot);
      }
      queue.kickNeeded();
      // Complete in reverse order to exercise out-of-order returns.
      const chains = device.popAll().reverse();
      for (const chain of chains) {
        const n = dma.view.getUint32(chain.readable[0]!.offset, true);
        const reply = new Uint8Array(8);
        new DataView(reply.buffer).setUint32(0, n + 1, true);
        new DataView(reply.buffer).setUint32(4, 0xfeed, true);
        device.write(chain, reply);
      }
      device.complete(...chains.map((c) => [c.head, 8] as const));
      queue.drainUsed(onComplete, noProblems);
    }
    t.is(received, total);
    t.is(queue.inFlightCount, 0);
    t.is(queue.freeDescriptors, 8);
    t.is(pool.available, 4);
  });
}

test('failAll hands back every in-flight token and breaks the queue until reset', (t) => {
  const { dma, queue, device } = setup(8, { features: ALL });
  for (const token of ['a', 'b', 'c']) queue.add([0x1000, 8], [0x2000, 8, 0x3000, 8], token);
  device.complete([device.pop()!.head, 4]);
  queue.drainUsed(() => {}, noProblems);
  t.is(t.throws(() => queue.reset(), { instanceOf: VirtqueueError })!.code, 'REQUESTS_IN_FLIGHT');

  const failed: string[] = [];
  t.is(queue.failAll('transport closed', (token) => failed.push(token)), 2);
  t.deepEqual(failed.sort(), ['b', 'c']);
  t.is(queue.brokenReason, 'transport closed');
  t.is(t.throws(() => queue.add([0, 8], [], 'x'), { instanceOf: VirtqueueError })!.code, 'QUEUE_BROKEN');
  t.false(queue.kickNeeded());
  t.is(queue.failAll('again', () => t.fail()), 0);

  queue.reset();
  t.is(queue.brokenReason, undefined);
  t.is(queue.freeDescriptors, 8);
  t.true(dma.bytes.subarray(0, Virtqueue.bytesNeeded(8, { features: ALL })).every((b) => b === 0));
  const fresh = fakeDeviceFor(dma, queue, ALL);
  t.true(queue.add([0x1000, 8], [0x2000, 8], 'after reset'));
  t.true(queue.kickNeeded());
  fresh.complete([fresh.pop()!.head, 8]);
  const done: string[] = [];
  queue.drainUsed((token) => done.push(token), noProblems);
  t.deepEqual(done, ['after reset']);
});

test('adopt: a second Virtqueue over live rings (a per-queue thread taking over) continues from their indexes; with requests at the device it refuses', (t) => {
  const dma = new FakeDma(1 << 16);
  const { queue: first, device } = setup(8, { features: ALL }, dma);
  // Three requests through the first object, the last one left at the device.
  for (let i = 0; i < 3; i++) t.true(first.add([0x1000 + 64 * i, 16], [0x2000 + 64 * i, 32], `first${i}`));
  const chains = device.popAll();
  device.complete([chains[0]!.head, 8], [chains[1]!.head, 8]);
  const done: string[] = [];
  first.drainUsed((token) => done.push(token), noProblems);
  t.deepEqual(done, ['first0', 'first1']);
  const adopt = () => new Virtqueue<string>({ name: 'request0', region: dma, offset: 0, size: 8, features: ALL, adopt: true });
  const refused = t.throws(adopt, { instanceOf: VirtqueueError })!;
  t.is(refused.code, 'REQUESTS_IN_FLIGHT');
  t.regex(refused.message, /avail idx 3, used idx 2/);

  device.complete([chains[2]!.head, 8]);
  first.drainUsed((token) => done.push(token), noProblems);
  const second = adopt();
  t.is(second.freeDescriptors, 8, 'every descriptor is free for the new owner');
  // The device sees the next requests where it expects them (avail idx 3 on), and the new owner
  // takes their used entries from used idx 3 on; the ring is not zeroed under the device.
  for (let i = 0; i < 10; i++) {
    t.true(second.add([0x1000, 16], [0x2000, 32], `second${i}`));
    const chain = device.pop()!;
    t.truthy(chain, `request ${i} reaches the device`);
    device.complete([chain.head, 4]);
    const got: string[] = [];
    second.drainUsed((token, len) => got.push(`${token}:${len}`), noProblems);
    t.deepEqual(got, [`second${i}:4`]);
  }
  // Back to the first object, as when the thread returns the queue: it adopts the rings again.
  first.adoptRings();
  t.true(first.add([0x1000, 16], [0x2000, 32], 'back'));
  device.complete([device.pop()!.head, 2]);
  const back: string[] = [];
  first.drainUsed((token) => back.push(token), noProblems);
  t.deepEqual(back, ['back']);
});
