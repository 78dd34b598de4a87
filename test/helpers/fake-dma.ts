/**
 * In-memory DmaRegion for tests: an ArrayBuffer (or SharedArrayBuffer) whose
 * pages sit at chosen device addresses. By default the region is one
 * contiguous run at 0x10000; `pageOrder` scatters pages like a region backed
 * by non-adjacent physical pages.
 */
import type { DmaRegion } from '../../ffi/dma.ts';

export interface FakeDmaOptions {
  /** Device address of page slot 0. */
  readonly base?: bigint;
  readonly pageSize?: number;
  /** pageOrder[i] = device page slot of region page i (default identity). */
  readonly pageOrder?: readonly number[];
  readonly shared?: boolean;
  /** Real mapped memory to use (its address becomes userAddress): threads of the process can then reach it. */
  readonly mapped?: { buffer: ArrayBuffer; userAddress: bigint };
}

export class FakeDma implements DmaRegion {
  readonly size: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly base: bigint;
  readonly pageSize: number;
  private readonly pageOrder: readonly number[];
  readonly userAddress: bigint | undefined;

  constructor(size: number, options: FakeDmaOptions = {}) {
    this.size = size;
    this.base = options.base ?? 0x10000n;
    this.pageSize = options.pageSize ?? 4096;
    const pages = Math.ceil(size / this.pageSize);
    this.pageOrder = options.pageOrder ?? Array.from({ length: pages }, (_, i) => i);
    if (this.pageOrder.length !== pages) throw new Error(`pageOrder needs ${pages} entries`);
    this.userAddress = options.mapped?.userAddress;
    const buffer = options.mapped?.buffer ?? (options.shared ? new SharedArrayBuffer(size) : new ArrayBuffer(size));
    this.bytes = new Uint8Array(buffer);
    this.view = new DataView(buffer);
  }

  deviceAddress(offset: number): bigint {
    this.checkOffset(offset);
    const page = Math.floor(offset / this.pageSize);
    return this.pageAddress(page) + BigInt(offset % this.pageSize);
  }

  contiguousFrom(offset: number): number {
    this.checkOffset(offset);
    let page = Math.floor(offset / this.pageSize);
    while (page + 1 < this.pageOrder.length && this.pageOrder[page + 1] === this.pageOrder[page]! + 1) page++;
    return Math.min(this.size, (page + 1) * this.pageSize) - offset;
  }

  close(): void {}

  /** Device side: the region offset of [address, address + length), which must be mapped and contiguous. */
  offsetOf(address: bigint, length: number): number {
    for (let page = 0; page < this.pageOrder.length; page++) {
      const start = this.pageAddress(page);
      if (address >= start && address < start + BigInt(this.pageSize)) {
        const offset = page * this.pageSize + Number(address - start);
        if (offset + length > this.size || this.contiguousFrom(offset) < length) {
          throw new Error(`device access 0x${address.toString(16)}+${length} leaves mapped contiguous memory`);
        }
        return offset;
      }
    }
    throw new Error(`device address 0x${address.toString(16)} is not mapped`);
  }

  private pageAddress(page: number): bigint {
    return this.base + BigInt(this.pageOrder[page]!) * BigInt(this.pageSize);
  }

  private checkOffset(offset: number): void {
    if (!Number.isInteger(offset) || offset < 0 || offset >= this.size) throw new RangeError(`offset ${offset} outside region`);
  }
}
