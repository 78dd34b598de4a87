/**
 * vhost-user frontend: we play the part QEMU plays for a vhost-user-fs
 * backend (virtiofsd). The handshake is synchronous (short, at start-up);
 * afterwards the socket is only watched for the backend hanging up, and the
 * queues run on memory and eventfds alone.
 */
import { statSync } from 'node:fs';
import type { DmaRegion } from '../../../ffi/dma.ts';
import { ErrnoError, isErrnoError } from '../../../ffi/errno.ts';
import { EventFd } from '../../../ffi/event-fd.ts';
import { sharedPoller } from '../../../ffi/poller.ts';
import { SharedMemory } from '../../../ffi/shared-memory.ts';
import { UnixSocket } from '../../../ffi/unix-socket.ts';
import type { Struct } from '../../../ffi/struct.ts';
import { FailureLatch } from '../failure-latch.ts';
import { TransportError, type QueueAddresses, type QueueSignals, type VirtioFsConfig, type VirtioTransport } from '../transport.ts';
import {
  HeaderFlag,
  MAX_PAYLOAD,
  ProtocolFeature,
  Request,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VRING_NOFD_MASK,
  header,
  memoryRegion,
  memoryTableHeader,
  requestName,
  u64Payload,
  vringAddr,
  vringState,
  type RequestName,
} from './messages.ts';

/** Protocol features we use when the backend offers them. */
const WANTED_PROTOCOL_FEATURES = ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK;
/** Backends (libvhost-user) accept up to this queue size. */
const MAX_QUEUE_SIZE = 1024;

interface QueueFds {
  kick: EventFd;
  call: EventFd;
  err: EventFd;
  onUsed?: () => void;
  /** A per-queue thread kicks and waits on these now. */
  lent?: boolean;
}

export interface VhostUserOptions {
  /** How long to wait for each handshake reply. */
  timeoutMs?: number;
}

export class VhostUserTransport implements VirtioTransport {
  readonly description: string;
  readonly deviceFeatures: bigint;
  readonly maxQueues: number | undefined;
  /** Negotiated protocol features; none until SET_PROTOCOL_FEATURES (so the first messages go un-acked). */
  private protocolFeatures = 0n;
  private memory: SharedMemory | undefined;
  private readonly queues = new Map<number, QueueFds>();
  private readonly latch = new FailureLatch();
  private closed = false;

  private constructor(
    private readonly socket: UnixSocket,
    readonly socketPath: string,
    private readonly timeoutMs: number,
  ) {
    this.description = `vhost-user:${socketPath}`;
    this.deviceFeatures = this.getU64('GET_FEATURES');
    this.send('SET_OWNER');
    if (this.deviceFeatures & VHOST_USER_F_PROTOCOL_FEATURES) {
      const protocol = this.getU64('GET_PROTOCOL_FEATURES') & WANTED_PROTOCOL_FEATURES;
      this.sendU64('SET_PROTOCOL_FEATURES', protocol);
      this.protocolFeatures = protocol;
    }
    this.maxQueues = this.protocolFeatures & ProtocolFeature.MQ ? Number(this.getU64('GET_QUEUE_NUM')) : undefined;
  }

  /** Connects to a backend's socket and does the feature handshake. */
  static connect(socketPath: string, options: VhostUserOptions = {}): VhostUserTransport {
    const socket = connectWhenListening(socketPath, Math.min(options.timeoutMs ?? 5000, 2000));
    try {
      return new VhostUserTransport(socket, socketPath, options.timeoutMs ?? 5000);
    } catch (e) {
      socket.close();
      throw e;
    }
  }

  setFeatures(features: bigint): void {
    // The protocol-features bit stays acked: without it the backend would drop them again.
    this.sendU64('SET_FEATURES', features | (this.deviceFeatures & VHOST_USER_F_PROTOCOL_FEATURES));
  }

  /** vhost-user-fs keeps tag and queue count in the frontend (QEMU's -device options): nothing to read. */
  readConfig(): VirtioFsConfig | undefined {
    return undefined;
  }

  maxQueueSize(): number {
    return MAX_QUEUE_SIZE;
  }

  allocateMemory(bytes: number): DmaRegion {
    if (this.memory) throw new Error('vhost-user: memory already allocated');
    const size = Math.ceil(bytes / (2 << 20)) * (2 << 20);
    const memory = new SharedMemory(size, 'virtiofs-client-vhost-user');
    const payload = new Uint8Array(memoryTableHeader.size + memoryRegion.size);
    const view = new DataView(payload.buffer);
    memoryTableHeader.encode(view, 0, { nregions: 1 });
    // guest-physical = our own virtual address: descriptors then carry addresses we can compute directly.
    memoryRegion.encode(view, memoryTableHeader.size, {
      guest_phys_addr: memory.userAddress,
      memory_size: BigInt(size),
      userspace_addr: memory.userAddress,
      mmap_offset: 0n,
    });
    try {
      this.send('SET_MEM_TABLE', payload, [memory.fd]);
    } catch (e) {
      memory.close();
      throw e;
    }
    this.memory = memory;
    return memory;
  }

  setupQueue(index: number, addresses: QueueAddresses, onUsed: () => void): void {
    const fds: QueueFds = { kick: new EventFd(), call: new EventFd(), err: new EventFd() };
    this.queues.set(index, fds);
    this.sendStruct('SET_VRING_NUM', vringState, { index, num: addresses.size });
    this.sendStruct('SET_VRING_BASE', vringState, { index, num: 0 });
    this.sendStruct('SET_VRING_ADDR', vringAddr, {
      index,
      flags: 0,
      descriptor: addresses.desc,
      used: addresses.used,
      available: addresses.avail,
      log: 0n,
    });
    this.sendU64('SET_VRING_CALL', BigInt(index), [fds.call.fd]);
    this.sendU64('SET_VRING_ERR', BigInt(index), [fds.err.fd]);
    const poller = sharedPoller();
    fds.onUsed = onUsed;
    this.watchCall(fds);
    poller.watch(fds.err.fd, 'readable', () => {
      fds.err.drain();
      this.fail(new TransportError(`${this.description}: backend signalled an error on queue ${index}`, 'EIO'));
    });
    // The kick fd goes last: libvhost-user starts a queue when it receives it.
    this.sendU64('SET_VRING_KICK', BigInt(index), [fds.kick.fd]);
  }

  start(): void {
    if (this.deviceFeatures & VHOST_USER_F_PROTOCOL_FEATURES) {
      // With protocol features, rings start disabled until enabled explicitly.
      for (const index of this.queues.keys()) this.sendStruct('SET_VRING_ENABLE', vringState, { index, num: 1 });
    }
    sharedPoller().watch(this.socket.fd, 'readable', (r) => {
      // Nothing is expected on this socket after the handshake: readable means EOF or junk.
      this.fail(
        new TransportError(
          `${this.description}: backend ${r.hangup ? 'hung up' : 'sent an unexpected message'}`,
          'ENOTCONN',
        ),
      );
    });
  }

  notify(index: number): void {
    this.queues.get(index)?.kick.signal(1);
  }

  lendQueue(index: number): QueueSignals {
    const fds = this.queues.get(index);
    if (!fds) throw new TransportError(`${this.description}: queue ${index} is not set up`, 'EINVAL');
    if (fds.lent) throw new TransportError(`${this.description}: queue ${index} is lent already`, 'EBUSY');
    fds.lent = true;
    sharedPoller().unwatch(fds.call.fd);
    return { kickFd: fds.kick.fd, callFd: fds.call.fd };
  }

  reclaimQueue(index: number): void {
    const fds = this.queues.get(index);
    if (!fds?.lent || this.closed) return;
    fds.lent = false;
    this.watchCall(fds);
    // A completion the borrower did not see is not lost: look once.
    if (!this.latch.failure) fds.onUsed?.();
  }

  private watchCall(fds: QueueFds): void {
    sharedPoller().watch(fds.call.fd, 'readable', () => {
      fds.call.drain();
      if (!this.latch.failure) fds.onUsed?.();
    });
  }

  onFailure(callback: (error: Error) => void): void {
    this.latch.onFailure(callback);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    const poller = sharedPoller();
    poller.unwatch(this.socket.fd);
    for (const fds of this.queues.values()) {
      for (const fd of [fds.call, fds.err, fds.kick]) {
        poller.unwatch(fd.fd);
        fd.close();
      }
    }
    this.queues.clear();
    // Closing the connection tells the backend we are gone (virtiofsd exits).
    this.socket.close();
    this.memory?.close();
    this.memory = undefined;
  }

  private fail(error: Error): void {
    if (this.closed || !this.latch.fail(error)) return;
    sharedPoller().unwatch(this.socket.fd);
  }

  // --- messages ---------------------------------------------------------------

  private sendU64(name: RequestName, value: bigint, fds: number[] = []): void {
    if (fds.length === 0 && (name === 'SET_VRING_CALL' || name === 'SET_VRING_KICK' || name === 'SET_VRING_ERR')) {
      value |= VRING_NOFD_MASK;
    }
    this.send(name, u64Payload.toBytes({ value }), fds);
  }

  private sendStruct<V>(name: RequestName, s: Struct<V>, value: Partial<V>): void {
    this.send(name, s.toBytes(value as never));
  }

  private getU64(name: RequestName): bigint {
    const reply = this.exchange(name, new Uint8Array(0), [], true);
    if (reply.length !== u64Payload.size) throw this.badReply(name, `payload of ${reply.length} bytes, expected 8`);
    return u64Payload.decode(new DataView(reply.buffer, reply.byteOffset)).value;
  }

  /** A message without a natural reply; with REPLY_ACK the backend confirms it. */
  private send(name: RequestName, payload: Uint8Array = new Uint8Array(0), fds: number[] = []): void {
    const ack = (this.protocolFeatures & ProtocolFeature.REPLY_ACK) !== 0n;
    const reply = this.exchange(name, payload, fds, ack);
    if (!ack) return;
    if (reply.length !== 8) throw this.badReply(name, `ack of ${reply.length} bytes`);
    const status = new DataView(reply.buffer, reply.byteOffset).getBigUint64(0, true);
    if (status !== 0n) {
      throw new TransportError(`${this.description}: backend refused ${name} (status ${status})`, 'EPROTO');
    }
  }

  private exchange(name: RequestName, payload: Uint8Array, fds: number[], wantReply: boolean): Uint8Array {
    const request = Request[name];
    const isGet = name.startsWith('GET_');
    const message = new Uint8Array(header.size + payload.length);
    header.encode(new DataView(message.buffer), 0, {
      request,
      flags: HeaderFlag.VERSION | (wantReply && !isGet ? HeaderFlag.NEED_REPLY : 0),
      size: payload.length,
    });
    message.set(payload, header.size);
    try {
      this.socket.send(message, fds, { timeoutMs: this.timeoutMs });
      if (!wantReply) return new Uint8Array(0);
      const head = header.decode(new DataView(this.socket.receive(header.size, { timeoutMs: this.timeoutMs }).buffer));
      if (head.request !== request && byteSwapped32(head.request) === request) {
        throw this.badReply(name, `the backend answers in the other byte order (request ${head.request} is ${request} byte-swapped): vhost-user is in the host's byte order, and this backend's is not ours`);
      }
      if (head.request !== request) throw this.badReply(name, `reply is for ${requestName(head.request)}`);
      if ((head.flags & 0x3) !== HeaderFlag.VERSION || !(head.flags & HeaderFlag.REPLY)) {
        throw this.badReply(name, `reply flags 0x${head.flags.toString(16)}`);
      }
      if (head.size > MAX_PAYLOAD) throw this.badReply(name, `reply payload of ${head.size} bytes`);
      return this.socket.receive(head.size, { timeoutMs: this.timeoutMs });
    } catch (e) {
      if (e instanceof ErrnoError) {
        // The first message hung up on without a word: measured with Debian's s390x virtiofsd under
        // qemu-user, which reads our little-endian header in its own byte order and rejects it.
        const hint =
          name === 'GET_FEATURES' && e.code === 'ECONNRESET'
            ? '; the backend hung up on the first message without answering, which is what a backend of the other byte order does (vhost-user messages are in the host\'s byte order: a big-endian build, e.g. s390x under qemu-user, cannot serve this little-endian client)'
            : '';
        throw new TransportError(`${this.description}: ${name}: ${e.message}${hint}`, e.code === 'ETIMEDOUT' ? 'ETIMEDOUT' : 'ENOTCONN');
      }
      throw e;
    }
  }

  private badReply(name: RequestName, what: string): TransportError {
    return new TransportError(`${this.description}: ${name}: bad reply: ${what}`, 'EPROTO');
  }
}

function byteSwapped32(v: number): number {
  return (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0;
}

/**
 * A backend creates its socket file (bind) a moment before it listens: a
 * connect in between is refused. Refusals cost the backend nothing (it serves
 * one connection, and a refused one is not it), so retry them for a while.
 */
function connectWhenListening(path: string, timeoutMs: number): UnixSocket {
  const deadline = Date.now() + timeoutMs;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (;;) {
    try {
      return UnixSocket.connect(path);
    } catch (e) {
      if (isErrnoError(e, 'ECONNREFUSED') && Date.now() <= deadline) {
        Atomics.wait(pause, 0, 0, 10);
        continue;
      }
      throw isErrnoError(e) ? new TransportError(connectAdvice(path, e.code), e.code) : e;
    }
  }
}

function isSocketFile(path: string): boolean {
  try {
    return statSync(path).isSocket();
  } catch {
    return false;
  }
}

/** The likely cause of a failed connect to a backend's socket, and what to do: one line. */
function connectAdvice(path: string, code: string): string {
  switch (code) {
    case 'ENOENT':
      return `no vhost-user backend at ${path} (no such file): is the backend running, started with --socket-path=${path}?`;
    case 'ECONNREFUSED':
      if (!isSocketFile(path)) return `${path} is not a unix socket: give the backend's --socket-path`;
      return `nothing listens on ${path}: the backend has exited or serves another frontend (virtiofsd serves one connection, then exits: start it again)`;
    case 'ENOTSOCK':
    case 'EPROTOTYPE':
      return `${path} is not a listening unix socket: give the backend's --socket-path`;
    case 'EACCES':
    case 'EPERM':
      return `no permission to connect to ${path} (${code}): run as root, or give this user access to the socket`;
    default:
      return `connect to ${path}: ${code}`;
  }
}
