import { once } from 'node:events';
import { fstatSync, mkdtempSync, rmSync, writeSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { ErrnoError } from '../../ffi/errno.ts';
import { close } from '../../ffi/libc.ts';
import { SharedMemory } from '../../ffi/shared-memory.ts';
import { UnixSocket } from '../../ffi/unix-socket.ts';

const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const decode = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);

function pair(t: { teardown(fn: () => void): void }): [UnixSocket, UnixSocket] {
  const sockets = UnixSocket.pair();
  t.teardown(() => sockets.forEach((socket) => socket.close()));
  return sockets;
}

test('a memfd passed with SCM_RIGHTS writes into the sender\'s mapping', (t) => {
  const [a, b] = pair(t);
  const memory = new SharedMemory(8192);
  t.teardown(() => memory.close());

  a.send(text('MEM!'), [memory.fd]);
  const { bytes, fds } = b.receiveWithFds(4, { maxFds: 1 });
  t.is(decode(bytes), 'MEM!');
  t.is(fds.length, 1);
  const [received] = fds as [number];
  t.teardown(() => close(received));
  t.not(received, memory.fd);
  t.is(fstatSync(received).ino, fstatSync(memory.fd).ino);

  t.is(writeSync(received, text('written by the peer'), 0, 19, 4096), 19);
  t.is(decode(memory.bytes.subarray(4096, 4096 + 19)), 'written by the peer');
});

test('receive reads exactly n bytes across several sends and keeps the rest', (t) => {
  const [a, b] = pair(t);
  a.send(text('abc'));
  a.send(text('defgh'));
  t.is(decode(b.receive(6)), 'abcdef');
  t.is(decode(b.receive(2)), 'gh');
});

test('fds attached to different sends all arrive with one receive', (t) => {
  const [a, b] = pair(t);
  const first = new SharedMemory(4096, 'first');
  const second = new SharedMemory(4096, 'second');
  t.teardown(() => [first, second].forEach((memory) => memory.close()));
  a.send(text('12'), [first.fd]);
  a.send(text('34'), [second.fd]);
  const { bytes, fds } = b.receiveWithFds(4, { maxFds: 2 });
  t.teardown(() => fds.forEach(close));
  t.is(decode(bytes), '1234');
  t.deepEqual(
    fds.map((fd) => fstatSync(fd).ino),
    [fstatSync(first.fd).ino, fstatSync(second.fd).ino],
  );
});

test('a receive that gets no data in time fails with ETIMEDOUT', (t) => {
  const [a, b] = pair(t);
  a.send(text('abc'));
  const started = performance.now();
  const error = t.throws(() => b.receive(6, { timeoutMs: 100 }), { instanceOf: ErrnoError });
  t.true(performance.now() - started >= 99);
  t.is(error.code, 'ETIMEDOUT');
  t.regex(error.message, /3 of 6 bytes received/);
});

test('a send the peer does not drain in time fails with ETIMEDOUT', (t) => {
  const [a] = pair(t);
  const error = t.throws(() => a.send(new Uint8Array(16 << 20), [], { timeoutMs: 100 }), { instanceOf: ErrnoError });
  t.is(error.code, 'ETIMEDOUT');
  t.regex(error.message, /of 16777216 bytes sent/);
});

test('a peer that closes mid-message fails the receive with ECONNRESET', (t) => {
  const [a, b] = pair(t);
  a.send(text('ab'));
  a.close();
  const error = t.throws(() => b.receive(4), { instanceOf: ErrnoError });
  t.is(error.code, 'ECONNRESET');
  t.regex(error.message, /peer closed the connection \(2 of 4 bytes received\)/);
});

test('sending to a closed peer fails with EPIPE', (t) => {
  const [a, b] = pair(t);
  b.close();
  const error = t.throws(() => a.send(text('x')), { instanceOf: ErrnoError });
  t.is(error.code, 'EPIPE');
});

test('unexpected fds make the receive fail, and fds need at least one byte', (t) => {
  const [a, b] = pair(t);
  const memory = new SharedMemory(4096);
  t.teardown(() => memory.close());
  a.send(text('x'), [memory.fd]);
  t.throws(() => b.receive(1), { message: /more than the 0 file descriptors expected/ });
  t.throws(() => a.send(new Uint8Array(0), [memory.fd]), { instanceOf: RangeError });
});

test('connect to a missing path fails with ENOENT naming the path', (t) => {
  const path = join(tmpdir(), `no-such-socket-${process.pid}`);
  const error = t.throws(() => UnixSocket.connect(path), { instanceOf: ErrnoError });
  t.is(error.code, 'ENOENT');
  t.is(error.syscall, 'connect');
  t.is(error.message, `connect: ENOENT (No such file or directory), '${path}'`);
});

test('connect to a path longer than sun_path fails with ENAMETOOLONG', (t) => {
  const error = t.throws(() => UnixSocket.connect(`/tmp/${'x'.repeat(200)}`), { instanceOf: ErrnoError });
  t.is(error.code, 'ENAMETOOLONG');
});

test('connect talks to a listening Node server both ways', async (t) => {
  const directory = mkdtempSync(join(tmpdir(), 'ffi-socket-'));
  t.teardown(() => rmSync(directory, { recursive: true, force: true }));
  const path = join(directory, 'server.sock');
  const server = createServer();
  t.teardown(() => server.close());
  server.listen(path);
  await once(server, 'listening');

  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const client = UnixSocket.connect(path);
  t.teardown(() => client.close());
  const [peer] = await accepted;
  t.teardown(() => peer.destroy());

  client.send(text('ping'));
  const [data] = (await once(peer, 'data')) as [Buffer];
  t.is(data.toString(), 'ping');

  peer.write('pong');
  await new Promise((resolve) => setImmediate(resolve));
  t.is(decode(client.receive(4, { timeoutMs: 1000 })), 'pong');
});
