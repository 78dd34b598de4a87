import test from 'ava';
import {
  Opcode,
  ProtocolError,
  checkReplyBody,
  decodeReplyBody,
  encodeRequest,
  fuse_attr_out,
  fuse_dirent,
  fuse_direntplus,
  fuse_entry_out,
  fuse_in_header,
  fuse_open_out,
  fuse_out_header,
  parseXattrNames,
  readReplyHeader,
} from '../../client/protocol/index.ts';

function reply(error: number, unique: bigint, body: Uint8Array = new Uint8Array(), len?: number): DataView {
  const bytes = new Uint8Array(16 + body.length);
  const view = new DataView(bytes.buffer);
  fuse_out_header.encode(view, 0, { len: len ?? bytes.length, error, unique });
  bytes.set(body, 16);
  return view;
}

const protocolError = (field: RegExp) => ({ instanceOf: ProtocolError, message: field });

test('a good header is read back', (t) => {
  t.deepEqual(readReplyHeader(Opcode.GETATTR, reply(-2, 9n), 0, 16), { len: 16, errno: 2, unique: 9n });
});

test('short header, len past what arrived, len below 16', (t) => {
  t.throws(() => readReplyHeader(Opcode.GETATTR, reply(0, 1n), 0, 12), protocolError(/^GETATTR: fuse_out_header: reply is 12 bytes/));
  t.throws(() => readReplyHeader(Opcode.GETATTR, reply(0, 1n, new Uint8Array(8), 40), 0, 24), protocolError(/fuse_out_header.len: len 40 but 24/));
  t.throws(() => readReplyHeader(Opcode.GETATTR, reply(0, 1n, new Uint8Array(0), 8), 0, 16), protocolError(/fuse_out_header.len: len 8/));
});

test('a reply in the other byte order is named so (what Debian\'s s390x virtiofsd sends: ENOMEM, 16 bytes, big-endian)', (t) => {
  // The bytes measured through a big-endian vhost-user relay: len 16, error -12, unique 2, all big-endian.
  const bytes = Uint8Array.from([0, 0, 0, 0x10, 0xff, 0xff, 0xff, 0xf4, 0, 0, 0, 0, 0, 0, 0, 2]);
  t.throws(
    () => readReplyHeader(Opcode.INIT, new DataView(bytes.buffer), 0, 16),
    protocolError(/^INIT: fuse_out_header.len: len 268435456 is 16 byte-swapped, exactly what arrived: the device answered byte-swapped/),
  );
  // A len that is merely wrong is not called byte-swapped.
  t.throws(() => readReplyHeader(Opcode.GETATTR, reply(0, 1n, new Uint8Array(8), 40), 0, 24), protocolError(/len 40 but 24 bytes arrived$/));
});

test('error must be a negative errno and carry no body', (t) => {
  t.throws(() => readReplyHeader(Opcode.LOOKUP, reply(5, 1n), 0, 16), protocolError(/fuse_out_header.error: error 5/));
  t.throws(() => readReplyHeader(Opcode.LOOKUP, reply(-5000, 1n), 0, 16), protocolError(/error -5000/));
  t.throws(() => readReplyHeader(Opcode.LOOKUP, reply(-2, 1n, new Uint8Array(8)), 0, 24), protocolError(/error reply carries 8 body bytes/));
});

test('fixed structs: exact size, and a short one names the field where it ends', (t) => {
  const body = fuse_attr_out.toBytes({ attr_valid: 1n, attr: { ino: 5n, mode: 0o100644, size: 10n } });
  const view = new DataView(body.buffer);
  const ok = decodeReplyBody(Opcode.GETATTR, view, 0, body.length);
  t.is(ok.kind, 'struct');
  t.is((ok as { value: { attr: { mode: number } } }).value.attr.mode, 0o100644);
  t.throws(() => decodeReplyBody(Opcode.GETATTR, view, 0, 60), protocolError(/^GETATTR: fuse_attr_out.attr: body is 60 bytes/));
  const long = new DataView(new Uint8Array(body.length + 8).buffer);
  t.throws(() => decodeReplyBody(Opcode.GETATTR, long, 0, body.length + 8), protocolError(/fuse_attr_out: body is 112 bytes/));
  t.throws(() => decodeReplyBody(Opcode.UNLINK, view, 0, 4), protocolError(/UNLINK: body: expected no body/));
});

test('CREATE: entry then open', (t) => {
  const bytes = new Uint8Array(fuse_entry_out.size + fuse_open_out.size);
  const view = new DataView(bytes.buffer);
  fuse_entry_out.encode(view, 0, { nodeid: 42n });
  fuse_open_out.encode(view, fuse_entry_out.size, { fh: 7n, open_flags: 1 });
  const r = decodeReplyBody(Opcode.CREATE, view, 0, bytes.length);
  t.like(r, { kind: 'entry+open', entry: { nodeid: 42n }, open: { fh: 7n, open_flags: 1 } });
  t.throws(() => decodeReplyBody(Opcode.CREATE, view, 0, 128), protocolError(/CREATE: fuse_entry_out\+fuse_open_out/));
});

test('READ may not return more than it asked for', (t) => {
  const view = new DataView(new ArrayBuffer(64));
  t.like(decodeReplyBody(Opcode.READ, view, 0, 32, { requestedSize: 32 }), { kind: 'bytes', offset: 0, length: 32 });
  t.throws(() => decodeReplyBody(Opcode.READ, view, 0, 64, { requestedSize: 32 }), protocolError(/more than the 32 requested/));
});

test('GETXATTR size probe and data', (t) => {
  const view = new DataView(new Uint8Array([3, 0, 0, 0, 0, 0, 0, 0]).buffer);
  t.deepEqual(decodeReplyBody(Opcode.GETXATTR, view, 0, 8, { requestedSize: 0 }), { kind: 'xattr-size', size: 3 });
  t.deepEqual(decodeReplyBody(Opcode.LISTXATTR, view, 0, 8, { requestedSize: 100 }), { kind: 'bytes', offset: 0, length: 8 });
  t.deepEqual(parseXattrNames(Opcode.LISTXATTR, new TextEncoder().encode('user.a\0user.bb\0')), ['user.a', 'user.bb']);
  t.throws(() => parseXattrNames(Opcode.LISTXATTR, new TextEncoder().encode('user.a')), protocolError(/does not end with NUL/));
  t.throws(() => parseXattrNames(Opcode.LISTXATTR, new TextEncoder().encode('a\0\0')), protocolError(/empty xattr name/));
});

function dirents(names: string[], plus: boolean, { pad = true } = {}): Uint8Array {
  const fixed = plus ? fuse_direntplus.size : fuse_dirent.size;
  const parts = names.map((name, i) => {
    const n = new TextEncoder().encode(name);
    const size = pad ? (fixed + n.length + 7) & ~7 : fixed + n.length;
    const rec = new Uint8Array(size);
    const v = new DataView(rec.buffer);
    if (plus) fuse_entry_out.encode(v, 0, { nodeid: BigInt(100 + i), attr: { ino: BigInt(i + 1) } });
    fuse_dirent.encode(v, fixed - fuse_dirent.size, { ino: BigInt(i + 1), off: BigInt(i + 1), namelen: n.length, type: 8 });
    rec.set(n, fixed);
    return rec;
  });
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

test('dirent streams: records, padding, an unpadded last record', (t) => {
  const names = ['a', 'file.txt', 'x'.repeat(255), 'é'];
  for (const plus of [false, true]) {
    const op = plus ? Opcode.READDIRPLUS : Opcode.READDIR;
    const bytes = dirents(names, plus);
    const r = decodeReplyBody(op, new DataView(bytes.buffer), 0, bytes.length, { requestedSize: 4096 });
    const entries = (r as { entries: { name: string; off: bigint }[] }).entries;
    t.deepEqual(entries.map((e) => e.name), names);
    t.is(entries[3]!.off, 4n);
    if (plus) t.is((entries[1] as unknown as { entry: { nodeid: bigint } }).entry.nodeid, 101n);
    const unpadded = dirents(['abc'], plus, { pad: false });
    t.is((decodeReplyBody(op, new DataView(unpadded.buffer), 0, unpadded.length) as { entries: unknown[] }).entries.length, 1);
  }
});

test('dirent streams: every way a record can lie is caught', (t) => {
  const good = dirents(['abc', 'def'], false);
  const view = new DataView(good.slice().buffer);
  // Truncated in the middle of the second record's header.
  t.throws(() => decodeReplyBody(Opcode.READDIR, view, 0, 40), protocolError(/READDIR: fuse_dirent: record 1 at byte 32: 8 bytes left/));
  // Name runs past the end.
  const longName = good.slice();
  new DataView(longName.buffer).setUint32(16, 100, true);
  t.throws(() => decodeReplyBody(Opcode.READDIR, new DataView(longName.buffer), 0, longName.length), protocolError(/fuse_dirent.namelen: record 0 at byte 0: name of 100 bytes runs past the end/));
  // namelen 0 and namelen beyond FUSE_NAME_MAX.
  for (const n of [0, 5000]) {
    const b = good.slice();
    new DataView(b.buffer).setUint32(16, n, true);
    t.throws(() => decodeReplyBody(Opcode.READDIR, new DataView(b.buffer), 0, b.length), protocolError(new RegExp(`namelen ${n}`)));
  }
  // A slash in a name.
  const slash = dirents(['a/b'], false);
  t.throws(() => decodeReplyBody(Opcode.READDIR, new DataView(slash.buffer), 0, slash.length), protocolError(/fuse_dirent.name: record 0.*'\/'/));
  // READDIRPLUS record shorter than its fixed part.
  const plus = dirents(['abc'], true);
  t.throws(() => decodeReplyBody(Opcode.READDIRPLUS, new DataView(plus.buffer), 0, 100), protocolError(/100 bytes left, a record header is 152/));
});

test('checkReplyBody (what the relays judge with, building nothing) agrees with decodeReplyBody on every body', (t) => {
  const stream = dirents(['abc', 'def'], false);
  const plus = dirents(['abc'], true);
  const namelen = (bytes: Uint8Array, n: number) => {
    const b = bytes.slice();
    new DataView(b.buffer).setUint32(16, n, true);
    return b;
  };
  const cases: [string, number, Uint8Array, number, number | undefined][] = [
    ['good READDIR', Opcode.READDIR, stream, stream.length, 4096],
    ['READDIR cut in a header', Opcode.READDIR, stream, 40, 4096],
    ['READDIR name past the end', Opcode.READDIR, namelen(stream, 100), stream.length, 4096],
    ['READDIR namelen 0', Opcode.READDIR, namelen(stream, 0), stream.length, 4096],
    ['READDIR slash', Opcode.READDIR, dirents(['a/b'], false), 32, 4096],
    ['READDIR over the requested size', Opcode.READDIR, stream, stream.length, 16],
    ['good READDIRPLUS', Opcode.READDIRPLUS, plus, plus.length, 4096],
    ['READDIRPLUS short record', Opcode.READDIRPLUS, plus, 100, 4096],
    ['good GETATTR', Opcode.GETATTR, new Uint8Array(fuse_attr_out.size), fuse_attr_out.size, undefined],
    ['GETATTR one byte short', Opcode.GETATTR, new Uint8Array(fuse_attr_out.size), fuse_attr_out.size - 1, undefined],
    ['good CREATE', Opcode.CREATE, new Uint8Array(fuse_entry_out.size + fuse_open_out.size), fuse_entry_out.size + fuse_open_out.size, undefined],
    ['CREATE without fuse_open_out', Opcode.CREATE, new Uint8Array(fuse_entry_out.size), fuse_entry_out.size, undefined],
    ['UNLINK with a body', Opcode.UNLINK, new Uint8Array(8), 8, undefined],
    ['READ within size', Opcode.READ, new Uint8Array(64), 64, 64],
    ['READ past size', Opcode.READ, new Uint8Array(64), 64, 32],
    ['GETXATTR size probe', Opcode.GETXATTR, new Uint8Array(8), 8, 0],
    ['GETXATTR size probe, short', Opcode.GETXATTR, new Uint8Array(8), 4, 0],
  ];
  for (const [what, op, bytes, len, requested] of cases) {
    const view = new DataView(bytes.buffer);
    const message = (f: () => unknown) => {
      try {
        f();
        return 'ok';
      } catch (e) {
        t.true(e instanceof ProtocolError, `${what}: ${(e as Error).message}`);
        return (e as Error).message;
      }
    };
    const decoded = message(() => decodeReplyBody(op, view, 0, len, { requestedSize: requested }));
    t.is(message(() => checkReplyBody(op, view, 0, len, requested)), decoded, what);
    t.is(decoded === 'ok', what.startsWith('good') || what.endsWith('within size') || what === 'GETXATTR size probe', what);
  }
});

test('requests: header len, names NUL-terminated, data placement', (t) => {
  const bytes = new Uint8Array(256);
  const view = new DataView(bytes.buffer);
  const header = { unique: 5n, nodeid: 1n, uid: 0, gid: 0, pid: 1 };
  const r = encodeRequest(view, 0, 'RENAME', header, { arg: { newdir: 9n }, names: ['old', 'new'] });
  t.deepEqual(r, { written: 40 + 8 + 4 + 4, len: 56 });
  t.like(fuse_in_header.decode(view), { len: 56, opcode: Opcode.RENAME, unique: 5n, nodeid: 1n });
  t.deepEqual([...bytes.subarray(48, 56)], [...new TextEncoder().encode('old\0new\0')]);

  const w = encodeRequest(view, 0, 'WRITE', header, { arg: { fh: 1n, size: 1000 }, dataLength: 1000 });
  t.deepEqual(w, { written: 80, len: 1080 });
  const x = encodeRequest(view, 0, 'SETXATTR', header, { arg: { size: 2 }, argSize: 8, names: ['user.k'], data: new Uint8Array([1, 2]) });
  t.deepEqual(x, { written: 40 + 8 + 7 + 2, len: 57 });
  t.deepEqual([...bytes.subarray(48, 57)], [...new TextEncoder().encode('user.k\0'), 1, 2]);
});

test('requests that cannot be sent as asked are refused before they go', (t) => {
  const view = new DataView(new ArrayBuffer(64));
  const header = { unique: 1n, nodeid: 1n, uid: 0, gid: 0, pid: 0 };
  t.throws(() => encodeRequest(view, 0, 'LOOKUP', header, { names: ['a\0b'] }), { instanceOf: TypeError, message: /NUL/ });
  t.throws(() => encodeRequest(view, 0, 'LOOKUP', header, { names: ['x'.repeat(100)] }), { instanceOf: RangeError });
  t.throws(() => encodeRequest(view, 0, 'LOOKUP', header, { names: [] }), { instanceOf: TypeError, message: /takes 1 name/ });
  t.throws(() => encodeRequest(view, 0, 'GETATTR', header, { dataLength: 4 }), { instanceOf: TypeError, message: /carries no data/ });
});

test('IOCTL: fuse_ioctl_out then at most out_size bytes; a short one, a retry, an impossible result and too much data are named', (t) => {
  const body = (result: number, flags: number, extra: number) => {
    const bytes = new Uint8Array(16 + extra);
    const view = new DataView(bytes.buffer);
    view.setInt32(0, result, true);
    view.setUint32(4, flags, true);
    return view;
  };
  const field = (f: () => void) => (t.throws(f, { instanceOf: ProtocolError }) as ProtocolError).field;
  t.notThrows(() => checkReplyBody(Opcode.IOCTL, body(0, 0, 4), 0, 20, 4));
  t.notThrows(() => checkReplyBody(Opcode.IOCTL, body(-25, 0, 0), 0, 16, 4), 'an errno in result, no data');
  t.is(field(() => checkReplyBody(Opcode.IOCTL, body(0, 0, 0), 0, 6, 4)), 'fuse_ioctl_out.flags');
  t.is(field(() => checkReplyBody(Opcode.IOCTL, body(0, 1 << 2, 0), 0, 16, 4)), 'fuse_ioctl_out.flags');
  t.is(field(() => checkReplyBody(Opcode.IOCTL, body(-5000, 0, 0), 0, 16, 4)), 'fuse_ioctl_out.result');
  t.is(field(() => checkReplyBody(Opcode.IOCTL, body(0, 0, 8), 0, 24, 4)), 'body');
  const decoded = decodeReplyBody(Opcode.IOCTL, body(3, 0, 4), 0, 20, { requestedSize: 4 });
  t.deepEqual(decoded, { kind: 'ioctl', result: 3, flags: 0, offset: 16, length: 4 });
});
