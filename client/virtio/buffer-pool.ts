/**
 * Fixed-size request buffers carved from a range of a DmaRegion.
 *
 * Each slot holds one request (header + args + data up to max_write). The
 * free list lives in a preallocated Int32Array and the per-slot byte views
 * are built once, so acquire/release/lookup allocate nothing.
 */
import type { DmaRegion } from '../../ffi/dma.ts';
import { VirtiofsError } from '../../ffi/errors.ts';

export interface BufferPoolParams {
  readonly region: DmaRegion;
  /** Region offset of slot 0; slots follow back to back. */
  readonly offset: number;
  readonly slotSize: number;
  readonly slotCount: number;
}

export type BufferPoolErrorCode = 'BAD_CONFIG' | 'BAD_SLOT' | 'NOT_ACQUIRED';

export class BufferPoolError extends VirtiofsError {
  override readonly name = 'BufferPoolError';
  constructor(
    readonly code: BufferPoolErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** nextFree values besides a slot index. */
const END_OF_LIST = -1;
const ACQUIRED = -2;

export class BufferPool {
  readonly region: DmaRegion;
  readonly offset: number;
  readonly slotSize: number;
  readonly slotCount: number;

  /** For a free slot the next free slot (or END_OF_LIST); ACQUIRED for a slot in use. */
  private readonly nextFree: Int32Array;
  private readonly views: Uint8Array[];
  private freeHead: number;
  private freeCount: number;

  constructor({ region, offset, slotSize, slotCount }: BufferPoolParams) {
    const ok =
      Number.isInteger(offset) && offset >= 0 &&
      Number.isInteger(slotSize) && slotSize > 0 &&
      Number.isInteger(slotCount) && slotCount > 0 && slotCount < 2 ** 31 &&
      offset + slotSize * slotCount <= region.size;
    if (!ok) {
      throw new BufferPoolError('BAD_CONFIG', `${slotCount} slots of ${slotSize} bytes at offset ${offset} do not fit the ${region.size}-byte region`);
    }
    this.region = region;
    this.offset = offset;
    this.slotSize = slotSize;
    this.slotCount = slotCount;
    this.nextFree = new Int32Array(slotCount);
    this.views = [];
    for (let slot = 0; slot < slotCount; slot++) {
      this.nextFree[slot] = slot + 1 < slotCount ? slot + 1 : END_OF_LIST;
      const start = offset + slot * slotSize;
      this.views.push(region.bytes.subarray(start, start + slotSize));
    }
    this.freeHead = 0;
    this.freeCount = slotCount;
  }

  /** Slots not acquired. */
  get available(): number {
    return this.freeCount;
  }

  /** A free slot's index, now owned by the caller, or -1 when all are in use. */
  acquire(): number {
    const slot = this.freeHead;
    if (slot === END_OF_LIST) return -1;
    this.freeHead = this.nextFree[slot]!;
    this.nextFree[slot] = ACQUIRED;
    this.freeCount--;
    return slot;
  }

  /** Gives an acquired slot back; throws on a slot that is not acquired (double release). */
  release(slot: number): void {
    this.checkSlot(slot);
    if (this.nextFree[slot] !== ACQUIRED) {
      throw new BufferPoolError('NOT_ACQUIRED', `buffer slot ${slot} released but not acquired (double release?)`);
    }
    this.nextFree[slot] = this.freeHead;
    this.freeHead = slot;
    this.freeCount++;
  }

  /** Region offset of the slot's first byte (what virtqueue segments take). */
  slotOffset(slot: number): number {
    this.checkSlot(slot);
    return this.offset + slot * this.slotSize;
  }

  /** The slot's bytes (a view made once at construction). */
  slotBytes(slot: number): Uint8Array {
    this.checkSlot(slot);
    return this.views[slot]!;
  }

  private checkSlot(slot: number): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.slotCount) {
      throw new BufferPoolError('BAD_SLOT', `buffer slot ${slot} is not in 0..${this.slotCount - 1}`);
    }
  }
}

/**
 * Two (offset, length) pairs of a request's buffers within its slot, written into `into` (four
 * numbers, reused: no allocation per request). A length of 0 means no second buffer.
 */
export function setSegments(into: number[], at0: number, len0: number, at1: number, len1: number): void {
  into[0] = at0;
  into[1] = len0;
  into[2] = at1;
  into[3] = len1;
}

/** Slot-relative (offset, length) pairs to region offsets in `out` (reused), dropping empty ones. */
export function toRegion(segments: readonly number[], base: number, out: number[]): void {
  let k = 0;
  for (let i = 0; i + 1 < segments.length; i += 2) {
    const length = segments[i + 1]!;
    if (length > 0) {
      out[k++] = base + segments[i]!;
      out[k++] = length;
    }
  }
  out.length = k;
}
