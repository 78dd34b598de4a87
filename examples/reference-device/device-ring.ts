/**
 * The device side of a split virtqueue (VIRTIO 1.2 section 2.7): taking
 * descriptor chains from the available ring, and returning them on the used
 * ring with the number of bytes written.
 *
 * Everything in the rings is written by the frontend, which a device must not
 * trust: every index, length and address is checked before it is used, and
 * each descriptor is read exactly once (the frontend could change it while we
 * look), so what we validated is what we use. A bad chain fails that one
 * request (the caller answers EIO, or returns it with length 0); only damage
 * that leaves no chain to return (an avail idx racing ahead, a head index
 * outside the table) stops the queue, and the backend then signals the
 * queue's error eventfd.
 *
 * Memory ordering, as in client/virtio/virtqueue.ts (the driver side): the
 * indexes the two sides hand over (avail idx, used idx, used_event,
 * avail_event, flags) go through Atomics; ring entries and descriptors are
 * plain little-endian reads and writes. Loading avail idx before reading the
 * entries it covers, and storing used idx after writing the element and the
 * reply data, give the acquire/release pairs the spec asks for.
 */
import { needsEvent } from '../../client/virtio/event-idx.ts';
import {
  AVAIL_RING_WORD,
  DESC_ADDR,
  DESC_FLAGS,
  DESC_LEN,
  DESC_NEXT,
  DESCRIPTOR_BYTES,
  FLAGS_WORD,
  IDX_WORD,
  MAX_QUEUE_SIZE,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  availEventWord,
  availRingBytes,
  descTableBytes,
  isValidQueueSize,
  usedEventWord,
  usedRingBytes,
} from '../../client/virtio/ring-layout.ts';
import type { GuestMemory } from './guest-memory.ts';
import { VirtiofsError } from '../../ffi/errors.ts';

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const U16 = 0xffff;
/** A chain (indirect tables included) may carry at most this many buffers. */
const MAX_CHAIN_DESCRIPTORS = MAX_QUEUE_SIZE;
/** Neither side of a chain may exceed what a used-ring len (u32) can describe. */
const MAX_CHAIN_BYTES = 0xffff_ffff;

/** One buffer of a chain: a guest-physical range, checked when the chain was taken. */
export interface Segment {
  readonly address: bigint;
  readonly length: number;
}

/** A request as the frontend made it available: device-readable buffers, then device-writable ones. */
export interface Chain {
  readonly head: number;
  readonly readable: readonly Segment[];
  readonly writable: readonly Segment[];
  readonly readableBytes: number;
  readonly writableBytes: number;
}

export type Popped =
  | { readonly ok: true; readonly chain: Chain }
  /** The entry named a head we can return, but its chain is malformed: return it with length 0. */
  | { readonly ok: false; readonly head: number; readonly reason: string };

/** The ring is damaged beyond returning individual chains; the queue must stop. */
export class RingBrokenError extends VirtiofsError {
  override name = 'RingBrokenError';
  readonly code = 'ERR_RING_BROKEN';
}

/** A segment stopped resolving (the frontend replaced its memory table meanwhile). */
export class ChainAccessError extends VirtiofsError {
  override name = 'ChainAccessError';
  readonly code = 'ERR_CHAIN_ACCESS';
}

export interface RingConfig {
  /** For logs: 'hiprio', 'request0'. */
  readonly name: string;
  readonly size: number;
  /** Ring addresses from SET_VRING_ADDR: the frontend's virtual addresses. */
  readonly desc: bigint;
  readonly avail: bigint;
  readonly used: bigint;
  /** Negotiated VIRTIO_RING_F_EVENT_IDX / VIRTIO_RING_F_INDIRECT_DESC. */
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  /** SET_VRING_BASE: where the available ring is to be read from. */
  readonly lastAvailIdx: number;
}

export class DeviceRing {
  readonly name: string;
  readonly size: number;
  private memory!: GuestMemory;
  private desc!: DataView;
  private avail!: Uint16Array;
  private used16!: Uint16Array;
  private usedView!: DataView;
  private readonly eventIdx: boolean;
  private readonly indirect: boolean;
  private lastAvail: number;
  private usedIdx: number;
  /** used idx when we last decided about a notification. */
  private signalledUsed: number;
  /** Heads handed to the device and not yet returned. */
  private readonly inFlight: Uint8Array;

  /** Throws RangeError when the rings are not inside the memory table or misaligned. */
  constructor(
    memory: GuestMemory,
    private readonly config: RingConfig,
  ) {
    if (!HOST_IS_LITTLE_ENDIAN) throw new RangeError('big-endian hosts need byte-swapped ring accesses (not implemented)');
    const { name, size } = config;
    if (!isValidQueueSize(size)) throw new RangeError(`${name}: queue size ${size} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    if (config.desc % 16n !== 0n || config.avail % 2n !== 0n || config.used % 4n !== 0n) {
      throw new RangeError(`${name}: ring addresses misaligned (descriptors 16, avail 2, used 4 bytes)`);
    }
    this.name = name;
    this.size = size;
    this.eventIdx = config.eventIdx;
    this.indirect = config.indirect;
    this.lastAvail = config.lastAvailIdx & U16;
    this.inFlight = new Uint8Array(size);
    this.remap(memory);
    // The used ring continues from where the frontend left it (0 on a fresh ring; after a
    // stop and restart, wherever the previous run got to).
    this.usedIdx = Atomics.load(this.used16, IDX_WORD);
    this.signalledUsed = this.usedIdx;
    // We always want kicks; with EVENT_IDX armKick() says from which entry on.
    Atomics.store(this.used16, FLAGS_WORD, 0);
  }

  /**
   * Finds the rings in `memory` and checks chains against it from now on
   * (SET_MEM_TABLE may replace the table while the ring runs). Throws
   * RangeError, leaving the ring unchanged, when they are not in it.
   */
  remap(memory: GuestMemory): void {
    const { name, size } = this.config;
    const part = (what: string, address: bigint, bytes: number, align: number): Uint8Array => {
      const r = memory.resolveFrontendVirtual(address, bytes);
      if (!r) throw new RangeError(`${name}: ${what} [0x${address.toString(16)}, +${bytes}) is outside the memory table`);
      if (r.bytes.byteOffset % align !== 0) throw new RangeError(`${name}: ${what} is misaligned in our mapping`);
      return r.bytes;
    };
    const desc = part('descriptor table', this.config.desc, descTableBytes(size), 16);
    const avail = part('available ring', this.config.avail, availRingBytes(size), 2);
    const used = part('used ring', this.config.used, usedRingBytes(size), 4);
    this.memory = memory;
    this.desc = new DataView(desc.buffer, desc.byteOffset, desc.byteLength);
    this.avail = new Uint16Array(avail.buffer, avail.byteOffset, avail.byteLength / 2);
    this.used16 = new Uint16Array(used.buffer, used.byteOffset, used.byteLength / 2);
    this.usedView = new DataView(used.buffer, used.byteOffset, used.byteLength);
  }

  /** The next avail index we will read: GET_VRING_BASE's answer. */
  get lastAvailIdx(): number {
    return this.lastAvail;
  }

  /** Chains taken and not yet returned. */
  get inFlightCount(): number {
    let n = 0;
    for (const x of this.inFlight) n += x;
    return n;
  }

  /**
   * Takes the next available chain; undefined when there is none. Throws
   * RingBrokenError when the available ring itself is corrupt.
   */
  pop(): Popped | undefined {
    const availIdx = Atomics.load(this.avail, IDX_WORD); // acquire: the entries below it are written
    const pending = (availIdx - this.lastAvail) & U16;
    if (pending === 0) return undefined;
    if (pending > this.size) {
      throw new RingBrokenError(`${this.name}: avail idx ${availIdx} is ${pending} entries ahead of ${this.lastAvail}, more than the queue size ${this.size}`);
    }
    const head = this.avail[AVAIL_RING_WORD + (this.lastAvail % this.size)]!;
    this.lastAvail = (this.lastAvail + 1) & U16;
    if (head >= this.size) throw new RingBrokenError(`${this.name}: avail entry names descriptor ${head}, queue size ${this.size}`);
    if (this.inFlight[head]) {
      // Two requests would share one used entry: there is no way to answer both.
      throw new RingBrokenError(`${this.name}: descriptor ${head} made available again while still in flight`);
    }
    this.inFlight[head] = 1;
    const walked = this.walk(head);
    if (typeof walked === 'string') return { ok: false, head, reason: walked };
    return { ok: true, chain: walked };
  }

  /**
   * Returns a chain: `len` bytes were written to its writable buffers (0 for
   * none). The caller decides about the notification with shouldNotify().
   */
  pushUsed(head: number, len: number): void {
    if (head >= this.size || !this.inFlight[head]) throw new Error(`${this.name}: descriptor ${head} is not in flight`);
    this.inFlight[head] = 0;
    const element = 4 + 8 * (this.usedIdx % this.size);
    this.usedView.setUint32(element, head, true);
    this.usedView.setUint32(element + 4, len, true);
    this.usedIdx = (this.usedIdx + 1) & U16;
    Atomics.store(this.used16, IDX_WORD, this.usedIdx); // release: element and reply bytes first
  }

  /**
   * Whether the frontend wants a used-buffer notification for what was
   * returned since the last call (VIRTIO 2.7.10: used_event with EVENT_IDX,
   * else the NO_INTERRUPT flag).
   */
  shouldNotify(): boolean {
    const oldIdx = this.signalledUsed;
    const newIdx = this.usedIdx;
    if (oldIdx === newIdx) return false;
    this.signalledUsed = newIdx;
    // The seq-cst store of used idx in pushUsed() precedes these loads.
    if (this.eventIdx) return needsEvent(Atomics.load(this.avail, usedEventWord(this.size)), newIdx, oldIdx);
    return (Atomics.load(this.avail, FLAGS_WORD) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * After draining: asks for a kick when the next entry is made available
   * (avail_event, with EVENT_IDX). Returns true when entries arrived
   * meanwhile, so the caller drains again instead of waiting for a kick that
   * may never come.
   */
  armKick(): boolean {
    if (this.eventIdx) Atomics.store(this.used16, availEventWord(this.size), this.lastAvail);
    // seq-cst store then load: either the frontend sees our avail_event, or we see its entry.
    return Atomics.load(this.avail, IDX_WORD) !== this.lastAvail;
  }

  /** Follows a chain from `head`, reading each descriptor once. A string is why it is malformed. */
  private walk(head: number): Chain | string {
    const readable: Segment[] = [];
    const writable: Segment[] = [];
    let readableBytes = 0;
    let writableBytes = 0;
    let table = this.desc;
    let tableSize = this.size;
    let index = head;
    let inIndirect = false;
    let visited = 0;
    for (let total = 0; ; total++) {
      if (visited >= tableSize) return `chain ${head} is longer than its descriptor table (a loop?)`;
      if (total >= MAX_CHAIN_DESCRIPTORS) return `chain ${head} has more than ${MAX_CHAIN_DESCRIPTORS} descriptors`;
      visited++;
      const at = index * DESCRIPTOR_BYTES;
      const address = table.getBigUint64(at + DESC_ADDR, true);
      const length = table.getUint32(at + DESC_LEN, true);
      const flags = table.getUint16(at + DESC_FLAGS, true);
      const next = table.getUint16(at + DESC_NEXT, true);

      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirect) return `chain ${head}: indirect descriptor, but VIRTIO_RING_F_INDIRECT_DESC was not negotiated`;
        if (inIndirect) return `chain ${head}: indirect descriptor inside an indirect table`;
        if (flags & VIRTQ_DESC_F_NEXT) return `chain ${head}: indirect descriptor with NEXT set`;
        if (length === 0 || length % DESCRIPTOR_BYTES !== 0) return `chain ${head}: indirect table of ${length} bytes`;
        const entries = length / DESCRIPTOR_BYTES;
        if (entries > MAX_CHAIN_DESCRIPTORS) return `chain ${head}: indirect table of ${entries} descriptors`;
        const resolved = this.resolveTable(address, length);
        if (!resolved) return `chain ${head}: indirect table [0x${address.toString(16)}, +${length}) is outside the memory table`;
        table = resolved;
        tableSize = entries;
        index = 0;
        visited = 0;
        inIndirect = true;
        continue;
      }

      if (length > 0) {
        if (!this.memoryCheck(address, length)) {
          return `chain ${head}: buffer [0x${address.toString(16)}, +${length}) is outside the memory table`;
        }
        if (flags & VIRTQ_DESC_F_WRITE) {
          writable.push({ address, length });
          writableBytes += length;
        } else {
          if (writable.length > 0) return `chain ${head}: device-readable buffer after a device-writable one`;
          readable.push({ address, length });
          readableBytes += length;
        }
        if (readableBytes > MAX_CHAIN_BYTES || writableBytes > MAX_CHAIN_BYTES) return `chain ${head}: more than 4 GiB`;
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) return { head, readable, writable, readableBytes, writableBytes };
      if (next >= tableSize) return `chain ${head}: next ${next} is outside its table of ${tableSize}`;
      index = next;
    }
  }

  private resolveTable(address: bigint, length: number): DataView | undefined {
    const r = this.memory.resolveGuest(address, length);
    return r && new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength);
  }

  private memoryCheck(address: bigint, length: number): boolean {
    return this.memory.resolveGuest(address, length) !== undefined;
  }
}

/**
 * Copies `into.length` bytes of the chain's readable side, starting `from`
 * bytes in, out of guest memory. Segments are resolved again now (the table
 * may have been replaced since the chain was taken).
 */
export function readChain(memory: GuestMemory, chain: Chain, from: number, into: Uint8Array): void {
  if (from < 0 || from + into.length > chain.readableBytes) throw new ChainAccessError(`read [${from}, +${into.length}) past the ${chain.readableBytes} readable bytes`);
  copy(memory, chain.readable, from, into.length, (bytes, at) => into.set(bytes, at));
}

/** Writes `data` into the chain's writable side, `at` bytes in. */
export function writeChain(memory: GuestMemory, chain: Chain, at: number, data: Uint8Array): void {
  if (at < 0 || at + data.length > chain.writableBytes) throw new ChainAccessError(`write [${at}, +${data.length}) past the ${chain.writableBytes} writable bytes`);
  copy(memory, chain.writable, at, data.length, (bytes, done) => bytes.set(data.subarray(done, done + bytes.length)));
}

/** Walks segments over [start, start+length), handing each piece of guest memory and how far along it starts. */
function copy(memory: GuestMemory, segments: readonly Segment[], start: number, length: number, each: (bytes: Uint8Array, done: number) => void): void {
  let skip = start;
  let done = 0;
  for (const s of segments) {
    if (done === length) return;
    if (skip >= s.length) {
      skip -= s.length;
      continue;
    }
    const n = Math.min(s.length - skip, length - done);
    const r = memory.resolveGuest(s.address + BigInt(skip), n);
    if (!r) throw new ChainAccessError(`buffer at 0x${s.address.toString(16)} is no longer in the memory table`);
    each(r.bytes, done);
    done += n;
    skip = 0;
  }
}
