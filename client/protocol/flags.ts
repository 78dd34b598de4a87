/** FUSE's own flag words (architecture independent): INIT capabilities, setattr, open replies. */

/** FUSE_INIT capability bits as one 64-bit set: bits 32..63 travel in `flags2`. */
export const InitFlag = {
  ASYNC_READ: 1n << 0n,
  POSIX_LOCKS: 1n << 1n,
  FILE_OPS: 1n << 2n,
  ATOMIC_O_TRUNC: 1n << 3n,
  EXPORT_SUPPORT: 1n << 4n,
  BIG_WRITES: 1n << 5n,
  DONT_MASK: 1n << 6n,
  SPLICE_WRITE: 1n << 7n,
  SPLICE_MOVE: 1n << 8n,
  SPLICE_READ: 1n << 9n,
  FLOCK_LOCKS: 1n << 10n,
  HAS_IOCTL_DIR: 1n << 11n,
  AUTO_INVAL_DATA: 1n << 12n,
  DO_READDIRPLUS: 1n << 13n,
  READDIRPLUS_AUTO: 1n << 14n,
  ASYNC_DIO: 1n << 15n,
  WRITEBACK_CACHE: 1n << 16n,
  NO_OPEN_SUPPORT: 1n << 17n,
  PARALLEL_DIROPS: 1n << 18n,
  HANDLE_KILLPRIV: 1n << 19n,
  POSIX_ACL: 1n << 20n,
  ABORT_ERROR: 1n << 21n,
  MAX_PAGES: 1n << 22n,
  CACHE_SYMLINKS: 1n << 23n,
  NO_OPENDIR_SUPPORT: 1n << 24n,
  EXPLICIT_INVAL_DATA: 1n << 25n,
  MAP_ALIGNMENT: 1n << 26n,
  SUBMOUNTS: 1n << 27n,
  HANDLE_KILLPRIV_V2: 1n << 28n,
  SETXATTR_EXT: 1n << 29n,
  INIT_EXT: 1n << 30n,
  INIT_RESERVED: 1n << 31n,
  SECURITY_CTX: 1n << 32n,
  HAS_INODE_DAX: 1n << 33n,
  CREATE_SUPP_GROUP: 1n << 34n,
  HAS_EXPIRE_ONLY: 1n << 35n,
  DIRECT_IO_ALLOW_MMAP: 1n << 36n,
  PASSTHROUGH: 1n << 37n,
  NO_EXPORT_SUPPORT: 1n << 38n,
  HAS_RESEND: 1n << 39n,
  ALLOW_IDMAP: 1n << 40n,
  OVER_IO_URING: 1n << 41n,
  REQUEST_TIMEOUT: 1n << 42n,
  /**
   * Architecture negotiation (docs/arch-negotiation.md), flags2 bits 31 and 30:
   * the high end of flags2, far from the bits upstream allocates from the bottom.
   * Request: arch_indicator is valid. Reply: the device interprets the client's encoding.
   */
  ARCH_INDICATOR: 1n << 63n,
  /** Request: the client can send canonical (x86) encoding. Reply: the device asks for it. */
  ARCH_CANONICAL: 1n << 62n,
  /**
   * Outcome (d). Request: the client can translate to an encoding the device names. Reply: the
   * device asks for the encoding named by fuse_init_out.arch_indicator (its own).
   */
  ARCH_DEVICE: 1n << 61n,
} as const;

/**
 * Capabilities that cannot be carried from one FUSE connection to another (a
 * relay between this kernel and a device, or a device between a client and its
 * backend): splice and passthrough need a local daemon, DAX a shared memory
 * window, io_uring a local ring, and the arch bits belong to each hop's own INIT.
 */
export const NOT_RELAYABLE =
  InitFlag.SPLICE_WRITE |
  InitFlag.SPLICE_MOVE |
  InitFlag.SPLICE_READ |
  InitFlag.MAP_ALIGNMENT |
  InitFlag.HAS_INODE_DAX |
  InitFlag.PASSTHROUGH |
  InitFlag.OVER_IO_URING |
  InitFlag.INIT_RESERVED |
  InitFlag.ARCH_INDICATOR |
  InitFlag.ARCH_CANONICAL |
  InitFlag.ARCH_DEVICE;

/** Names of the set bits of a 64-bit INIT flag set, unknown bits as 'bit<N>'. */
export function initFlagNames(flags: bigint): string[] {
  const out: string[] = [];
  for (let bit = 0n; bit < 64n; bit++) {
    const mask = 1n << bit;
    if ((flags & mask) === 0n) continue;
    const name = Object.entries(InitFlag).find(([, v]) => v === mask)?.[0];
    out.push(name ?? `bit${bit}`);
  }
  return out;
}

/** fuse_setattr_in.valid */
export const SetattrValid = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  LOCKOWNER: 1 << 9,
  CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11,
} as const;

/** fuse_open_out.open_flags */
export const OpenReplyFlag = {
  DIRECT_IO: 1 << 0,
  KEEP_CACHE: 1 << 1,
  NONSEEKABLE: 1 << 2,
  CACHE_DIR: 1 << 3,
  STREAM: 1 << 4,
  NOFLUSH: 1 << 5,
  PARALLEL_DIRECT_WRITES: 1 << 6,
  PASSTHROUGH: 1 << 7,
} as const;

export const GETATTR_FH = 1 << 0;
export const RELEASE_FLUSH = 1 << 0;
export const LK_FLOCK = 1 << 0;
export const FSYNC_FDATASYNC = 1 << 0;
export const WRITE_LOCKOWNER = 1 << 1;
export const READ_LOCKOWNER = 1 << 1;

/** Pages per request when the device does not negotiate FUSE_MAX_PAGES. */
export const FUSE_DEFAULT_MAX_PAGES = 32;
/** Upper bound the kernel accepts for max_pages. */
export const FUSE_MAX_MAX_PAGES = 256;
