/**
 * A virtio-fs PCI function in this process, for the faults a real one cannot be made to show on
 * demand: a device that sets DEVICE_NEEDS_RESET, changes its configuration, or vanishes (every
 * register reads all ones). It implements PciFunction, so the real VirtioPciTransport drives it
 * register by register; the FUSE side is a FakeVirtioFs, to which the function forwards what the
 * registers do (features, queue set-up, doorbells, DRIVER_OK).
 *
 * Layout (written here from virtio 1.2 4.1.4, independently of client/transport/pci/): config
 * space with four vendor capabilities, all in BAR4: common config at 0x0000, ISR at 0x1000,
 * device config at 0x2000, doorbells at 0x3000 (notify_off_multiplier 4, queue i's doorbell at
 * 0x3000 + 4i). BAR4 is real shared memory, so a queue thread of this process can ring a doorbell
 * by storing to its address; the function notices such stores within a millisecond.
 */
import { EventFd } from '../../ffi/event-fd.ts';
import type { DmaRegion } from '../../ffi/dma.ts';
import { Mmio } from '../../ffi/mmio.ts';
import { SharedMemory } from '../../ffi/shared-memory.ts';
import type { InterruptMode, PciFunction } from '../../client/transport/pci/pci-function.ts';
import type { FakeVirtioFs } from './fake-virtio-fs.ts';

const BAR = 4;
const BAR_SIZE = 0x4000;
const COMMON = 0x0000;
const ISR = 0x1000;
const DEVICE = 0x2000;
const NOTIFY = 0x3000;
const NOTIFY_MULTIPLIER = 4;
/** A doorbell word nobody rang since the function last looked. */
const IDLE_DOORBELL = 0xffff;
const NO_VECTOR = 0xffff;

// virtio_pci_common_cfg offsets (virtio 1.2 4.1.4.3).
const C = {
  deviceFeatureSelect: 0x00,
  deviceFeature: 0x04,
  driverFeatureSelect: 0x08,
  driverFeature: 0x0c,
  configMsixVector: 0x10,
  numQueues: 0x12,
  deviceStatus: 0x14,
  configGeneration: 0x15,
  queueSelect: 0x16,
  queueSize: 0x18,
  queueMsixVector: 0x1a,
  queueEnable: 0x1c,
  queueNotifyOff: 0x1e,
  queueDesc: 0x20,
  queueDriver: 0x28,
  queueDevice: 0x30,
  end: 0x40,
} as const;

export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_DEVICE_NEEDS_RESET = 64;

export interface FakePciOptions {
  /** What enableInterrupts manages (default msix). */
  interrupts?: InterruptMode;
  /** The device configuration's tag (default 'fake-pci'). */
  tag?: string;
}

interface QueueRegs {
  size: number;
  msixVector: number;
  enabled: boolean;
  /** desc, driver, device: low and high words. */
  readonly words: number[];
}

/** Register reads and writes of BAR4, with the side effects a device gives them. */
class Registers extends Mmio {
  constructor(
    private readonly fn: FakePciFunction,
    memory: SharedMemory,
  ) {
    super(memory.bytes.buffer as ArrayBuffer, BAR_SIZE, `BAR${BAR} of ${fn.address}`, memory.userAddress);
  }

  override read8(offset: number): number {
    return this.fn.vanished ? 0xff : (this.fn.registerRead(offset, 1) ?? super.read8(offset));
  }
  override read16(offset: number): number {
    return this.fn.vanished ? 0xffff : (this.fn.registerRead(offset, 2) ?? super.read16(offset));
  }
  override read32(offset: number): number {
    return this.fn.vanished ? 0xffff_ffff : (this.fn.registerRead(offset, 4) ?? super.read32(offset));
  }
  override write8(offset: number, value: number): void {
    if (!this.fn.registerWrite(offset, 1, value)) super.write8(offset, value);
  }
  override write16(offset: number, value: number): void {
    if (!this.fn.registerWrite(offset, 2, value)) super.write16(offset, value);
  }
  override write32(offset: number, value: number): void {
    if (!this.fn.registerWrite(offset, 4, value)) super.write32(offset, value);
  }
  /** The plain memory behind the registers (the doorbells live there). */
  raw16(offset: number, value?: number): number {
    if (value !== undefined) super.write16(offset, value);
    return super.read16(offset);
  }
}

export class FakePciFunction implements PciFunction {
  readonly address = '0000:00:04.0';
  readonly description = 'fake-pci';
  /** Every register reads all ones: the function was surprise-removed. */
  vanished = false;
  /** Interrupts raised, by vector (-1: the legacy interrupt). */
  readonly interruptsRaised = new Map<number, number>();
  private readonly config = new Uint8Array(256);
  private readonly barMemory = new SharedMemory(BAR_SIZE, 'fake-pci-bar4');
  private readonly registers: Registers;
  private readonly mode: InterruptMode;
  private onInterrupt: ((vector: number) => void) | undefined;
  private readonly lent = new Map<number, EventFd>();
  private deviceFeatureSelect = 0;
  private driverFeatureSelect = 0;
  private readonly driverFeatures = [0, 0];
  private status = 0;
  private generation = 0;
  private isr = 0;
  private configVector = NO_VECTOR;
  private queueSelect = 0;
  private readonly queues: QueueRegs[];
  private tag: string;
  private numRequestQueues: number;
  private doorbellTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    readonly fake: FakeVirtioFs,
    options: FakePciOptions = {},
  ) {
    this.mode = options.interrupts ?? 'msix';
    this.tag = options.tag ?? 'fake-pci';
    this.numRequestQueues = fake.maxQueues - 1;
    this.queues = Array.from({ length: fake.maxQueues }, (_, i) => ({ size: fake.maxQueueSize(i), msixVector: NO_VECTOR, enabled: false, words: [0, 0, 0, 0, 0, 0] }));
    this.registers = new Registers(this, this.barMemory);
    for (let i = 0; i < fake.maxQueues; i++) this.registers.raw16(NOTIFY + i * NOTIFY_MULTIPLIER, IDLE_DOORBELL);
    this.buildConfigSpace();
    // A device the FUSE side gave up on (a mutation that kills it) reports it the PCI way.
    fake.onFailure(() => this.needsReset());
  }

  // --- PciFunction ------------------------------------------------------------------

  configRead(offset: number, width: 1 | 2 | 4): number {
    if (this.vanished) return width === 1 ? 0xff : width === 2 ? 0xffff : 0xffff_ffff;
    let v = 0;
    for (let i = width - 1; i >= 0; i--) v = v * 256 + this.config[offset + i]!;
    return v;
  }

  configWrite(offset: number, width: 1 | 2 | 4, value: number): void {
    // Only the command register is writable here.
    if (offset !== 0x04) return;
    for (let i = 0; i < width; i++) this.config[offset + i] = (value >>> (8 * i)) & 0xff;
  }

  bar(index: number): Mmio {
    if (index !== BAR) throw new RangeError(`${this.address}: BAR${index} is not implemented`);
    return this.registers;
  }

  get dmaChunkBytes(): number {
    return 1 << 30;
  }

  allocateDma(bytes: number): DmaRegion {
    return this.fake.allocateMemory(bytes);
  }

  enableInterrupts(_vectors: number, onInterrupt: (vector: number) => void): InterruptMode {
    this.onInterrupt = onInterrupt;
    return this.mode;
  }

  lendVector(vector: number): number | undefined {
    if (this.mode !== 'msix') return undefined;
    const fd = new EventFd();
    this.lent.set(vector, fd);
    return fd.fd;
  }

  reclaimVector(vector: number): void {
    this.lent.get(vector)?.close();
    this.lent.delete(vector);
  }

  reset(): void {
    // A function-level reset: nothing of the fake's FUSE state survives one, so none is offered.
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.doorbellTimer);
    for (const vector of [...this.lent.keys()]) this.reclaimVector(vector);
    this.fake.close();
    this.barMemory.close();
  }

  // --- test controls -----------------------------------------------------------------

  /** The device sets DEVICE_NEEDS_RESET and, as virtio 1.2 2.1.2 asks, signals a configuration change. */
  needsReset(): void {
    this.status |= STATUS_DEVICE_NEEDS_RESET;
    this.configChanged();
  }

  /** The device changes its configuration: the generation moves on and the driver is told. */
  changeConfig(change: { tag?: string; numRequestQueues?: number }): void {
    if (change.tag !== undefined) this.tag = change.tag;
    if (change.numRequestQueues !== undefined) this.numRequestQueues = change.numRequestQueues;
    this.generation = (this.generation + 1) & 0xff;
    this.configChanged();
  }

  /**
   * The configuration changes again while the driver reads it (`times` more generations, one per
   * read of the device config's first byte): a driver that does not re-check the generation
   * would take a torn configuration.
   */
  changeWhileRead(times: number, change: { tag?: string; numRequestQueues?: number }): void {
    this.tornReads = times;
    this.tornChange = change;
  }
  private tornReads = 0;
  private tornChange: { tag?: string; numRequestQueues?: number } = {};

  /** The device status register as the device holds it. */
  get deviceStatus(): number {
    return this.status;
  }

  // --- the registers (called by Registers) --------------------------------------------

  /** The value of a register read, or undefined for plain memory. */
  registerRead(offset: number, width: number): number | undefined {
    if (offset >= COMMON && offset < COMMON + C.end) return this.commonRead(offset - COMMON, width);
    if (offset === ISR && width === 1) {
      // Reading the ISR acknowledges it.
      const v = this.isr;
      this.isr = 0;
      return v;
    }
    if (offset >= DEVICE && offset < DEVICE + 0x100) return this.deviceConfigRead(offset - DEVICE, width);
    return undefined;
  }

  /** True when the write was a register's (and took effect); false for plain memory. */
  registerWrite(offset: number, width: number, value: number): boolean {
    if (offset >= COMMON && offset < COMMON + C.end) {
      this.commonWrite(offset - COMMON, width, value);
      return true;
    }
    if (offset >= NOTIFY && offset < NOTIFY + NOTIFY_MULTIPLIER * this.queues.length && width === 2) {
      const index = (offset - NOTIFY) / NOTIFY_MULTIPLIER;
      if (this.status & STATUS_DRIVER_OK && !(this.status & STATUS_DEVICE_NEEDS_RESET)) this.fake.notify(index);
      return true;
    }
    return offset < NOTIFY;
  }

  private commonRead(at: number, width: number): number {
    const q = this.queues[this.queueSelect];
    switch (at) {
      case C.deviceFeatureSelect:
        return this.deviceFeatureSelect;
      case C.deviceFeature:
        return this.deviceFeatureSelect > 1 ? 0 : Number((this.fake.deviceFeatures >> BigInt(32 * this.deviceFeatureSelect)) & 0xffff_ffffn);
      case C.driverFeatureSelect:
        return this.driverFeatureSelect;
      case C.driverFeature:
        return this.driverFeatures[this.driverFeatureSelect] ?? 0;
      case C.configMsixVector:
        return this.configVector;
      case C.numQueues:
        return this.queues.length;
      case C.deviceStatus:
        return this.status;
      case C.configGeneration:
        return this.generation;
      case C.queueSelect:
        return this.queueSelect;
      case C.queueSize:
        return q ? q.size : 0;
      case C.queueMsixVector:
        return q ? q.msixVector : NO_VECTOR;
      case C.queueEnable:
        return q?.enabled ? 1 : 0;
      case C.queueNotifyOff:
        return this.queueSelect;
      default:
        if (at >= C.queueDesc && at < C.end - 8 && q && width === 4) return q.words[(at - C.queueDesc) / 4]!;
        return 0;
    }
  }

  private commonWrite(at: number, width: number, value: number): void {
    const q = this.queues[this.queueSelect];
    switch (at) {
      case C.deviceFeatureSelect:
        this.deviceFeatureSelect = value;
        return;
      case C.driverFeatureSelect:
        this.driverFeatureSelect = value;
        return;
      case C.driverFeature:
        if (this.driverFeatureSelect <= 1) this.driverFeatures[this.driverFeatureSelect] = value >>> 0;
        return;
      case C.configMsixVector:
        this.configVector = this.mode === 'msix' ? value : NO_VECTOR;
        return;
      case C.deviceStatus:
        return this.statusWrite(value);
      case C.queueSelect:
        this.queueSelect = value;
        return;
      case C.queueSize:
        if (q) q.size = value;
        return;
      case C.queueMsixVector:
        if (q) q.msixVector = this.mode === 'msix' ? value : NO_VECTOR;
        return;
      case C.queueEnable:
        if (q && value === 1 && !q.enabled) this.enableQueue(this.queueSelect, q);
        return;
      default:
        if (at >= C.queueDesc && at < C.end - 8 && q && width === 4) q.words[(at - C.queueDesc) / 4] = value >>> 0;
    }
  }

  private statusWrite(value: number): void {
    if (value === 0) {
      // Reset: the function forgets the driver (the FUSE side is not reused after one).
      this.status = 0;
      clearInterval(this.doorbellTimer);
      return;
    }
    const added = value & ~this.status;
    this.status = value;
    if (added & STATUS_FEATURES_OK) {
      const features = BigInt(this.driverFeatures[0]!) | (BigInt(this.driverFeatures[1]!) << 32n);
      try {
        this.fake.setFeatures(features);
      } catch {
        this.status &= ~STATUS_FEATURES_OK;
      }
    }
    if (added & STATUS_DRIVER_OK) {
      this.fake.start();
      // Doorbells rung by stores from another thread: look every millisecond.
      this.doorbellTimer = setInterval(() => this.lookAtDoorbells(), 1);
      this.doorbellTimer.unref();
    }
  }

  private enableQueue(index: number, q: QueueRegs): void {
    q.enabled = true;
    const address = (lo: number) => BigInt(q.words[lo]!) | (BigInt(q.words[lo + 1]!) << 32n);
    this.fake.setupQueue(index, { size: q.size, desc: address(0), avail: address(2), used: address(4) }, () => this.used(q));
  }

  /** The FUSE side put buffers of queue `q` on its used ring: interrupt the driver. */
  private used(q: QueueRegs): void {
    if (this.status & STATUS_DEVICE_NEEDS_RESET) return;
    if (this.mode === 'msix') {
      if (q.msixVector === NO_VECTOR) return;
      const lent = this.lent.get(q.msixVector);
      if (lent) lent.signal();
      else this.raise(q.msixVector);
    } else if (this.mode === 'intx') {
      this.isr |= 1;
      this.raise(-1);
    }
  }

  private configChanged(): void {
    if (!(this.status & STATUS_DRIVER_OK)) return;
    if (this.mode === 'msix' && this.configVector !== NO_VECTOR) this.raise(this.configVector);
    else if (this.mode === 'intx') {
      this.isr |= 2;
      this.raise(-1);
    }
    // Polling: the driver finds out when it next looks at the status.
  }

  private raise(vector: number): void {
    this.interruptsRaised.set(vector, (this.interruptsRaised.get(vector) ?? 0) + 1);
    const handler = this.onInterrupt;
    if (handler) setImmediate(() => !this.closed && handler(vector));
  }

  private lookAtDoorbells(): void {
    if (!(this.status & STATUS_DRIVER_OK) || this.status & STATUS_DEVICE_NEEDS_RESET) return;
    for (let i = 0; i < this.queues.length; i++) {
      const at = NOTIFY + i * NOTIFY_MULTIPLIER;
      if (this.registers.raw16(at) !== IDLE_DOORBELL) {
        this.registers.raw16(at, IDLE_DOORBELL);
        this.fake.notify(i);
      }
    }
  }

  private deviceConfigRead(at: number, width: number): number {
    // Mid-tag (its fourth byte): the bytes before come from the old configuration, the rest from the new.
    if (at === 3 && this.tornReads > 0) {
      this.tornReads--;
      this.changeConfig(this.tornChange);
    }
    const bytes = new Uint8Array(44);
    bytes.set(new TextEncoder().encode(this.tag).subarray(0, 36));
    new DataView(bytes.buffer).setUint32(36, this.numRequestQueues, true);
    let v = 0;
    for (let i = width - 1; i >= 0; i--) v = v * 256 + (bytes[at + i] ?? 0);
    return v;
  }

  private buildConfigSpace(): void {
    const c = new DataView(this.config.buffer);
    c.setUint16(0x00, 0x1af4, true); // vendor
    c.setUint16(0x02, 0x105a, true); // virtio-fs, modern
    c.setUint16(0x06, 0x10, true); // status: capability list
    c.setUint8(0x34, 0x40);
    // struct virtio_pci_cap: vndr, next, len, cfg_type, bar, id, padding[2], offset, length.
    const caps: [type: number, offset: number, length: number][] = [
      [1, COMMON, C.end],
      [3, ISR, 4],
      [4, DEVICE, 44],
      [2, NOTIFY, NOTIFY_MULTIPLIER * this.queues.length],
    ];
    let at = 0x40;
    caps.forEach(([type, offset, length], i) => {
      const notify = type === 2;
      const len = notify ? 20 : 16;
      const next = i === caps.length - 1 ? 0 : at + 0x10 + (notify ? 4 : 0);
      c.setUint8(at, 0x09);
      c.setUint8(at + 1, next);
      c.setUint8(at + 2, len);
      c.setUint8(at + 3, type);
      c.setUint8(at + 4, BAR);
      c.setUint32(at + 8, offset, true);
      c.setUint32(at + 12, length, true);
      if (notify) c.setUint32(at + 16, NOTIFY_MULTIPLIER, true);
      at = next;
    });
  }
}
