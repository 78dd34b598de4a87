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
}
