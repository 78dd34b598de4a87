// One virtqueue shared by several Virtqueue objects (client/virtio/queue-share.ts), as the
// reference device's queue threads share their backend's one request queue: each publishes from
// its own descriptors, whichever harvests routes the others' used entries to their inboxes, an
// owner asleep is woken, and a corrupt used ring breaks the share for all. One thread plays every
// member here; the routing and the checks are the same as across threads.
import test from 'ava';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../client/virtio/features.ts';
import { QueueShare, memberRange } from '../../client/virtio/queue-share.ts';
import { availRingBytes, usedRingBytes } from '../../client/virtio/ring-layout.ts';
import { Virtqueue, type UsedRingProblem } from '../../client/virtio/virtqueue.ts';
import { EventFd } from '../../ffi/event-fd.ts';
import { FakeDma } from '../helpers/fake-dma.ts';
import { fakeDeviceFor } from '../helpers/fake-split-ring-device.ts';

const ALL = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;
const SIZE = 8;

function setup(members = 2) {
  const dma = new FakeDma(1 << 16);
  // The owner sets the rings up; the members adopt them, as the threads do a lent queue.
  const owner = new Virtqueue<number>({ name: 'request0', region: dma, offset: 0, size: SIZE, features: ALL, maxIndirectSegments: 4 });
  const device = fakeDeviceFor(dma, owner, ALL);
  const layout = QueueShare.create(members, SIZE, 0);
  const wakes = Array.from({ length: members }, () => new EventFd());
  const parts = Array.from({ length: members }, (_, m) => {
    let share: QueueShare | undefined;
    const queue = new Virtqueue<number>({
      name: `member${m}`,
      region: dma,
      offset: 0,
      size: SIZE,
      features: ALL,
      maxIndirectSegments: 4,
      adopt: true,
      share: { ...memberRange(m, members, SIZE), publish: (head) => share!.publish(head) },
    });
    const at = dma.bytes.byteOffset;
    share = new QueueShare(
      layout,
      m,
      new Uint16Array(dma.bytes.buffer, at + queue.layout.availRing, availRingBytes(SIZE) / 2),
      new Uint16Array(dma.bytes.buffer, at + queue.layout.usedRing, usedRingBytes(SIZE) / 2),
      new Uint32Array(dma.bytes.buffer, at + queue.layout.usedRing, 1 + 2 * SIZE),
      true,
      wakes.map((w) => w.fd),
    );
    const done: number[] = [];
    const take = (position: number, id: number, len: number) => queue.completeUsed(position, id, len, (token) => done.push(token), noProblems);
    return { queue, share, done, take };
  });
  return { dma, device, layout, wakes, parts };
}

function noProblems(problem: UsedRingProblem<unknown>): never {
  throw new Error(`unexpected used-ring problem: ${problem.reason}`);
}

test('members publish from their own descriptors; one harvest routes each used entry to its owner', (t) => {
  const { device, wakes, parts } = setup();
  const [a, b] = parts as [(typeof parts)[0], (typeof parts)[0]];
  t.true(a.queue.add([4096, 64], [8192, 64], 10));
  t.true(b.queue.add([4096 + 128, 64], [8192 + 128, 64], 20));
  t.true(a.queue.add([4096 + 256, 64], [8192 + 256, 64], 11));
  // Kicks: the device asked for one at entry 0 (avail_event 0): the first publish says so, the rest do not.
  t.true(a.queue.kickNeeded());
  t.false(b.queue.kickNeeded());
  const chains = device.popAll();
  t.is(chains.length, 3);
  const heads = chains.map((c) => c.head);
  t.true(heads[0]! < 4 && heads[1]! >= 4 && heads[2]! < 4, `member 0 owns descriptors 0-3, member 1 4-7: ${heads.join(', ')}`);
  device.complete([heads[1]!, 5], [heads[0]!, 6], [heads[2]!, 7]);
  t.true(a.share.hasUsed());
  t.true(a.share.harvest(a.take));
  t.deepEqual(a.done, [10, 11], 'the harvester completes its own');
  t.deepEqual(b.done, [], 'and leaves the others\' to them');
  t.false(a.share.hasUsed(), 'every entry is taken');
  t.is(wakes[1]!.drain(), 0, 'member 1 was awake: not woken');
  t.true(b.share.hasInbox());
  b.share.takeInbox(b.take);
  t.deepEqual(b.done, [20]);
  t.is(b.queue.inFlightCount, 0);
  t.is(a.queue.inFlightCount, 0);
  t.is(device.usedEvent(), 3, 'used_event follows the harvest: notify on the next entry');
});

test('an owner going to sleep is woken by the harvester that finds its entry; one with work waiting does not sleep', (t) => {
  const { device, wakes, parts } = setup();
  const [a, b] = parts as [(typeof parts)[0], (typeof parts)[0]];
  t.true(b.queue.add([4096, 64], [8192, 64], 20));
  t.true(b.share.goingToSleep(), 'nothing to do: it may sleep');
  const [chain] = device.popAll();
  device.complete([chain!.head, 1]);
  t.true(a.share.harvest(a.take));
  t.is(wakes[1]!.drain(), 1, 'the sleeping owner is woken');
  b.share.awake();
  t.false(b.share.goingToSleep(), 'its inbox holds an entry: it stays awake');
  b.share.takeInbox(b.take);
  t.deepEqual(b.done, [20]);
  t.true(b.share.goingToSleep());
});

test('a used entry outside the table breaks the share for every member; a duplicate breaks its owner\'s queue', (t) => {
  {
    const { device, parts } = setup();
    const [a, b] = parts as [(typeof parts)[0], (typeof parts)[0]];
    t.true(a.queue.add([4096, 64], [8192, 64], 10));
    device.popAll();
    device.complete([SIZE + 1, 0]);
    t.false(a.share.harvest(a.take));
    t.true(a.share.broken && b.share.broken);
  }
  {
    const { device, parts } = setup();
    const [a, b] = parts as [(typeof parts)[0], (typeof parts)[0]];
    t.true(b.queue.add([4096, 64], [8192, 64], 20));
    const [chain] = device.popAll();
    device.complete([chain!.head, 1], [chain!.head, 1]);
    t.true(a.share.harvest(a.take));
    const problems: string[] = [];
    b.share.takeInbox((position, id, len) => b.queue.completeUsed(position, id, len, (token) => b.done.push(token), (p) => problems.push(p.reason)));
    t.deepEqual(b.done, [20]);
    t.deepEqual(problems, [`id ${chain!.head} was already completed (duplicate used entry)`]);
    t.regex(b.queue.brokenReason ?? '', /duplicate/);
  }
});
