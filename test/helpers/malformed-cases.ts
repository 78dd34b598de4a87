// The malformed replies every path to a device must survive, one table for all of them:
// test/faults/malformed-replies.test.ts runs each through the client API, relay-malformed.test.ts
// through a real /dev/fuse mount. Each case: the opcode whose reply is spoiled, the fault (a
// FaultHook on the fake device), and what the one log line must name besides the opcode.
import { errnoNumber } from '../../ffi/errno.ts';
import { fuse_attr_out, fuse_out_header } from '../../client/protocol/index.ts';
import { HELLO, concat, direntPlusRecord, patchOutHeader, replyBytes, type FaultHook } from './fake-virtio-fs.ts';

export interface MalformedCase {
  title: string;
  /** The request that gets the bad reply. */
  op: 'GETATTR' | 'READ' | 'READDIRPLUS';
  fault: FaultHook;
  /** What the log line must say besides the opcode: the field. */
  field: RegExp;
}

export const MALFORMED_CASES: readonly MalformedCase[] = [
  {
    title: 'fuse_out_header.len larger than the bytes written',
    op: 'GETATTR',
    fault: (_r, reply) => void patchOutHeader(reply.bytes, { len: reply.bytes.length + 64 }),
    field: /fuse_out_header\.len\b/,
  },
  {
    title: 'fuse_out_header.len smaller than the header',
    op: 'GETATTR',
    fault: (_r, reply) => void patchOutHeader(reply.bytes, { len: 8 }),
    field: /fuse_out_header\.len\b/,
  },
  {
    title: 'fuse_out_header.len of zero',
    op: 'GETATTR',
    fault: (_r, reply) => void patchOutHeader(reply.bytes, { len: 0 }),
    field: /fuse_out_header\.len\b/,
  },
  {
    title: 'short header: used len 8',
    op: 'GETATTR',
    fault: (_r, reply) => void (reply.usedLen = 8),
    field: /fuse_out_header\b.*8 bytes/,
  },
  {
    title: 'used len 0 on a request that needs a reply',
    op: 'GETATTR',
    fault: (_r, reply) => void (reply.usedLen = 0),
    field: /fuse_out_header\b/,
  },
  {
    title: 'GETATTR body shorter than fuse_attr_out',
    op: 'GETATTR',
    fault: (_r, reply) => {
      // The header and the first 40 bytes of fuse_attr_out: cut inside .attr.
      reply.bytes = patchOutHeader(reply.bytes.slice(0, fuse_out_header.size + 40), { len: fuse_out_header.size + 40 });
  },
    field: /fuse_attr_out\.attr\b/,
  },
  {
    title: 'GETATTR body one byte short',
    op: 'GETATTR',
    fault: (_r, reply) => {
      const len = fuse_out_header.size + fuse_attr_out.size - 1;
      reply.bytes = patchOutHeader(reply.bytes.slice(0, len), { len });
  },
    field: /fuse_attr_out\.attr\b/,
  },
  {
    title: 'positive error value in the header',
    op: 'GETATTR',
    fault: (r, reply) => void (reply.bytes = patchOutHeader(replyBytes(r.unique, 0), { error: errnoNumber('ENOENT') })),
    field: /fuse_out_header\.error\b/,
  },
  {
    title: 'error beyond MAX_ERRNO in the header',
    op: 'GETATTR',
    fault: (r, reply) => void (reply.bytes = patchOutHeader(replyBytes(r.unique, 0), { error: -5000 })),
    field: /fuse_out_header\.error\b/,
  },
  {
    title: 'an error reply that carries a body',
    op: 'GETATTR',
    fault: (_r, reply) => void patchOutHeader(reply.bytes, { error: -errnoNumber('ENOENT') }),
    field: /fuse_out_header\.len\b.*body bytes/,
  },
  {
    title: 'used len larger than the writable buffer',
    op: 'GETATTR',
    fault: (r, reply) => void (reply.usedLen = r.writableBytes + 100),
    field: /\blen\b.*exceeds/,
  },
  {
    title: 'READ: header claims more bytes than requested (used len = what fit)',
    op: 'READ',
    fault: (r, reply) => void (reply.bytes = replyBytes(r.unique, 0, new Uint8Array(2 * (r.arg!.size as number)).fill(0xee))),
    field: /fuse_out_header\.len\b/,
  },
  {
    title: 'READ: header and used len both claim more bytes than requested',
    op: 'READ',
    fault: (r, reply) => {
      reply.bytes = replyBytes(r.unique, 0, new Uint8Array(2 * (r.arg!.size as number)).fill(0xee));
      reply.usedLen = reply.bytes.length;
  },
    field: /\blen\b.*exceeds/,
  },
  {
    title: 'READDIRPLUS: a record whose namelen runs past the end',
    op: 'READDIRPLUS',
    fault: (r, reply) => {
      const node = { nodeid: HELLO, mode: 0o100644 };
      // A good record, then one that says 200 name bytes where 8 are left.
      reply.bytes = replyBytes(r.unique, 0, concat([direntPlusRecord('hello.txt', node, 1n), direntPlusRecord('x', node, 2n, 200)]));
  },
    field: /fuse_dirent\.namelen\b.*runs past the end/,
  },
];
