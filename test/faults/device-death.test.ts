// A device that dies, and one that stops answering: requests end in bounded
// time with a useful error, nothing throws uncaught, nothing hangs, and a slot
// the device still owns is never handed to another request.
import test, { type ExecutionContext } from 'ava';
import { ROOT } from '../../client/client.ts';
import { ErrnoError } from '../../ffi/errno.ts';
import type { DeviceSegment } from '../helpers/fake-split-ring-device.ts';
import { FILE_SIZE, HELLO, SUB, connectFake, fileData, until, type FakeRequest } from '../helpers/fake-virtio-fs.ts';

const FILE = Buffer.from(fileData());
/** fh the fake filesystem hands out for hello.txt and the root (any value works: it does not check). */
const HELLO_FH = 100n + HELLO;
const ROOT_FH = 100n + ROOT;

type Outcome = { ok: true; ms: number } | { ok: false; error: unknown; ms: number };

/** Each promise's outcome and when it settled, in ms after `since`. */
function outcomes(promises: Promise<unknown>[], since: number): Promise<Outcome[]> {
  return Promise.all(
    promises.map((p) =>
      p.then(
        (): Outcome => ({ ok: true, ms: performance.now() - since }),
        (error: unknown): Outcome => ({ ok: false, error, ms: performance.now() - since }),
      ),
    ),
  );
}

/** A rejection a caller can act on: an Error with a string code, ENOTCONN here, naming the device. */
function assertDeviceGone(t: ExecutionContext, outcome: Outcome, device: string, withinMs: number): void {
  t.false(outcome.ok, 'rejected');
  if (outcome.ok) return;
  const error = outcome.error as Error & { code?: unknown };
  t.true(error instanceof Error, String(error));
  t.is(typeof error.code, 'string', `${error.name} has a code`);
  t.is(error.code, 'ENOTCONN');
  t.true(error.message.includes(device), `the message names the device: ${error.message}`);
  t.true(outcome.ms < withinMs, `rejected after ${outcome.ms.toFixed(1)} ms, limit ${withinMs}`);
}

test('requests in flight when the device dies are rejected within 2 s; new ones at once', async (t) => {
  const { fake, client } = await connectFake({ maxQueues: 3 }, { requestQueues: 2 });
  try {
    fake.fault = (r) => (r.queue === 0 ? undefined : 'hold');
    const inFlight = [
      client.getattr(HELLO),
      client.lookup(ROOT, 'sub'),
      client.read(HELLO, HELLO_FH, 0, 8192),
      client.readdirplus(ROOT, ROOT_FH, 0n),
      client.statfs(),
    ];
    await until(() => fake.held.length === inFlight.length, 2000, 'every request to reach the device');

    const died = performance.now();
    fake.die();
    for (const outcome of await outcomes(inFlight, died)) assertDeviceGone(t, outcome, fake.description, 2000);
    t.is(client.session.device.failed, fake.failure);

    const seen = fake.requests.length;
    const later = performance.now();
    const again = await outcomes([client.getattr(HELLO), client.read(HELLO, HELLO_FH, 0, 4096), client.forget(HELLO, 1n)], later);
    for (const outcome of again) assertDeviceGone(t, outcome, fake.description, 250);
    t.is(fake.requests.length, seen, 'nothing more reached the device');
    t.deepEqual(fake.violations, []);
  } finally {
    await client.close();
  }
  t.true(fake.closed, 'close() after the death released the transport');
});

test('requests waiting for a slot when the device dies are rejected too', async (t) => {
  const { fake, client } = await connectFake({}, { maxInFlight: 2 });
  try {
    fake.fault = () => 'hold';
    const requests = Array.from({ length: 6 }, (_, i) => (i % 2 ? client.getattr(HELLO) : client.read(HELLO, HELLO_FH, i * 4096, 4096)));
    await until(() => fake.held.length === 2, 2000, 'both slots to be in flight');
    const died = performance.now();
    fake.die();
    for (const outcome of await outcomes(requests, died)) assertDeviceGone(t, outcome, fake.description, 2000);
    t.is(fake.held.length, 0);
  } finally {
    await client.close();
  }
});

test('a device that dies on receiving a request fails it and every other pending one', async (t) => {
  const { fake, client } = await connectFake();
  try {
    fake.fault = (r) => (r.queue === 0 ? undefined : 'hold');
    fake.faultNext('READ', () => 'die');
    const others = [client.getattr(HELLO), client.lookup(ROOT, 'hello.txt')];
    await until(() => fake.held.length === 2, 2000, 'the first requests');
    const since = performance.now();
    const results = await outcomes([client.read(HELLO, HELLO_FH, 0, 4096), ...others], since);
    for (const outcome of results) assertDeviceGone(t, outcome, fake.description, 2000);
    await t.throwsAsync(client.list(ROOT), { code: 'ENOTCONN' });
  } finally {
    await client.close();
  }
});

test('close() with requests in flight rejects them and does not hang', async (t) => {
  const { fake, client } = await connectFake();
  fake.fault = (r) => (r.name === 'GETATTR' ? 'hold' : undefined);
  const pending = client.getattr(HELLO);
  await until(() => fake.held.length === 1);
  const since = performance.now();
  await client.close();
  const [outcome] = await outcomes([pending], since);
  t.false(outcome!.ok);
  if (!outcome!.ok) t.is((outcome!.error as { code?: string }).code, 'ENOTCONN');
  t.true(outcome!.ms < 2000);
  t.true(fake.closed);
});

function overlaps(a: readonly DeviceSegment[], b: readonly DeviceSegment[]): boolean {
  return a.some((x) => b.some((y) => x.offset < y.offset + y.length && y.offset < x.offset + x.length));
}

const buffersOf = (r: FakeRequest) => [...r.readable, ...r.writable];

test('a device that never answers: INTERRUPT on hiprio, then ETIMEDOUT; its slot stays out of use until the device returns it', async (t) => {
  const timeoutMs = 200;
  // READs are answered a little late, so one is in flight when the stale answer arrives.
  const { fake, client, logs } = await connectFake({ delayMs: (r) => (r.name === 'READ' ? 30 : 0) }, { timeoutMs });
  try {
    fake.faultNext('GETATTR', () => 'hold');
    const started = performance.now();
    const stuck = client.getattr(HELLO);
    await until(() => fake.held.length === 1, 2000, 'the GETATTR to reach the device');
    const held = fake.held[0]!;

    // The client keeps working meanwhile.
    for (let i = 0; i < 3; i++) t.is((await client.getattr(SUB)).ino, SUB);

    const error = await t.throwsAsync(stuck);
    const elapsed = performance.now() - started;
    t.true(error instanceof ErrnoError, `${error?.name}: ${error?.message}`);
    t.is((error as ErrnoError).code, 'ETIMEDOUT');
    t.true(elapsed >= 2 * timeoutMs - 20 && elapsed < 2000, `ETIMEDOUT after ${elapsed.toFixed(0)} ms`);

    const interrupts = fake.requests.filter((r) => r.name === 'INTERRUPT');
    t.is(interrupts.length, 1, 'one INTERRUPT');
    t.is(interrupts[0]!.queue, 0, 'on the hiprio queue');
    t.is(interrupts[0]!.arg?.unique, held.unique, 'naming the stuck request');
    // Measured from the call, which precedes the submit the session's timer starts at.
    const after = interrupts[0]!.at - started;
    t.true(after >= timeoutMs - 20 && after < elapsed, `INTERRUPT ${after.toFixed(0)} ms after the call, before ETIMEDOUT (${elapsed.toFixed(0)} ms)`);
    t.true(logs.some((l) => l.includes('GETATTR') && l.includes(`unique ${held.unique}`) && l.includes('FUSE_INTERRUPT')), logs.join('\n'));
    t.is(client.session.device.inFlight, 1, 'the device still owns the stuck request\'s slot');

    // More requests than there are free slots: every free slot gets used, the stuck one must not.
    const burst = Array.from({ length: 40 }, (_, i) =>
      i % 2 ? client.getattr(HELLO).then((a) => t.is(a.size, BigInt(FILE_SIZE))) : client.read(HELLO, HELLO_FH, i * 1000, 3000).then((b) => t.true(b.equals(FILE.subarray(i * 1000, i * 1000 + 3000)))),
    );
    await Promise.all(burst);
    const since = fake.requests.filter((r) => r.seq > held.seq);
    t.true(since.length > 40);
    t.deepEqual(since.filter((r) => overlaps(buffersOf(r), buffersOf(held))).map((r) => `${r.name} unique ${r.unique}`), [], 'no request used the stuck slot');

    // The device answers the stuck request at last, while a READ is in flight.
    const reading = client.read(HELLO, HELLO_FH, 8192, 65536);
    await until(() => fake.outstanding === 2, 2000, 'the READ to reach the device');
    t.is(fake.answerHeld(), 1);
    t.true((await reading).equals(FILE.subarray(8192, 8192 + 65536)), 'the stale answer did not disturb the READ');
    await until(() => client.session.device.inFlight === 0, 2000, 'the stuck slot to come back');
    t.is((await client.getattr(HELLO)).size, BigInt(FILE_SIZE));
    t.deepEqual((await client.list(ROOT)).map((e) => e.name), ['.', '..', 'hello.txt', 'sub']);
    t.is(client.session.device.failed, undefined);
    t.deepEqual(fake.violations, []);
  } finally {
    await client.close();
  }
});

test('a device that stops answering and then dies: the timed-out request and the rest end cleanly', async (t) => {
  const { fake, client } = await connectFake({}, { timeoutMs: 100 });
  try {
    fake.fault = (r) => (r.queue === 0 ? undefined : 'hold');
    const first = client.getattr(HELLO);
    await t.throwsAsync(first, { instanceOf: ErrnoError, code: 'ETIMEDOUT' });
    const second = client.getattr(SUB);
    await until(() => fake.held.length === 2);
    const died = performance.now();
    fake.die();
    const [outcome] = await outcomes([second], died);
    assertDeviceGone(t, outcome!, fake.description, 2000);
    t.is(client.session.device.inFlight, 0, 'the abandoned slot was reclaimed by the failure');
  } finally {
    await client.close();
  }
});
