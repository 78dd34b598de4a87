// Several request queues: concurrent requests spread over all of them, come
// back out of order, and each gets its own reply; hiprio carries only
// FORGET / INTERRUPT.
import test from 'ava';
import { ROOT } from '../../client/client.ts';
import { FILE_SIZE, HELLO, SUB, connectFake, fileData, type FakeRequest } from '../helpers/fake-virtio-fs.ts';

const FILE = Buffer.from(fileData());
const HIPRIO_ONLY = new Set(['FORGET', 'BATCH_FORGET', 'INTERRUPT']);

for (const [label, features] of [
  ['EVENT_IDX + INDIRECT_DESC', { eventIdx: true, indirect: true }],
  ['no ring features (flags, direct chains)', { eventIdx: false, indirect: false }],
] as const) {
  test(`4 request queues, ${label}: 64 concurrent GETATTR/READ complete correctly on every queue`, async (t) => {
    // A reply delay that varies per request, so completions come back out of order within and across queues.
    const delayMs = (r: FakeRequest) => (r.seq * 7) % 5;
    // queueSize 256 gives 64 slots: all 64 requests are in flight at once.
    const { fake, client, logs } = await connectFake({ maxQueues: 5, delayMs, ...features }, { requestQueues: 4, queueSize: 256 });
    try {
      t.is(client.session.device.requestQueueCount, 4);
      const entry = await client.lookup(ROOT, 'hello.txt');
      const { fh } = await client.open(entry.nodeid, 0);
      const first = fake.requests.length;

      const maxRead = client.session.maxRead;
      const jobs = Array.from({ length: 64 }, async (_, i) => {
        if (i % 2 === 0) {
          const node = [ROOT, HELLO, SUB][i % 3]!;
          const attr = await client.getattr(node);
          t.is(attr.ino, node, `getattr ${i}`);
          if (node === HELLO) t.is(attr.size, BigInt(FILE_SIZE));
          return;
        }
        // Offsets and sizes that differ per request, some running into EOF, none beyond one request's room.
        const offset = (i * 4999) % FILE_SIZE;
        const size = Math.min(maxRead, 1000 + i * 2111);
        const data = await client.read(HELLO, fh, offset, size);
        t.true(data.equals(FILE.subarray(offset, offset + size)), `read ${i}: ${size} bytes at ${offset}`);
      });
      await Promise.all(jobs);
      await client.forget(HELLO, 1n);

      const batch = fake.requests.slice(first).filter((r) => r.name === 'GETATTR' || r.name === 'READ');
      t.is(batch.length, 64, 'one request each: no READ was split');
      const perQueue = [1, 2, 3, 4].map((q) => batch.filter((r) => r.queue === q).length);
      t.log(`requests per queue 1..4: ${perQueue.join(', ')}; most in flight at the device: ${fake.maxOutstanding}`);
      for (const [i, n] of perQueue.entries()) t.true(n > 0, `request queue ${i + 1} carried requests`);
      t.true(fake.maxOutstanding > 4, 'requests really were in flight together');
      const hiprio = fake.requestsOn(0).map((r) => r.name);
      t.true(hiprio.includes('FORGET'), 'FORGET went to hiprio');
      t.deepEqual(hiprio.filter((name) => !HIPRIO_ONLY.has(name)), [], 'nothing but FORGET/INTERRUPT on hiprio');
      t.deepEqual(fake.requests.filter((r) => r.queue !== 0 && HIPRIO_ONLY.has(r.name)).map((r) => `${r.name} on ${r.queue}`), []);
      t.is(client.session.device.inFlight, 0);
      t.deepEqual(fake.violations, []);
      t.deepEqual(logs, []);
    } finally {
      await client.close();
    }
  });
}

test('asking for more request queues than the device offers uses what it offers, and says so', async (t) => {
  const { fake, client, logs } = await connectFake({ maxQueues: 3 }, { requestQueues: 4 });
  try {
    t.is(client.session.device.requestQueueCount, 2);
    t.true(logs.some((l) => /offers 2 request queue\(s\); using 2/.test(l)), logs.join('\n'));
    await Promise.all(Array.from({ length: 8 }, () => client.getattr(HELLO)));
    t.deepEqual([...new Set(fake.requests.filter((r) => r.name === 'GETATTR').map((r) => r.queue))].sort(), [1, 2]);
  } finally {
    await client.close();
  }
});
