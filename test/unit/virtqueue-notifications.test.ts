import test from 'ava';
import { needsEvent } from '../../client/virtio/event-idx.ts';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX } from '../../client/virtio/features.ts';
import { Virtqueue, type UsedRingProblem } from '../../client/virtio/virtqueue.ts';
import { FakeDma } from '../helpers/fake-dma.ts';
import { fakeDeviceFor, type FakeSplitRingDevice } from '../helpers/fake-split-ring-device.ts';

const FLAGS_ONLY = VIRTIO_F_VERSION_1;
const EVENT_IDX = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;

function setup(features: bigint, size = 8) {
  const dma = new FakeDma(1 << 16);
  const queue = new Virtqueue<number>({ name: 'hiprio', region: dma, offset: 0, size, features });
  return { queue, device: fakeDeviceFor(dma, queue, features) };
}

function noProblems(problem: UsedRingProblem<unknown>): never {
  throw new Error(`unexpected used-ring problem: ${problem.reason}`);
}

/** Adds n one-segment requests. */
function addRequests(queue: Virtqueue<number>, n: number): void {
  for (let i = 0; i < n; i++) if (!queue.add([0x4000 + 64 * i, 64], [], i)) throw new Error('queue full');
}

/** Device consumes and returns everything; driver drains it. */
function roundTrip(queue: Virtqueue<number>, device: FakeSplitRingDevice): void {
  device.complete(...device.popAll().map((c) => [c.head, 0] as const));
  queue.drainUsed(() => {}, noProblems);
}

test('needsEvent is the spec rule: event index within [old, new) modulo 2^16', (t) => {
  t.true(needsEvent(0, 3, 0));
  t.false(needsEvent(5, 4, 3));
  t.true(needsEvent(5, 6, 5));
  t.false(needsEvent(3, 3, 0)); // entry 3 not written yet
  t.true(needsEvent(65535, 1, 65534));
  t.true(needsEvent(0, 1, 65534));
  t.false(needsEvent(65533, 1, 65534));
  t.false(needsEvent(2, 1, 65534));
});

test('without EVENT_IDX, kickNeeded follows used.flags NO_NOTIFY', (t) => {
  const { queue, device } = setup(FLAGS_ONLY);
  t.false(queue.kickNeeded(), 'nothing added');
  addRequests(queue, 1);
  t.true(queue.kickNeeded());
  t.false(queue.kickNeeded(), 'already decided for that batch');
  device.setNoNotify(true);
  addRequests(queue, 2);
  t.false(queue.kickNeeded());
  device.setNoNotify(false);
  addRequests(queue, 1);
  t.true(queue.kickNeeded());
});

test('with EVENT_IDX, kickNeeded follows avail_event (hand-computed cases)', (t) => {
  const { queue, device } = setup(EVENT_IDX);
  device.setNoNotify(true); // must be ignored with EVENT_IDX
  addRequests(queue, 3); // avail idx 0 -> 3, avail_event 0: entry 0 was written
  t.true(queue.kickNeeded());
  device.setAvailEvent(5);
  addRequests(queue, 1); // 3 -> 4
  t.false(queue.kickNeeded());
  addRequests(queue, 1); // 4 -> 5: entry 5 not yet written
  t.false(queue.kickNeeded());
  addRequests(queue, 1); // 5 -> 6: entry 5 written
  t.true(queue.kickNeeded());
  device.setAvailEvent(7);
  addRequests(queue, 2); // 6 -> 8 covers entry 7
  t.true(queue.kickNeeded());
  device.setAvailEvent(7); // device has not moved it: no more kicks until idx wraps
  roundTrip(queue, device);
  addRequests(queue, 4); // 8 -> 12
  t.false(queue.kickNeeded());
});

test('with EVENT_IDX, kick decisions across the 65535 -> 0 wrap', (t) => {
  const { queue, device } = setup(EVENT_IDX, 4);
  let availIdx = 0;
  /** Cycles requests in batches of up to 4 (the queue size) until avail idx is `target`. */
  const advanceTo = (target: number) => {
    while (availIdx !== target) {
      const batch = Math.min(4, (target - availIdx) & 0xffff);
      addRequests(queue, batch);
      queue.kickNeeded();
      roundTrip(queue, device);
      availIdx = (availIdx + batch) & 0xffff;
    }
  };
  const cases: [availEvent: number, kick: boolean][] = [
    [65535, true], // old 65534, new 1: entry 65535 written
    [0, true],
    [65534, true],
    [1, false], // entry 1 not written yet
    [65533, false], // before this batch
  ];
  for (const [availEvent, kick] of cases) {
    advanceTo(65534);
    device.setAvailEvent(availEvent);
    addRequests(queue, 3); // 65534 -> 1
    t.is(queue.kickNeeded(), kick, `avail_event ${availEvent}`);
    roundTrip(queue, device);
    availIdx = 1;
  }
});

test('without EVENT_IDX, callbacks toggle avail.flags NO_INTERRUPT', (t) => {
  const { queue, device } = setup(FLAGS_ONLY);
  addRequests(queue, 4);
  const [a, b, c, d] = device.popAll();
  device.complete([a!.head, 0]);
  t.is(device.notifications, 1);

  queue.disableCallbacks();
  t.is(device.availFlags(), 1);
  device.complete([b!.head, 0]);
  t.is(device.notifications, 1);
  t.false(queue.enableCallbacks(), 'entries are pending: drain before waiting');
  t.is(device.availFlags(), 0);
  t.is(queue.drainUsed(() => {}, noProblems), 2);
  t.true(queue.enableCallbacks());
  device.complete([c!.head, 0], [d!.head, 0]);
  t.is(device.notifications, 2);
});

test('with EVENT_IDX, used_event asks for one notification per drain; disabled parks it behind', (t) => {
  const { queue, device } = setup(EVENT_IDX);
  addRequests(queue, 8);
  const chains = device.popAll();
  const next = () => [chains.shift()!.head, 0] as const;
  t.is(device.usedEvent(), 0);

  device.complete(next()); // used idx 0 -> 1 hits used_event 0
  t.is(device.notifications, 1);
  device.complete(next()); // 1 -> 2: driver has not drained yet, no second notification
  t.is(device.notifications, 1);
  t.is(queue.drainUsed(() => {}, noProblems), 2);
  t.is(device.usedEvent(), 2);
  device.complete(next(), next()); // 2 -> 4 covers entry 2
  t.is(device.notifications, 2);
  queue.drainUsed(() => {}, noProblems);

  queue.disableCallbacks();
  t.is(device.usedEvent(), 3); // one behind last used 4
  t.is(device.availFlags(), 0, 'flags must stay 0 with EVENT_IDX');
  device.complete(next(), next());
  t.is(device.notifications, 2);
  queue.drainUsed(() => {}, noProblems);
  t.is(device.usedEvent(), 5, 'still parked behind after draining');

  t.true(queue.enableCallbacks());
  t.is(device.usedEvent(), 6);
  device.complete(next());
  t.is(device.notifications, 3);
  t.false(queue.enableCallbacks(), 'the entry is pending');
});
