/**
 * An eventfd: the doorbell of vhost-user (kick and call fds) and the way to
 * wake a thread blocked in epoll_wait.
 */
import { EFD_CLOEXEC, EFD_NONBLOCK, close, eventfd, readEventFdCounter, writeEventFdCounter } from './libc.ts';

export class EventFd {
  readonly fd: number;
  #closed = false;

  // Non-blocking: a read on the main thread must never stall the event loop.
  constructor(initialValue = 0) {
    this.fd = eventfd(initialValue, EFD_CLOEXEC | EFD_NONBLOCK);
  }

  /** Adds `count` to the counter, waking whoever polls the fd. */
  signal(count = 1): void {
    writeEventFdCounter(this.fd, BigInt(count));
  }

  /** Returns the counter (0 if not signalled) and resets it. */
  drain(): number {
    return Number(readEventFdCounter(this.fd));
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.fd);
  }
}
