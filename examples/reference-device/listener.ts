/**
 * The listening AF_UNIX socket a vhost-user backend offers its frontend
 * (QEMU's `-chardev socket,path=...`, or this project's client). Node's `net`
 * cannot receive file descriptors, so the connection is a ffi/ UnixSocket;
 * the three calls ffi/libc.ts does not bind (bind, listen, accept4) are bound
 * here.
 */
import koffi from 'koffi';
import { rmSync } from 'node:fs';
import { ErrnoError, errnoNumber } from '../../ffi/errno.ts';
import { AF_UNIX, SOCK_CLOEXEC, SOCK_STREAM, close, socket } from '../../ffi/libc.ts';
import { sharedPoller } from '../../ffi/poller.ts';
import { UnixSocket } from '../../ffi/unix-socket.ts';

const SOCK_NONBLOCK = 0o4000;
const SUN_PATH_SIZE = 108;

const lib = koffi.load('libc.so.6');
const c = {
  bind: lib.func('int bind(int fd, const uint8_t *addr, uint32_t addrlen)'),
  listen: lib.func('int listen(int fd, int backlog)'),
  accept4: lib.func('int accept4(int fd, void *addr, void *addrlen, int flags)'),
};

function check(syscall: string, result: number, detail?: string): number {
  if (result < 0) throw new ErrnoError(syscall, koffi.errno(), detail);
  return result;
}

/**
 * ffi/unix-socket.ts builds a UnixSocket only by connecting or from a
 * socketpair; an accepted connection is the same kind of fd. (A public
 * `UnixSocket.fromFd` there would make this cast unnecessary.)
 */
function adopt(fd: number): UnixSocket {
  const construct = UnixSocket as unknown as new (fd: number) => UnixSocket;
  return new construct(fd);
}

export class Listener {
  private closed = false;
  private abandon: ((error: Error) => void) | undefined;

  private constructor(
    readonly path: string,
    private readonly fd: number,
  ) {}

  /** Listens on `path` (an existing socket file there is replaced). */
  static listen(path: string): Listener {
    const pathBytes = new TextEncoder().encode(path);
    if (pathBytes.length >= SUN_PATH_SIZE) {
      throw new ErrnoError('bind', errnoNumber('ENAMETOOLONG'), `'${path}' is longer than ${SUN_PATH_SIZE - 1} bytes`);
    }
    // struct sockaddr_un: sa_family_t (u16, host order), then the NUL-terminated path.
    const address = new Uint8Array(2 + pathBytes.length + 1);
    new DataView(address.buffer).setUint16(0, AF_UNIX, true);
    address.set(pathBytes, 2);
    rmSync(path, { force: true });
    const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK);
    try {
      check('bind', c.bind(fd, address, address.length), `'${path}'`);
      check('listen', c.listen(fd, 1));
    } catch (error) {
      close(fd);
      throw error;
    }
    return new Listener(path, fd);
  }

  /** Waits for one frontend to connect. */
  accept(): Promise<UnixSocket> {
    if (this.closed) return Promise.reject(new Error(`listener on ${this.path} is closed`));
    return new Promise((resolve, reject) => {
      this.abandon = reject;
      const poller = sharedPoller();
      poller.watch(this.fd, 'readable', () => {
        let fd: number;
        try {
          fd = c.accept4(this.fd, null, null, SOCK_CLOEXEC);
          if (fd < 0) {
            const errno = koffi.errno();
            if (errno === errnoNumber('EAGAIN') || errno === errnoNumber('EINTR') || errno === errnoNumber('ECONNABORTED')) return;
            throw new ErrnoError('accept4', errno, `'${this.path}'`);
          }
        } catch (error) {
          poller.unwatch(this.fd);
          this.abandon = undefined;
          reject(error);
          return;
        }
        poller.unwatch(this.fd);
        this.abandon = undefined;
        resolve(adopt(fd));
      });
    });
  }

  /** Stops listening and removes the socket file. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    sharedPoller().unwatch(this.fd);
    close(this.fd);
    rmSync(this.path, { force: true });
    this.abandon?.(new Error(`listener on ${this.path} closed before a frontend connected`));
    this.abandon = undefined;
  }
}
