/**
 * Memory the device can see.
 *
 * Every transport hands the virtqueues and request buffers a DmaRegion: bytes
 * the process reads and writes through `bytes`/`view`, and for each byte the
 * address the *device* uses for it. For vhost-user that is the guest-physical
 * address we declare in SET_MEM_TABLE (we declare it equal to our own virtual
 * address, as DPDK and SPDK do); for VFIO it is an IOVA; for UIO and no-IOMMU
 * VFIO a physical address.
 */
import { viewMemory } from './libc.ts';

export interface DmaRegion {
  /** Length in bytes. */
  readonly size: number;
  /** The whole region, zero-copy. */
  readonly bytes: Uint8Array;
  /** The same memory as a DataView (little-endian accessors are the caller's job). */
  readonly view: DataView;
  /** Device address of byte `offset` (0 <= offset < size). */
  deviceAddress(offset: number): bigint;
  /**
   * Largest n such that [offset, offset+n) is contiguous in device address
   * space (a hugepage-backed region may be contiguous only per page).
   */
  contiguousFrom(offset: number): number;
  /** Unmaps the memory; views become unusable. */
  close(): void;
  /**
   * Where the memory is mapped in this process, when it is mapped memory: every thread of the
   * process reaches it at this address (see RegionMirror). Absent for test doubles.
   */
  readonly userAddress?: bigint;
}

/** One device-contiguous run of a region. */
export interface RegionExtent {
  offset: number;
  length: number;
  deviceAddress: bigint;
}

/**
 * A region as another thread of this process needs it (structured-clone safe): the mapping's
 * address and size, and its device-contiguous runs.
 */
export interface SharedRegionInfo {
  userAddress: bigint;
  size: number;
  extents: RegionExtent[];
}

export function describeRegion(region: DmaRegion): SharedRegionInfo {
  if (region.userAddress === undefined) throw new TypeError('this DmaRegion is not mapped memory: other threads cannot reach it');
  const extents: RegionExtent[] = [];
  for (let offset = 0; offset < region.size; ) {
    const length = region.contiguousFrom(offset);
    extents.push({ offset, length, deviceAddress: region.deviceAddress(offset) });
    offset += length;
  }
  return { userAddress: region.userAddress, size: region.size, extents };
}

/**
 * The same memory as a region owned by another thread (worker_threads share the address space):
 * a view at the owner's address, the owner's device addresses. Closing it unmaps nothing: the
 * owner does, after every thread using a mirror has stopped.
 */
export class RegionMirror implements DmaRegion {
  readonly size: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly userAddress: bigint;
  readonly #extents: readonly RegionExtent[];

  constructor(info: SharedRegionInfo) {
    this.size = info.size;
    this.userAddress = info.userAddress;
    this.#extents = info.extents;
    const memory = viewMemory(info.userAddress, info.size);
    this.bytes = new Uint8Array(memory);
    this.view = new DataView(memory);
  }

  deviceAddress(offset: number): bigint {
    const e = this.#extent(offset);
    return e.deviceAddress + BigInt(offset - e.offset);
  }

  contiguousFrom(offset: number): number {
    const e = this.#extent(offset);
    return e.offset + e.length - offset;
  }

  close(): void {}

  #extent(offset: number): RegionExtent {
    for (const e of this.#extents) if (offset >= e.offset && offset < e.offset + e.length) return e;
    throw new RangeError(`offset ${offset} outside the ${this.size}-byte region`);
  }
}
