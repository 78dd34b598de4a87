/**
 * ioctl command numbers: how each architecture lays them out, and the commands the Linux FUSE
 * module itself interprets, which are the ones translated (Miklos Szeredi on linux-fsdevel, June
 * 2024: "the client cannot promise to transform everything, since most are not interpreted by the
 * kernel. Ones which are, should be transformed").
 *
 * A command number packs a direction, a size, a type and a number (include/uapi/asm-generic/ioctl.h):
 * nr in bits 0-7, type in bits 8-15, then the size and the direction. Most architectures use the
 * generic layout (14 size bits, 2 direction bits: none 0, write 1, read 2). powerpc, mips, sparc
 * and alpha give the size 13 bits and the direction 3 (none 1, read 2, write 4); parisc keeps the
 * generic widths but swaps read and write (write 2, read 1). So FS_IOC_GETFLAGS, _IOR('f', 1, long),
 * is 0x80086601 on x86_64 and arm64 and 0x40086601 on ppc64 and mips64.
 *
 * The kernel interprets, and sends as FUSE_IOCTL by itself, the fileattr commands behind lsattr,
 * chattr and xfs_io (fs/fuse/ioctl.c, fuse_fileattr_get/set): FS_IOC_GETFLAGS, FS_IOC_SETFLAGS,
 * FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR, and a 32-bit process's FS_IOC32_GETFLAGS/SETFLAGS. Those are
 * translated: their direction bits are re-encoded in the target's layout. The size field is kept:
 * the arch indicator names an encoding family, not a word size (x86 covers i386 and x86_64), and
 * the payload is the same either way (the kernel sends an unsigned int for the flags and a 28-byte
 * struct fsxattr, whatever `long` is), so a 32-bit client's GETFLAGS arrives as the target's
 * FS_IOC32_GETFLAGS, as a 32-bit process's would on the target's own kernel. Every other command
 * passes untouched: its meaning is the device's business, and no table could know it.
 */
import type { Architecture } from './architectures.ts';

export interface IoctlEncoding {
  /** Which layout: 'generic', 'powerpc' (also mips, sparc, alpha) or 'parisc'. */
  readonly name: string;
  readonly sizeBits: number;
  readonly dirBits: number;
  readonly none: number;
  readonly read: number;
  readonly write: number;
}

export const genericIoctl: IoctlEncoding = { name: 'generic', sizeBits: 14, dirBits: 2, none: 0, write: 1, read: 2 };
/** powerpc, mips, sparc and alpha. */
export const powerpcIoctl: IoctlEncoding = { name: 'powerpc', sizeBits: 13, dirBits: 3, none: 1, read: 2, write: 4 };
export const pariscIoctl: IoctlEncoding = { name: 'parisc', sizeBits: 14, dirBits: 2, none: 0, write: 2, read: 1 };

const NR_BITS = 8;
const TYPE_SHIFT = 8;
const SIZE_SHIFT = 16;

export type IoctlDirection = 'none' | 'read' | 'write' | 'read|write';

/** The direction field's value for `dir` in `encoding`. */
function dirValue(encoding: IoctlEncoding, dir: IoctlDirection): number {
  return (dir === 'none' ? encoding.none : 0) | (dir.includes('read') ? encoding.read : 0) | (dir.includes('write') ? encoding.write : 0);
}

/** _IOC(dir, type, nr, size) in `encoding`. */
export function ioctlCommand(encoding: IoctlEncoding, dir: IoctlDirection, type: number, nr: number, size: number): number {
  if (size >= 1 << encoding.sizeBits) throw new RangeError(`ioctl size ${size} does not fit in ${encoding.sizeBits} bits`);
  return ((dirValue(encoding, dir) << (SIZE_SHIFT + encoding.sizeBits)) | (size << SIZE_SHIFT) | (type << TYPE_SHIFT) | nr) >>> 0;
}

/** A command the kernel interprets: type, number, direction and the sizes it comes with. */
interface FileattrCommand {
  readonly type: number;
  readonly nr: number;
  readonly dir: IoctlDirection;
  /** Sizes a client may encode: `long` (8 or 4) for the flags commands, struct fsxattr's 28. */
  readonly sizes: readonly number[];
}

const FSXATTR_SIZE = 28;
const f = 'f'.charCodeAt(0);
const X = 'X'.charCodeAt(0);

/**
 * The commands translated, by the name of their 64-bit form (include/uapi/linux/fs.h). The flags
 * commands' 4-byte forms are FS_IOC32_GETFLAGS/SETFLAGS on a 64-bit architecture and
 * FS_IOC_GETFLAGS/SETFLAGS themselves on a 32-bit one.
 */
export const fileattrCommands: Readonly<Record<string, FileattrCommand>> = {
  FS_IOC_GETFLAGS: { type: f, nr: 1, dir: 'read', sizes: [8, 4] },
  FS_IOC_SETFLAGS: { type: f, nr: 2, dir: 'write', sizes: [8, 4] },
  FS_IOC_FSGETXATTR: { type: X, nr: 31, dir: 'read', sizes: [FSXATTR_SIZE] },
  FS_IOC_FSSETXATTR: { type: X, nr: 32, dir: 'write', sizes: [FSXATTR_SIZE] },
};

const COMMANDS: readonly (readonly [string, FileattrCommand])[] = Object.entries(fileattrCommands);

/**
 * Which fileattr command `cmd` is in `encoding`: its index in COMMANDS, or -1. Reads the fields in
 * place and builds nothing (IOCTL requests pass through here).
 */
function findCommand(encoding: IoctlEncoding, cmd: number): number {
  const dir = cmd >>> (SIZE_SHIFT + encoding.sizeBits);
  const size = (cmd >>> SIZE_SHIFT) & ((1 << encoding.sizeBits) - 1);
  const type = (cmd >>> TYPE_SHIFT) & 0xff;
  const nr = cmd & ((1 << NR_BITS) - 1);
  for (let i = 0; i < COMMANDS.length; i++) {
    const c = COMMANDS[i]![1];
    if (c.type === type && c.nr === nr && dirValue(encoding, c.dir) === dir && c.sizes.includes(size)) return i;
  }
  return -1;
}

/**
 * The value of a fileattr command's name on `arch` (`longBytes`: the size of `long` there, 8 by
 * default): FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IOC32_GETFLAGS, FS_IOC32_SETFLAGS,
 * FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR. Undefined for any other name.
 */
export function ioctlCommandValue(name: string, arch: Architecture, longBytes = 8): number | undefined {
  const is32 = name.startsWith('FS_IOC32_');
  const command = fileattrCommands[is32 ? name.replace('FS_IOC32_', 'FS_IOC_') : name];
  if (!command || (is32 && command.type !== f)) return undefined;
  const size = command.type === f ? (is32 ? 4 : longBytes) : FSXATTR_SIZE;
  return ioctlCommand(arch.ioctl, command.dir, command.type, command.nr, size);
}

/** The fileattr command `cmd` is on `arch` (its 64-bit name; a 4-byte flags command as FS_IOC32_*), or undefined. */
export function ioctlCommandName(cmd: number, arch: Architecture): string | undefined {
  const i = findCommand(arch.ioctl, cmd);
  if (i < 0) return undefined;
  const [name, c] = COMMANDS[i]!;
  return c.type === f && ((cmd >>> SIZE_SHIFT) & 0xff) === 4 ? name.replace('FS_IOC_', 'FS_IOC32_') : name;
}

/**
 * `cmd` from `from`'s layout to `to`'s: a fileattr command re-encoded with the same type, number,
 * direction and size; anything else returned as it is. Never throws.
 */
export function translateIoctlCommand(cmd: number, from: IoctlEncoding, to: IoctlEncoding): number {
  if (from === to) return cmd;
  const i = findCommand(from, cmd);
  if (i < 0) return cmd;
  const size = (cmd >>> SIZE_SHIFT) & ((1 << from.sizeBits) - 1);
  return ((dirValue(to, COMMANDS[i]![1].dir) << (SIZE_SHIFT + to.sizeBits)) | (size << SIZE_SHIFT) | (cmd & 0xffff)) >>> 0;
}
