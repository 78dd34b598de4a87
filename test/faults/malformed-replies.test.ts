// Malformed replies from a device: each fails only its own request with EIO,
// leaves a log line naming the opcode and the field, and the client carries on.
import test, { type ExecutionContext } from 'ava';
import { ROOT, type VirtioFsClient } from '../../client/client.ts';
import { ErrnoError, errnoNumber } from '../../ffi/errno.ts';
import { fuse_attr_out, fuse_out_header } from '../../client/protocol/index.ts';
import {
  FILE_SIZE,
  HELLO,
  SUB,
  concat,
  connectFake,
  direntPlusRecord,
  fileData,
  patchOutHeader,
  replyBytes,
  until,
  type FakeVirtioFs,
  type FaultHook,
} from '../helpers/fake-virtio-fs.ts';

const FILE = Buffer.from(fileData());

interface Case {
  /** The request that gets the bad reply. */
  op: 'GETATTR' | 'READ' | 'READDIRPLUS';
  fault: FaultHook;
  /** What the log line must say besides the opcode: the field. */
  field: RegExp;
}

/** Runs `op` against the client (the request the fault hits). */
async function run(client: VirtioFsClient, op: Case['op']): Promise<unknown> {
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

function malformed(title: string, c: Case): void {
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

malformed('fuse_out_header.len larger than the bytes written', {
  op: 'GETATTR',
  fault: (_r, reply) => void patchOutHeader(reply.bytes, { len: reply.bytes.length + 64 }),
  field: /fuse_out_header\.len\b/,
});

malformed('fuse_out_header.len smaller than the header', {
  op: 'GETATTR',
  fault: (_r, reply) => void patchOutHeader(reply.bytes, { len: 8 }),
  field: /fuse_out_header\.len\b/,
});

malformed('fuse_out_header.len of zero', {
  op: 'GETATTR',
  fault: (_r, reply) => void patchOutHeader(reply.bytes, { len: 0 }),
  field: /fuse_out_header\.len\b/,
});

malformed('short header: used len 8', {
  op: 'GETATTR',
  fault: (_r, reply) => void (reply.usedLen = 8),
  field: /fuse_out_header\b.*8 bytes/,
});

malformed('used len 0 on a request that needs a reply', {
  op: 'GETATTR',
  fault: (_r, reply) => void (reply.usedLen = 0),
  field: /fuse_out_header\b/,
});

malformed('GETATTR body shorter than fuse_attr_out', {
  op: 'GETATTR',
  fault: (_r, reply) => {
    // The header and the first 40 bytes of fuse_attr_out: cut inside .attr.
    reply.bytes = patchOutHeader(reply.bytes.slice(0, fuse_out_header.size + 40), { len: fuse_out_header.size + 40 });
  },
  field: /fuse_attr_out\.attr\b/,
});

malformed('GETATTR body one byte short', {
  op: 'GETATTR',
  fault: (_r, reply) => {
    const len = fuse_out_header.size + fuse_attr_out.size - 1;
    reply.bytes = patchOutHeader(reply.bytes.slice(0, len), { len });
  },
  field: /fuse_attr_out\.attr\b/,
});

malformed('positive error value in the header', {
  op: 'GETATTR',
  fault: (r, reply) => void (reply.bytes = patchOutHeader(replyBytes(r.unique, 0), { error: errnoNumber('ENOENT') })),
  field: /fuse_out_header\.error\b/,
});

malformed('error beyond MAX_ERRNO in the header', {
  op: 'GETATTR',
  fault: (r, reply) => void (reply.bytes = patchOutHeader(replyBytes(r.unique, 0), { error: -5000 })),
  field: /fuse_out_header\.error\b/,
});

malformed('an error reply that carries a body', {
  op: 'GETATTR',
  fault: (_r, reply) => void patchOutHeader(reply.bytes, { error: -errnoNumber('ENOENT') }),
  field: /fuse_out_header\.len\b.*body bytes/,
});

malformed('used len larger than the writable buffer', {
  op: 'GETATTR',
  fault: (r, reply) => void (reply.usedLen = r.writableBytes + 100),
  field: /\blen\b.*exceeds/,
});

malformed('READ: header claims more bytes than requested (used len = what fit)', {
  op: 'READ',
  fault: (r, reply) => void (reply.bytes = replyBytes(r.unique, 0, new Uint8Array(2 * (r.arg!.size as number)).fill(0xee))),
  field: /fuse_out_header\.len\b/,
});

malformed('READ: header and used len both claim more bytes than requested', {
  op: 'READ',
  fault: (r, reply) => {
    reply.bytes = replyBytes(r.unique, 0, new Uint8Array(2 * (r.arg!.size as number)).fill(0xee));
    reply.usedLen = reply.bytes.length;
  },
  field: /\blen\b.*exceeds/,
});

malformed('READDIRPLUS: a record whose namelen runs past the end', {
  op: 'READDIRPLUS',
  fault: (r, reply) => {
    const node = { nodeid: HELLO, mode: 0o100644 };
    // A good record, then one that says 200 name bytes where 8 are left.
    reply.bytes = replyBytes(r.unique, 0, concat([direntPlusRecord('hello.txt', node, 1n), direntPlusRecord('x', node, 2n, 200)]));
  },
  field: /fuse_dirent\.namelen\b.*runs past the end/,
});

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
