import { mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync, existsSync, fstatSync, writeSync, readSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { isErrnoError } from '../../ffi/errno.ts';
import {
  AF_UNIX,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  MFD_CLOEXEC,
  MNT_DETACH,
  MS_NODEV,
  MS_NOSUID,
  MSG_CMSG_CLOEXEC,
  MSG_DONTWAIT,
  POLLIN,
  POLLOUT,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  close,
  eventfd,
  memfdCreate,
  mount,
  poll,
  readEventFdCounter,
  recvmsg,
  sendmsg,
  socketpair,
  umount2,
  writeEventFdCounter,
} from '../../ffi/libc.ts';

const text = (s: string): Uint8Array => new TextEncoder().encode(s);

function openMemfds(count: number): number[] {
  return Array.from({ length: count }, (_, i) => memfdCreate(`libc-test-${i}`, MFD_CLOEXEC));
}

test('eventfd counters add up and reset on read; an unsignalled non-blocking read gives 0', (t) => {
  const fd = eventfd(2, EFD_CLOEXEC | EFD_NONBLOCK);
  t.teardown(() => close(fd));
  writeEventFdCounter(fd, 5n);
  t.is(readEventFdCounter(fd), 7n);
  t.is(readEventFdCounter(fd), 0n);
});

test('poll reports readiness per request and all zeros on timeout', (t) => {
  const [a, b] = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
  t.teardown(() => [a, b].forEach(close));
  t.deepEqual(poll([{ fd: b, events: POLLIN }], 10), [0]);
  writeSync(a, text('x'));
  t.deepEqual(poll([{ fd: b, events: POLLIN }, { fd: a, events: POLLOUT }], 10), [POLLIN, POLLOUT]);
});

test('sendmsg/recvmsg carry several fds in one SCM_RIGHTS message', (t) => {
  const [a, b] = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
  const sent = openMemfds(3);
  t.teardown(() => [a, b, ...sent].forEach(close));
  t.is(sendmsg(a, text('hello'), sent, 0), 5);

  const into = new Uint8Array(16);
  const received = recvmsg(b, into, 4, MSG_CMSG_CLOEXEC);
  t.teardown(() => received.fds.forEach(close));
  t.is(received.bytesRead, 5);
  t.deepEqual(into.subarray(0, 5), text('hello'));
  t.false(received.fdsTruncated);
  t.is(received.fds.length, 3);
  // New numbers, same files.
  received.fds.forEach((fd, i) => {
    t.not(fd, sent[i]);
    t.is(fstatSync(fd).ino, fstatSync(sent[i]!).ino);
    t.is(readlinkSync(`/proc/self/fd/${fd}`), `/memfd:libc-test-${i} (deleted)`);
  });
});

test('recvmsg with room for fewer fds (an odd count) takes exactly that many and reports the truncation', (t) => {
  const [a, b] = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
  const sent = openMemfds(3);
  t.teardown(() => [a, b, ...sent].forEach(close));
  sendmsg(a, text('x'), sent, 0);
  const received = recvmsg(b, new Uint8Array(1), 1, MSG_CMSG_CLOEXEC);
  t.teardown(() => received.fds.forEach(close));
  t.is(received.bytesRead, 1);
  t.true(received.fdsTruncated);
  t.is(received.fds.length, 1);
});

test('recvmsg with MSG_DONTWAIT on an empty socket fails with EAGAIN, and 0 bytes after the peer closes', (t) => {
  const [a, b] = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
  t.teardown(() => close(b));
  t.true(isErrnoError(t.throws(() => recvmsg(b, new Uint8Array(1), 0, MSG_DONTWAIT)), 'EAGAIN'));
  close(a);
  t.is(recvmsg(b, new Uint8Array(1), 0, MSG_DONTWAIT).bytesRead, 0);
});

test('a received fd is close-on-exec with MSG_CMSG_CLOEXEC', (t) => {
  const [a, b] = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
  const [sent] = openMemfds(1);
  t.teardown(() => [a, b, sent!].forEach(close));
  sendmsg(a, text('x'), [sent!], 0);
  const [fd] = recvmsg(b, new Uint8Array(1), 1, MSG_CMSG_CLOEXEC).fds;
  t.teardown(() => close(fd!));
  const flags = /^flags:\s+(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!;
  t.not(Number.parseInt(flags, 8) & 0o2000000, 0);
});

test('mount and umount2 a tmpfs (needs CAP_SYS_ADMIN)', (t) => {
  const target = mkdtempSync(join(tmpdir(), 'ffi-mount-'));
  t.teardown(() => rmSync(target, { recursive: true, force: true }));
  try {
    mount('ffi-test', target, 'tmpfs', MS_NOSUID | MS_NODEV, 'size=1m,mode=0700');
  } catch (error) {
    if (!isErrnoError(error, 'EPERM')) throw error;
    t.log('skipped: no CAP_SYS_ADMIN here');
    t.pass();
    return;
  }
  writeFileSync(join(target, 'inside'), 'x');
  const mountLine = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((line) => line.includes(` ${target} `));
  t.truthy(mountLine);
  t.regex(mountLine!, / - tmpfs ffi-test /);
  umount2(target, MNT_DETACH);
  t.false(existsSync(join(target, 'inside')));
  const error = t.throws(() => umount2(target, 0));
  t.true(isErrnoError(error, 'EINVAL'));
  t.regex(error!.message, new RegExp(`^umount2: EINVAL .*'${target}'$`));
});

test('readSync on a non-blocking eventfd through Node agrees with our layout of the counter', (t) => {
  const fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  t.teardown(() => close(fd));
  writeEventFdCounter(fd, 0x0102030405n);
  const counter = new BigUint64Array(1);
  readSync(fd, counter);
  t.is(counter[0], 0x0102030405n);
});
