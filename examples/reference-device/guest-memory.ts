/**
 * The frontend's memory, as a vhost-user backend sees it.
 *
 * SET_MEM_TABLE sends up to 8 regions, each a file descriptor (a memfd, or
 * QEMU's guest RAM) with three addresses:
 *   guest_phys_addr  what descriptors carry (buffer addresses in the rings)
 *   userspace_addr   the frontend's own virtual address (SET_VRING_ADDR uses these)
 *   mmap_offset      where the region starts inside the fd
 * We map each fd MAP_SHARED and translate both kinds of address to our
 * mapping. Every address the frontend hands us goes through resolve*(),
 * which refuses a range that is not entirely inside one region: the
 * frontend controls these numbers, and a bad one must fail one request,
 * never read or write outside the mapping.
 *
 * (This client declares guest-physical = its virtual address; QEMU does not,
 * which is why the two lookups are kept apart.)
 */
import { fstatSync } from 'node:fs';
import { MAP_SHARED, PROT_READ, PROT_WRITE, close, mmap, munmap, viewMemory } from '../../ffi/libc.ts';
import { MAX_MEM_REGIONS } from '../../client/transport/vhost-user/messages.ts';

export interface RegionDescription {
  readonly guestPhysAddr: bigint;
  readonly size: bigint;
  readonly userspaceAddr: bigint;
  readonly mmapOffset: bigint;
}

interface MappedRegion extends RegionDescription {
  /** Our mapping of [0, mmapOffset + size) of the fd. */
  readonly mapAddress: bigint;
  readonly mapLength: number;
  /** The region's bytes: the mapping from mmapOffset on. */
  readonly bytes: Uint8Array;
}

/** Where a checked range lives: a view of exactly its bytes. */
export interface Resolved {
  readonly bytes: Uint8Array;
}

/**
 * The mapped table as another thread of this process needs it (structured-clone safe): threads
 * share the address space, so each views the owner's mappings at their addresses (mirror()).
 */
export interface MemoryMirror {
  readonly regions: readonly (RegionDescription & { readonly mapAddress: bigint; readonly mapLength: number })[];
}

/** Largest region we map: the ArrayBuffer over it must stay below V8's limit. */
const MAX_REGION_BYTES = 2 ** 40;

export class GuestMemory {
  private closed = false;

  private constructor(
    private readonly regions: readonly MappedRegion[],
    /** A mirror unmaps nothing: the owner does, once no thread uses the mirror. */
    private readonly owned = true,
  ) {}

  /** The same mappings, seen from another thread (`describe()` of the owner's table). */
  static mirror(m: MemoryMirror): GuestMemory {
    return new GuestMemory(
      m.regions.map((r) => ({ ...r, bytes: new Uint8Array(viewMemory(r.mapAddress, r.mapLength), Number(r.mmapOffset), Number(r.size)) })),
      false,
    );
  }

  /** What another thread needs to mirror this table. */
  describe(): MemoryMirror {
    return {
      regions: this.regions.map(({ guestPhysAddr, size, userspaceAddr, mmapOffset, mapAddress, mapLength }) => ({ guestPhysAddr, size, userspaceAddr, mmapOffset, mapAddress, mapLength })),
    };
  }

  /** A table with no regions (before SET_MEM_TABLE): every lookup fails. */
  static empty(): GuestMemory {
    return new GuestMemory([]);
  }

  /**
   * Maps every region of a SET_MEM_TABLE. Takes ownership of `fds` (closed
   * once mapped: the mapping keeps the memory alive). Throws RangeError for a
   * table that cannot be valid (sizes, overlaps, wrong fd count).
   */
  static map(descriptions: readonly RegionDescription[], fds: readonly number[]): GuestMemory {
    const mapped: MappedRegion[] = [];
    try {
      if (descriptions.length === 0 || descriptions.length > MAX_MEM_REGIONS) {
        throw new RangeError(`${descriptions.length} memory regions (1..${MAX_MEM_REGIONS} allowed)`);
      }
      if (fds.length !== descriptions.length) throw new RangeError(`${descriptions.length} regions but ${fds.length} file descriptors`);
      for (const [i, d] of descriptions.entries()) {
        if (d.size === 0n || d.mmapOffset + d.size > BigInt(MAX_REGION_BYTES)) {
          throw new RangeError(`region ${i}: size ${d.size} at mmap_offset ${d.mmapOffset} is not mappable`);
        }
        if (d.guestPhysAddr + d.size > 1n << 64n || d.userspaceAddr + d.size > 1n << 64n) throw new RangeError(`region ${i} wraps around`);
        for (const other of descriptions.slice(0, i)) {
          if (overlaps(d.guestPhysAddr, d.size, other.guestPhysAddr, other.size)) throw new RangeError(`region ${i} overlaps another in guest-physical space`);
        }
        const mapLength = Number(d.mmapOffset + d.size);
        // Touching a mapping past the end of its file kills the process with SIGBUS: check first.
        const file = fstatSync(fds[i]!);
        if (file.isFile() && file.size < mapLength) {
          throw new RangeError(`region ${i}: needs ${mapLength} bytes of its file, which has ${file.size}`);
        }
        // The fd offset of mmap must be page-aligned; mmap_offset need not be: map from 0 and skip it.
        const mapAddress = mmap(mapLength, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i]!, 0);
        const bytes = new Uint8Array(viewMemory(mapAddress, mapLength), Number(d.mmapOffset), Number(d.size));
        mapped.push({ ...d, mapAddress, mapLength, bytes });
      }
      return new GuestMemory(mapped);
    } catch (error) {
      for (const r of mapped) munmap(r.mapAddress, r.mapLength);
      throw error;
    } finally {
      for (const fd of fds) close(fd);
    }
  }

  get regionCount(): number {
    return this.regions.length;
  }

  /** A buffer named by a descriptor: [guest-physical address, +length). */
  resolveGuest(address: bigint, length: number): Resolved | undefined {
    return this.lookup(address, length, 'guestPhysAddr');
  }

  /** A ring named by SET_VRING_ADDR: [frontend virtual address, +length). */
  resolveFrontendVirtual(address: bigint, length: number): Resolved | undefined {
    return this.lookup(address, length, 'userspaceAddr');
  }

  /** Unmaps everything. Views handed out before must not be touched afterwards (it would crash). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.owned) for (const r of this.regions) munmap(r.mapAddress, r.mapLength);
  }

  private lookup(address: bigint, length: number, base: 'guestPhysAddr' | 'userspaceAddr'): Resolved | undefined {
    if (this.closed || !Number.isSafeInteger(length) || length < 0) return undefined;
    const end = address + BigInt(length);
    for (const r of this.regions) {
      const start = r[base];
      if (address >= start && end <= start + r.size) {
        const offset = Number(address - start);
        return { bytes: r.bytes.subarray(offset, offset + length) };
      }
    }
    return undefined;
  }
}

function overlaps(a: bigint, aSize: bigint, b: bigint, bSize: bigint): boolean {
  return a < b + bSize && b < a + aSize;
}
