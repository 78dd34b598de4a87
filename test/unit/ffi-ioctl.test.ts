import { closeSync, openSync } from 'node:fs';
import test from 'ava';
import { ErrnoError } from '../../ffi/errno.ts';
import { _IO, _IOR, _IOW, _IOWR, ioctl } from '../../ffi/ioctl.ts';
import { UnixSocket } from '../../ffi/unix-socket.ts';

// TIOCINQ, alias FIONREAD, in the generic table (mips, powerpc, sparc and alpha number it differently).
const FIONREAD = 0x541b;

test('FIONREAD on a socket returns the number of unread bytes', (t) => {
  const [a, b] = UnixSocket.pair();
  t.teardown(() => [a, b].forEach((socket) => socket.close()));
  a.send(new TextEncoder().encode('seven!!'));
  const count = new Int32Array(1);
  t.is(ioctl(b.fd, FIONREAD, new Uint8Array(count.buffer)), 0);
  t.is(count[0], 7);
});

test('an ioctl the device does not know fails with ErrnoError ENOTTY', (t) => {
  const fd = openSync('/dev/null', 'r');
  t.teardown(() => closeSync(fd));
  const error = t.throws(() => ioctl(fd, _IO(0xaf, 0x01)), { instanceOf: ErrnoError });
  t.is(error.code, 'ENOTTY');
  t.is(error.errno, 25);
  t.is(error.syscall, 'ioctl');
  t.is(error.message, 'ioctl: ENOTTY (Inappropriate ioctl for device), request 0xaf01');
});

test('an ioctl on a bad fd fails with EBADF', (t) => {
  t.throws(() => ioctl(-1, FIONREAD, new Uint8Array(4)), { instanceOf: ErrnoError, message: /^ioctl: EBADF/ });
});

test('request numbers match the kernel headers', (t) => {
  t.is(_IO(0xaf, 0x01), 0x0000af01); // VHOST_SET_OWNER
  t.is(_IOR(0xaf, 0x00, 8), 0x8008af00); // VHOST_GET_FEATURES, __u64
  t.is(_IOW(0xaf, 0x00, 8), 0x4008af00); // VHOST_SET_FEATURES, __u64
  t.is(_IOR(229, 0, 4), 0x8004e500); // FUSE_DEV_IOC_CLONE, uint32_t
  t.is(_IOW('T', 0x31, 4), 0x40045431); // TIOCSPTLCK, int
  t.is(_IOWR('U', 0, 24), 0xc0185500); // USBDEVFS_CONTROL, 64-bit struct
});

test('out-of-range request fields and arguments are refused before the call', (t) => {
  t.throws(() => _IO(0x100, 0), { instanceOf: RangeError });
  t.throws(() => _IO('TT', 0), { instanceOf: RangeError });
  t.throws(() => _IO(1, 256), { instanceOf: RangeError });
  t.throws(() => _IOR(1, 0, 1 << 14), { instanceOf: RangeError });
  t.throws(() => ioctl(0, -1), { instanceOf: RangeError });
  t.throws(() => ioctl(0, 2 ** 32), { instanceOf: RangeError });
  t.throws(() => ioctl(0, FIONREAD, 2 ** 31), { instanceOf: RangeError });
});
