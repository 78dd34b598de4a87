/**
 * A connected AF_UNIX stream socket that carries file descriptors: the
 * vhost-user control channel (memory regions, kick and call eventfds travel
 * as SCM_RIGHTS).
 *
 * Calls are synchronous and bounded by poll timeouts: the socket serves a
 * short request/reply handshake, where blocking the event loop for a reply
 * is simpler than an asynchronous state machine.
 */
import { ErrnoError, errnoNumber, isErrnoError } from './errno.ts';
import {
  AF_UNIX,
  MSG_CMSG_CLOEXEC,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  POLLIN,
  POLLOUT,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  close,
  connectUnix,
  poll,
  recvmsg,
  sendmsg,
  socket,
  socketpair,
} from './libc.ts';

export const DEFAULT_TIMEOUT_MS = 5000;

const ETIMEDOUT = errnoNumber('ETIMEDOUT');
const ECONNRESET = errnoNumber('ECONNRESET');

export interface TimeoutOption {
  /** How long the whole call may wait for the peer; Infinity waits forever. */
  readonly timeoutMs?: number;
}

export interface ReceiveWithFdsOptions extends TimeoutOption {
  /** More descriptors than this make the receive fail (the kernel closes the excess). */
  readonly maxFds: number;
}

export interface MessageWithFds {
  readonly bytes: Uint8Array;
  /** Received descriptors (close-on-exec); the caller owns them. */
  readonly fds: number[];
}

export class UnixSocket {
  readonly fd: number;
  #closed = false;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /** Connects to a listening socket; fails with ENOENT (naming the path) when there is none. */
  static connect(path: string): UnixSocket {
    const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
    try {
      connectUnix(fd, path);
    } catch (error) {
      close(fd);
      throw error;
    }
    return new UnixSocket(fd);
  }

  /** Two connected sockets (socketpair(2)). */
  static pair(): [UnixSocket, UnixSocket] {
    const [a, b] = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
    return [new UnixSocket(a), new UnixSocket(b)];
  }

  /** Sends all of `bytes`, `fds` attached to the first byte (they stay ours to close), or throws (EPIPE once the peer is gone). */
  send(bytes: Uint8Array, fds: readonly number[] = [], { timeoutMs = DEFAULT_TIMEOUT_MS }: TimeoutOption = {}): void {
    // A stream socket passes descriptors only along with data.
    if (fds.length > 0 && bytes.length === 0) throw new RangeError('file descriptors must be sent with at least one byte');
    const deadline = performance.now() + timeoutMs;
    let sent = 0;
    while (sent < bytes.length) {
      if (!this.#waitFor(POLLOUT, deadline)) {
        throw new ErrnoError('poll', ETIMEDOUT, `peer took no data for ${timeoutMs} ms (${sent} of ${bytes.length} bytes sent)`);
      }
      try {
        sent += sendmsg(this.fd, bytes.subarray(sent), sent === 0 ? fds : [], MSG_DONTWAIT | MSG_NOSIGNAL);
      } catch (error) {
        if (!isErrnoError(error, 'EAGAIN', 'EINTR')) throw error;
      }
    }
  }

  /** Reads exactly `length` bytes; file descriptors are not expected. */
  receive(length: number, options: TimeoutOption = {}): Uint8Array {
    return this.receiveWithFds(length, { ...options, maxFds: 0 }).bytes;
  }

  /**
   * Reads exactly `length` bytes and the descriptors that came with them. A
   * peer that closes first fails it with ECONNRESET.
   */
  receiveWithFds(length: number, { timeoutMs = DEFAULT_TIMEOUT_MS, maxFds }: ReceiveWithFdsOptions): MessageWithFds {
    const deadline = performance.now() + timeoutMs;
    const bytes = new Uint8Array(length);
    const fds: number[] = [];
    let received = 0;
    try {
      while (received < length) {
        if (!this.#waitFor(POLLIN, deadline)) {
          throw new ErrnoError('poll', ETIMEDOUT, `no data from peer for ${timeoutMs} ms (${received} of ${length} bytes received)`);
        }
        let chunk;
        try {
          chunk = recvmsg(this.fd, bytes.subarray(received), maxFds - fds.length, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        } catch (error) {
          if (isErrnoError(error, 'EAGAIN', 'EINTR')) continue;
          throw error;
        }
        fds.push(...chunk.fds);
        if (chunk.fdsTruncated) throw new Error(`peer sent more than the ${maxFds} file descriptors expected`);
        if (chunk.bytesRead === 0) {
          throw new ErrnoError('recvmsg', ECONNRESET, `peer closed the connection (${received} of ${length} bytes received)`);
        }
        received += chunk.bytesRead;
      }
    } catch (error) {
      for (const fd of fds) close(fd);
      throw error;
    }
    return { bytes, fds };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.fd);
  }

  /** Polls until the socket reports anything (the next call then tells what); false at the deadline. */
  #waitFor(events: number, deadline: number): boolean {
    for (;;) {
      const remainingMs = Math.max(0, deadline - performance.now());
      let revents: number;
      try {
        [revents = 0] = poll([{ fd: this.fd, events }], Number.isFinite(remainingMs) ? Math.ceil(remainingMs) : -1);
      } catch (error) {
        if (isErrnoError(error, 'EINTR')) continue;
        throw error;
      }
      if (revents !== 0) return true;
      if (remainingMs === 0) return false;
    }
  }
}
