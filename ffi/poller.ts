/**
 * Readiness callbacks for raw fds (eventfds, sockets) that libuv does not own.
 *
 * One epoll set, waited on by one thread of its own (poller-thread.ts) that does nothing else:
 * it sleeps in epoll_wait, and a batch of ready fds reaches the main thread through shared memory
 * and Atomics.waitAsync, one cross-thread wake per batch. (The libuv threadpool it replaces cost
 * two: the pool thread woke the loop, and each next wait woke a pool thread again.) The fds are
 * EPOLLONESHOT: a ready fd is reported once and re-armed after its callback ran, which keeps
 * level-triggered behaviour without the thread spinning on an fd the main thread has not served.
 *
 * The thread keeps the process alive only while something is watched. An internal eventfd wakes
 * it to stop.
 *
 * Level-triggered: a callback that neither consumes the readiness (drain the
 * eventfd, read the socket) nor unwatches the fd is called again right away.
 */
import type { Worker } from 'node:worker_threads';
import { isErrnoError } from './errno.ts';
import { EventFd } from './event-fd.ts';
import {
  EPOLL_CLOEXEC,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_CTL_MOD,
  EPOLLERR,
  EPOLLHUP,
  EPOLLIN,
  EPOLLONESHOT,
  EPOLLOUT,
  EPOLLRDHUP,
  close,
  epollCreate1,
  epollCtl,
} from './libc.ts';
import { ACKED, BATCH_AT, COUNT, MAX_BATCH, READY, SEQ, SHARED_BYTES, STOP, type PollerThreadSetup } from './poller-shared.ts';
import { startThread } from './thread.ts';

export interface Readiness {
  /** EPOLLIN */
  readonly readable: boolean;
  /** EPOLLOUT */
  readonly writable: boolean;
  /** EPOLLHUP or EPOLLRDHUP: the peer is gone (how a transport notices a dead backend). */
  readonly hangup: boolean;
  /** EPOLLERR */
  readonly error: boolean;
  /** The raw EPOLL* bits. */
  readonly events: number;
}

/** What to wait for: a name, or EPOLL* bits. Hang-ups and errors are always reported. */
export type Interest = 'readable' | 'writable' | number;

export type ReadyCallback = (readiness: Readiness) => void;

interface Watch {
  /** Stored in epoll_data: unique per watch, so a stale event for a re-used fd number is recognised. */
  readonly token: number;
  readonly fd: number;
  readonly bits: number;
  readonly onReady: ReadyCallback;
}

const WAKEUP_TOKEN = 0;

export class Poller {
  readonly #epollFd: number;
  readonly #wakeup: EventFd;
  readonly #watchesByFd = new Map<number, Watch>();
  readonly #watchesByToken = new Map<number, Watch>();
  readonly #words: Int32Array;
  readonly #batch: Uint32Array;
  readonly #thread: Worker;
  #nextToken = WAKEUP_TOKEN + 1;
  #seen = 0;
  #closed = false;
  #referenced = false;
  /** An Atomics.waitAsync is pending (it keeps the process alive: only while something is watched). */
  #waiting = false;
  /** Resolves once the thread waits (fds are watched from the start: what is ready meanwhile waits for it). */
  readonly ready: Promise<void>;

  constructor() {
    const epollFd = epollCreate1(EPOLL_CLOEXEC);
    let wakeup: EventFd | undefined;
    try {
      wakeup = new EventFd();
      epollCtl(epollFd, EPOLL_CTL_ADD, wakeup.fd, EPOLLIN, WAKEUP_TOKEN);
    } catch (error) {
      wakeup?.close();
      close(epollFd);
      throw error;
    }
    this.#epollFd = epollFd;
    this.#wakeup = wakeup;
    const shared = new SharedArrayBuffer(SHARED_BYTES);
    this.#words = new Int32Array(shared, 0, BATCH_AT / 4);
    this.#batch = new Uint32Array(shared, BATCH_AT, 2 * MAX_BATCH);
    const setup: PollerThreadSetup = { epfd: epollFd, shared };
    this.#thread = startThread(new URL('./poller-thread.ts', import.meta.url), setup, 'virtiofs-client poller');
    this.#thread.unref();
    // Not a 'message' from the thread: a message listener keeps the process alive after it fired.
    const started = Atomics.waitAsync(this.#words, READY, 0);
    this.ready = started.async ? started.value.then(() => undefined) : Promise.resolve();
    this.#thread.on('exit', () => this.#release());
    // At exit Node joins every thread, and this one sleeps in epoll_wait: wake it to stop.
    process.once('exit', this.#onProcessExit);
    this.#thread.on('error', (error) => {
      // The thread cannot fail short of a bug; say so loudly rather than leave fds unserved.
      process.nextTick(() => {
        throw error;
      });
    });
  }

  /**
   * Calls `onReady` on the main thread whenever `fd` is ready. Unwatch the fd
   * before closing it: if another process still holds it (an fd sent over
   * SCM_RIGHTS), the kernel keeps it in the epoll set.
   */
  watch(fd: number, interest: Interest, onReady: ReadyCallback): void {
    if (this.#closed) throw new Error('poller is closed');
    if (this.#watchesByFd.has(fd)) throw new Error(`fd ${fd} is already watched`);
    const token = this.#nextToken++;
    const bits = interestBits(interest) | EPOLLRDHUP;
    epollCtl(this.#epollFd, EPOLL_CTL_ADD, fd, bits | EPOLLONESHOT, token);
    const watch = { token, fd, bits, onReady };
    this.#watchesByFd.set(fd, watch);
    this.#watchesByToken.set(token, watch);
    this.#updateReference();
    this.#waitForBatch();
  }

  /** The fds watched now (for diagnostics and tests). */
  get watchedFds(): number[] {
    return [...this.#watchesByFd.keys()];
  }

  /** Stops calling back for `fd`, including for events already collected (safe inside a callback). */
  unwatch(fd: number): void {
    const watch = this.#watchesByFd.get(fd);
    if (watch === undefined) return;
    this.#watchesByFd.delete(fd);
    this.#watchesByToken.delete(watch.token);
    epollCtl(this.#epollFd, EPOLL_CTL_DEL, fd, 0, 0);
    this.#updateReference();
  }

  /** Forgets every watch and stops the thread; the watched fds stay open. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    process.off('exit', this.#onProcessExit);
    this.#watchesByFd.clear();
    this.#watchesByToken.clear();
    Atomics.store(this.#words, STOP, 1);
    Atomics.notify(this.#words, ACKED);
    this.#wakeup.signal();
    this.#referenced = true;
    this.#updateReference();
  }

  readonly #onProcessExit = (): void => this.close();

  /** The thread keeps the process alive while something is watched, as an open socket would. */
  #updateReference(): void {
    const wanted = !this.#closed && this.#watchesByFd.size > 0;
    if (wanted === this.#referenced) return;
    this.#referenced = wanted;
    if (wanted) this.#thread.ref();
    else {
      this.#thread.unref();
      // A pending Atomics.waitAsync keeps the process alive: end it (the batch it finds is empty).
      if (this.#waiting) Atomics.notify(this.#words, SEQ);
    }
  }

  #waitForBatch(): void {
    if (this.#closed || this.#waiting || this.#watchesByFd.size === 0) return;
    this.#waiting = true;
    const result = Atomics.waitAsync(this.#words, SEQ, this.#seen);
    if (result.async) void result.value.then(() => this.#onBatch());
    else queueMicrotask(() => this.#onBatch());
  }

  #onBatch(): void {
    this.#waiting = false;
    if (this.#closed) return;
    const seq = Atomics.load(this.#words, SEQ);
    if (seq === this.#seen) return this.#waitForBatch();
    // Copy the batch out, then let the thread collect the next one.
    const count = Atomics.load(this.#words, COUNT);
    const ready: number[] = [];
    for (let i = 0; i < 2 * count; i++) ready.push(this.#batch[i]!);
    this.#seen = seq;
    Atomics.store(this.#words, ACKED, seq);
    Atomics.notify(this.#words, ACKED);
    const failures: unknown[] = [];
    for (let i = 0; i < ready.length; i += 2) {
      if (this.#closed) break;
      const token = ready[i]!;
      const events = ready[i + 1]!;
      if (token === WAKEUP_TOKEN) {
        this.#wakeup.drain();
        continue;
      }
      // Absent when an earlier callback of this batch unwatched the fd.
      const watch = this.#watchesByToken.get(token);
      if (watch === undefined) continue;
      try {
        watch.onReady(readinessOf(events));
      } catch (failure) {
        failures.push(failure);
      }
      // Still watched (and not re-watched under a new token): arm it for its next readiness.
      if (this.#watchesByToken.get(token) === watch) this.#rearm(watch);
    }
    this.#waitForBatch();
    // Thrown only once the poller is consistent again; this surfaces as an uncaught exception.
    if (failures.length === 1) throw failures[0];
    if (failures.length > 1) throw new AggregateError(failures, 'poller callbacks failed');
  }

  #rearm(watch: Watch): void {
    try {
      epollCtl(this.#epollFd, EPOLL_CTL_MOD, watch.fd, watch.bits | EPOLLONESHOT, watch.token);
    } catch (error) {
      // The fd was closed behind our back (the caller's bug): forget it rather than fail the others.
      if (!isErrnoError(error, 'EBADF', 'ENOENT')) throw error;
      this.#watchesByFd.delete(watch.fd);
      this.#watchesByToken.delete(watch.token);
      this.#updateReference();
    }
  }

  #release(): void {
    try {
      close(this.#epollFd);
      this.#wakeup.close();
    } catch {
      // released already
    }
  }
}

function interestBits(interest: Interest): number {
  if (interest === 'readable') return EPOLLIN;
  if (interest === 'writable') return EPOLLOUT;
  return interest;
}

function readinessOf(events: number): Readiness {
  return {
    readable: (events & EPOLLIN) !== 0,
    writable: (events & EPOLLOUT) !== 0,
    hangup: (events & (EPOLLHUP | EPOLLRDHUP)) !== 0,
    error: (events & EPOLLERR) !== 0,
    events,
  };
}

let shared: Poller | undefined;

/**
 * The process's poller: one thread serves every transport's fds.
 */
export function sharedPoller(): Poller {
  return (shared ??= new Poller());
}
