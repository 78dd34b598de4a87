import test from 'ava';
import { EventFd } from '../../ffi/event-fd.ts';
import { ForgetMailbox } from '../../client/frontend/forget-mailbox.ts';

function mailbox(largest: number) {
  const doorbell = new EventFd();
  const box = new ForgetMailbox(ForgetMailbox.create(largest), doorbell.fd);
  return { box, doorbell };
}

const bytes = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

test('records go through whole and in order, head and tail parts joined, the doorbell rung once per record', (t) => {
  const { box, doorbell } = mailbox(1000);
  t.teardown(() => doorbell.close());
  const into = new Uint8Array(2000);
  t.is(box.take(into), -1, 'empty');
  t.true(box.put(bytes(48, 1), 48, new Uint8Array(0), 0));
  t.true(box.put(bytes(80, 2), 80, bytes(300, 3), 300));
  t.is(doorbell.drain(), 2);
  t.is(box.take(into), 48);
  t.deepEqual(into.subarray(0, 48), bytes(48, 1));
  t.is(box.take(into), 380);
  t.deepEqual(into.subarray(0, 80), bytes(80, 2));
  t.deepEqual(into.subarray(80, 380), bytes(300, 3));
  t.is(box.take(into), -1);
});

test('records that wrap around the end of the ring come out intact', (t) => {
  const { box, doorbell } = mailbox(700);
  t.teardown(() => doorbell.close());
  const into = new Uint8Array(1000);
  const damaged: number[] = [];
  // Sizes that do not divide the capacity: over many rounds every offset of the wrap is hit.
  for (let round = 0; round < 200; round++) {
    const n = 40 + ((round * 37) % 650);
    t.true(box.put(bytes(n, round), Math.min(n, 80), bytes(n, round).subarray(80), Math.max(0, n - 80)));
    t.is(box.take(into), n);
    if (!into.subarray(0, n).every((b, i) => b === ((i * 7 + round) & 0xff))) damaged.push(round);
  }
  t.deepEqual(damaged, [], 'every record intact');
});

test('a full mailbox makes the producer wait for room, and gives up (false) when nobody takes anything', (t) => {
  const { box, doorbell } = mailbox(100);
  t.teardown(() => doorbell.close());
  let put = 0;
  while (box.put(bytes(100, put), 100, new Uint8Array(0), 0, 0)) put++;
  t.true(put >= 2, `holds at least two of the largest records (${put})`);
  const started = Date.now();
  t.false(box.put(bytes(100, 9), 100, new Uint8Array(0), 0, 150));
  t.true(Date.now() - started >= 140, 'waited for room before giving up');
  t.is(box.take(new Uint8Array(100)), 100);
  t.true(box.put(bytes(100, 9), 100, new Uint8Array(0), 0, 0), 'room again once one was taken');
});
