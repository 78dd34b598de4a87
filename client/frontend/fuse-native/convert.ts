/**
 * Values between the device's FUSE attributes and what fuse-native can carry.
 *
 * fuse-native passes a stat to libfuse as 18 uint32 values (index.js
 * getStatArray, fuse-native.c populate_stat) and a statvfs as 11 uint32
 * values: st_ino, st_dev, st_rdev and every statvfs count are 32 bits, and the
 * three times are milliseconds. What fits is passed exactly; what does not is
 * reduced in a stated way and counted, so `status` can say how often it
 * happened.
 */
import { errnoNumber, isErrnoError } from '../../../ffi/errno.ts';
import type { Attr, StatFs } from '../../client.ts';

const U32 = 0xffff_ffff;
const U32N = 0xffff_ffffn;

/** The stat object fuse-native's getattr callback takes (numbers; times in ms since the epoch). */
export interface NativeStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  dev: number;
  nlink: number;
  ino: number;
  rdev: number;
  blksize: number;
  blocks: number;
  atime: number;
  mtime: number;
  ctime: number;
}

/** The statfs object fuse-native's statfs callback takes (every field uint32). */
export interface NativeStatfs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  fsid: number;
  flag: number;
  namemax: number;
}

/** How often a value did not fit fuse-native's 32-bit / millisecond fields. */
export interface ConversionCounters {
  /** Inode numbers above 2^32-1: only their low 32 bits reach stat(2). */
  inoTruncated: number;
  /** Times with a sub-millisecond part (dropped) or before 1970 (shown as 1970). */
  timeRounded: number;
  /** statfs block counts above 2^32-1: rescaled into a larger f_frsize (totals kept). */
  statfsRescaled: number;
  /** statfs inode counts above 2^32-1: clamped to 2^32-1. */
  statfsClamped: number;
}

export function newCounters(): ConversionCounters {
  return { inoTruncated: 0, timeRounded: 0, statfsRescaled: 0, statfsClamped: 0 };
}

/**
 * FUSE seconds + nanoseconds -> the milliseconds fuse-native carries. The
 * sub-millisecond part is dropped (rounding down, as fuse-native's own
 * timespec_to_uint64 does); a time before the epoch becomes 0 (the field is
 * unsigned).
 */
export function toMillis(sec: bigint, nsec: number, counters?: ConversionCounters): number {
  const signed = BigInt.asIntN(64, sec);
  if (signed < 0n) {
    if (counters) counters.timeRounded++;
    return 0;
  }
  if (counters && nsec % 1_000_000 !== 0) counters.timeRounded++;
  return Number(signed) * 1000 + Math.floor(nsec / 1_000_000);
}

/** Milliseconds (what fuse-native's utimens passes) -> FUSE seconds + nanoseconds. */
export function fromMillis(ms: number): { sec: bigint; nsec: number } {
  const whole = Math.max(0, Math.floor(ms));
  return { sec: BigInt(Math.floor(whole / 1000)), nsec: (whole % 1000) * 1_000_000 };
}

/** The low 32 bits of an inode number: all stat(2) on a fuse-native mount can show. */
export function toNativeIno(ino: bigint, counters?: ConversionCounters): number {
  if (ino > U32N && counters) counters.inoTruncated++;
  return Number(ino & U32N);
}

export function toNativeStat(attr: Attr, counters?: ConversionCounters): NativeStat {
  return {
    mode: attr.mode,
    uid: attr.uid,
    gid: attr.gid,
    size: Number(attr.size),
    dev: 0,
    nlink: attr.nlink,
    ino: toNativeIno(attr.ino, counters),
    rdev: attr.rdev,
    blksize: attr.blksize,
    blocks: Number(attr.blocks),
    atime: toMillis(attr.atime, attr.atimensec, counters),
    mtime: toMillis(attr.mtime, attr.mtimensec, counters),
    ctime: toMillis(attr.ctime, attr.ctimensec, counters),
  };
}

/**
 * The device's statfs in uint32 fields. Block counts too large for 32 bits
 * are divided by a power of two and f_frsize multiplied by it, so `df`
 * (blocks x f_frsize) still shows the right sizes, to within the rounding of
 * the division. Inode counts too large are clamped to 2^32-1 (there is no
 * unit to rescale them into).
 */
export function toNativeStatfs(st: StatFs, counters?: ConversionCounters): NativeStatfs {
  let blocks = st.blocks;
  let bfree = st.bfree;
  let bavail = st.bavail;
  let frsize = st.frsize || st.bsize;
  let shift = 0n;
  while ((blocks > U32N || bfree > U32N || bavail > U32N) && frsize * 2 <= 0x8000_0000) {
    shift++;
    frsize *= 2;
    blocks = st.blocks >> shift;
    bfree = st.bfree >> shift;
    bavail = st.bavail >> shift;
  }
  if (shift > 0n && counters) counters.statfsRescaled++;
  const clamp = (n: bigint) => {
    if (n > U32N) {
      if (counters) counters.statfsClamped++;
      return U32;
    }
    return Number(n);
  };
  const files = clamp(st.files);
  const ffree = clamp(st.ffree);
  return {
    bsize: st.bsize,
    frsize,
    blocks: clamp(blocks),
    bfree: clamp(bfree),
    bavail: clamp(bavail),
    files,
    ffree,
    favail: ffree,
    fsid: 0,
    flag: 0,
    namemax: st.namelen,
  };
}

/** DT_* (a dirent's type) -> the S_IFMT bits libfuse takes the d_type from. */
export function direntTypeToMode(type: number): number {
  return (type & 0xf) << 12;
}

const EIO = errnoNumber('EIO');

/**
 * What a fuse-native callback returns for a failed operation: the negated
 * errno in this machine's encoding (the session already translated the
 * device's), EIO for anything that is not a system error.
 */
export function toNegativeErrno(error: unknown): number {
  if (isErrnoError(error)) return -error.errno;
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string') {
    try {
      return -errnoNumber(code);
    } catch {
      // not an errno name
    }
  }
  return -EIO;
}
