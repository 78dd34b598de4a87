/**
 * Modern virtio over PCI (virtio 1.2 section 4.1), on a PCI function that VFIO
 * or UIO hands us: the status handshake, feature negotiation, queue set-up
 * through the common configuration structure, doorbells, and interrupts.
 */
import type { DmaRegion } from '../../../ffi/dma.ts';
import type { Mmio } from '../../../ffi/mmio.ts';
import { array, struct, type Struct } from '../../../ffi/struct.ts';
import { FailureLatch } from '../failure-latch.ts';
import { TransportError, type QueueAddresses, type QueueSignals, type VirtioFsConfig, type VirtioTransport } from '../transport.ts';
import { PCI_COMMAND, PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, type InterruptMode, type PciFunction } from './pci-function.ts';
import { findVirtioCaps, type VirtioCaps } from './virtio-caps.ts';

/** struct virtio_pci_common_cfg (virtio 1.2 4.1.4.3). */
const common = struct(
  'virtio_pci_common_cfg',
  {
    device_feature_select: 'u32',
    device_feature: 'u32',
    driver_feature_select: 'u32',
    driver_feature: 'u32',
    config_msix_vector: 'u16',
    num_queues: 'u16',
    device_status: 'u8',
    config_generation: 'u8',
    queue_select: 'u16',
    queue_size: 'u16',
    queue_msix_vector: 'u16',
    queue_enable: 'u16',
    queue_notify_off: 'u16',
    queue_desc: 'u64',
    queue_driver: 'u64',
    queue_device: 'u64',
    queue_notify_data: 'u16',
    queue_reset: 'u16',
  },
  64,
);

/** struct virtio_fs_config (virtio 1.2 5.11.4). */
const virtioFsConfig = struct('virtio_fs_config', { tag: array('u8', 36), num_request_queues: 'u32', notify_buf_size: 'u32' }, 44);

export const Status = { ACKNOWLEDGE: 1, DRIVER: 2, DRIVER_OK: 4, FEATURES_OK: 8, DEVICE_NEEDS_RESET: 64, FAILED: 128 } as const;
const NO_VECTOR = 0xffff;
const RESET_TIMEOUT_MS = 1000;

type CommonField = typeof common extends Struct<infer V> ? keyof V & string : never;

export class VirtioPciTransport implements VirtioTransport {
  readonly description: string;
  readonly deviceFeatures: bigint;
  readonly maxQueues: number;
  private readonly caps: VirtioCaps;
  private readonly bars = new Map<number, Mmio>();
  private readonly onUsed = new Map<number, () => void>();
  private readonly notifyOffsets = new Map<number, number>();
  private readonly latch = new FailureLatch();
  private interrupts: InterruptMode = 'polling';
  private interruptsWired = false;
  private pollTimer: NodeJS.Timeout | undefined;
  private healthTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** The configuration last read and the generation it was read at (virtio 1.2 4.1.4.3.1). */
  private lastConfig: VirtioFsConfig | undefined;
  private lastGeneration: number | undefined;
  private readonly configListeners: ((now: VirtioFsConfig, before: VirtioFsConfig | undefined) => void)[] = [];

  constructor(private readonly fn: PciFunction) {
    this.description = `${fn.description}:${fn.address}`;
    // Whatever a previous driver left behind: function-level reset where offered, then the virtio reset below.
    fn.reset();
    // Neither vfio-pci nor uio_pci_generic turns these on: without them the device can neither be reached nor DMA.
    const command = fn.configRead(PCI_COMMAND, 2);
    fn.configWrite(PCI_COMMAND, 2, command | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    this.caps = findVirtioCaps(fn, (i) => {
      try {
        return this.bar(i).size;
      } catch {
        return 0;
      }
    });
    this.reset();
    this.setStatus(Status.ACKNOWLEDGE);
    this.setStatus(Status.DRIVER);
    let features = 0n;
    for (const select of [0, 1]) {
      this.writeCommon('device_feature_select', select);
      features |= BigInt(this.readCommon('device_feature')) << BigInt(32 * select);
    }
    this.deviceFeatures = features;
    this.maxQueues = this.readCommon('num_queues');
  }

  setFeatures(features: bigint): void {
    for (const select of [0, 1]) {
      this.writeCommon('driver_feature_select', select);
      this.writeCommon('driver_feature', Number((features >> BigInt(32 * select)) & 0xffff_ffffn));
    }
    this.setStatus(Status.FEATURES_OK);
    if (!(this.status() & Status.FEATURES_OK)) {
      this.setStatus(Status.FAILED);
      throw new TransportError(`${this.description}: device refused features 0x${features.toString(16)} (FEATURES_OK not kept)`, 'EPROTO');
    }
  }

  readConfig(): VirtioFsConfig {
    // The config may change under us: re-read until the generation is stable (4.1.4.3.1).
    for (;;) {
      const before = this.readCommon('config_generation');
      const mmio = this.bar(this.caps.device.bar);
      const at = this.caps.device.offset;
      const tag = Array.from({ length: 36 }, (_, i) => mmio.read8(at + i));
      const end = tag.indexOf(0);
      const numRequestQueues = mmio.read32(at + virtioFsConfig.offsetOf('num_request_queues'));
      if (this.readCommon('config_generation') === before) {
        this.lastGeneration = before;
        return (this.lastConfig = { tag: Buffer.from(tag.slice(0, end < 0 ? 36 : end)).toString('utf8'), numRequestQueues });
      }
    }
  }

  maxQueueSize(index: number): number {
    this.writeCommon('queue_select', index);
    return this.readCommon('queue_size');
  }

  get dmaChunkBytes(): number {
    return this.fn.dmaChunkBytes;
  }

  allocateMemory(bytes: number): DmaRegion {
    return this.fn.allocateDma(bytes);
  }

  setupQueue(index: number, addresses: QueueAddresses, onUsed: () => void): void {
    this.writeCommon('queue_select', index);
    if (this.readCommon('queue_size') === 0) throw new TransportError(`${this.description}: queue ${index} does not exist`, 'EINVAL');
    this.writeCommon('queue_size', addresses.size);
    this.write64Common('queue_desc', addresses.desc);
    this.write64Common('queue_driver', addresses.avail);
    this.write64Common('queue_device', addresses.used);
    this.notifyOffsets.set(index, this.readCommon('queue_notify_off') * this.caps.notify.multiplier);
    if (this.caps.notify.offset + this.notifyOffsets.get(index)! + 2 > this.caps.notify.offset + this.caps.notify.length) {
      throw new TransportError(`${this.description}: queue ${index} doorbell lies outside the notify capability`, 'EPROTO');
    }
    this.onUsed.set(index, onUsed);
    if (!this.interruptsWired) this.wireInterrupts();
    if (this.interrupts === 'msix') {
      this.writeCommon('queue_msix_vector', 1 + index);
      // The device answers NO_VECTOR when it cannot route it: poll then.
      if (this.readCommon('queue_msix_vector') === NO_VECTOR) this.interrupts = 'polling';
    }
    this.writeCommon('queue_enable', 1);
  }

  start(): void {
    this.setStatus(Status.DRIVER_OK);
    // Without interrupts this timer is how completions arrive: like a connection's watched socket, it
    // keeps the event loop alive while the transport is open (an unref'd one let a process waiting
    // only on a reply exit).
    if (this.interrupts === 'polling') this.pollTimer = setInterval(() => this.serviceAll(), 1);
    // A device reports trouble through its status; look now and then.
    this.healthTimer = setInterval(() => this.checkHealth(), 500);
    this.healthTimer.unref();
    this.checkHealth();
  }

  /** How this transport learns about completions: for status and tests. */
  get interruptMode(): InterruptMode {
    return this.interrupts;
  }

  notify(index: number): void {
    this.bar(this.caps.notify.bar).write16(this.caps.notify.offset + this.notifyOffsets.get(index)!, index);
  }

  /**
   * The notify register's address for the borrowing thread and, with MSI-X, the queue's vector
   * eventfd: the thread then waits on its interrupts itself. Otherwise (INTx, polling) completions
   * keep arriving here and run onUsed, which wakes the borrower.
   */
  lendQueue(index: number): QueueSignals {
    const bar = this.bar(this.caps.notify.bar);
    const offset = this.notifyOffsets.get(index);
    if (offset === undefined) throw new TransportError(`${this.description}: queue ${index} is not set up`, 'EINVAL');
    if (bar.address === undefined) throw new TransportError(`${this.description}: BAR${this.caps.notify.bar} has no address in this process`, 'EINVAL');
    const signals: QueueSignals = { notifyAddress: bar.address + BigInt(this.caps.notify.offset + offset), notifyValue: index };
    const callFd = this.interrupts === 'msix' ? this.fn.lendVector?.(1 + index) : undefined;
    if (callFd !== undefined) signals.callFd = callFd;
    return signals;
  }

  reclaimQueue(index: number): void {
    if (this.interrupts !== 'msix' || !this.fn.reclaimVector) return;
    this.fn.reclaimVector(1 + index);
    // An interrupt the borrower did not see is not lost: look once.
    if (!this.latch.failure) this.onUsed.get(index)?.();
  }

  onFailure(callback: (error: Error) => void): void {
    this.latch.onFailure(callback);
  }

  onConfigChange(callback: (now: VirtioFsConfig, before: VirtioFsConfig | undefined) => void): void {
    this.configListeners.push(callback);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pollTimer);
    clearInterval(this.healthTimer);
    try {
      this.reset();
      this.fn.reset();
    } catch {
      // the device may already be gone
    }
    this.fn.close();
  }

  // --- internals --------------------------------------------------------------

  /** Vector 0 for config changes, 1+i for queue i (MSI-X); else the legacy interrupt; else polling. */
  private wireInterrupts(): void {
    this.interruptsWired = true;
    this.interrupts = this.fn.enableInterrupts(1 + this.maxQueues, (vector) => this.interrupt(vector));
    if (this.interrupts === 'msix') {
      this.writeCommon('config_msix_vector', 0);
      if (this.readCommon('config_msix_vector') === NO_VECTOR) this.interrupts = 'polling';
    } else if (this.interrupts === 'intx') {
      this.fn.configWrite(PCI_COMMAND, 2, this.fn.configRead(PCI_COMMAND, 2) & ~PCI_COMMAND_INTX_DISABLE);
    }
  }

  private interrupt(vector: number): void {
    if (this.interrupts === 'intx' || vector < 0) {
      // Reading the ISR acknowledges the interrupt: bit 0 queue, bit 1 config change.
      const isr = this.bar(this.caps.isr.bar).read8(this.caps.isr.offset);
      if (isr & 2) this.checkHealth();
      if (isr & 1) this.serviceAll();
      return;
    }
    if (vector === 0) return this.checkHealth();
    this.onUsed.get(vector - 1)?.();
  }

  private serviceAll(): void {
    if (this.latch.failure) return;
    for (const cb of this.onUsed.values()) cb();
  }

  /**
   * What a configuration-change interrupt (and the periodic look) asks: is the device still well
   * (DEVICE_NEEDS_RESET is announced this way, virtio 1.2 2.1.2), and did its configuration move
   * on to a new generation.
   */
  private checkHealth(): void {
    if (this.latch.failure || this.closed) return;
    const s = this.status();
    if (s & (Status.DEVICE_NEEDS_RESET | Status.FAILED) || s === 0xff) {
      const what = s === 0xff ? 'device vanished (status reads 0xff)' : s & Status.FAILED ? 'device status FAILED' : 'device needs reset (DEVICE_NEEDS_RESET)';
      clearInterval(this.pollTimer);
      this.latch.fail(new TransportError(`${this.description}: ${what}`, s === 0xff ? 'ENODEV' : 'EIO'));
      return;
    }
    if (this.lastGeneration !== undefined && this.readCommon('config_generation') !== this.lastGeneration) {
      const before = this.lastConfig;
      const now = this.readConfig();
      for (const callback of this.configListeners) callback(now, before);
    }
  }

  private reset(): void {
    this.writeCommon('device_status', 0);
    const deadline = Date.now() + RESET_TIMEOUT_MS;
    while (this.status() !== 0) {
      if (Date.now() > deadline) throw new TransportError(`${this.description}: device did not reset`, 'ETIMEDOUT');
    }
  }

  private status(): number {
    return this.readCommon('device_status');
  }

  private setStatus(bit: number): void {
    this.writeCommon('device_status', this.status() | bit);
  }

  private bar(index: number): Mmio {
    let m = this.bars.get(index);
    if (!m) this.bars.set(index, (m = this.fn.bar(index)));
    return m;
  }

  private readCommon(name: CommonField): number {
    const f = common.field(name);
    const mmio = this.bar(this.caps.common.bar);
    const at = this.caps.common.offset + f.offset;
    return f.size === 1 ? mmio.read8(at) : f.size === 2 ? mmio.read16(at) : mmio.read32(at);
  }

  private writeCommon(name: CommonField, value: number): void {
    const f = common.field(name);
    const mmio = this.bar(this.caps.common.bar);
    const at = this.caps.common.offset + f.offset;
    if (f.size === 1) mmio.write8(at, value);
    else if (f.size === 2) mmio.write16(at, value);
    else mmio.write32(at, value);
  }

  private write64Common(name: 'queue_desc' | 'queue_driver' | 'queue_device', value: bigint): void {
    this.bar(this.caps.common.bar).write64(this.caps.common.offset + common.offsetOf(name), value);
  }
}
