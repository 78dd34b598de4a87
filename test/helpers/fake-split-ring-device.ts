/**
 * The device side of a split virtqueue, for tests. It finds the rings through
 * the device addresses the driver exposes, reads them the way a device does
 * (little-endian, from the spec's offsets, written out here independently of
 * client/virtio/ring-layout.ts), enforces the driver's obligations while
 * walking chains (throwing on a violation), and posts used entries.
 */
import { VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, hasFeature } from '../../client/virtio/features.ts';
import type { Virtqueue } from '../../client/virtio/virtqueue.ts';
import type { FakeDma } from './fake-dma.ts';

const NEXT = 1;
const WRITE = 2;
const INDIRECT = 4;

export interface DeviceQueueConfig {
  readonly size: number;
  readonly descTableAddress: bigint;
  readonly availRingAddress: bigint;
  readonly usedRingAddress: bigint;
  /** Negotiated ring features, as the device sees them. */
  readonly indirect: boolean;
  readonly eventIdx: boolean;
}

export interface DeviceSegment {
  /** Region offset the device address translated to. */
  readonly offset: number;
  readonly length: number;
}

export interface DeviceChain {
  readonly head: number;
  /** Whether the chain came through an indirect table. */
  indirect: boolean;
  readonly readable: DeviceSegment[];
  readonly writable: DeviceSegment[];
}

export class FakeSplitRingDevice {
  /** Used-buffer notifications the device would have sent. */
  notifications = 0;
  private lastAvail = 0;
  private usedIdx = 0;
  private readonly dv: DataView;
  private readonly desc: number;
  private readonly avail: number;
  private readonly used: number;

  constructor(
    private readonly dma: FakeDma,
    private readonly config: DeviceQueueConfig,
  ) {
    const { size } = config;
    this.dv = new DataView(dma.bytes.buffer, dma.bytes.byteOffset, dma.bytes.byteLength);
    if (config.descTableAddress % 16n || config.availRingAddress % 2n || config.usedRingAddress % 4n) {
      throw new Error('ring parts are misaligned');
    }
    this.desc = dma.offsetOf(config.descTableAddress, 16 * size);
    this.avail = dma.offsetOf(config.availRingAddress, 6 + 2 * size);
    this.used = dma.offsetOf(config.usedRingAddress, 6 + 8 * size);
  }

  /** Entries the driver has published and the device has not popped. */
  pendingAvailable(): number {
    return (this.availIdx() - this.lastAvail) & 0xffff;
  }

  /** Takes the next available chain, or undefined when the avail ring is drained. */
  pop(): DeviceChain | undefined {
    if (this.pendingAvailable() === 0) return undefined;
    const head = this.dv.getUint16(this.avail + 4 + 2 * (this.lastAvail % this.config.size), true);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    return this.walk(head);
  }

  popAll(): DeviceChain[] {
    const chains: DeviceChain[] = [];
    for (let chain = this.pop(); chain; chain = this.pop()) chains.push(chain);
    return chains;
  }

  /** The chain's device-readable bytes, concatenated. */
  read(chain: DeviceChain): Uint8Array {
    const total = chain.readable.reduce((sum, s) => sum + s.length, 0);
    const out = new Uint8Array(total);
    let at = 0;
    for (const s of chain.readable) {
      out.set(this.dma.bytes.subarray(s.offset, s.offset + s.length), at);
      at += s.length;
    }
    return out;
  }

  /** Scatters data over the chain's writable segments; returns the bytes written. */
  write(chain: DeviceChain, data: Uint8Array): number {
    let at = 0;
    for (const s of chain.writable) {
      if (at === data.length) break;
      const n = Math.min(s.length, data.length - at);
      this.dma.bytes.set(data.subarray(at, at + n), s.offset);
      at += n;
    }
    if (at < data.length) throw new Error(`reply of ${data.length} bytes does not fit the writable segments`);
    return at;
  }

  /** Posts used entries (id, len) as one batch, then decides on a notification as a device would. */
  complete(...entries: (readonly [id: number, len: number])[]): void {
    const oldIdx = this.usedIdx;
    for (const [id, len] of entries) {
      const element = this.used + 4 + 8 * (this.usedIdx % this.config.size);
      this.dv.setUint32(element, id, true);
      this.dv.setUint32(element + 4, len, true);
      this.usedIdx = (this.usedIdx + 1) & 0xffff;
    }
    this.dv.setUint16(this.used + 2, this.usedIdx, true);
    if (this.config.eventIdx) {
      const usedEvent = this.dv.getUint16(this.avail + 4 + 2 * this.config.size, true);
      // Notify iff used_event lies in [oldIdx, newIdx) modulo 2^16.
      if (((usedEvent - oldIdx) & 0xffff) < ((this.usedIdx - oldIdx) & 0xffff)) this.notifications++;
    } else if ((this.dv.getUint16(this.avail, true) & 1) === 0) {
      this.notifications++;
    }
  }

  /** Corrupts used idx (a broken device). */
  setUsedIdx(value: number): void {
    this.usedIdx = value & 0xffff;
    this.dv.setUint16(this.used + 2, this.usedIdx, true);
  }

  /** Available-buffer notification suppression: used.flags NO_NOTIFY (without EVENT_IDX). */
  setNoNotify(on: boolean): void {
    this.dv.setUint16(this.used, on ? 1 : 0, true);
  }

  /** Available-buffer notification suppression: used.avail_event (with EVENT_IDX). */
  setAvailEvent(value: number): void {
    this.dv.setUint16(this.used + 4 + 8 * this.config.size, value & 0xffff, true);
  }

  availFlags(): number {
    return this.dv.getUint16(this.avail, true);
  }

  usedEvent(): number {
    return this.dv.getUint16(this.avail + 4 + 2 * this.config.size, true);
  }

  private availIdx(): number {
    return this.dv.getUint16(this.avail + 2, true);
  }

  private walk(head: number): DeviceChain {
    const { size } = this.config;
    if (head >= size) throw new Error(`avail entry names descriptor ${head} >= size ${size}`);
    const chain: DeviceChain = { head, indirect: false, readable: [], writable: [] };
    let table = this.desc;
    let tableLength = size;
    let index = head;
    let inIndirect = false;
    for (let seen = 0; ; seen++) {
      if (seen >= tableLength) throw new Error(`chain ${head} is longer than its table (loop?)`);
      const at = table + 16 * index;
      const address = this.dv.getBigUint64(at, true);
      const length = this.dv.getUint32(at + 8, true);
      const flags = this.dv.getUint16(at + 12, true);
      const next = this.dv.getUint16(at + 14, true);
      if (flags & INDIRECT) {
        if (!this.config.indirect) throw new Error('INDIRECT used but not negotiated');
        if (inIndirect) throw new Error('INDIRECT inside an indirect table');
        if (flags & NEXT) throw new Error('INDIRECT and NEXT both set');
        if (length === 0 || length % 16 !== 0) throw new Error(`indirect table length ${length}`);
        if (length / 16 > size) throw new Error('indirect table longer than the queue size');
        table = this.dma.offsetOf(address, length);
        tableLength = length / 16;
        index = 0;
        seen = -1;
        inIndirect = true;
        chain.indirect = true;
        continue;
      }
      const segment = { offset: this.dma.offsetOf(address, length), length };
      if (flags & WRITE) chain.writable.push(segment);
      else if (chain.writable.length > 0) throw new Error(`chain ${head}: readable descriptor after a writable one`);
      else chain.readable.push(segment);
      if (!(flags & NEXT)) return chain;
      if (next >= tableLength) throw new Error(`chain ${head}: next ${next} outside its table`);
      index = next;
    }
  }
}

/** A device for `queue`, negotiated with `features`, found through the addresses the driver exposes. */
export function fakeDeviceFor(
  dma: FakeDma,
  queue: Pick<Virtqueue<unknown>, 'size' | 'descTableAddress' | 'availRingAddress' | 'usedRingAddress'>,
  features: bigint,
): FakeSplitRingDevice {
  return new FakeSplitRingDevice(dma, {
    size: queue.size,
    descTableAddress: queue.descTableAddress,
    availRingAddress: queue.availRingAddress,
    usedRingAddress: queue.usedRingAddress,
    indirect: hasFeature(features, VIRTIO_RING_F_INDIRECT_DESC),
    eventIdx: hasFeature(features, VIRTIO_RING_F_EVENT_IDX),
  });
}
