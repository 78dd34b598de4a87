/**
 * What the virtio-fs driver needs from a way of reaching a device: feature
 * negotiation, memory the device can see, queue set-up, doorbells and
 * completion notifications. vhost-user, VFIO and UIO each implement it; the
 * driver above never knows which one it talks to.
 */
import type { DmaRegion } from '../../ffi/dma.ts';
import { VirtiofsError } from '../../ffi/errors.ts';

/** Where a queue's three parts are, as device addresses. */
export interface QueueAddresses {
  size: number;
  desc: bigint;
  avail: bigint;
  used: bigint;
}

/** What a thread needs to drive a queue itself (structured-clone safe). */
export interface QueueSignals {
  /** Doorbell: write 1 to this eventfd (vhost-user) ... */
  kickFd?: number;
  /** ... or store `notifyValue` as a 16-bit word at this address of this process (a PCI notify register). */
  notifyAddress?: bigint;
  notifyValue?: number;
  /** Eventfd the device signals when it used buffers of this queue; absent: no per-queue signal. */
  callFd?: number;
}

/** The virtio-fs device configuration (virtio spec 5.11.4), when the transport can read it. */
export interface VirtioFsConfig {
  tag: string;
  numRequestQueues: number;
}

export interface VirtioTransport {
  /** For logs and status: 'vhost-user:/run/vfs.sock'. */
  readonly description: string;
  /** Feature bits the device offers. */
  readonly deviceFeatures: bigint;
  /** Accepts `features` (a subset of deviceFeatures); throws if the device refuses. */
  setFeatures(features: bigint): void;
  /** Device config, or undefined when this transport cannot read it. */
  readConfig(): VirtioFsConfig | undefined;
  /** Most queues (hiprio + request queues) the device can run, when it says. */
  readonly maxQueues: number | undefined;
  /** Largest queue size the device accepts for queue `index`. */
  maxQueueSize(index: number): number;
  /**
   * When set, memory from allocateMemory is device-contiguous only within
   * aligned chunks of this many bytes (hugepages whose physical addresses are
   * unrelated): rings and buffers must not straddle a chunk boundary.
   */
  readonly dmaChunkBytes?: number;
  /** Memory for rings and buffers; call once, before setting up queues. */
  allocateMemory(bytes: number): DmaRegion;
  /**
   * Programs queue `index` and enables it. `onUsed` runs (on the event loop)
   * whenever the device signals that it used buffers of this queue.
   */
  setupQueue(index: number, addresses: QueueAddresses, onUsed: () => void): void;
  /** Rings the doorbell of queue `index`. */
  notify(index: number): void;
  /**
   * Hands queue `index`'s doorbell and completion signal to another thread of this process (a
   * per-queue thread, which then kicks and waits itself). When the transport has a completion
   * eventfd of the queue's own, it stops watching it until reclaimQueue and returns it as
   * `callFd`; otherwise (a shared interrupt, polling) onUsed keeps running here.
   */
  lendQueue(index: number): QueueSignals;
  /** The thread gave queue `index` back: onUsed runs here again on completions. */
  reclaimQueue(index: number): void;
  /** After every queue is set up: the device may now process them. */
  start(): void;
  /** Called once if the device goes away or reports an error; the transport is dead after it. */
  onFailure(callback: (error: Error) => void): void;
  /**
   * Called when the device says its configuration changed (a PCI configuration-change interrupt
   * or a new config_generation), with the configuration read again and the one before it.
   * Transports that cannot hear of changes leave it out.
   */
  onConfigChange?(callback: (now: VirtioFsConfig, before: VirtioFsConfig | undefined) => void): void;
  /** Releases the connection, the memory and every fd. Idempotent. */
  close(): void;
}

/** Failures of the transport itself (the device hung up, refused a setting). */
export class TransportError extends VirtiofsError {
  override name = 'TransportError';
  /** Node-style code: ENOTCONN when the device is gone, EPROTO for a bad reply, ... */
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}
