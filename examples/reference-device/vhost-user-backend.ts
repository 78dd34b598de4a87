/**
 * The vhost-user backend (QEMU docs/interop/vhost-user.rst): the device end
 * of the socket a frontend (QEMU, or this project's client) connects to.
 *
 * The frontend drives everything with messages: it reads our features, sends
 * its memory (SET_MEM_TABLE, one fd per region), then for each queue its size,
 * ring addresses, first index and three eventfds (kick: "look at the avail
 * ring", call: our "look at the used ring", err: our "this queue is broken").
 * A queue runs once it has a kick fd and, when protocol features were
 * negotiated, SET_VRING_ENABLE 1. GET_VRING_BASE stops it. The frontend
 * closing the socket ends the device.
 *
 * This file knows rings and memory, not FUSE: the device model (fs-device.ts)
 * gets a RunningQueue when a queue starts and is told when it is kicked, or
 * serves the queue on a thread of its own (QueueThread): the thread then
 * waits on the kick eventfd itself, and this file hands it the ring, the
 * eventfds and the memory, and takes them back.
 */
import { isErrnoError } from '../../ffi/errno.ts';
import { close as closeFd, readEventFdCounter, writeEventFdCounter } from '../../ffi/libc.ts';
import { sharedPoller } from '../../ffi/poller.ts';
import type { UnixSocket } from '../../ffi/unix-socket.ts';
import type { Struct } from '../../ffi/struct.ts';
import {
  HEADER_VERSION_MASK,
  HeaderFlag,
  MAX_MEM_REGIONS,
  MAX_PAYLOAD,
  ProtocolFeature,
  Request,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
  header,
  memoryRegion,
  memoryTableHeader,
  requestName,
  u64Payload,
  vringAddr,
  vringState,
} from '../../client/transport/vhost-user/messages.ts';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, hasFeature } from '../../client/virtio/features.ts';
import { isValidQueueSize } from '../../client/virtio/ring-layout.ts';
import { DeviceRing, RingBrokenError, readChain, writeChain, type Chain, type Popped, type RingConfig } from './device-ring.ts';
import { GuestMemory } from './guest-memory.ts';
import { VirtiofsError } from '../../ffi/errors.ts';

/** What a vhost-user backend offers: virtio 1.x rings, both ring features, protocol features. */
export const OFFERED_FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC | VHOST_USER_F_PROTOCOL_FEATURES;
/** MQ: the frontend may ask how many queues we have; REPLY_ACK: it may ask us to confirm each message. */
export const OFFERED_PROTOCOL_FEATURES = ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK;

const VHOST_VRING_F_LOG = 1;
/** How long the rest of a message may take once its first byte arrived. */
const MESSAGE_TIMEOUT_MS = 5000;

/** The device behind the rings: told when queues start, stop and are kicked. */
export interface DeviceModel {
  /** Queues the device has (virtio-fs: hiprio + request queues). */
  readonly queueCount: number;
  /** A queue runs: chains may be taken from it. */
  queueStarted(queue: RunningQueue): void;
  /** The frontend kicked (or the queue just started): take every available chain. */
  queueKicked(queue: RunningQueue): void;
  /** The queue stopped (GET_VRING_BASE, hang-up): its chains in flight will not be returned. */
  queueStopped(queue: RunningQueue): void;
  /**
   * Queue `index` is to be served on a thread of its own: the thread, or undefined (this thread
   * serves it). `broken` is to be called on this thread when the queue's thread found the ring
   * damaged (it stopped serving it and signalled the error eventfd), with the avail index to resume from.
   */
  queueThread?(index: number, broken: (lastAvail: number) => void): QueueThread | undefined;
}

/** A queue's eventfds as a thread needs them (the numbers: threads share the descriptor table). */
export interface QueueFds {
  kick: number;
  call: number | undefined;
  err: number | undefined;
}

/** A queue served on another thread: what this file asks of it (each call returns once the thread has done it). */
export interface QueueThread {
  /**
   * Starts serving the ring; false when the thread cannot (it logged why). A thread may also find
   * later that it cannot, and report the ring as broken (signalling the error eventfd itself).
   */
  attach(ring: RingConfig, memory: GuestMemory, fds: QueueFds): boolean;
  /** Stops serving it; returns the avail index to resume from (-1: unknown). Replies still to come are dropped. */
  detach(): number;
  /** The thread uses these eventfds from now on (the old ones may be closed). */
  replaceFds(fds: QueueFds): void;
  /** A new memory table (the old one is unmapped after this); false when the ring is not in it (the thread stopped serving it). */
  remap(memory: GuestMemory): boolean;
}

/**
 * A started queue, as the device model sees it. Once stopped, reads and
 * writes fail and completions are dropped, so a request that finishes after
 * a hang-up never touches unmapped memory.
 */
export class RunningQueue {
  private active = true;
  private flushScheduled = false;

  constructor(
    readonly index: number,
    private readonly ring: DeviceRing,
    private readonly backend: VhostUserBackend,
    private readonly callFd: () => number | undefined,
    private readonly onBroken: (queue: RunningQueue, reason: string) => void,
  ) {}

  get name(): string {
    return this.ring.name;
  }

  get running(): boolean {
    return this.active;
  }

  /** The next chain, undefined when the ring is empty (or the queue stopped or broke). */
  pop(): Popped | undefined {
    if (!this.active) return undefined;
    try {
      return this.ring.pop();
    } catch (error) {
      if (!(error instanceof RingBrokenError)) throw error;
      this.onBroken(this, error.message);
      return undefined;
    }
  }

  /** After draining: true when more chains arrived meanwhile (drain again). */
  armKick(): boolean {
    return this.active && this.ring.armKick();
  }

  /** Copies readable bytes of `chain` (from `from` on) into `into`; throws ChainAccessError. */
  read(chain: Chain, from: number, into: Uint8Array): void {
    readChain(this.memory(), chain, from, into);
  }

  /** Writes `data` into the writable side of `chain`, `at` bytes in; throws ChainAccessError. */
  write(chain: Chain, at: number, data: Uint8Array): void {
    writeChain(this.memory(), chain, at, data);
  }

  /**
   * Returns the chain with `len` bytes written. The used-buffer notification
   * is decided once per turn of the event loop, for everything returned in it.
   */
  complete(head: number, len: number): void {
    if (!this.active) return;
    this.ring.pushUsed(head, len);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => {
      this.flushScheduled = false;
      const fd = this.callFd();
      if (this.active && this.ring.shouldNotify() && fd !== undefined) writeEventFdCounter(fd, 1n);
    });
  }

  /** Chains taken and not returned. */
  get inFlight(): number {
    return this.ring.inFlightCount;
  }

  /** @internal the backend's view */
  get deviceRing(): DeviceRing {
    return this.ring;
  }

  /** @internal */
  stop(): void {
    this.active = false;
  }

  private memory(): GuestMemory {
    if (!this.active) throw new RingBrokenError(`${this.name} is stopped`);
    return this.backend.memory;
  }
}

interface QueueState {
  readonly index: number;
  size?: number;
  addresses?: { desc: bigint; avail: bigint; used: bigint };
  base: number;
  kickFd?: number;
  callFd?: number;
  errFd?: number;
  enabled: boolean;
  running?: RunningQueue;
  /** Served on this thread while set and `threaded`. */
  thread?: QueueThread;
  threaded?: boolean;
}

/** A message refused: the frontend gets a failed REPLY_ACK (when it asked for one), the log the reason. */
class Refused extends VirtiofsError {
  readonly code = 'ERR_VHOST_USER_REFUSED';
}

export class VhostUserBackend {
  /** Resolves with the reason once the connection is over and everything is released. */
  readonly closed: Promise<string>;
  private resolveClosed!: (reason: string) => void;
  private features = 0n;
  private protocolFeatures = 0n;
  private memoryTable = GuestMemory.empty();
  private readonly queues: QueueState[];
  private stopped = false;

  constructor(
    private readonly socket: UnixSocket,
    private readonly device: DeviceModel,
    private readonly log: (line: string) => void,
  ) {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.queues = Array.from({ length: device.queueCount }, (_, index) => ({ index, base: 0, enabled: false }));
  }

  /** The frontend's memory as of the last SET_MEM_TABLE. */
  get memory(): GuestMemory {
    return this.memoryTable;
  }

  /** Serves the connection until the frontend hangs up (or close()). */
  start(): void {
    sharedPoller().watch(this.socket.fd, 'readable', (r) => {
      if (this.stopped) return;
      try {
        this.receiveMessage();
      } catch (error) {
        // ECONNRESET: the frontend closed the socket (between messages, or in the middle of one).
        const reason = isErrnoError(error, 'ECONNRESET') || (r.hangup && !r.readable) ? 'frontend hung up' : `vhost-user connection failed: ${(error as Error).message}`;
        this.close(reason);
      }
    });
  }

  /** Stops every queue, releases fds and memory, closes the socket. Idempotent. */
  close(reason: string): void {
    if (this.stopped) return;
    this.stopped = true;
    sharedPoller().unwatch(this.socket.fd);
    for (const q of this.queues) {
      this.stopQueue(q);
      for (const fd of [q.kickFd, q.callFd, q.errFd]) if (fd !== undefined) closeFd(fd);
      q.kickFd = q.callFd = q.errFd = undefined;
    }
    this.socket.close();
    this.memoryTable.close();
    this.resolveClosed(reason);
  }

  // --- messages ------------------------------------------------------------------

  private receiveMessage(): void {
    const { bytes, fds } = this.socket.receiveWithFds(header.size, { maxFds: MAX_MEM_REGIONS, timeoutMs: MESSAGE_TIMEOUT_MS });
    let owned = fds;
    try {
      const head = header.decode(new DataView(bytes.buffer));
      if ((head.flags & HEADER_VERSION_MASK) !== HeaderFlag.VERSION) throw new Error(`header flags 0x${head.flags.toString(16)}: not protocol version 1`);
      if (head.size > MAX_PAYLOAD) throw new Error(`${requestName(head.request)}: payload of ${head.size} bytes`);
      const payload = head.size > 0 ? this.socket.receive(head.size, { timeoutMs: MESSAGE_TIMEOUT_MS }) : new Uint8Array(0);
      const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
      const wantsAck = (head.flags & HeaderFlag.NEED_REPLY) !== 0 && (this.protocolFeatures & ProtocolFeature.REPLY_ACK) !== 0n;
      owned = [];
      let status = 0n;
      try {
        this.handle(head.request, view, fds);
      } catch (error) {
        if (!(error instanceof Refused)) throw error;
        this.log(`vhost-user ${requestName(head.request)} refused: ${error.message}`);
        status = 1n;
      }
      if (wantsAck && !isGet(head.request)) this.reply(head.request, u64Payload.toBytes({ value: status }));
    } finally {
      for (const fd of owned) closeFd(fd);
    }
  }

  /** Handles one message; takes ownership of `fds` (closing those it does not keep). */
  private handle(request: number, view: DataView, fds: number[]): void {
    const keep = new Set<number>();
    try {
      switch (request) {
        case Request.GET_FEATURES:
          return this.reply(request, u64Payload.toBytes({ value: OFFERED_FEATURES }));
        case Request.SET_FEATURES: {
          const value = this.payload(u64Payload, view).value;
          if (value & ~OFFERED_FEATURES) throw new Refused(`features 0x${(value & ~OFFERED_FEATURES).toString(16)} were not offered`);
          this.features = value;
          return;
        }
        case Request.GET_PROTOCOL_FEATURES:
          return this.reply(request, u64Payload.toBytes({ value: OFFERED_PROTOCOL_FEATURES }));
        case Request.SET_PROTOCOL_FEATURES:
          this.protocolFeatures = this.payload(u64Payload, view).value & OFFERED_PROTOCOL_FEATURES;
          return;
        case Request.GET_QUEUE_NUM:
          return this.reply(request, u64Payload.toBytes({ value: BigInt(this.queues.length) }));
        case Request.SET_OWNER:
        case Request.RESET_OWNER:
          return;
        case Request.SET_MEM_TABLE:
          return this.setMemTable(view, fds.splice(0));
        case Request.SET_VRING_NUM: {
          const { index, num } = this.payload(vringState, view);
          if (!isValidQueueSize(num)) throw new Refused(`queue size ${num} is not a power of two up to 32768`);
          this.queue(index).size = num;
          return;
        }
        case Request.SET_VRING_ADDR: {
          const a = this.payload(vringAddr, view);
          if (a.flags & VHOST_VRING_F_LOG) throw new Refused('dirty-page logging is not supported');
          this.queue(a.index).addresses = { desc: a.descriptor, avail: a.available, used: a.used };
          return;
        }
        case Request.SET_VRING_BASE: {
          const { index, num } = this.payload(vringState, view);
          if (num > 0xffff) throw new Refused(`ring base ${num} is not a 16-bit index`);
          this.queue(index).base = num;
          return;
        }
        case Request.GET_VRING_BASE: {
          const q = this.queue(this.payload(vringState, view).index);
          const base = this.stopQueue(q);
          if (q.kickFd !== undefined) closeFd(q.kickFd);
          q.kickFd = undefined;
          return this.reply(request, vringState.toBytes({ index: q.index, num: base }));
        }
        case Request.SET_VRING_KICK:
        case Request.SET_VRING_CALL:
        case Request.SET_VRING_ERR: {
          const value = this.payload(u64Payload, view).value;
          const q = this.queue(Number(value & VRING_IDX_MASK));
          const noFd = (value & VRING_NOFD_MASK) !== 0n;
          if (noFd ? fds.length !== 0 : fds.length !== 1) throw new Refused(`${fds.length} file descriptors with${noFd ? ' NOFD' : 'out NOFD'}`);
          const fd = noFd ? undefined : fds[0]!;
          if (fd !== undefined) keep.add(fd);
          if (request === Request.SET_VRING_KICK) {
            // Without a kick fd we would have to poll the ring: not supported by this reference.
            if (fd === undefined) throw new Refused('polling mode (no kick fd) is not supported');
            const old = q.kickFd;
            if (old !== undefined) sharedPoller().unwatch(old);
            q.kickFd = fd;
            // A queue's thread lets go of the old fd before it is closed.
            if (q.threaded) q.thread!.replaceFds(this.fdsOf(q));
            if (old !== undefined) closeFd(old);
            if (q.running) return this.watchKick(q, q.running);
            if (q.threaded) return;
            // Without protocol features, a ring is enabled as soon as it starts.
            if (!(this.features & VHOST_USER_F_PROTOCOL_FEATURES)) q.enabled = true;
            return this.maybeStart(q);
          }
          const field = request === Request.SET_VRING_CALL ? 'callFd' : 'errFd';
          const old = q[field];
          q[field] = fd;
          if (q.threaded) q.thread!.replaceFds(this.fdsOf(q));
          if (old !== undefined) closeFd(old);
          return;
        }
        case Request.SET_VRING_ENABLE: {
          const { index, num } = this.payload(vringState, view);
          const q = this.queue(index);
          q.enabled = num !== 0;
          if (q.enabled) return this.maybeStart(q);
          this.stopQueue(q);
          return;
        }
        default:
          if (isGet(request)) {
            // Whoever asks expects a reply: an empty one says "not supported" rather than leaving it waiting.
            this.log(`vhost-user ${requestName(request)} is not supported; answered with an empty payload`);
            return this.reply(request, new Uint8Array(0));
          }
          throw new Refused('not supported by this device');
      }
    } finally {
      for (const fd of fds) if (!keep.has(fd)) closeFd(fd);
    }
  }

  private setMemTable(view: DataView, fds: number[]): void {
    if (view.byteLength < memoryTableHeader.size) {
      for (const fd of fds) closeFd(fd);
      throw new Refused(`payload of ${view.byteLength} bytes`);
    }
    const { nregions } = memoryTableHeader.decode(view, 0);
    if (nregions > MAX_MEM_REGIONS || view.byteLength < memoryTableHeader.size + nregions * memoryRegion.size) {
      for (const fd of fds) closeFd(fd);
      throw new Refused(`${nregions} regions in a payload of ${view.byteLength} bytes`);
    }
    const regions = Array.from({ length: nregions }, (_, i) => {
      const r = memoryRegion.decode(view, memoryTableHeader.size + i * memoryRegion.size);
      return { guestPhysAddr: r.guest_phys_addr, size: r.memory_size, userspaceAddr: r.userspace_addr, mmapOffset: r.mmap_offset };
    });
    let memory: GuestMemory;
    try {
      memory = GuestMemory.map(regions, fds); // owns and closes the fds, also on failure
    } catch (error) {
      throw new Refused(`cannot map the memory table: ${(error as Error).message}`);
    }
    const old = this.memoryTable;
    this.memoryTable = memory;
    for (const q of this.queues) {
      if (q.threaded && !q.thread!.remap(memory)) {
        // The thread logged why and stopped serving the ring.
        this.stopQueue(q);
        this.signalError(q);
      }
      if (!q.running) continue;
      try {
        q.running.deviceRing.remap(memory);
      } catch (error) {
        this.queueBroken(q.running, (error as Error).message);
      }
    }
    old.close();
    this.log(`memory table: ${regions.map((r) => `[0x${r.guestPhysAddr.toString(16)}, +${r.size}]`).join(' ')}`);
    for (const q of this.queues) this.maybeStart(q);
  }

  // --- queues ----------------------------------------------------------------------

  /** Starts the queue once it has everything: size, addresses, memory, kick fd, enabled. */
  private maybeStart(q: QueueState): void {
    if (q.running || q.threaded || !q.enabled || q.kickFd === undefined || q.size === undefined || !q.addresses) return;
    if (this.memoryTable.regionCount === 0) return;
    const name = q.index === 0 ? 'hiprio' : `request${q.index - 1}`;
    if (!(this.features & VIRTIO_F_VERSION_1)) {
      this.log(`${name}: not started: the frontend did not accept VIRTIO_F_VERSION_1 (legacy virtio is not supported)`);
      this.signalError(q);
      return;
    }
    const config: RingConfig = {
      name,
      size: q.size,
      ...q.addresses,
      eventIdx: hasFeature(this.features, VIRTIO_RING_F_EVENT_IDX),
      indirect: hasFeature(this.features, VIRTIO_RING_F_INDIRECT_DESC),
      lastAvailIdx: q.base,
    };
    q.thread ??= this.device.queueThread?.(q.index, (lastAvail) => this.threadBroken(q, lastAvail));
    if (q.thread) {
      if (!q.thread.attach(config, this.memoryTable, this.fdsOf(q))) return this.signalError(q);
      q.threaded = true;
      return;
    }
    let ring: DeviceRing;
    try {
      ring = new DeviceRing(this.memoryTable, config);
    } catch (error) {
      this.log(`${name}: cannot start: ${(error as Error).message}`);
      this.signalError(q);
      return;
    }
    const running = new RunningQueue(q.index, ring, this, () => q.callFd, (rq, reason) => this.queueBroken(rq, reason));
    q.running = running;
    this.watchKick(q, running);
    this.device.queueStarted(running);
    // Requests may have been made available before the kick fd arrived.
    this.kicked(running);
  }

  private watchKick(q: QueueState, running: RunningQueue): void {
    const kickFd = q.kickFd!;
    sharedPoller().watch(kickFd, 'readable', () => {
      readEventFdCounter(kickFd);
      this.kicked(running);
    });
  }

  private kicked(running: RunningQueue): void {
    if (!running.running) return;
    try {
      this.device.queueKicked(running);
    } catch (error) {
      // A bug, not the frontend's doing: stop this queue rather than the process.
      this.queueBroken(running, `device failed: ${(error as Error).stack ?? error}`);
    }
  }

  private fdsOf(q: QueueState): QueueFds {
    return { kick: q.kickFd!, call: q.callFd, err: q.errFd };
  }

  /** The queue's thread found its ring damaged: it stopped and signalled the error eventfd already. */
  private threadBroken(q: QueueState, lastAvail: number): void {
    if (!q.threaded) return;
    q.threaded = false;
    if (lastAvail >= 0) q.base = lastAvail;
  }

  /** Stops the queue; returns the avail index to resume from. */
  private stopQueue(q: QueueState): number {
    if (q.threaded) {
      q.threaded = false;
      const base = q.thread!.detach();
      if (base >= 0) q.base = base;
      return q.base;
    }
    const running = q.running;
    if (!running) return q.base;
    q.running = undefined;
    q.base = running.deviceRing.lastAvailIdx;
    if (q.kickFd !== undefined) sharedPoller().unwatch(q.kickFd);
    running.stop();
    this.device.queueStopped(running);
    return q.base;
  }

  /** The frontend damaged the ring: stop the queue and tell it on the queue's error eventfd. */
  private queueBroken(running: RunningQueue, reason: string): void {
    const q = this.queues[running.index]!;
    if (q.running !== running) return;
    this.log(`${running.name}: ${reason}; queue stopped`);
    this.stopQueue(q);
    this.signalError(q);
  }

  private signalError(q: QueueState): void {
    if (q.errFd !== undefined) writeEventFdCounter(q.errFd, 1n);
  }

  private queue(index: number): QueueState {
    const q = this.queues[index];
    if (!q) throw new Refused(`queue ${index} does not exist (the device has ${this.queues.length})`);
    return q;
  }

  private payload<V>(s: Struct<V>, view: DataView): V {
    if (view.byteLength < s.size) throw new Refused(`payload of ${view.byteLength} bytes, ${s.name} is ${s.size}`);
    return s.decode(view, 0);
  }

  private reply(request: number, payload: Uint8Array): void {
    const message = new Uint8Array(header.size + payload.length);
    header.encode(new DataView(message.buffer), 0, { request, flags: HeaderFlag.VERSION | HeaderFlag.REPLY, size: payload.length });
    message.set(payload, header.size);
    this.socket.send(message, [], { timeoutMs: MESSAGE_TIMEOUT_MS });
  }
}

/** Requests whose reply is their answer (sent whether or not NEED_REPLY is set). */
function isGet(request: number): boolean {
  return requestName(request).startsWith('GET_');
}
