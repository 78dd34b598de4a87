/**
 * Memory layout of a split virtqueue (VIRTIO 1.2 section 2.7), virtio 1.x
 * (non-legacy) flavour: every field little-endian, parts aligned 16/2/4.
 *
 *   descriptor table  16 * size        { addr u64, len u32, flags u16, next u16 }
 *   available ring    6 + 2 * size     { flags u16, idx u16, ring[size] u16, used_event u16 }
 *   used ring         6 + 8 * size     { flags u16, idx u16, ring[size] { id u32, len u32 }, avail_event u16 }
 *
 * After the three spec-defined parts this driver places its indirect
 * descriptor tables (one per descriptor-table entry, so a chain head indexes
 * its table directly), which keeps a queue's memory in one block of a
 * DmaRegion.
 */

export const MAX_QUEUE_SIZE = 32768;

export const DESCRIPTOR_BYTES = 16;
/** Byte offsets of the fields inside one descriptor. */
export const DESC_ADDR = 0;
export const DESC_LEN = 8;
export const DESC_FLAGS = 12;
export const DESC_NEXT = 14;

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;

/** avail.flags bit: the driver does not want used-buffer notifications (no EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags bit: the device does not want available-buffer notifications (no EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/**
 * Positions of the ring fields in 16-bit words from the start of their ring
 * (both rings start with flags, idx). The avail ring entries follow at word
 * RING_WORD; used ring elements are 32-bit words starting at byte 4.
 */
export const FLAGS_WORD = 0;
export const IDX_WORD = 1;
export const AVAIL_RING_WORD = 2;
/** avail.used_event: the avail ring's trailing u16. */
export const usedEventWord = (size: number): number => AVAIL_RING_WORD + size;
/** used.avail_event: the used ring's trailing u16 (after size 8-byte elements). */
export const availEventWord = (size: number): number => 2 + 4 * size;
/** used.ring[i].id as a 32-bit word index from the used ring start; .len is the next word. */
export const usedElemIdWord = (i: number): number => 1 + 2 * i;

export const DESC_TABLE_ALIGN = 16;
export const AVAIL_RING_ALIGN = 2;
export const USED_RING_ALIGN = 4;

export const descTableBytes = (size: number): number => DESCRIPTOR_BYTES * size;
export const availRingBytes = (size: number): number => 6 + 2 * size;
export const usedRingBytes = (size: number): number => 6 + 8 * size;

export interface SplitRingLayout {
  readonly size: number;
  /** Offsets relative to the start of the queue's block (which must be 16-aligned). */
  readonly descTable: number;
  readonly availRing: number;
  readonly usedRing: number;
  /** Start of the indirect tables; equals totalBytes when there are none. */
  readonly indirectTables: number;
  /** Bytes of one indirect table (0 when indirect descriptors are not used). */
  readonly indirectTableBytes: number;
  readonly totalBytes: number;
}

const alignUp = (n: number, align: number): number => Math.ceil(n / align) * align;

export function isValidQueueSize(size: number): boolean {
  return Number.isInteger(size) && size >= 1 && size <= MAX_QUEUE_SIZE && (size & (size - 1)) === 0;
}

/**
 * Layout for a queue of `size` entries; `indirectSegments` is the number of
 * descriptors per indirect table (0: no indirect tables).
 */
export function splitRingLayout(size: number, indirectSegments: number): SplitRingLayout {
  if (!isValidQueueSize(size)) {
    throw new RangeError(`virtqueue size ${size} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
  }
  if (!Number.isInteger(indirectSegments) || indirectSegments < 0 || indirectSegments > size) {
    // Spec: a chain (an indirect table included) must not be longer than the queue size.
    throw new RangeError(`indirect table of ${indirectSegments} descriptors for a queue of ${size}`);
  }
  const descTable = 0;
  const availRing = alignUp(descTable + descTableBytes(size), AVAIL_RING_ALIGN);
  const usedRing = alignUp(availRing + availRingBytes(size), USED_RING_ALIGN);
  const usedEnd = usedRing + usedRingBytes(size);
  const indirectTableBytes = indirectSegments * DESCRIPTOR_BYTES;
  const indirectTables = indirectTableBytes > 0 ? alignUp(usedEnd, DESC_TABLE_ALIGN) : usedEnd;
  return {
    size,
    descTable,
    availRing,
    usedRing,
    indirectTables,
    indirectTableBytes,
    totalBytes: indirectTables + size * indirectTableBytes,
  };
}
