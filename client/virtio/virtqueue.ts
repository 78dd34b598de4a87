/**
 * Driver side of a split virtqueue (VIRTIO 1.2 section 2.7).
 *
 * Memory ordering. The rings live in memory another process (the device)
 * reads and writes concurrently. Every index the two sides hand over (avail
 * idx, used idx, used_event, avail_event) and every flags word goes through
 * `Atomics` on a typed array over the region. ECMAScript Atomics are
 * sequentially consistent and also work on non-shared ArrayBuffers (checked
 * on Node 20; only Atomics.wait needs a SharedArrayBuffer, and memfd-backed
 * regions usually arrive as plain external ArrayBuffers). The JIT treats them
 * as ordered memory operations: never cached in registers, never moved
 * across other loads and stores. That gives the barriers the spec asks for:
 *   - descriptor/avail-entry writes happen before the Atomics.store of avail
 *     idx (release), so the device never sees an index ahead of its entry;
 *   - the Atomics.load of used idx (acquire) happens before reading the used
 *     elements it covers;
 *   - store(avail idx) then load(avail_event / used flags) and store(used_event
 *     / avail flags) then load(used idx) are a seq-cst store followed by a
 *     seq-cst load: the full barrier that avoids missed notifications.
 * Descriptor and ring-entry contents are plain DataView / typed-array accesses.
 *
 * Endianness. Virtio 1.x rings are little-endian. Descriptors are written
 * with explicit little-endian DataView calls, but the Atomics views use host
 * byte order, so a big-endian host would need byte swaps on every index and
 * flags access; the constructor refuses to run there rather than corrupt
 * rings.
 *
 * Hot path. add() and drainUsed() allocate nothing (error/problem objects
 * only on failures): request tokens live in a preallocated array indexed by
 * chain head, the free list is a preallocated Uint16Array, and device
 * addresses come from the region's device-contiguous runs, read once into
 * typed arrays (no BigInt per descriptor).
 *
 * Scatter. A region may be device-contiguous only per run (hugepages by
 * physical address): a segment that crosses runs becomes one descriptor per
 * run it touches, as the kernel's scatterlists split at page boundaries. The
 * device sees one buffer either way.
 */
import type { DmaRegion } from '../../ffi/dma.ts';
import { needsEvent } from './event-idx.ts';
import {
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
  hasFeature,
} from './features.ts';
import {
  AVAIL_RING_ALIGN,
  AVAIL_RING_WORD,
  DESC_ADDR,
  DESC_FLAGS,
  DESC_LEN,
  DESC_NEXT,
  DESC_TABLE_ALIGN,
  DESCRIPTOR_BYTES,
  FLAGS_WORD,
  IDX_WORD,
  USED_RING_ALIGN,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  availEventWord,
  availRingBytes,
  descTableBytes,
  splitRingLayout,
  usedElemIdWord,
  usedEventWord,
  usedRingBytes,
  type SplitRingLayout,
} from './ring-layout.ts';
import { VirtiofsError } from '../../ffi/errors.ts';

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Descriptors per indirect table when the caller does not say. */
export const DEFAULT_MAX_INDIRECT_SEGMENTS = 16;

/**
 * Flat (regionOffset, length) pairs: [offset0, length0, offset1, length1, ...].
 * A reusable number[] or Float64Array lets callers build requests without
 * allocating.
 */
export type Segments = ArrayLike<number>;

export interface VirtqueueOptions {
  /**
   * Negotiated feature bits. VIRTIO_F_VERSION_1 is required (the legacy
   * layout and byte order are not implemented); INDIRECT_DESC and EVENT_IDX
   * are used when present; RING_PACKED and IN_ORDER are refused.
   */
  readonly features: bigint;
  /**
   * Descriptors per indirect table: the most segments a request can carry in
   * one ring slot (longer requests fall back to a direct chain). At most the
   * queue size; default min(16, size); 0 or 1 reserves no tables. Ignored
   * without VIRTIO_RING_F_INDIRECT_DESC.
   */
  readonly maxIndirectSegments?: number;
}

/**
 * One queue's rings driven by several Virtqueue objects, one per thread (client/virtio/queue-share.ts):
 * each owns a range of the descriptor table and publishes its chains through the share, under a
 * lock; used entries are taken off the ring by whichever thread holds the share's other lock and
 * handed to their owner's completeUsed().
 */
export interface VirtqueueShare {
  /** This object's descriptors: [first, first + count). */
  readonly first: number;
  readonly count: number;
  /** Puts `head` on the avail ring (under the share's lock); true when the device wants a kick for it. */
  publish(head: number): boolean;
}

export interface VirtqueueParams extends VirtqueueOptions {
  /** For error reports, e.g. "hiprio" or "request0". */
  readonly name: string;
  readonly region: DmaRegion;
  /** Where the queue's block starts in the region; must be 16-byte aligned. */
  readonly offset: number;
  /** Queue size the transport negotiated: a power of two <= 32768. */
  readonly size: number;
  /**
   * The rings are live: another Virtqueue object of this process (on another thread) ran them
   * and has nothing in flight. Keep their contents and continue from their indexes instead of
   * zeroing them. See adoptRings().
   */
  readonly adopt?: boolean;
  /** The rings are shared with other threads' Virtqueue objects (requires adopt): see VirtqueueShare. */
  readonly share?: VirtqueueShare;
}

export type VirtqueueErrorCode =
  | 'BAD_CONFIG'
  | 'BAD_SEGMENTS'
  | 'SEGMENT_OUT_OF_REGION'
  | 'CHAIN_TOO_LONG'
  | 'QUEUE_BROKEN'
  | 'REQUESTS_IN_FLIGHT';

/** A caller mistake or an unusable queue; a full queue is not an error (add returns false). */
export class VirtqueueError extends VirtiofsError {
  override readonly name = 'VirtqueueError';
  constructor(
    readonly code: VirtqueueErrorCode,
    readonly queue: string,
    message: string,
  ) {
    super(`virtqueue ${queue}: ${message}`);
  }
}

/** Which used-ring field the device got wrong. */
export type UsedRingField = 'idx' | 'id' | 'len';

/** A used-ring entry (or used idx) the device wrote that the driver refused. */
export interface UsedRingProblem<T> {
  readonly queue: string;
  /** Free-running index of the bad entry; for field 'idx', the driver's last seen used idx. */
  readonly usedIndex: number;
  readonly field: UsedRingField;
  /** The offending value of that field. */
  readonly value: number;
  readonly reason: string;
  /**
   * The request the entry named, when it could be identified (field 'len'):
   * its descriptors are reclaimed, its reply is untrustworthy, fail it.
   */
  readonly token: T | undefined;
}

/** Chain-head bookkeeping per descriptor index. */
const NOT_A_HEAD = 0;
const HEAD_IN_FLIGHT = 1;
/** Returned by the device and not reused since: lets a duplicate completion be named as such. */
const HEAD_COMPLETED = 2;

const U16_MASK = 0xffff;
const MAX_CHAIN_BYTES = 2 ** 32;

export class Virtqueue<T> {
  /** Bytes of DmaRegion a queue of `size` entries needs (rings plus indirect tables). */
  static bytesNeeded(size: number, options: VirtqueueOptions): number {
    return splitRingLayout(size, indirectSegmentsFor(size, options)).totalBytes;
  }

  readonly name: string;
  readonly size: number;
  readonly region: DmaRegion;
  /** Where the queue's block starts in the region. */
  readonly offset: number;
  /** Offsets of the rings and indirect tables within the block. */
  readonly layout: SplitRingLayout;
  /** Device addresses the transport programs (vhost-user SET_VRING_ADDR, PCI common cfg). */
  readonly descTableAddress: bigint;
  readonly availRingAddress: bigint;
  readonly usedRingAddress: bigint;
  readonly usesIndirectDescriptors: boolean;
  readonly usesEventIdx: boolean;

  private readonly view: DataView;
  private readonly avail: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;
  private readonly mask: number;
  private readonly descTableOffset: number;
  private readonly indirectTablesOffset: number;
  private readonly maxIndirectSegments: number;
  private readonly usedEventIndex: number;
  private readonly availEventIndex: number;
  /**
   * The region's device-contiguous runs, in region order: run r covers [runStart[r], runEnd[r]) at
   * device address runHigh[r] * 2^32 + runLow[r]. One run when the region is device-contiguous.
   */
  private readonly runStart: Float64Array;
  private readonly runEnd: Float64Array;
  private readonly runLow: Uint32Array;
  private readonly runHigh: Uint32Array;

  /** Driver-private links: the free list, and the chain order inside in-flight chains. */
  private readonly nextDescriptor: Uint16Array;
  private readonly chainTail: Uint16Array;
  private readonly chainDescriptors: Uint16Array;
  private readonly chainWritableBytes: Float64Array;
  private readonly headState: Uint8Array;
  private readonly tokens: (T | undefined)[];

  private freeHead = 0;
  private freeCount = 0;
  private inFlight = 0;
  private availIdx = 0;
  private availIdxAtLastKickCheck = 0;
  private lastUsedIdx = 0;
  private callbacksEnabled = true;
  private broken: string | undefined;
  private readonly share: VirtqueueShare | undefined;
  /** Share mode: a publish since the last kickNeeded() wanted a kick. */
  private kickPending = false;

  constructor(params: VirtqueueParams) {
    const { name, region, offset, size, features } = params;
    this.name = name;
    this.size = size;
    this.region = region;
    this.offset = offset;
    const fail = (message: string): VirtqueueError => new VirtqueueError('BAD_CONFIG', name, message);

    if (!HOST_IS_LITTLE_ENDIAN) throw fail('big-endian hosts need byte-swapped ring accesses (not implemented)');
    if (!hasFeature(features, VIRTIO_F_VERSION_1)) throw fail('VIRTIO_F_VERSION_1 not negotiated (legacy rings unsupported)');
    if (hasFeature(features, VIRTIO_F_RING_PACKED)) throw fail('VIRTIO_F_RING_PACKED negotiated: this is a split virtqueue');
    if (hasFeature(features, VIRTIO_F_IN_ORDER)) throw fail('VIRTIO_F_IN_ORDER negotiated: descriptors are not used in order');

    let layout: SplitRingLayout;
    try {
      layout = splitRingLayout(size, indirectSegmentsFor(size, params));
    } catch (error) {
      throw fail((error as Error).message);
    }
    this.layout = layout;
    if (!Number.isInteger(offset) || offset < 0 || offset + layout.totalBytes > region.size) {
      throw fail(`block [${offset}, +${layout.totalBytes}) does not fit the ${region.size}-byte region`);
    }
    // Typed-array views need element alignment in the underlying buffer too.
    if (offset % DESC_TABLE_ALIGN !== 0 || (region.bytes.byteOffset + offset) % USED_RING_ALIGN !== 0) {
      throw fail(`offset ${offset} is not 16-byte aligned in the region's buffer`);
    }

    this.usesIndirectDescriptors = layout.indirectTableBytes > 0;
    this.usesEventIdx = hasFeature(features, VIRTIO_RING_F_EVENT_IDX);
    this.maxIndirectSegments = layout.indirectTableBytes / DESCRIPTOR_BYTES;
    this.descTableOffset = offset + layout.descTable;
    this.indirectTablesOffset = offset + layout.indirectTables;
    this.mask = size - 1;
    this.usedEventIndex = usedEventWord(size);
    this.availEventIndex = availEventWord(size);

    const runs: { start: number; end: number; address: bigint }[] = [];
    for (let at = 0; at < region.size; ) {
      const length = region.contiguousFrom(at);
      if (!(length > 0)) throw fail(`the region reports no device-contiguous bytes at offset ${at}`);
      runs.push({ start: at, end: Math.min(region.size, at + length), address: region.deviceAddress(at) });
      at += length;
    }
    this.runStart = Float64Array.from(runs, (r) => r.start);
    this.runEnd = Float64Array.from(runs, (r) => r.end);
    this.runLow = Uint32Array.from(runs, (r) => Number(r.address & 0xffff_ffffn));
    this.runHigh = Uint32Array.from(runs, (r) => Number(r.address >> 32n));

    const part = (partName: string, at: number, bytes: number, align: number): bigint => {
      const address = region.deviceAddress(at);
      if (address % BigInt(align) !== 0n) throw fail(`${partName} device address 0x${address.toString(16)} is not ${align}-aligned`);
      if (region.contiguousFrom(at) < bytes) throw fail(`${partName} is not device-contiguous`);
      return address;
    };
    this.descTableAddress = part('descriptor table', offset + layout.descTable, descTableBytes(size), DESC_TABLE_ALIGN);
    this.availRingAddress = part('available ring', offset + layout.availRing, availRingBytes(size), AVAIL_RING_ALIGN);
    this.usedRingAddress = part('used ring', offset + layout.usedRing, usedRingBytes(size), USED_RING_ALIGN);
    if (this.usesIndirectDescriptors && runs.length > 1) {
      for (let slot = 0; slot < size; slot++) {
        part(`indirect table ${slot}`, this.indirectTableOffset(slot), layout.indirectTableBytes, DESC_TABLE_ALIGN);
      }
    }

    const buffer = region.bytes.buffer;
    const blockStart = region.bytes.byteOffset + offset;
    this.view = region.view;
    this.avail = new Uint16Array(buffer, blockStart + layout.availRing, availRingBytes(size) / 2);
    this.used16 = new Uint16Array(buffer, blockStart + layout.usedRing, usedRingBytes(size) / 2);
    // flags+idx word, then the (id, len) elements; avail_event is reached through used16.
    this.used32 = new Uint32Array(buffer, blockStart + layout.usedRing, 1 + 2 * size);

    this.nextDescriptor = new Uint16Array(size);
    this.chainTail = new Uint16Array(size);
    this.chainDescriptors = new Uint16Array(size);
    this.chainWritableBytes = new Float64Array(size);
    this.headState = new Uint8Array(size);
    this.tokens = new Array<T | undefined>(size).fill(undefined);
    this.share = params.share;
    if (this.share) {
      const { first, count } = this.share;
      if (!params.adopt) throw fail('a shared queue adopts rings another object set up');
      if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < 1 || first + count > size) {
        throw fail(`descriptors [${first}, +${count}) are not inside the queue of ${size}`);
      }
    }
    if (params.adopt) this.adoptRings();
    else this.initialize();
  }

  /** Descriptors not currently part of an in-flight chain. */
  get freeDescriptors(): number {
    return this.freeCount;
  }

  /** Requests made available and not yet returned (or failed). */
  get inFlightCount(): number {
    return this.inFlight;
  }

  /** Why the queue stopped working, or undefined while it works. */
  get brokenReason(): string | undefined {
    return this.broken;
  }

  /**
   * Makes a request available to the device: device-readable segments first,
   * then device-writable ones, each inside the region (a segment that crosses
   * device-contiguous runs takes one descriptor per run).
   * Returns false, changing nothing, when there are not enough free
   * descriptors (queue the request and retry after drainUsed). Throws
   * VirtqueueError for malformed segment lists and on a broken queue.
   *
   * The request is published at once (avail idx moves); call kickNeeded()
   * after a batch of adds to learn whether to notify the device.
   */
  add(readable: Segments, writable: Segments, token: T): boolean {
    if (this.broken !== undefined) throw new VirtqueueError('QUEUE_BROKEN', this.name, this.broken);
    const readableCount = this.checkSegments(readable, 'readable');
    const writableCount = this.checkSegments(writable, 'writable');
    const count = readableCount + writableCount;
    if (count === 0) throw new VirtqueueError('BAD_SEGMENTS', this.name, 'a request needs at least one segment');
    if (count > this.size) {
      throw new VirtqueueError('CHAIN_TOO_LONG', this.name, `${count} segments exceed the queue size ${this.size}`);
    }
    const writableBytes = totalLength(writable);
    if (totalLength(readable) + writableBytes > MAX_CHAIN_BYTES) {
      throw new VirtqueueError('CHAIN_TOO_LONG', this.name, 'a chain may not exceed 2^32 bytes');
    }

    const useIndirectTable = count > 1 && count <= this.maxIndirectSegments;
    const descriptorsNeeded = useIndirectTable ? 1 : count;
    if (descriptorsNeeded > this.freeCount) return false;

    const head = this.freeHead;
    const table = useIndirectTable ? this.indirectTableOffset(head) : -1;
    const tail = this.writeChain(readable, writable, count, head, table);
    if (useIndirectTable) this.writeDescriptor(this.descAt(head), table, count * DESCRIPTOR_BYTES, VIRTQ_DESC_F_INDIRECT, 0);
    this.freeHead = this.nextDescriptor[tail]!;
    this.freeCount -= descriptorsNeeded;

    this.chainTail[head] = tail;
    this.chainDescriptors[head] = descriptorsNeeded;
    this.chainWritableBytes[head] = writableBytes;
    this.headState[head] = HEAD_IN_FLIGHT;
    this.tokens[head] = token;
    this.inFlight++;

    if (this.share) {
      if (this.share.publish(head)) this.kickPending = true;
      return true;
    }
    this.avail[AVAIL_RING_WORD + (this.availIdx & this.mask)] = head;
    this.availIdx = (this.availIdx + 1) & U16_MASK;
    Atomics.store(this.avail, IDX_WORD, this.availIdx); // release: publishes the entry and its descriptors
    return true;
  }

  /**
   * Whether the device wants an available-buffer notification for the
   * requests added since the previous call (which this call consumes).
   * Call it once after each batch of adds, before 65536 adds accumulate.
   */
  kickNeeded(): boolean {
    if (this.share) {
      const kick = this.kickPending && this.broken === undefined;
      this.kickPending = false;
      return kick;
    }
    const oldIdx = this.availIdxAtLastKickCheck;
    const newIdx = this.availIdx;
    if (oldIdx === newIdx || this.broken !== undefined) return false;
    this.availIdxAtLastKickCheck = newIdx;
    // The seq-cst Atomics.store of avail idx in add() precedes these loads.
    if (this.usesEventIdx) return needsEvent(Atomics.load(this.used16, this.availEventIndex), newIdx, oldIdx);
    return (Atomics.load(this.used16, FLAGS_WORD) & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  /** Whether the device has returned entries drainUsed would process (for busy polling). */
  hasUsed(): boolean {
    return this.broken === undefined && Atomics.load(this.used16, IDX_WORD) !== this.lastUsedIdx;
  }

  /**
   * Processes every used entry the device has published: onComplete(token,
   * writtenLen) for good ones, onProblem (with the token) for an entry that
   * claims more bytes than its chain could hold, whose chain is reclaimed. An
   * entry that names no in-flight chain (out of range, not a head, completed
   * already) or a used idx further ahead than the queue size marks the queue
   * broken and stops the drain (see failAll). Callbacks may add() new requests. Returns the number of
   * onComplete calls.
   */
  drainUsed(
    onComplete: (token: T, writtenLen: number) => void,
    onProblem: (problem: UsedRingProblem<T>) => void,
  ): number {
    if (this.broken !== undefined) return 0;
    const usedIdx = Atomics.load(this.used16, IDX_WORD); // acquire: entries below it are complete
    const published = (usedIdx - this.lastUsedIdx) & U16_MASK;
    if (published > this.size) {
      const reason = `used idx ${usedIdx} is ${published} entries ahead of ${this.lastUsedIdx}, more than the queue size ${this.size}`;
      this.broken = `device wrote a corrupt used ring: ${reason}`;
      onProblem(this.problem(this.lastUsedIdx, 'idx', usedIdx, reason, undefined));
      return 0;
    }

    let completed = 0;
    for (let n = 0; n < published && this.broken === undefined; n++) {
      const position = this.lastUsedIdx;
      const element = usedElemIdWord(position & this.mask);
      const id = this.used32[element]!;
      const len = this.used32[element + 1]!;
      this.lastUsedIdx = (position + 1) & U16_MASK;
      if (this.completeUsed(position, id, len, onComplete, onProblem)) completed++;
    }
    this.publishUsedEvent();
    return completed;
  }

  /**
   * One used entry (at free-running `position`): checked and completed as drainUsed does, which
   * calls it for each entry. In share mode the thread that took the entry off the shared used ring
   * hands it to the object owning chain `id` this way. Returns true when onComplete ran. An entry
   * naming no chain of this object in flight breaks the queue.
   */
  completeUsed(
    position: number,
    id: number,
    len: number,
    onComplete: (token: T, writtenLen: number) => void,
    onProblem: (problem: UsedRingProblem<T>) => void,
  ): boolean {
    if (this.broken !== undefined) return false;
    if (id >= this.size || this.headState[id] !== HEAD_IN_FLIGHT) {
      // The device has lost track of its chains: the request it meant never completes, and once a
      // head is reused a stale entry would complete the wrong request. The queue is broken, as
      // Linux's virtio_ring marks it (BAD_RING): everything in flight fails (failAll).
      const reason =
        id >= this.size
          ? `id ${id} is out of range for queue size ${this.size}`
          : this.headState[id] === HEAD_COMPLETED
            ? `id ${id} was already completed (duplicate used entry)`
            : `id ${id} is not the head of an in-flight chain`;
      this.broken = `device wrote a corrupt used ring: ${reason}`;
      onProblem(this.problem(position, 'id', id, reason, undefined));
    } else if (len > this.chainWritableBytes[id]!) {
      const reason = `len ${len} exceeds the ${this.chainWritableBytes[id]} device-writable bytes of chain ${id}`;
      onProblem(this.problem(position, 'len', len, reason, this.reclaim(id)));
    } else {
      onComplete(this.reclaim(id), len);
      return true;
    }
    return false;
  }

  /**
   * Suppresses used-buffer notifications (best effort: the spec makes them
   * advisory). With EVENT_IDX, used_event is parked one entry behind the last
   * seen used idx, the furthest point the device can reach.
   */
  disableCallbacks(): void {
    this.callbacksEnabled = false;
    if (this.usesEventIdx) this.publishUsedEvent();
    else Atomics.store(this.avail, FLAGS_WORD, VIRTQ_AVAIL_F_NO_INTERRUPT);
  }

  /**
   * Asks for a used-buffer notification on the next used entry. Returns true
   * when the used ring is empty, so the caller may wait for that
   * notification; false when entries arrived meanwhile (drain them, they may
   * not be notified).
   */
  enableCallbacks(): boolean {
    this.callbacksEnabled = true;
    if (this.usesEventIdx) this.publishUsedEvent();
    else Atomics.store(this.avail, FLAGS_WORD, 0);
    // seq-cst store then load: either the device sees the request or we see its entries.
    return !this.hasUsed();
  }

  /**
   * Marks the queue broken (the transport or device died) and hands every
   * in-flight token to onFailed so its request can be failed. The queue
   * refuses add() until reset(). Returns the number of tokens handed back.
   */
  failAll(reason: string, onFailed: (token: T) => void): number {
    this.broken ??= reason;
    let failed = 0;
    for (let head = 0; head < this.size; head++) {
      if (this.headState[head] !== HEAD_IN_FLIGHT) continue;
      failed++;
      onFailed(this.reclaim(head));
    }
    return failed;
  }

  /**
   * Returns the queue to its initial state (zeroed rings, indexes 0, all
   * descriptors free, not broken), as after a device or queue reset; the
   * transport then programs it again. Requires no request in flight.
   */
  reset(): void {
    if (this.inFlight > 0) {
      throw new VirtqueueError('REQUESTS_IN_FLIGHT', this.name, `${this.inFlight} requests in flight; failAll() first`);
    }
    this.initialize();
  }

  /**
   * Continues from the rings as they are: the queue was run by another Virtqueue object (a
   * per-queue thread's) that has stopped with nothing in flight. Every descriptor becomes free,
   * avail and used indexes are read from the rings. Refuses (REQUESTS_IN_FLIGHT) when the
   * rings show requests the device has not returned: their descriptors belong to the device.
   */
  adoptRings(): void {
    if (this.inFlight > 0) {
      throw new VirtqueueError('REQUESTS_IN_FLIGHT', this.name, `${this.inFlight} requests in flight; failAll() first`);
    }
    const availIdx = Atomics.load(this.avail, IDX_WORD);
    const usedIdx = Atomics.load(this.used16, IDX_WORD);
    if (availIdx !== usedIdx) {
      throw new VirtqueueError('REQUESTS_IN_FLIGHT', this.name, `avail idx ${availIdx}, used idx ${usedIdx}: the device holds requests`);
    }
    this.resetState(availIdx, usedIdx);
  }

  private initialize(): void {
    this.region.bytes.fill(0, this.offset, this.offset + this.layout.totalBytes);
    this.resetState(0, 0);
  }

  /** Every descriptor free, nothing in flight, indexes as given, not broken. */
  private resetState(availIdx: number, usedIdx: number): void {
    const first = this.share?.first ?? 0;
    const count = this.share?.count ?? this.size;
    for (let i = first; i < first + count; i++) this.nextDescriptor[i] = i + 1;
    this.headState.fill(NOT_A_HEAD);
    this.tokens.fill(undefined);
    this.freeHead = first;
    this.freeCount = count;
    this.kickPending = false;
    this.inFlight = 0;
    this.availIdx = availIdx;
    this.availIdxAtLastKickCheck = availIdx;
    this.lastUsedIdx = usedIdx;
    this.callbacksEnabled = true;
    this.broken = undefined;
  }


  /** Validates one segment list; returns the descriptors it takes (a segment per run it touches). */
  private checkSegments(segments: Segments, kind: 'readable' | 'writable'): number {
    let descriptors = 0;
    if (segments.length % 2 !== 0) {
      throw new VirtqueueError('BAD_SEGMENTS', this.name, `${kind} segments are not (offset, length) pairs`);
    }
    for (let k = 0; k < segments.length; k += 2) {
      const offset = segments[k];
      const length = segments[k + 1];
      if (!Number.isInteger(offset) || !Number.isInteger(length) || length! <= 0 || length! > 0xffff_ffff) {
        throw new VirtqueueError('BAD_SEGMENTS', this.name, `${kind} segment ${k / 2} (${offset}, ${length}) is not a non-empty u32-length range`);
      }
      if (offset! < 0 || offset! + length! > this.region.size) {
        throw new VirtqueueError('SEGMENT_OUT_OF_REGION', this.name, `${kind} segment ${k / 2} [${offset}, +${length}) is outside the ${this.region.size}-byte region`);
      }
      descriptors += this.runAt(offset! + length! - 1) - this.runAt(offset!) + 1;
    }
    return descriptors;
  }

  /**
   * Writes the `count` descriptors of (readable ++ writable), each segment split at run boundaries:
   * into the indirect table at region offset `table`, or (table < 0) along the free list from
   * `head`. Returns the chain's last descriptor (head itself for a table).
   */
  private writeChain(readable: Segments, writable: Segments, count: number, head: number, table: number): number {
    let tail = head;
    let at = table >= 0 ? table : this.descAt(head);
    let written = 0;
    for (let list = 0; list < 2; list++) {
      const segments = list === 0 ? readable : writable;
      const writeFlag = list === 0 ? 0 : VIRTQ_DESC_F_WRITE;
      for (let k = 0; k < segments.length; k += 2) {
        let offset = segments[k]!;
        let remaining = segments[k + 1]!;
        while (remaining > 0) {
          const run = this.runAt(offset);
          const piece = Math.min(remaining, this.runEnd[run]! - offset);
          written++;
          if (written === count) {
            this.writeRunDescriptor(at, run, offset, piece, writeFlag, 0);
            return tail;
          }
          const next = table >= 0 ? written : this.nextDescriptor[tail]!;
          this.writeRunDescriptor(at, run, offset, piece, writeFlag | VIRTQ_DESC_F_NEXT, next);
          if (table >= 0) at = table + written * DESCRIPTOR_BYTES;
          else {
            tail = next;
            this.headState[tail] = NOT_A_HEAD;
            at = this.descAt(tail);
          }
          offset += piece;
          remaining -= piece;
        }
      }
    }
    return tail;
  }

  /** The run holding region offset `offset` (binary search over at most a few hundred runs). */
  private runAt(offset: number): number {
    const starts = this.runStart;
    let low = 0;
    let high = starts.length - 1;
    while (low < high) {
      const mid = (low + high + 1) >> 1;
      if (starts[mid]! <= offset) low = mid;
      else high = mid - 1;
    }
    return low;
  }

  /** A descriptor inside one run (the caller found it); next is ignored without F_NEXT. */
  private writeRunDescriptor(at: number, run: number, regionOffset: number, length: number, flags: number, next: number): void {
    const view = this.view;
    const low = this.runLow[run]! + (regionOffset - this.runStart[run]!); // < 2^33: exact
    view.setUint32(at + DESC_ADDR, low >>> 0, true);
    view.setUint32(at + DESC_ADDR + 4, (this.runHigh[run]! + Math.floor(low / 2 ** 32)) >>> 0, true);
    view.setUint32(at + DESC_LEN, length, true);
    view.setUint16(at + DESC_FLAGS, flags, true);
    view.setUint16(at + DESC_NEXT, next, true);
  }

  private writeDescriptor(at: number, regionOffset: number, length: number, flags: number, next: number): void {
    this.writeRunDescriptor(at, this.runAt(regionOffset), regionOffset, length, flags, next);
  }

  private descAt(index: number): number {
    return this.descTableOffset + index * DESCRIPTOR_BYTES;
  }

  /** Region offset of the indirect table owned by descriptor `head`. */
  private indirectTableOffset(head: number): number {
    return this.indirectTablesOffset + head * this.maxIndirectSegments * DESCRIPTOR_BYTES;
  }

  /** Returns a completed chain's descriptors to the free list; yields its token. */
  private reclaim(head: number): T {
    const token = this.tokens[head] as T;
    this.tokens[head] = undefined;
    this.headState[head] = HEAD_COMPLETED;
    this.nextDescriptor[this.chainTail[head]!] = this.freeHead;
    this.freeHead = head;
    this.freeCount += this.chainDescriptors[head]!;
    this.inFlight--;
    return token;
  }

  /** EVENT_IDX: notify on the next entry while callbacks are on, otherwise as late as possible. */
  private publishUsedEvent(): void {
    if (!this.usesEventIdx) return;
    const event = this.callbacksEnabled ? this.lastUsedIdx : (this.lastUsedIdx - 1) & U16_MASK;
    Atomics.store(this.avail, this.usedEventIndex, event);
  }

  private problem(
    usedIndex: number,
    field: UsedRingField,
    value: number,
    reason: string,
    token: T | undefined,
  ): UsedRingProblem<T> {
    return { queue: this.name, usedIndex, field, value, reason, token };
  }
}

/** Indirect table length for these options: 0 when INDIRECT_DESC is not negotiated. */
function indirectSegmentsFor(size: number, options: VirtqueueOptions): number {
  if (!hasFeature(options.features, VIRTIO_RING_F_INDIRECT_DESC)) return 0;
  const segments = options.maxIndirectSegments ?? Math.min(DEFAULT_MAX_INDIRECT_SEGMENTS, size);
  return segments === 1 ? 0 : segments; // a one-entry table never beats a direct descriptor
}

function totalLength(segments: Segments): number {
  let total = 0;
  for (let k = 1; k < segments.length; k += 2) total += segments[k]!;
  return total;
}
