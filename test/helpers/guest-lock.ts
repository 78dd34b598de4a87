/**
 * One QEMU guest at a time on this machine, across ava's worker processes: an exclusive flock(2) on a
 * file, taken without blocking the event loop (LOCK_NB, retried on a timer). The kernel drops it when
 * the holder closes the file or dies. The holder writes who it is into the file, for waiters' messages.
 */
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import koffi from 'koffi';
import { ErrnoError } from '../../ffi/errno.ts';

const flock: (fd: number, operation: number) => number = koffi.load('libc.so.6').func('int flock(int fd, int operation)');
const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;
const RETRY_MS = 200;

export interface GuestLock {
  /** How long it took to get it. */
  waitedMs: number;
  release(): void;
}

/** The current holder's description, as it wrote it ('' when none or unreadable). */
export function lockHolder(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return '';
  }
}

/** Waits for the lock at `path` (created if missing) for at most `maxWaitMs`; `holder` describes us. */
export async function acquireGuestLock(path: string, holder: string, maxWaitMs: number): Promise<GuestLock> {
  const fd = openSync(path, 'a+');
  const started = Date.now();
  try {
    for (;;) {
      if (flock(fd, LOCK_EX | LOCK_NB) === 0) break;
      const errno = koffi.errno();
      if (errno !== EWOULDBLOCK) throw new ErrnoError('flock', errno, path);
      if (Date.now() - started >= maxWaitMs) {
        throw new Error(`waited ${Date.now() - started} ms for the guest lock ${path}, held by: ${lockHolder(path) || 'unknown'}`);
      }
      await new Promise((r) => setTimeout(r, RETRY_MS));
    }
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  ftruncateSync(fd, 0);
  writeSync(fd, `pid ${process.pid}, since ${new Date().toISOString()}: ${holder}\n`);
  let released = false;
  return {
    waitedMs: Date.now() - started,
    release() {
      if (released) return;
      released = true;
      ftruncateSync(fd, 0);
      closeSync(fd); // drops the flock
    },
  };
}
