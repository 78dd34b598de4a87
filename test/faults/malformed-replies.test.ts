// Malformed replies from a device: each fails only its own request with EIO,
// leaves a log line naming the opcode and the field, and the client carries on.
import test, { type ExecutionContext } from 'ava';
import { ROOT, type VirtioFsClient } from '../../client/client.ts';
import { ErrnoError, errnoNumber } from '../../ffi/errno.ts';
import { FILE_SIZE, HELLO, SUB, connectFake, fileData, patchOutHeader, until, type FakeVirtioFs } from '../helpers/fake-virtio-fs.ts';
import { MALFORMED_CASES, type MalformedCase } from '../helpers/malformed-cases.ts';

const FILE = Buffer.from(fileData());

/** Runs `op` against the client (the request the fault hits). */
async function run(client: VirtioFsClient, op: MalformedCase['op']): Promise<unknown> {
  switch (op) {
    case 'GETATTR':
      return client.getattr(HELLO);
    case 'READ': {
      const { fh } = await client.open(HELLO, 0);
      return client.read(HELLO, fh, 4096, 4096);
    }
    case 'READDIRPLUS': {
      const { fh } = await client.opendir(ROOT);
      return client.readdirplus(ROOT, fh, 0n);
    }
  }
}

/** Later requests on the same client: metadata, data and a directory all still work. */
async function stillWorks(t: ExecutionContext, client: VirtioFsClient, fake: FakeVirtioFs): Promise<void> {
  const attr = await client.getattr(HELLO);
  t.is(attr.size, BigInt(FILE_SIZE));
  t.is((await client.lookup(ROOT, 'sub')).nodeid, SUB);
  const { fh } = await client.open(HELLO, 0);
  t.true((await client.read(HELLO, fh, 4096, 4096)).equals(FILE.subarray(4096, 8192)));
  t.deepEqual((await client.list(ROOT)).map((e) => e.name), ['.', '..', 'hello.txt', 'sub']);
  t.is(client.session.device.inFlight, 0, 'every slot came back');
  t.is(client.session.device.failed, undefined, 'one bad reply does not fail the device');
  t.deepEqual(fake.violations, []);
}

function malformed(title: string, c: MalformedCase): void {
  test(title, async (t) => {
    const { fake, client, logs } = await connectFake();
    try {
      fake.faultNext(c.op, c.fault);
      const error = await t.throwsAsync(run(client, c.op));
      t.true(error instanceof ErrnoError, `${error?.name}: ${error?.message}`);
      t.is((error as ErrnoError).code, 'EIO');
      t.is((error as ErrnoError).errno, errnoNumber('EIO'));
      const line = logs.find((l) => l.includes(c.op) && c.field.test(l));
      t.truthy(line, `a log line names ${c.op} and ${c.field}; got:\n${logs.join('\n')}`);
      t.log(line);
      await stillWorks(t, client, fake);
    } finally {
      await client.close();
    }
  });
}

for (const c of MALFORMED_CASES) malformed(c.title, c);

test('a reply carrying another request\'s unique fails the first request only', async (t) => {
  const { fake, client, logs } = await connectFake();
  try {
    fake.faultNext('GETATTR', () => 'hold');
    const first = client.getattr(HELLO);
    await until(() => fake.held.length === 1, 2000, 'the first GETATTR');
    const second = client.getattr(SUB);
    await until(() => fake.requests.filter((r) => r.name === 'GETATTR').length === 2, 2000, 'the second GETATTR');
    const secondUnique = fake.requests.filter((r) => r.name === 'GETATTR')[1]!.unique;
    // The device answers the first request with the second's unique.
    fake.answerHeld((_r, reply) => void patchOutHeader(reply.bytes, { unique: secondUnique }));
    const error = await t.throwsAsync(first);
    t.true(error instanceof ErrnoError);
    t.is((error as ErrnoError).code, 'EIO');
    t.is((await second).ino, SUB, 'the request whose unique was borrowed gets its own reply');
    const line = logs.find((l) => l.includes('GETATTR') && /fuse_out_header\.unique\b/.test(l));
    t.truthy(line, logs.join('\n'));
    t.regex(line!, new RegExp(`unique ${secondUnique}\\b`));
    await stillWorks(t, client, fake);
  } finally {
    await client.close();
  }
});

test('DESTROY answered with no bytes (as Rust virtiofsd 1.13 does) ends the session quietly; a garbled one is still malformed', async (t) => {
  const quiet = await connectFake();
  quiet.fake.faultNext('DESTROY', (_r, reply) => void (reply.usedLen = 0));
  await quiet.client.close();
  t.true(quiet.fake.requests.some((r) => r.name === 'DESTROY'), 'DESTROY was sent');
  t.deepEqual(quiet.logs, [], 'nothing logged');
  const garbled = await connectFake();
  garbled.fake.faultNext('DESTROY', (_r, reply) => void (reply.usedLen = 8));
  await garbled.client.close();
  t.true(garbled.logs.some((l) => /malformed reply: DESTROY: fuse_out_header: reply is 8 bytes/.test(l)), garbled.logs.join('\n'));
});
