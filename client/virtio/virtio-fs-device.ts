/**
 * The virtio-fs device as the driver sees it (virtio spec 5.11): queue 0 is
 * hiprio (FORGET, BATCH_FORGET, INTERRUPT), queues 1..N carry every other
 * request. Each request lives in one slot of a buffer pool inside the memory
 * the device can see: device-readable bytes first (in header, args, names,
 * write data), device-writable bytes after them (out header, reply body).
 * This layer moves slots through queues; it knows nothing of FUSE semantics.
 */
import { describeRegion, type DmaRegion, type SharedRegionInfo } from '../../ffi/dma.ts';
import { signalEventFd, viewMemory } from '../../ffi/libc.ts';
import type { QueueSignals, VirtioFsConfig, VirtioTransport } from '../transport/transport.ts';
import { TransportError } from '../transport/transport.ts';
import { BufferPool, toRegion } from './buffer-pool.ts';
import {
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
} from './features.ts';
import { Virtqueue, type UsedRingProblem, type VirtqueueShare } from './virtqueue.ts';

export const HIPRIO_QUEUE = 0;

/**
 * How long to poll for a completion (or, in the relay's queue threads, for any work) before
 * sleeping, us. On a virtual machine a sleeping thread's wake-up costs its vCPU's halt and the
 * host's wake-up of it, tens of us; QEMU's iothreads poll for the same reason (poll-max-ns).
 * Measured here (2 vCPUs): 4 KiB random reads through the relay 10.5k -> 16.8k ops/s, client API
 * GETATTR at queue depth 1 9.4k -> 35k ops/s (README).
 */
export const DEFAULT_POLL_US = 50;

/**
 * Bytes per slot: 12 KiB of headers (request header, arguments, names;
 * reply header and fixed reply struct) then the data area. Slots are
 * page-aligned in device memory, so a slot's data area is too: O_DIRECT I/O on
 * the device side needs aligned buffers.
 */
export const SLOT_HEADERS = 12 * 1024;
/**
 * Data area: FUSE's 256 pages (1 MiB), also where device memory is contiguous only per 2 MiB
 * hugepage: a slot then crosses at most one chunk boundary, and the virtqueue gives each side of it
 * a descriptor of its own.
 */
const SLOT_BYTES = SLOT_HEADERS + 256 * 4096;
const PAGE = 4096;
/**
 * A request takes at most four segments (in header+args, data; out header+fixed, data), five
 * descriptors when its slot crosses a chunk boundary: one indirect table of eight.
 */
const MAX_INDIRECT_SEGMENTS = 8;
const MAX_SEGMENTS = 4;
/**
 * Slots by default: hugepage-backed memory (UIO, VFIO) is reserved by the user, and 16 slots with
 * the rings take 10 of the 16 pages docs/pci-transports.md asks for; elsewhere 64.
 */
const DEFAULT_SLOTS = 64;
const DEFAULT_CHUNKED_SLOTS = 16;

export interface DeviceOptions {
  /** Request queues to use (the device may offer more); default 1. */
  requestQueues?: number;
  /** Descriptors per queue; default 128 (what QEMU allows for virtio-fs), capped by the device. */
  queueSize?: number;
  /** Requests in flight at once over all queues: the slot count; default 64 (16 in hugepage memory). */
  maxInFlight?: number;
  /** Poll used rings on the event loop instead of waiting for notifications (lower latency, one core busy). */
  busyPoll?: boolean;
  /**
   * After submitting the only request in flight, poll its used ring this long (us) before
   * returning to the event loop: a completion found meanwhile costs no thread wake-up. The relay's
   * queue threads take the same option for their own loops. Default DEFAULT_POLL_US; 0: never.
   */
  pollUs?: number;
  /** Where problems with the device's replies are reported. */
  log?: (line: string) => void;
}

/**
 * A queue lent to another thread of this process, with everything that thread needs to run it
 * (structured-clone safe): where its rings are, its doorbell and completion signal, and the slots
 * it owns meanwhile.
 */
export interface QueueLoan {
  queueIndex: number;
  name: string;
  region: SharedRegionInfo;
  ringOffset: number;
  queueSize: number;
  features: bigint;
  maxIndirectSegments: number;
  signals: QueueSignals;
  /** Region offsets of the slots lent with the queue, slotSize bytes each. */
  slotOffsets: number[];
  slotIndices: number[];
  slotSize: number;
  dataRoom: number;
}

/**
 * The Virtqueue object a borrowing thread (or the lender, taking a queue back) drives a lent queue
 * with: the loan's rings adopted as they are, in `region` (that thread's view of the memory).
 */
export function adoptLoan(loan: QueueLoan, region: DmaRegion, options: { name?: string; share?: VirtqueueShare } = {}): Virtqueue<number> {
  return new Virtqueue<number>({
    name: options.name ?? loan.name,
    region,
    offset: loan.ringOffset,
    size: loan.queueSize,
    features: loan.features,
    maxIndirectSegments: loan.maxIndirectSegments,
    adopt: true,
    ...(options.share ? { share: options.share } : {}),
  });
}

/**
 * The doorbell of a lent queue, for the thread it is lent to: a write to its kick eventfd
 * (vhost-user), or a 16-bit store to its PCI notify register. Built once; ringing allocates nothing.
 */
export class QueueDoorbell {
  private readonly kickFd: number | undefined;
  private readonly notifyWord: Uint16Array | undefined;
  private readonly notifyValue: number;

  constructor(signals: QueueSignals) {
    this.kickFd = signals.kickFd;
    this.notifyWord = signals.notifyAddress !== undefined ? new Uint16Array(viewMemory(signals.notifyAddress, 2)) : undefined;
    this.notifyValue = signals.notifyValue ?? 0;
    if (this.kickFd === undefined && this.notifyWord === undefined) throw new TransportError('a lent queue without a doorbell', 'EINVAL');
  }

  ring(): void {
    if (this.kickFd !== undefined) signalEventFd(this.kickFd);
    else Atomics.store(this.notifyWord!, 0, this.notifyValue);
  }
}

/** One request's buffer: a pool slot. */
export interface Slot {
  readonly index: number;
  /** The slot's bytes (view over device-visible memory). */
  readonly bytes: Uint8Array;
  readonly view: DataView;
}

interface Pending {
  resolve: (usedLen: number) => void;
  reject: (error: Error) => void;
  /** The caller gave up (timeout); the slot returns to the pool once the device hands it back. */
  abandoned: boolean;
}

export class VirtioFsDevice {
  readonly requestQueueCount: number;
  /** Bytes of data one request can carry (a slot's data area). */
  readonly dataRoom: number;
  private readonly queues: Virtqueue<number>[] = [];
  private readonly pool: BufferPool;
  private readonly slots: Slot[] = [];
  private readonly pending: (Pending | undefined)[];
  private readonly slotWaiters: ((slot: Slot | Error) => void)[] = [];
  private readonly releaseListeners: (() => void)[] = [];
  private readonly failureListeners: ((error: Error) => void)[] = [];
  private nextQueue = 0;
  /** Per queue: the eventfd that wakes the thread a queue is lent to (undefined: not lent). */
  private readonly lentTo: (number | undefined)[] = [];
  private readonly queueOffsets: number[] = [];
  private failure: Error | undefined;
  private polling = false;
  // Region-relative segment lists, reused by every submit.
  private readonly readable: number[] = [];
  private readonly writable: number[] = [];
  private readonly log: (line: string) => void;

  private constructor(
    readonly transport: VirtioTransport,
    readonly memory: DmaRegion,
    readonly features: bigint,
    queueSize: number,
    requestQueues: number,
    maxInFlight: number,
    private readonly busyPoll: boolean,
    log: ((line: string) => void) | undefined,
    private readonly pollUs = 0,
  ) {
    this.log = log ?? ((line) => console.error(`virtiofs-client: ${line}`));
    this.requestQueueCount = requestQueues;
    const chunk = transport.dmaChunkBytes;
    this.dataRoom = SLOT_BYTES - SLOT_HEADERS;
    let offset = 0;
    const queueOptions = { features, maxIndirectSegments: MAX_INDIRECT_SEGMENTS };
    const queueBytes = Virtqueue.bytesNeeded(queueSize, queueOptions);
    for (let i = 0; i <= requestQueues; i++) {
      const name = i === HIPRIO_QUEUE ? 'hiprio' : `request${i - 1}`;
      this.queues.push(new Virtqueue<number>({ name, region: memory, offset, size: queueSize, ...queueOptions }));
      this.queueOffsets.push(offset);
      offset += align(queueBytes, PAGE);
    }
    // Slots start on a chunk boundary; one that straddles the next is split by the virtqueue.
    this.pool = new BufferPool({ region: memory, offset: align(offset, chunk ?? PAGE), slotSize: SLOT_BYTES, slotCount: maxInFlight });
    for (let i = 0; i < maxInFlight; i++) {
      const bytes = this.pool.slotBytes(i);
      this.slots.push({ index: i, bytes, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength) });
    }
    this.pending = new Array(maxInFlight).fill(undefined);
  }

  /** Negotiates features, allocates device memory, sets up hiprio + request queues and starts the device. */
  static open(transport: VirtioTransport, options: DeviceOptions = {}): VirtioFsDevice {
    const wanted = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC;
    if ((transport.deviceFeatures & VIRTIO_F_VERSION_1) === 0n) {
      throw new TransportError(`${transport.description}: device does not offer VIRTIO_F_VERSION_1 (legacy devices are not supported)`, 'EPROTO');
    }
    const features = transport.deviceFeatures & wanted;
    transport.setFeatures(features);

    const config = transport.readConfig();
    const offered = config?.numRequestQueues ?? (transport.maxQueues !== undefined ? transport.maxQueues - 1 : 1);
    const requestQueues = Math.max(1, Math.min(options.requestQueues ?? 1, offered));
    if (options.requestQueues !== undefined && options.requestQueues > offered) {
      (options.log ?? console.error)(`virtiofs-client: device offers ${offered} request queue(s); using ${requestQueues}`);
    }
    const queueSize = Math.min(options.queueSize ?? 128, ...range(requestQueues + 1).map((i) => transport.maxQueueSize(i)));
    // Without indirect tables a request takes up to four descriptors, five in chunked memory: the pool never outgrows one queue.
    const chunk = transport.dmaChunkBytes;
    const maxDescriptors = chunk ? MAX_SEGMENTS + 1 : MAX_SEGMENTS;
    const maxInFlight = Math.min(options.maxInFlight ?? (chunk ? DEFAULT_CHUNKED_SLOTS : DEFAULT_SLOTS), Math.floor(queueSize / maxDescriptors));

    const queueBytes = align(Virtqueue.bytesNeeded(queueSize, { features, maxIndirectSegments: MAX_INDIRECT_SEGMENTS }), PAGE);
    if (chunk && (queueBytes > chunk || SLOT_BYTES > chunk)) {
      throw new TransportError(`${transport.description}: DMA chunks of ${chunk} bytes cannot hold the rings and slots`, 'EINVAL');
    }
    const ringsBytes = align((requestQueues + 1) * queueBytes, chunk ?? PAGE);
    const memory = transport.allocateMemory(ringsBytes + maxInFlight * SLOT_BYTES);
    const device = new VirtioFsDevice(transport, memory, features, queueSize, requestQueues, maxInFlight, options.busyPoll ?? false, options.log, options.pollUs ?? DEFAULT_POLL_US);
    transport.onFailure((error) => device.fail(error));
    transport.onConfigChange?.((now, before) => device.configChanged(now, before));
    for (const [i, q] of device.queues.entries()) {
      transport.setupQueue(i, { size: q.size, desc: q.descTableAddress, avail: q.availRingAddress, used: q.usedRingAddress }, () =>
        device.drain(i),
      );
    }
    transport.start();
    return device;
  }

  /** The reason the device is unusable, if it is. */
  get failed(): Error | undefined {
    return this.failure;
  }

  /** Slots neither in flight nor lent. */
  get freeSlots(): number {
    return this.pool.available;
  }

  get inFlight(): number {
    return this.pending.reduce((n, p) => n + (p ? 1 : 0), 0);
  }

  /** A free slot; waits while all are in flight. */
  acquireSlot(): Promise<Slot> {
    if (this.failure) return Promise.reject(this.failure);
    const index = this.pool.acquire();
    if (index >= 0) return Promise.resolve(this.slots[index]!);
    return new Promise((resolve, reject) =>
      this.slotWaiters.push((s) => (s instanceof Error ? reject(s) : resolve(s))),
    );
  }

  /** A free slot now, or undefined when all are in flight (for loops that must not wait). */
  tryAcquireSlot(): Slot | undefined {
    if (this.failure) return undefined;
    const index = this.pool.acquire();
    return index >= 0 ? this.slots[index] : undefined;
  }

  /** Runs `callback` the next time a slot is released (once). */
  onSlotReleased(callback: () => void): void {
    this.releaseListeners.push(callback);
  }

  /** Returns a slot that was acquired but not submitted (or whose request completed). */
  releaseSlot(slot: Slot): void {
    const waiter = this.slotWaiters.shift();
    if (waiter && !this.failure) return waiter(slot);
    this.pool.release(slot.index);
    for (const listener of this.releaseListeners.splice(0)) listener();
  }

  /**
   * Hands the slot to the device on hiprio or the next request queue:
   * `readable` and `writable` are flat (slotOffset, length) pairs, at most two
   * each, device-readable first. Resolves with the bytes the device wrote.
   * The slot stays owned by the request until it resolves or rejects.
   */
  submit(slot: Slot, hiprio: boolean, readable: readonly number[], writable: readonly number[]): Promise<number> {
    if (this.failure) return Promise.reject(this.failure);
    const qi = hiprio ? HIPRIO_QUEUE : this.nextRequestQueue();
    if (qi < 0 || this.lentTo[qi] !== undefined) {
      return Promise.reject(new TransportError(`${hiprio ? 'hiprio' : 'every request queue'} is lent to a per-queue thread`, 'EBUSY'));
    }
    const queue = this.queues[qi]!;
    const base = this.pool.slotOffset(slot.index);
    toRegion(readable, base, this.readable);
    toRegion(writable, base, this.writable);
    const promise = new Promise<number>((resolve, reject) => {
      this.pending[slot.index] = { resolve, reject, abandoned: false };
    });
    if (!queue.add(this.readable, this.writable, slot.index)) {
      const p = this.pending[slot.index]!;
      this.pending[slot.index] = undefined;
      p.reject(new TransportError(`${queue.name} is full`, 'EAGAIN'));
      return promise;
    }
    if (queue.kickNeeded()) this.transport.notify(qi);
    if (this.busyPoll) this.startPolling();
    else if (this.pollUs > 0 && !this.pollScheduled) {
      // Once the callers of this turn have submitted: poll only if this is then the lone request.
      this.pollScheduled = true;
      setImmediate(this.pollIfAlone);
    }
    return promise;
  }

  /**
   * Lends queue `queueIndex` and `slotCount` free slots to another thread of this process, which
   * runs them itself from the returned loan until reclaimQueue. This object no longer touches that
   * queue; completions the transport still reports here (a shared interrupt) wake `wakeFd`.
   * The queue must have nothing in flight.
   */
  lendQueue(queueIndex: number, slotCount: number, wakeFd: number): QueueLoan {
    const queue = this.queues[queueIndex];
    if (!queue) throw new TransportError(`queue ${queueIndex} does not exist`, 'EINVAL');
    if (this.lentTo[queueIndex] !== undefined) throw new TransportError(`${queue.name} is lent already`, 'EBUSY');
    if (queue.inFlightCount > 0) throw new TransportError(`${queue.name} has requests in flight`, 'EBUSY');
    const slotIndices: number[] = [];
    for (let i = 0; i < slotCount; i++) {
      const index = this.pool.acquire();
      if (index < 0) {
        for (const j of slotIndices) this.pool.release(j);
        throw new TransportError(`${slotCount} free slots wanted for ${queue.name}, ${i} available`, 'EBUSY');
      }
      slotIndices.push(index);
    }
    const signals = this.transport.lendQueue(queueIndex);
    this.lentTo[queueIndex] = wakeFd;
    return {
      queueIndex,
      name: queue.name,
      region: describeRegion(this.memory),
      ringOffset: this.queueOffsets[queueIndex]!,
      queueSize: queue.size,
      features: this.features,
      maxIndirectSegments: MAX_INDIRECT_SEGMENTS,
      signals,
      slotOffsets: slotIndices.map((i) => this.pool.slotOffset(i)),
      slotIndices,
      slotSize: this.pool.slotSize,
      dataRoom: this.dataRoom,
    };
  }

  /**
   * The thread has stopped with nothing in flight on the queue: take it and its slots back,
   * continuing from the rings' indexes. Throws when the device still holds requests of it.
   */
  reclaimQueue(loan: QueueLoan): void {
    const queue = this.queues[loan.queueIndex]!;
    if (this.lentTo[loan.queueIndex] === undefined) return;
    // Adopt first: the transport may report a completion at once, and this object must know the rings by then.
    if (!this.failure) queue.adoptRings();
    this.lentTo[loan.queueIndex] = undefined;
    for (const i of loan.slotIndices) this.pool.release(i);
    this.transport.reclaimQueue(loan.queueIndex);
  }

  /**
   * The caller stops waiting for `slot` (its request timed out): the promise
   * rejects now and the slot goes back to the pool when the device returns it.
   */
  abandon(slot: Slot, error: Error): void {
    const p = this.pending[slot.index];
    if (!p || p.abandoned) return;
    p.abandoned = true;
    p.reject(error);
  }

  /**
   * The device changed its configuration while running. virtio-fs gives a running driver nothing
   * to act on (the tag named the mount, the request queues were set up at start, as Linux's
   * virtio_fs also keeps them), so it is said, field by field, and otherwise ignored.
   */
  configChanged(now: VirtioFsConfig, before: VirtioFsConfig | undefined): void {
    const changes: string[] = [];
    if (before && now.tag !== before.tag) changes.push(`virtio_fs_config.tag '${before.tag}' -> '${now.tag}'`);
    if (before && now.numRequestQueues !== before.numRequestQueues) {
      changes.push(`virtio_fs_config.num_request_queues ${before.numRequestQueues} -> ${now.numRequestQueues}`);
    }
    this.log(
      changes.length > 0
        ? `device configuration changed: ${changes.join(', ')}; ignored (the tag and the ${this.requestQueueCount} request queue(s) in use stay as set up)`
        : 'device configuration changed (new config_generation), no field differs; nothing to do',
    );
  }

  /** Runs `callback` once when the device fails (immediately if it already has). */
  onFailure(callback: (error: Error) => void): void {
    if (this.failure) queueMicrotask(() => callback(this.failure!));
    else this.failureListeners.push(callback);
  }

  /** Fails everything pending and every later call: the device is gone. */
  fail(error: Error): void {
    if (this.failure) return;
    this.failure = error;
    for (const [i, q] of this.queues.entries()) if (this.lentTo[i] === undefined) q.failAll(error.message, (index) => this.settle(index, error));
    for (const w of this.slotWaiters.splice(0)) w(error);
    for (const listener of this.failureListeners.splice(0)) listener(error);
  }

  close(): void {
    this.fail(new TransportError('device closed', 'ENOTCONN'));
    this.transport.close();
  }

  /** Round robin over the request queues not lent; -1 when every one is. */
  private nextRequestQueue(): number {
    for (let tries = 0; tries < this.requestQueueCount; tries++) {
      const qi = 1 + (this.nextQueue++ % this.requestQueueCount);
      if (this.lentTo[qi] === undefined) return qi;
    }
    return -1;
  }

  private drain(qi: number): void {
    const wake = this.lentTo[qi];
    if (wake !== undefined) {
      // The queue's thread drains it; tell it the transport saw a completion.
      signalEventFd(wake);
      return;
    }
    const q = this.queues[qi]!;
    do {
      q.drainUsed(this.onUsed, this.onProblem);
      if (q.brokenReason) {
        this.log(`${q.name}: ${q.brokenReason}; the device is failed`);
        this.fail(new TransportError(`${q.name}: ${q.brokenReason}`, 'EPROTO'));
        return;
      }
    } while (!q.enableCallbacks());
  }

  private readonly onUsed = (index: number, usedLen: number): void => this.settle(index, usedLen);

  // An entry with a token (a len beyond its chain) fails that request: the engine logs it, naming
  // the opcode and the field. One without breaks the queue, logged where the break is handled.
  private readonly onProblem = (problem: UsedRingProblem<number>): void => {
    if (problem.token !== undefined) {
      this.settle(problem.token, new TransportError(`${problem.queue}: ${problem.reason}`, 'EIO'));
    }
  };

  private settle(index: number, result: number | Error): void {
    const p = this.pending[index];
    this.pending[index] = undefined;
    if (!p) return;
    if (p.abandoned) this.releaseSlot(this.slots[index]!);
    else if (typeof result === 'number') p.resolve(result);
    else p.reject(result);
  }

  private pollScheduled = false;

  /**
   * With exactly one request in flight (its caller waits on it and nothing else runs), spins on
   * its queue's used ring up to pollUs and drains it if the entry came: no thread wake-up.
   */
  private readonly pollIfAlone = (): void => {
    this.pollScheduled = false;
    if (this.failure || this.inFlight !== 1) return;
    let qi = 0;
    while (qi < this.queues.length && (this.queues[qi]!.inFlightCount !== 1 || this.lentTo[qi] !== undefined)) qi++;
    if (qi === this.queues.length) return;
    const q = this.queues[qi]!;
    const end = performance.now() + this.pollUs / 1000;
    while (performance.now() < end) {
      if (q.hasUsed()) {
        this.drain(qi);
        return;
      }
    }
  };

  private startPolling(): void {
    if (this.polling) return;
    this.polling = true;
    const poll = () => {
      for (let i = 0; i < this.queues.length; i++) if (this.lentTo[i] === undefined && this.queues[i]!.hasUsed()) this.drain(i);
      if (!this.failure && this.inFlight > 0) setImmediate(poll);
      else this.polling = false;
    };
    setImmediate(poll);
  }
}

/** Sets two slot-relative (offset, length) segments in `into`, for submit; returns it. */
export function fill(into: number[], at0: number, len0: number, at1: number, len1: number): number[] {
  into[0] = at0;
  into[1] = len0;
  into[2] = at1;
  into[3] = len1;
  return into;
}

/** Slot-relative (offset, length) pairs to region offsets, skipping empty segments. */
function align(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}
