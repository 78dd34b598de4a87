/**
 * Memory a vhost-user backend can map too: a memfd, mapped MAP_SHARED here,
 * whose fd goes to the backend with SCM_RIGHTS (SET_MEM_TABLE).
 */
import type { DmaRegion } from './dma.ts';
import {
  MAP_SHARED,
  MFD_CLOEXEC,
  PROT_READ,
  PROT_WRITE,
  close,
  ftruncate,
  memfdCreate,
  mmap,
  munmap,
  viewMemory,
} from './libc.ts';

export class SharedMemory implements DmaRegion {
  readonly size: number;
  readonly fd: number;
  /** Where the mapping starts in this process; also its device (guest-physical) address. */
  readonly userAddress: bigint;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  #closed = false;

  /** `name` only shows up in /proc/<pid>/fd and /proc/<pid>/maps, for debugging. */
  constructor(size: number, name = 'virtiofs-client') {
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new RangeError(`shared memory size must be a positive integer, got ${size}`);
    }
    const fd = memfdCreate(name, MFD_CLOEXEC);
    try {
      ftruncate(fd, size);
      this.userAddress = mmap(size, PROT_READ | PROT_WRITE, MAP_SHARED, fd);
    } catch (error) {
      close(fd);
      throw error;
    }
    this.size = size;
    this.fd = fd;
    const memory = viewMemory(this.userAddress, size);
    this.bytes = new Uint8Array(memory);
    this.view = new DataView(memory);
  }

  /** Our virtual address: vhost-user backends are told guest-physical = user address (as DPDK and SPDK do). */
  deviceAddress(offset: number): bigint {
    this.#checkOffset(offset);
    return this.userAddress + BigInt(offset);
  }

  /** One mapping is contiguous in virtual, hence device, address space. */
  contiguousFrom(offset: number): number {
    this.#checkOffset(offset);
    return this.size - offset;
  }

  /** Unmaps and closes the memfd; `bytes` and `view` must not be touched afterwards (it would crash). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    munmap(this.userAddress, this.size);
    close(this.fd);
  }

  #checkOffset(offset: number): void {
    if (this.#closed) throw new Error('shared memory is closed');
    if (!Number.isInteger(offset) || offset < 0 || offset >= this.size) {
      throw new RangeError(`offset ${offset} outside shared memory of ${this.size} bytes`);
    }
  }
}
