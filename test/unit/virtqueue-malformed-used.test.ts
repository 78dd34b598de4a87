import test from 'ava';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../client/virtio/features.ts';
import { Virtqueue, VirtqueueError, type UsedRingProblem } from '../../client/virtio/virtqueue.ts';
import { FakeDma } from '../helpers/fake-dma.ts';
import { fakeDeviceFor } from '../helpers/fake-split-ring-device.ts';

function setup(features: bigint) {
  const dma = new FakeDma(1 << 16);
  const queue = new Virtqueue<string>({ name: 'request3', region: dma, offset: 0, size: 8, features, maxIndirectSegments: 4 });
  return { dma, queue, device: fakeDeviceFor(dma, queue, features) };
}

function collector() {
  const completed: [string, number][] = [];
  const problems: UsedRingProblem<string>[] = [];
  return {
    completed,
    problems,
    onComplete: (token: string, len: number) => void completed.push([token, len]),
    onProblem: (problem: UsedRingProblem<string>) => void problems.push(problem),
  };
}

for (const [label, features] of [
  ['direct chains', VIRTIO_F_VERSION_1],
  ['indirect tables', VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX],
] as const) {
  test(`${label}: a len beyond the chain fails that chain alone (reclaimed, token handed back); later completions still work`, (t) => {
    const { queue, device } = setup(features);
    t.true(queue.add([0x1000, 16], [0x2000, 32, 0x3000, 32], 'A')); // 64 writable bytes
    t.true(queue.add([0x1100, 16], [0x2100, 8], 'B')); // 8 writable bytes
    const [a, b] = device.popAll();
    device.complete(
      [a!.head, 64], // good
      [b!.head, 9], // len larger than the chain's writable bytes
    );
    const seen = collector();
    t.is(queue.drainUsed(seen.onComplete, seen.onProblem), 1);
    t.deepEqual(seen.completed, [['A', 64]]);
    t.deepEqual(
      seen.problems.map(({ queue, usedIndex, field, value, token }) => ({ queue, usedIndex, field, value, token })),
      [{ queue: 'request3', usedIndex: 1, field: 'len', value: 9, token: 'B' }],
    );
    t.regex(seen.problems[0]!.reason, /len 9 exceeds the 8 device-writable bytes/);
    t.is(queue.inFlightCount, 0);
    t.is(queue.freeDescriptors, 8);
    t.is(queue.brokenReason, undefined);

    // The queue keeps working at full capacity.
    const tokens = ['C', 'D', 'E', 'F'];
    for (const token of tokens) t.true(queue.add([0x1200, 8], [0x2200, 8], token));
    const chains = device.popAll();
    t.is(new Set(chains.map((c) => c.head)).size, 4);
    device.complete(...chains.map((c) => [c.head, 8] as const));
    const after = collector();
    t.is(queue.drainUsed(after.onComplete, after.onProblem), 4);
    t.deepEqual(after.completed, tokens.map((token) => [token, 8]));
    t.deepEqual(after.problems, []);
    t.is(queue.freeDescriptors, 8);
  });

  for (const [what, id, reason] of [
    ['an id out of range', () => 0xffff_ffff, /id 4294967295 is out of range for queue size 8/],
    ['an id equal to the queue size', () => 8, /id 8 is out of range/],
    ['an id that is not the head of an in-flight chain', (a: { head: number; indirect: boolean }) => (a.indirect ? 7 : a.head + 1), /is not the head of an in-flight chain/],
    ['a duplicate used entry', (a: { head: number }) => a.head, /already completed \(duplicate used entry\)/],
  ] as const) {
    test(`${label}: ${what} breaks the queue (the device lost track of its chains); failAll hands back what was in flight`, (t) => {
      const { queue, device } = setup(features);
      t.true(queue.add([0x1000, 16], [0x2000, 32], 'A'));
      t.true(queue.add([0x1100, 16], [0x2100, 8], 'B'));
      const [a] = device.popAll();
      const bad = id(a as { head: number; indirect: boolean });
      // A duplicate needs the first completion before it.
      if (what === 'a duplicate used entry') device.complete([a!.head, 4], [bad, 4]);
      else device.complete([bad, 4], [a!.head, 4]);
      const seen = collector();
      queue.drainUsed(seen.onComplete, seen.onProblem);
      t.is(seen.problems.length, 1);
      t.like(seen.problems[0], { field: 'id', value: bad, token: undefined });
      t.regex(seen.problems[0]!.reason, reason);
      t.regex(queue.brokenReason!, /corrupt used ring/);
      t.is(queue.drainUsed(seen.onComplete, seen.onProblem), 0, 'a broken queue reads nothing more');
      const failed: string[] = [];
      queue.failAll('device broken', (token) => failed.push(token));
      t.deepEqual([...seen.completed.map(([token]) => token), ...failed].sort(), ['A', 'B'], 'every token comes back once');
    });
  }
}

test('a used idx more than the queue size ahead marks the queue broken; failAll recovers the tokens', (t) => {
  const { dma, queue, device } = setup(VIRTIO_F_VERSION_1);
  queue.add([0x1000, 8], [0x2000, 8], 'A');
  queue.add([0x1100, 8], [0x2100, 8], 'B');
  device.popAll();
  device.setUsedIdx(9);
  const seen = collector();
  t.is(queue.drainUsed(seen.onComplete, seen.onProblem), 0);
  t.is(seen.problems.length, 1);
  t.like(seen.problems[0], { queue: 'request3', field: 'idx', value: 9, usedIndex: 0, token: undefined });
  t.regex(queue.brokenReason!, /used idx 9 is 9 entries ahead of 0/);
  t.false(queue.hasUsed());
  t.is(queue.drainUsed(seen.onComplete, seen.onProblem), 0, 'a broken queue reads nothing more');
  t.is(seen.problems.length, 1);
  t.is(t.throws(() => queue.add([0x1000, 8], [], 'C'), { instanceOf: VirtqueueError })!.code, 'QUEUE_BROKEN');

  const failed: string[] = [];
  t.is(queue.failAll('device reset', (token) => failed.push(token)), 2);
  t.deepEqual(failed.sort(), ['A', 'B']);
  t.regex(queue.brokenReason!, /corrupt used ring/, 'the first reason is kept');
  queue.reset();
  const fresh = fakeDeviceFor(dma, queue, VIRTIO_F_VERSION_1);
  queue.add([0x1000, 8], [0x2000, 8], 'C');
  fresh.complete([fresh.pop()!.head, 8]);
  const after = collector();
  queue.drainUsed(after.onComplete, after.onProblem);
  t.deepEqual(after.completed, [['C', 8]]);
});

test('a used idx that moved backwards is caught the same way', (t) => {
  const { queue, device } = setup(VIRTIO_F_VERSION_1);
  queue.add([0x1000, 8], [0x2000, 8], 'A');
  device.complete([device.pop()!.head, 8]);
  const seen = collector();
  queue.drainUsed(seen.onComplete, seen.onProblem);
  device.setUsedIdx(0); // 1 -> 0: 65535 entries "ahead"
  queue.drainUsed(seen.onComplete, seen.onProblem);
  t.is(seen.problems.length, 1);
  t.like(seen.problems[0], { field: 'idx', value: 0, usedIndex: 1 });
  t.truthy(queue.brokenReason);
});

test('a completion callback may fail the queue; the drain stops there', (t) => {
  const { queue, device } = setup(VIRTIO_F_VERSION_1);
  for (const token of ['A', 'B', 'C']) queue.add([0x1000, 8], [0x2000, 8], token);
  device.complete(...device.popAll().map((c) => [c.head, 1] as const));
  const failed: string[] = [];
  const completed: string[] = [];
  const drained = queue.drainUsed(
    (token) => {
      completed.push(token);
      queue.failAll('reply said the session is gone', (other) => failed.push(other));
    },
    () => t.fail(),
  );
  t.is(drained, 1);
  t.deepEqual(completed, ['A']);
  t.deepEqual(failed.sort(), ['B', 'C']);
  t.is(queue.inFlightCount, 0);
});
