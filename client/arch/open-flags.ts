/**
 * open(2) flag encodings, one per distinct set of values in the Linux uapi
 * headers (asm/fcntl.h over asm-generic/fcntl.h). Each architecture header
 * overrides some asm-generic bits; the tables mirror that: an encoding is the
 * generic bits plus the header's overrides, written in the header's notation.
 * Checked against the real headers by test/unit/arch-tables.test.ts.
 */

/** What happens to a bit when it is translated to an encoding that has no same-named bit. */
export interface WithoutCounterpart {
  readonly action: 'drop' | 'error';
  /** Why: shown to the caller with every drop, and in error messages. */
  readonly reason: string;
}

export interface OpenFlagEncoding {
  /** Short name of the encoding, for display ('generic', 'arm', ...). */
  readonly name: string;
  /**
   * The O_ACCMODE field: a two-bit value, not bits. O_ACCMODE is also the name
   * of mode 3 (neither read nor write, ioctl only: Linux accepts it and strace
   * calls it O_ACCMODE). The same on every architecture.
   */
  readonly accessModes: Readonly<Record<AccessModeName, number>>;
  /** Single-bit flags, by their uapi names. */
  readonly bits: Readonly<Record<string, number>>;
  /** Names that stand for several bits (or another bit's name): never a bit of their own. */
  readonly composites: Readonly<Record<string, readonly string[]>>;
  /** Outcomes for bits that some other encoding lacks; one missing here is refused (ERR_ARCH_NO_COUNTERPART). */
  readonly withoutCounterpart: Readonly<Record<string, WithoutCounterpart>>;
}

export type AccessModeName = 'O_RDONLY' | 'O_WRONLY' | 'O_RDWR' | 'O_ACCMODE';

const accessModes = { O_RDONLY: 0o0, O_WRONLY: 0o1, O_RDWR: 0o2, O_ACCMODE: 0o3 } as const;

/**
 * Every flag here exists in every encoding (only the values differ), so none
 * needs an outcome for a missing counterpart: O_LARGEFILE in particular is
 * defined everywhere (64-bit kernels set it on every open) and is translated
 * like any other bit.
 */
const genericBits = {
  O_CREAT: 0o100,
  O_EXCL: 0o200,
  O_NOCTTY: 0o400,
  O_TRUNC: 0o1000,
  O_APPEND: 0o2000,
  O_NONBLOCK: 0o4000,
  O_DSYNC: 0o10000,
  FASYNC: 0o20000,
  O_DIRECT: 0o40000,
  O_LARGEFILE: 0o100000,
  O_DIRECTORY: 0o200000,
  O_NOFOLLOW: 0o400000,
  O_NOATIME: 0o1000000,
  O_CLOEXEC: 0o2000000,
  __O_SYNC: 0o4000000,
  O_PATH: 0o10000000,
  __O_TMPFILE: 0o20000000,
} as const;

const syncAndTmpfile = {
  O_SYNC: ['__O_SYNC', 'O_DSYNC'],
  O_TMPFILE: ['__O_TMPFILE', 'O_DIRECTORY'],
} as const;

/** Everywhere but sparc, O_NDELAY is just another name for O_NONBLOCK. */
const genericComposites = { ...syncAndTmpfile, O_NDELAY: ['O_NONBLOCK'] } as const;

/** x86 (the canonical encoding), riscv, s390, loongarch: asm-generic/fcntl.h unchanged. */
export const genericOpenFlags: OpenFlagEncoding = {
  name: 'generic',
  accessModes,
  bits: genericBits,
  composites: genericComposites,
  withoutCounterpart: {},
};

/** arm, arm64 (its own copy, for AArch32 compat) and m68k: four bits rotated against generic. */
export const armOpenFlags: OpenFlagEncoding = {
  name: 'arm',
  accessModes,
  bits: {
    ...genericBits,
    O_DIRECTORY: 0o40000,
    O_NOFOLLOW: 0o100000,
    O_DIRECT: 0o200000,
    O_LARGEFILE: 0o400000,
  },
  composites: genericComposites,
  withoutCounterpart: {},
};

/** powerpc (32 and 64 bit): like arm, but O_LARGEFILE and O_DIRECT swapped. */
export const powerpcOpenFlags: OpenFlagEncoding = {
  name: 'powerpc',
  accessModes,
  bits: {
    ...genericBits,
    O_DIRECTORY: 0o40000,
    O_NOFOLLOW: 0o100000,
    O_LARGEFILE: 0o200000,
    O_DIRECT: 0o400000,
  },
  composites: genericComposites,
  withoutCounterpart: {},
};

export const alphaOpenFlags: OpenFlagEncoding = {
  name: 'alpha',
  accessModes,
  bits: {
    ...genericBits,
    O_CREAT: 0o1000,
    O_TRUNC: 0o2000,
    O_EXCL: 0o4000,
    O_NOCTTY: 0o10000,
    O_NONBLOCK: 0o4,
    O_APPEND: 0o10,
    O_DSYNC: 0o40000,
    O_DIRECTORY: 0o100000,
    O_NOFOLLOW: 0o200000,
    O_LARGEFILE: 0o400000,
    O_DIRECT: 0o2000000,
    O_NOATIME: 0o4000000,
    O_CLOEXEC: 0o10000000,
    __O_SYNC: 0o20000000,
    O_PATH: 0o40000000,
    __O_TMPFILE: 0o100000000,
  },
  composites: genericComposites,
  withoutCounterpart: {},
};

/** mips (o32, n32 and n64 alike). */
export const mipsOpenFlags: OpenFlagEncoding = {
  name: 'mips',
  accessModes,
  bits: {
    ...genericBits,
    O_APPEND: 0x0008,
    O_DSYNC: 0x0010,
    O_NONBLOCK: 0x0080,
    O_CREAT: 0x0100,
    O_TRUNC: 0x0200,
    O_EXCL: 0x0400,
    O_NOCTTY: 0x0800,
    FASYNC: 0x1000,
    O_LARGEFILE: 0x2000,
    __O_SYNC: 0x4000,
    O_DIRECT: 0x8000,
  },
  composites: genericComposites,
  withoutCounterpart: {},
};

export const pariscOpenFlags: OpenFlagEncoding = {
  name: 'parisc',
  accessModes,
  bits: {
    ...genericBits,
    O_APPEND: 0o10,
    O_CREAT: 0o400,
    O_EXCL: 0o2000,
    O_LARGEFILE: 0o4000,
    __O_SYNC: 0o100000,
    O_NONBLOCK: 0o200000,
    O_NOCTTY: 0o400000,
    O_DSYNC: 0o1000000,
    O_NOATIME: 0o4000000,
    O_CLOEXEC: 0o10000000,
    O_DIRECTORY: 0o10000,
    O_NOFOLLOW: 0o200,
    O_PATH: 0o20000000,
    __O_TMPFILE: 0o40000000,
  },
  composites: genericComposites,
  withoutCounterpart: {},
};

/** sparc64. 32-bit sparc differs only in spelling O_NDELAY as (0x0004 | O_NONBLOCK), the same two bits. */
export const sparcOpenFlags: OpenFlagEncoding = {
  name: 'sparc',
  accessModes,
  bits: {
    ...genericBits,
    O_APPEND: 0x0008,
    FASYNC: 0x0040,
    O_CREAT: 0x0200,
    O_TRUNC: 0x0400,
    O_EXCL: 0x0800,
    O_DSYNC: 0x2000,
    O_NONBLOCK: 0x4000,
    // SunOS O_NDELAY: a bit of its own, which no other encoding has (there
    // O_NDELAY is O_NONBLOCK). Dropped, see withoutCounterpart below.
    O_NDELAY: 0x0004,
    O_NOCTTY: 0x8000,
    O_LARGEFILE: 0x40000,
    O_DIRECT: 0x100000,
    O_NOATIME: 0x200000,
    O_CLOEXEC: 0x400000,
    __O_SYNC: 0x800000,
    O_PATH: 0x1000000,
    __O_TMPFILE: 0x2000000,
  },
  composites: syncAndTmpfile,
  withoutCounterpart: {
    O_NDELAY: {
      action: 'drop',
      reason:
        "sparc's own O_NDELAY bit (0x4) has no counterpart: elsewhere O_NDELAY is O_NONBLOCK. " +
        'Linux acts on the bare bit only for block-device opens, which never reach FUSE, ' +
        "and libc's O_NDELAY sets O_NONBLOCK too, which is translated",
    },
  },
};

/** A kernel-internal bit and what translation between encodings does with it. */
export interface KernelOpenFlag {
  readonly value: number;
  readonly action: 'carry' | 'drop';
  readonly reason: string;
}

/**
 * Not uapi: bits the kernel keeps in file->f_flags, so the Linux FUSE module
 * copies them into fuse_open_in.flags. They are FMODE_* values from
 * include/linux/fs.h, not asm/, so each has one value on every architecture,
 * and fcntl_init() checks at build time that no O_* bit of any architecture
 * overlaps them. Translation treats them as bits of every encoding.
 */
export const kernelOpenFlags: Readonly<Record<string, KernelOpenFlag>> = {
  // FMODE_EXEC (1 << 5), set by execve's open (do_open_execat).
  __FMODE_EXEC: {
    value: 0x20,
    action: 'carry',
    reason:
      'exec intent; servers act on it (checking X_OK rather than R_OK, so a mode 0111 binary runs) ' +
      'and a same-architecture kernel client sends it too',
  },
  // FMODE_NONOTIFY (1 << 26); later kernels no longer keep it in f_flags.
  __FMODE_NONOTIFY: {
    value: 0x4000000,
    action: 'drop',
    reason: "marks fanotify's own opens for the client's kernel; means nothing to the device",
  },
};
