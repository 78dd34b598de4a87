/**
 * DMA memory for a device that sees physical addresses (UIO, VFIO without an
 * IOMMU, or an IOMMU the device bypasses): 2 MiB hugepages, locked and
 * populated so they never move, with each page's physical address read from
 * /proc/self/pagemap (root only). Hugepages are contiguous inside but not with
 * each other: contiguousFrom() stops at a page boundary unless the next page
 * happens to follow physically.
 */
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import type { DmaRegion } from './dma.ts';
import { ErrnoError, errnoNumber } from './errno.ts';
import { MADV_DONTFORK, madvise, munmap, mmap, viewMemory } from './libc.ts';

export const HUGEPAGE_BYTES = 2 << 20;

// mmap(2) flags, generic Linux values (x86, arm64, riscv); mips, powerpc, sparc, alpha and parisc differ.
const PROT_READ_WRITE = 0x3;
const MAP_PRIVATE = 0x02;
const MAP_ANONYMOUS = 0x20;
const MAP_LOCKED = 0x2000;
const MAP_POPULATE = 0x8000;
const MAP_HUGETLB = 0x40000;

const PAGEMAP_PRESENT = 1n << 63n;
const PAGEMAP_PFN_MASK = (1n << 55n) - 1n;

export class HugepageMemory implements DmaRegion {
  readonly size: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** Where the mapping starts in this process (VFIO_IOMMU_MAP_DMA wants it). */
  readonly userAddress: bigint;
  private readonly physical: bigint[];
  private closed = false;

  constructor(bytes: number) {
    this.size = Math.ceil(bytes / HUGEPAGE_BYTES) * HUGEPAGE_BYTES;
    try {
      this.userAddress = mmap(this.size, PROT_READ_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE | MAP_LOCKED, -1);
    } catch (e) {
      if (e instanceof ErrnoError && (e.code === 'ENOMEM' || e.code === 'EAGAIN')) {
        const pages = this.size / HUGEPAGE_BYTES;
        const { total, free } = hugepageCounts();
        throw new ErrnoError(
          'mmap',
          e.errno,
          `DMA memory needs ${pages} free 2 MiB hugepages, ${free} of ${total} are: reserve more with 'echo ${total - free + pages} > /proc/sys/vm/nr_hugepages' (or hugepages=${total - free + pages} on the kernel command line)`,
        );
      }
      throw e;
    }
    try {
      // Children (a spawned helper, tsx's esbuild) get none of it. Pages pinned for DMA (VFIO type1)
      // would otherwise be copied into new hugepages at every fork(2), and a fork fails with
      // ENOMEM once they are not free (seen in the guest: 10 pinned of 16 reserved), as DPDK and
      // libibverbs also mark their DMA memory.
      madvise(this.userAddress, this.size, MADV_DONTFORK);
      this.physical = physicalAddresses(this.userAddress, this.size / HUGEPAGE_BYTES);
    } catch (e) {
      munmap(this.userAddress, this.size);
      throw e;
    }
    const memory = viewMemory(this.userAddress, this.size);
    this.bytes = new Uint8Array(memory);
    this.view = new DataView(memory);
  }

  deviceAddress(offset: number): bigint {
    this.check(offset);
    const page = Math.floor(offset / HUGEPAGE_BYTES);
    return this.physical[page]! + BigInt(offset % HUGEPAGE_BYTES);
  }

  contiguousFrom(offset: number): number {
    this.check(offset);
    let page = Math.floor(offset / HUGEPAGE_BYTES);
    let end = (page + 1) * HUGEPAGE_BYTES;
    while (page + 1 < this.physical.length && this.physical[page + 1] === this.physical[page]! + BigInt(HUGEPAGE_BYTES)) {
      page++;
      end += HUGEPAGE_BYTES;
    }
    return end - offset;
  }

  /** Physical address of each hugepage, for mapping them one by one. */
  pages(): readonly { offset: number; physical: bigint }[] {
    return this.physical.map((physical, i) => ({ offset: i * HUGEPAGE_BYTES, physical }));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    munmap(this.userAddress, this.size);
  }

  private check(offset: number): void {
    if (!Number.isInteger(offset) || offset < 0 || offset >= this.size) throw new RangeError(`offset ${offset} outside ${this.size} bytes of hugepage memory`);
  }
}

/** Reads /proc/self/pagemap for the first 4 KiB page of each hugepage. */
function physicalAddresses(start: bigint, pages: number): bigint[] {
  const fd = openSync('/proc/self/pagemap', 'r');
  try {
    const entry = Buffer.alloc(8);
    return Array.from({ length: pages }, (_, i) => {
      const virt = start + BigInt(i * HUGEPAGE_BYTES);
      readSync(fd, entry, 0, 8, Number((virt / 4096n) * 8n));
      const value = entry.readBigUInt64LE();
      const pfn = value & PAGEMAP_PFN_MASK;
      if (!(value & PAGEMAP_PRESENT) || pfn === 0n) {
        // Without CAP_SYS_ADMIN the kernel reports PFN 0.
        throw new ErrnoError('pagemap', errnoNumber('EPERM'), 'physical addresses of DMA memory need root (CAP_SYS_ADMIN)');
      }
      return pfn * 4096n;
    });
  } finally {
    closeSync(fd);
  }
}

/** HugePages_Total and HugePages_Free of /proc/meminfo (the default size, 2 MiB on x86). */
function hugepageCounts(): { total: number; free: number } {
  const meminfo = readFileSync('/proc/meminfo', 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(meminfo)?.[1] ?? 0);
  return { total: field('HugePages_Total'), free: field('HugePages_Free') };
}
