/**
 * Readiness callbacks for raw fds (eventfds, sockets) that libuv does not own.
 *
 * One epoll set, waited on by a single koffi async call: whatever the number
 * of watched fds, the poller occupies one libuv threadpool thread (out of
 * UV_THREADPOOL_SIZE, 4 by default, shared with fs and dns), and only while
 * it watches something. An internal eventfd wakes that thread when the
 * poller closes or becomes idle, so a closed or idle poller never keeps the
 * process alive.
 *
 * Level-triggered: a callback that neither consumes the readiness (drain the
 * eventfd, read the socket) nor unwatches the fd is called again right away.
 */
import { isErrnoError } from './errno.ts';
import { EventFd } from './event-fd.ts';
import {
  EPOLL_CLOEXEC,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLLERR,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  EPOLLRDHUP,
  EpollEventBuffer,
  close,
  epollCreate1,
  epollCtl,
  epollWaitAsync,
} from './libc.ts';

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
  readonly onReady: ReadyCallback;
}

const WAKEUP_TOKEN = 0;

export class Poller {
  readonly #epollFd: number;
  readonly #wakeup: EventFd;
  readonly #readyEvents: EpollEventBuffer;
  readonly #watchesByFd = new Map<number, Watch>();
  readonly #watchesByToken = new Map<number, Watch>();
  #nextToken = WAKEUP_TOKEN + 1;
  /** An epoll_wait is running on the threadpool; it alone may touch #readyEvents. */
  #waiting = false;
  #closed = false;

  constructor(maxEventsPerWait = 64) {
    this.#readyEvents = new EpollEventBuffer(maxEventsPerWait);
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
    epollCtl(this.#epollFd, EPOLL_CTL_ADD, fd, interestBits(interest) | EPOLLRDHUP, token);
    const watch = { token, onReady };
    this.#watchesByFd.set(fd, watch);
    this.#watchesByToken.set(token, watch);
    this.#wait();
  }

  /** Stops calling back for `fd`, including for events already collected (safe inside a callback). */
  unwatch(fd: number): void {
    const watch = this.#watchesByFd.get(fd);
    if (watch === undefined) return;
    this.#watchesByFd.delete(fd);
    this.#watchesByToken.delete(watch.token);
    epollCtl(this.#epollFd, EPOLL_CTL_DEL, fd, 0, 0);
    // Give the threadpool thread back when there is nothing left to wait for.
    if (this.#watchesByFd.size === 0 && this.#waiting) this.#wakeup.signal();
  }

  /** Forgets every watch and releases the epoll set; the watched fds stay open. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watchesByFd.clear();
    this.#watchesByToken.clear();
    // Closing an epoll fd does not wake a thread waiting on it: wake it, and release once it returns.
    if (this.#waiting) this.#wakeup.signal();
    else this.#release();
  }

  #wait(): void {
    if (this.#waiting || this.#closed || this.#watchesByFd.size === 0) return;
    this.#waiting = true;
    epollWaitAsync(this.#epollFd, this.#readyEvents, -1, (error, count) => this.#onWaitDone(error, count));
  }

  #onWaitDone(error: Error | null, count: number): void {
    this.#waiting = false;
    if (this.#closed) {
      this.#release();
      return;
    }
    if (error !== null && !isErrnoError(error, 'EINTR')) {
      this.close();
      throw error;
    }
    // Copy the events out first: a callback may start the next wait, which reuses the buffer.
    const ready = Array.from({ length: count }, (_, index) => this.#readyEvents.event(index));
    const failures: unknown[] = [];
    for (const { events, token } of ready) {
      if (this.#closed) break;
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
    }
    this.#wait();
    // Thrown only once the poller is consistent again; this surfaces as an uncaught exception.
    if (failures.length === 1) throw failures[0];
    if (failures.length > 1) throw new AggregateError(failures, 'poller callbacks failed');
  }

  #release(): void {
    close(this.#epollFd);
    this.#wakeup.close();
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
 * The process's poller. Each waiting Poller holds one libuv threadpool thread
 * (4 by default, shared with fs and dns), so transports share this one.
 */
export function sharedPoller(): Poller {
  return (shared ??= new Poller());
}
