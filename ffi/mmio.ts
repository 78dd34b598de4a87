/**
 * Device registers mapped into memory (a PCI BAR). Every access goes through
 * Atomics on a typed array of the access's width: one load or store of exactly
 * that size, never split into bytes or merged by the JIT, as device registers
 * require. Offsets must be aligned to the width.
 */
export class Mmio {
  private readonly u8: Uint8Array;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;

  constructor(
    memory: ArrayBuffer,
    readonly size: number,
    /** For error messages: 'BAR4 of 0000:00:03.0'. */
    readonly name: string,
    /** Where the registers are mapped in this process (other threads reach them there). */
    readonly address?: bigint,
  ) {
    this.u8 = new Uint8Array(memory, 0, size);
    this.u16 = new Uint16Array(memory, 0, size >> 1);
    this.u32 = new Uint32Array(memory, 0, size >> 2);
  }

  read8(offset: number): number {
    return Atomics.load(this.u8, this.index(offset, 1));
  }

  read16(offset: number): number {
    return Atomics.load(this.u16, this.index(offset, 2));
  }

  read32(offset: number): number {
    return Atomics.load(this.u32, this.index(offset, 4));
  }

  write8(offset: number, value: number): void {
    Atomics.store(this.u8, this.index(offset, 1), value);
  }

  write16(offset: number, value: number): void {
    Atomics.store(this.u16, this.index(offset, 2), value);
  }

  write32(offset: number, value: number): void {
    Atomics.store(this.u32, this.index(offset, 4), value >>> 0);
  }

  /** A 64-bit register as two 32-bit accesses, low word first (virtio 1.x 4.1.3.1). */
  write64(offset: number, value: bigint): void {
    this.write32(offset, Number(value & 0xffff_ffffn));
    this.write32(offset + 4, Number(value >> 32n));
  }

  private index(offset: number, width: number): number {
    if (offset % width !== 0 || offset < 0 || offset + width > this.size) {
      throw new RangeError(`${this.name}: ${width}-byte access at 0x${offset.toString(16)} outside or misaligned (size 0x${this.size.toString(16)})`);
    }
    return offset / width;
  }
}
