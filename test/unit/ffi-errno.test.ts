import test from 'ava';
import { ErrnoError, errnoName, errnoNumber, isErrnoError } from '../../ffi/errno.ts';
import { close, memfdCreate } from '../../ffi/libc.ts';

test('a failing call throws ErrnoError with the errno name, number and syscall', (t) => {
  // No MFD_* flag uses bit 14.
  const error = t.throws(() => memfdCreate('bad-flags', 0x4000), { instanceOf: ErrnoError });
  t.is(error.code, 'EINVAL');
  t.is(error.errno, 22);
  t.is(error.syscall, 'memfd_create');
  t.is(error.message, 'memfd_create: EINVAL (Invalid argument)');
  t.is(error.name, 'ErrnoError');
});

test('close of a bad fd reports EBADF', (t) => {
  const error = t.throws(() => close(-1), { instanceOf: ErrnoError });
  t.is(error.code, 'EBADF');
  t.is(error.syscall, 'close');
});

test('the message carries the strerror text and the detail', (t) => {
  const error = new ErrnoError('memfd_create', errnoNumber('EMFILE'), 'while testing');
  t.is(error.message, 'memfd_create: EMFILE (Too many open files), while testing');
});

test('shared errno numbers get the name Node reports', (t) => {
  t.is(errnoName(errnoNumber('EWOULDBLOCK')), 'EAGAIN');
  t.is(errnoName(errnoNumber('EOPNOTSUPP')), 'ENOTSUP');
  t.is(errnoName(2), 'ENOENT');
  t.is(errnoName(100_000), 'E100000');
  t.throws(() => errnoNumber('ENOTANERROR'), { instanceOf: RangeError });
});

test('isErrnoError matches any of the given codes, or any ErrnoError without codes', (t) => {
  const error = new ErrnoError('read', errnoNumber('EAGAIN'));
  t.true(isErrnoError(error));
  t.true(isErrnoError(error, 'EINTR', 'EAGAIN'));
  t.false(isErrnoError(error, 'EINTR'));
  t.false(isErrnoError(Object.assign(new Error('x'), { code: 'EAGAIN' }), 'EAGAIN'));
});
