/**
 * ioctl(2) through ioctl-napi, failing with ErrnoError like the rest of ffi/,
 * and the _IO/_IOR/_IOW/_IOWR request encoders.
 */
import nativeIoctl from 'ioctl-napi';
import { ErrnoError } from './errno.ts';

/**
 * `argument` is an int, or the bytes the request reads and/or fills in
 * (passed as a pointer, so the kernel writes straight into them).
 */
export function ioctl(fd: number, request: number, argument: Uint8Array | number = 0): number {
  // ioctl-napi would silently wrap out-of-range numbers.
  if (!Number.isInteger(request) || request < 0 || request > 0xffff_ffff) {
    throw new RangeError(`ioctl request ${request} is not a uint32`);
  }
  if (typeof argument === 'number' && (argument | 0) !== argument) {
    throw new RangeError(`ioctl argument ${argument} is not an int32`);
  }
  try {
    return nativeIoctl(fd, request, argument);
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === 'string' && /^\d+$/.test(code)) {
      throw new ErrnoError('ioctl', Number(code), `request 0x${request.toString(16)}`);
    }
    throw error;
  }
}

// The generic Linux request layout (asm-generic/ioctl.h): nr in bits 0-7, type
// in 8-15, argument size in 16-29, direction in 30-31. mips, powerpc, sparc,
// alpha and parisc use 13 size bits and other direction values: not supported.
const NR_SHIFT = 0;
const TYPE_SHIFT = 8;
const SIZE_SHIFT = 16;
const DIR_SHIFT = 30;
const SIZE_LIMIT = 1 << 14;
const DIR_NONE = 0;
const DIR_WRITE = 1;
const DIR_READ = 2;

/** The ioctl "type" (magic): a byte, or a one-character string as in C ('T'). */
export type IoctlType = number | string;

function encode(direction: number, type: IoctlType, nr: number, size: number): number {
  const typeByte = typeof type === 'string' ? type.charCodeAt(0) : type;
  if (typeof type === 'string' && type.length !== 1) throw new RangeError(`ioctl type '${type}' is not one character`);
  if (!isByte(typeByte) || !isByte(nr)) throw new RangeError(`ioctl type ${typeByte} and number ${nr} must be bytes`);
  if (!Number.isInteger(size) || size < 0 || size >= SIZE_LIMIT) {
    throw new RangeError(`ioctl argument size ${size} does not fit 14 bits`);
  }
  // >>> 0: direction READ sets bit 31, which must stay unsigned.
  return ((direction << DIR_SHIFT) | (size << SIZE_SHIFT) | (typeByte << TYPE_SHIFT) | (nr << NR_SHIFT)) >>> 0;
}

function isByte(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= 0xff;
}

/** A request without argument data. */
export function _IO(type: IoctlType, nr: number): number {
  return encode(DIR_NONE, type, nr, 0);
}

/** A request through which the kernel returns `size` bytes (C: _IOR(type, nr, T) with size = sizeof(T)). */
export function _IOR(type: IoctlType, nr: number, size: number): number {
  return encode(DIR_READ, type, nr, size);
}

/** A request that passes `size` bytes to the kernel. */
export function _IOW(type: IoctlType, nr: number, size: number): number {
  return encode(DIR_WRITE, type, nr, size);
}

/** A request that passes `size` bytes to the kernel and gets them back updated. */
export function _IOWR(type: IoctlType, nr: number, size: number): number {
  return encode(DIR_READ | DIR_WRITE, type, nr, size);
}
