/**
 * The libc calls Node does not offer, bound through koffi.
 *
 * Every wrapper checks the result and throws an ErrnoError, reading errno
 * immediately after the call, before other JavaScript can make a libc call
 * that overwrites it.
 *
 * Constants are the Linux values shared by x86, arm, arm64, riscv, loongarch,
 * powerpc and s390x. mips, sparc, alpha and parisc differ for some of them
 * (SOCK_STREAM, SOL_SOCKET, O_NONBLOCK-derived flags); those are not
 * supported. Struct layouts are never hard-coded: they come from koffi, which
 * follows the platform C ABI.
 */
import koffi, { type KoffiFunc } from 'koffi';
import { ErrnoError, errnoNumber } from './errno.ts';

const lib = koffi.load('libc.so.6');

// memfd_create(2), mmap(2)
export const MFD_CLOEXEC = 0x0001;
export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const MAP_SHARED = 0x01;

// eventfd(2); EFD_* equal O_CLOEXEC / O_NONBLOCK.
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;

// socket(7), unix(7)
export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SCM_RIGHTS = 1;
export const MSG_CTRUNC = 0x8;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_CMSG_CLOEXEC = 0x40000000;

// poll(2)
export const POLLIN = 0x001;
export const POLLOUT = 0x004;

// epoll(7)
export const EPOLL_CLOEXEC = 0o2000000;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLL_CTL_MOD = 3;
/** Report once, then rest until re-armed with EPOLL_CTL_MOD. */
export const EPOLLONESHOT = 1 << 30;
export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
/** Edge-triggered: report each new signal once (an eventfd then needs no read to re-arm). */
export const EPOLLET = 0x8000_0000;
/** Wake one of the epoll sets waiting on a shared wait queue, not all (the /dev/fuse clones). */
export const EPOLLEXCLUSIVE = 1 << 28;

// mount(2), umount2(2)
export const MS_RDONLY = 1;
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MS_NOEXEC = 8;
export const MS_SYNCHRONOUS = 16;
export const MS_DIRSYNC = 128;
export const MS_NOATIME = 1024;
export const MS_NODIRATIME = 2048;
export const MS_RELATIME = 1 << 21;
export const MS_STRICTATIME = 1 << 24;
export const MS_LAZYTIME = 1 << 25;
export const MNT_DETACH = 2;

const POINTER_BITS = 8 * koffi.sizeof('void *');
const MAP_FAILED = (1n << BigInt(POINTER_BITS)) - 1n;
const INT_SIZE = koffi.sizeof('int');
const EAGAIN = errnoNumber('EAGAIN');
const EINTR = errnoNumber('EINTR');

// off_t is 64-bit on LP64; 32-bit glibc needs the explicit *64 entry points.
const off64 = POINTER_BITS === 64 ? '' : '64';

// Structs, registered by name for the prototypes below.
const Iovec = koffi.struct('iovec', { iov_base: 'void *', iov_len: 'size_t' });
// glibc's layout (msg_iovlen and msg_controllen are size_t); musl differs, but we load glibc.
koffi.struct('msghdr', {
  msg_name: 'void *',
  msg_namelen: 'uint32_t',
  msg_iov: koffi.pointer(Iovec),
  msg_iovlen: 'size_t',
  msg_control: 'void *',
  msg_controllen: 'size_t',
  msg_flags: 'int',
});
// Followed by the data at CMSG_DATA, i.e. CMSG_ALIGN(sizeof(cmsghdr)).
const Cmsghdr = koffi.struct('cmsghdr', { cmsg_len: 'size_t', cmsg_level: 'int', cmsg_type: 'int' });
const SUN_PATH_SIZE = 108;
const SockaddrUn = koffi.struct('sockaddr_un', {
  sun_family: 'uint16_t',
  sun_path: koffi.array('uint8_t', SUN_PATH_SIZE),
});
koffi.struct('pollfd', { fd: 'int', events: 'short', revents: 'short' });
// x86_64 packs struct epoll_event (12 bytes, the kernel's __EPOLL_PACKED); other
// architectures align it (16 bytes). `data` is a union; we only use its u64.
const EpollEvent = (process.arch === 'x64' ? koffi.pack : koffi.struct)('epoll_event', {
  events: 'uint32_t',
  data: 'uint64_t',
});

interface MsghdrValue {
  msg_name: null;
  msg_namelen: number;
  msg_iov: { iov_base: Uint8Array; iov_len: number }[];
  msg_iovlen: number;
  msg_control: Uint8Array | null;
  msg_controllen: number;
  msg_flags: number;
}

const c = {
  memfd_create: lib.func('int memfd_create(const char *name, unsigned int flags)'),
  ftruncate: lib.func(`int ftruncate${off64}(int fd, int64_t length)`),
  mmap: lib.func(`void *mmap${off64}(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)`),
  munmap: lib.func('int munmap(void *addr, size_t length)'),
  madvise: lib.func('int madvise(void *addr, size_t length, int advice)'),
  close: lib.func('int close(int fd)'),
  read: lib.func('intptr_t read(int fd, void *buf, size_t count)'),
  write: lib.func('intptr_t write(int fd, const void *buf, size_t count)'),
  readv: lib.func('intptr_t readv(int fd, const iovec *iov, int iovcnt)'),
  fcntl: lib.func('int fcntl(int fd, int cmd, int arg)'),
  writev: lib.func('intptr_t writev(int fd, const iovec *iov, int iovcnt)'),
  eventfd: lib.func('int eventfd(unsigned int initval, int flags)'),
  socket: lib.func('int socket(int domain, int type, int protocol)'),
  socketpair: lib.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)'),
  connect: lib.func('int connect(int fd, const sockaddr_un *addr, uint32_t addrlen)'),
  sendmsg: lib.func('intptr_t sendmsg(int fd, const msghdr *msg, int flags)'),
  recvmsg: lib.func('intptr_t recvmsg(int fd, _Inout_ msghdr *msg, int flags)'),
  poll: lib.func('int poll(_Inout_ pollfd *fds, unsigned long nfds, int timeout)'),
  epoll_create1: lib.func('int epoll_create1(int flags)'),
  epoll_ctl: lib.func('int epoll_ctl(int epfd, int op, int fd, const epoll_event *event)'),
  // The events buffer is a plain pointer so the worker thread writes straight into our memory.
  epoll_wait: lib.func('int epoll_wait(int epfd, void *events, int maxevents, int timeout)') as KoffiFunc<
    (epfd: number, events: Uint8Array, maxEvents: number, timeoutMs: number) => number
  >,
  mount: lib.func(
    'int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)',
  ),
  umount2: lib.func('int umount2(const char *target, int flags)'),
  prctl: lib.func('int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)'),
};

/** Throws an ErrnoError for a negative result; must run right after the call. */
function check(syscall: string, result: number, detail?: string): number {
  if (result < 0) throw new ErrnoError(syscall, koffi.errno(), detail);
  return result;
}

export function memfdCreate(name: string, flags: number): number {
  return check('memfd_create', c.memfd_create(name, flags));
}

export function ftruncate(fd: number, length: number): void {
  check('ftruncate', c.ftruncate(fd, length));
}

/** Maps at an address the kernel picks; returns that address. */
export function mmap(length: number, protection: number, flags: number, fd: number, offset = 0): bigint {
  const address: bigint = c.mmap(null, length, protection, flags, fd, offset);
  if (address === MAP_FAILED) throw new ErrnoError('mmap', koffi.errno());
  return address;
}

export function munmap(address: bigint, length: number): void {
  check('munmap', c.munmap(address, length));
}

/** madvise(2) advice (generic Linux values). */
export const MADV_DONTFORK = 10;

export function madvise(address: bigint, length: number, advice: number): void {
  check('madvise', c.madvise(address, length, advice));
}

/**
 * The memory at [address, address+length) as an ArrayBuffer, without a copy.
 * The buffer cannot be detached: touching it after munmap crashes the process.
 */
export function viewMemory(address: bigint, length: number): ArrayBuffer {
  return koffi.view(address, length);
}

export function close(fd: number): void {
  check('close', c.close(fd));
}

export function eventfd(initialValue: number, flags: number): number {
  return check('eventfd', c.eventfd(initialValue, flags));
}

const eventCounter = new BigUint64Array(1);

/** Reads and resets an eventfd's counter; 0n when a non-blocking eventfd was not signalled. */
export function readEventFdCounter(fd: number): bigint {
  const result: number = c.read(fd, eventCounter, eventCounter.byteLength);
  if (result < 0) {
    const errno = koffi.errno();
    if (errno === EAGAIN) return 0n;
    throw new ErrnoError('read', errno);
  }
  return eventCounter[0]!;
}

/** Adds `value` to an eventfd's counter. */
export function writeEventFdCounter(fd: number, value: bigint): void {
  eventCounter[0] = value;
  check('write', c.write(fd, eventCounter, eventCounter.byteLength));
}

export function socket(domain: number, type: number, protocol = 0): number {
  return check('socket', c.socket(domain, type, protocol));
}

export function socketpair(domain: number, type: number, protocol = 0): [number, number] {
  const fds = new Int32Array(2);
  check('socketpair', c.socketpair(domain, type, protocol, fds));
  return [fds[0]!, fds[1]!];
}

/** connect(2) to a filesystem AF_UNIX address. */
export function connectUnix(fd: number, path: string): void {
  const pathBytes = new TextEncoder().encode(path);
  // The kernel needs room for the terminating NUL.
  if (pathBytes.length >= SUN_PATH_SIZE) {
    throw new ErrnoError('connect', errnoNumber('ENAMETOOLONG'), `'${path}' is longer than ${SUN_PATH_SIZE - 1} bytes`);
  }
  const sunPath = new Uint8Array(SUN_PATH_SIZE);
  sunPath.set(pathBytes);
  const length = koffi.offsetof(SockaddrUn, 'sun_path') + pathBytes.length + 1;
  check('connect', c.connect(fd, { sun_family: AF_UNIX, sun_path: sunPath }, length), `'${path}'`);
}

// The CMSG_* macros, for glibc (which aligns control messages to size_t).
const CMSG_ALIGNMENT = koffi.sizeof('size_t');
const cmsgAlign = (length: number): number => Math.ceil(length / CMSG_ALIGNMENT) * CMSG_ALIGNMENT;
const CMSG_DATA_OFFSET = cmsgAlign(Cmsghdr.size);
const cmsgSpace = (dataLength: number): number => CMSG_DATA_OFFSET + cmsgAlign(dataLength);
const cmsgLen = (dataLength: number): number => CMSG_DATA_OFFSET + dataLength;

/** sendmsg(2) of one buffer, with `fds` as SCM_RIGHTS; returns how many bytes were sent. */
export function sendmsg(fd: number, bytes: Uint8Array, fds: readonly number[], flags: number): number {
  let control: Uint8Array | null = null;
  if (fds.length > 0) {
    control = new Uint8Array(cmsgSpace(fds.length * INT_SIZE));
    koffi.encode(control, 0, Cmsghdr, {
      cmsg_len: cmsgLen(fds.length * INT_SIZE),
      cmsg_level: SOL_SOCKET,
      cmsg_type: SCM_RIGHTS,
    });
    koffi.encode(control, CMSG_DATA_OFFSET, 'int', fds, fds.length);
  }
  const message: MsghdrValue = {
    msg_name: null,
    msg_namelen: 0,
    msg_iov: [{ iov_base: bytes, iov_len: bytes.length }],
    msg_iovlen: 1,
    msg_control: control,
    msg_controllen: control?.length ?? 0,
    msg_flags: 0,
  };
  return check('sendmsg', c.sendmsg(fd, message, flags));
}

export interface Received {
  /** Bytes written at the start of the buffer; 0 means the peer closed the connection. */
  readonly bytesRead: number;
  /** Descriptors that came as SCM_RIGHTS; the caller owns them. */
  readonly fds: number[];
  /** MSG_CTRUNC: the peer sent more descriptors than there was room for; the kernel closed the rest. */
  readonly fdsTruncated: boolean;
}

/** recvmsg(2) into `into`, accepting up to `maxFds` descriptors. */
export function recvmsg(fd: number, into: Uint8Array, maxFds: number, flags: number): Received {
  const control = maxFds > 0 ? new Uint8Array(cmsgSpace(maxFds * INT_SIZE)) : null;
  const message: MsghdrValue = {
    msg_name: null,
    msg_namelen: 0,
    msg_iov: [{ iov_base: into, iov_len: into.length }],
    msg_iovlen: 1,
    msg_control: control,
    // CMSG_LEN, not CMSG_SPACE: the kernel fills all the room it is given, and
    // the alignment padding of an odd count would admit one fd more than asked.
    msg_controllen: maxFds > 0 ? cmsgLen(maxFds * INT_SIZE) : 0,
    msg_flags: 0,
  };
  const bytesRead = check('recvmsg', c.recvmsg(fd, message, flags));
  return {
    bytesRead,
    fds: control === null ? [] : rightsIn(control, message.msg_controllen),
    fdsTruncated: (message.msg_flags & MSG_CTRUNC) !== 0,
  };
}

/** The descriptors of every SCM_RIGHTS message in a control buffer (CMSG_FIRSTHDR/CMSG_NXTHDR). */
function rightsIn(control: Uint8Array, length: number): number[] {
  const fds: number[] = [];
  for (let offset = 0; offset + Cmsghdr.size <= length; ) {
    const header: { cmsg_len: number; cmsg_level: number; cmsg_type: number } = koffi.decode(control, offset, Cmsghdr);
    if (header.cmsg_len < CMSG_DATA_OFFSET || offset + header.cmsg_len > length) break;
    if (header.cmsg_level === SOL_SOCKET && header.cmsg_type === SCM_RIGHTS) {
      const count = Math.floor((header.cmsg_len - CMSG_DATA_OFFSET) / INT_SIZE);
      const decoded: ArrayLike<number> = koffi.decode(control, offset + CMSG_DATA_OFFSET, 'int', count);
      fds.push(...Array.from(decoded));
    }
    offset += cmsgAlign(header.cmsg_len);
  }
  return fds;
}

export interface PollRequest {
  readonly fd: number;
  /** POLLIN, POLLOUT... */
  readonly events: number;
}

/** poll(2); returns the revents of each request, all 0 on timeout. timeoutMs < 0 waits forever. */
export function poll(requests: readonly PollRequest[], timeoutMs: number): number[] {
  const fds = requests.map(({ fd, events }) => ({ fd, events, revents: 0 }));
  check('poll', c.poll(fds, fds.length, timeoutMs));
  return fds.map((entry) => entry.revents);
}

export function epollCreate1(flags: number): number {
  return check('epoll_create1', c.epoll_create1(flags));
}

/** epoll_ctl(2); `token` is stored in epoll_data.u64 and returned with each event. */
export function epollCtl(epfd: number, operation: number, fd: number, events: number, token: number): void {
  check('epoll_ctl', c.epoll_ctl(epfd, operation, fd, { events: events >>> 0, data: token }));
}

export interface EpollReadyEvent {
  /** EPOLLIN, EPOLLHUP... */
  readonly events: number;
  readonly token: number;
}

/** Room for the events of one epoll_wait, in memory that never moves (it is written from another thread). */
export class EpollEventBuffer {
  readonly capacity: number;
  readonly bytes: Uint8Array;

  constructor(capacity: number) {
    this.capacity = capacity;
    // A fresh ArrayBuffer always lives outside the V8 heap, so its address is stable.
    this.bytes = new Uint8Array(new ArrayBuffer(capacity * EpollEvent.size));
  }

  /** The EPOLL* bits of event `index`, read without building an object (the per-queue threads' loop). */
  eventsAt(index: number): number {
    return this.#view.getUint32(index * EpollEvent.size + EPOLL_EVENTS_AT, true);
  }

  /** The low 32 bits of event `index`'s token (epoll_data.u64). */
  tokenAt(index: number): number {
    return this.#view.getUint32(index * EpollEvent.size + EPOLL_DATA_AT, true);
  }

  #viewCache: DataView | undefined;
  get #view(): DataView {
    return (this.#viewCache ??= new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength));
  }

  event(index: number): EpollReadyEvent {
    const { events, data }: { events: number; data: number | bigint } = koffi.decode(
      this.bytes,
      index * EpollEvent.size,
      EpollEvent,
    );
    return { events, token: Number(data) };
  }
}

const EPOLL_EVENTS_AT = koffi.offsetof(EpollEvent, 'events');
const EPOLL_DATA_AT = koffi.offsetof(EpollEvent, 'data');

/**
 * epoll_wait(2) on the calling thread, blocking it up to `timeoutMs` (-1: no limit). For threads
 * that own their loop (the per-queue threads), never the main thread. Returns the number of
 * events in `buffer`, 0 on timeout or EINTR.
 */
export function epollWait(epfd: number, buffer: EpollEventBuffer, timeoutMs: number): number {
  const count = c.epoll_wait(epfd, buffer.bytes, buffer.capacity, timeoutMs);
  if (count >= 0) return count;
  const errno = koffi.errno();
  if (errno === EINTR) return 0;
  throw new ErrnoError('epoll_wait', errno);
}

const PR_SET_TIMERSLACK = 29;
const PR_GET_TIMERSLACK = 30;

/** The calling thread's timer slack (prctl PR_SET_TIMERSLACK); returns the one it had. */
export function setTimerSlackNs(ns: number): number {
  const before = check('prctl', c.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0));
  check('prctl', c.prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0));
  return before;
}

/**
 * epoll_wait(2) on a libuv threadpool thread. `done` runs on the main thread
 * with the number of ready events (read them from `buffer`), or an ErrnoError
 * (EINTR when a signal hit the waiting thread). Keep `buffer` untouched until then.
 * What `done` throws becomes an uncaught exception.
 */
export function epollWaitAsync(
  epfd: number,
  buffer: EpollEventBuffer,
  timeoutMs: number,
  done: (error: Error | null, count: number) => void,
): void {
  c.epoll_wait.async(epfd, buffer.bytes, buffer.capacity, timeoutMs, (error: Error | null, count: number) => {
    try {
      if (error !== null) done(error, 0);
      // koffi restores the worker thread's errno around this callback.
      else if (count < 0) done(new ErrnoError('epoll_wait', koffi.errno()), 0);
      else done(null, count);
    } catch (failure) {
      // Rethrown outside koffi's callback: an exception escaping it stays pending in
      // N-API while 'uncaughtException' handlers run, and any koffi call they make throws it again.
      process.nextTick(() => {
        throw failure;
      });
    }
  });
}

/** mount(2); `data` is the filesystem-specific option string. */
export function mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): void {
  check('mount', c.mount(source, target, fstype, flags, data), `'${target}'`);
}

export function umount2(target: string, flags: number): void {
  check('umount2', c.umount2(target, flags), `'${target}'`);
}

/**
 * readv(2) into `buffers` in order; returns the bytes read, or -1 for EAGAIN
 * (the fd is non-blocking and has nothing). Other failures throw.
 */
export function readv(fd: number, buffers: readonly Uint8Array[]): number {
  const result = c.readv(fd, buffers.map((b) => ({ iov_base: b, iov_len: b.length })), buffers.length) as number;
  if (result < 0 && koffi.errno() === EAGAIN) return -1;
  return check('readv', result);
}

/** writev(2) of `buffers` in order; returns the bytes written. */
export function writev(fd: number, buffers: readonly Uint8Array[]): number {
  return check('writev', c.writev(fd, buffers.map((b) => ({ iov_base: b, iov_len: b.length })), buffers.length) as number);
}

// --- the request path's calls: raw iovec arrays, results as numbers, nothing allocated ----------

const raw = {
  readv: lib.func('intptr_t readv(int fd, void *iov, int iovcnt)') as KoffiFunc<(fd: number, iov: Uint8Array, count: number) => number>,
  writev: lib.func('intptr_t writev(int fd, void *iov, int iovcnt)') as KoffiFunc<(fd: number, iov: Uint8Array, count: number) => number>,
  read: lib.func('intptr_t read(int fd, void *buf, size_t count)') as KoffiFunc<(fd: number, buf: Uint8Array, count: number) => number>,
  write: lib.func('intptr_t write(int fd, void *buf, size_t count)') as KoffiFunc<(fd: number, buf: Uint8Array, count: number) => number>,
};

/** sizeof(struct iovec). */
export const IOVEC_SIZE = Iovec.size;
const IOV_LEN_AT = koffi.offsetof(Iovec, 'iov_len');
const IOV_BASE_AT = koffi.offsetof(Iovec, 'iov_base');

/**
 * A struct iovec array in memory of its own, built once and handed to readvInto/writevFrom on
 * every call: only lengths change per call (setLength), never addresses.
 */
export class IovecArray {
  readonly bytes: Uint8Array;
  readonly #view: DataView;

  constructor(readonly count: number) {
    this.bytes = new Uint8Array(new ArrayBuffer(count * Iovec.size));
    this.#view = new DataView(this.bytes.buffer);
  }

  /** Sets entry `index` to [address, address+length). */
  set(index: number, address: bigint, length: number): void {
    if (POINTER_BITS === 64) this.#view.setBigUint64(index * Iovec.size + IOV_BASE_AT, address, true);
    else this.#view.setUint32(index * Iovec.size + IOV_BASE_AT, Number(address), true);
    this.setLength(index, length);
  }

  setLength(index: number, length: number): void {
    const at = index * Iovec.size + IOV_LEN_AT;
    this.#view.setUint32(at, length, true);
    if (POINTER_BITS === 64) this.#view.setUint32(at + 4, 0, true);
  }
}

/** readv(2) of the first `count` entries of `iov`: bytes read, or -errno (EAGAIN, ENODEV, ...). */
export function readvInto(fd: number, iov: IovecArray, count: number): number {
  const n = raw.readv(fd, iov.bytes, count);
  return n >= 0 ? n : -koffi.errno();
}

/** writev(2) of the first `count` entries of `iov`: bytes written, or -errno (ENOENT: the kernel dropped the request). */
export function writevFrom(fd: number, iov: IovecArray, count: number): number {
  const n = raw.writev(fd, iov.bytes, count);
  return n >= 0 ? n : -koffi.errno();
}

const counterBytes = new Uint8Array(8);
const oneBytes = new Uint8Array(new BigUint64Array([1n]).buffer);

/** Resets an eventfd's counter (non-blocking fds: nothing to wait for); returns read(2)'s result. */
export function drainEventFd(fd: number): number {
  return raw.read(fd, counterBytes, 8);
}

/** Adds 1 to an eventfd's counter, waking whoever waits on it. */
export function signalEventFd(fd: number): void {
  if (raw.write(fd, oneBytes, 8) < 0) throw new ErrnoError('write', koffi.errno(), `eventfd ${fd}`);
}

// fcntl(2) commands and the non-blocking flag (generic Linux values, as O_NONBLOCK on x86/arm64/riscv).
const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;

/** Makes a descriptor non-blocking (one received from another process, say). */
export function setNonBlocking(fd: number): void {
  const flags = check('fcntl', c.fcntl(fd, F_GETFL, 0));
  check('fcntl', c.fcntl(fd, F_SETFL, flags | O_NONBLOCK));
}
