/**
 * POSIX lock type encodings (struct flock.l_type, fuse_file_lock.type), from
 * asm/fcntl.h over asm-generic/fcntl.h. Checked against the real headers by
 * test/unit/arch-tables.test.ts.
 */

export type LockTypeName = 'F_RDLCK' | 'F_WRLCK' | 'F_UNLCK';

export interface LockTypeEncoding {
  /** Short name of the encoding, for display. */
  readonly name: string;
  readonly types: Readonly<Record<LockTypeName, number>>;
}

/** asm-generic/fcntl.h: every architecture but alpha, sparc and parisc. */
export const genericLockTypes: LockTypeEncoding = {
  name: 'generic',
  types: { F_RDLCK: 0, F_WRLCK: 1, F_UNLCK: 2 },
};

export const alphaLockTypes: LockTypeEncoding = {
  name: 'alpha',
  types: { F_RDLCK: 1, F_WRLCK: 2, F_UNLCK: 8 },
};

/** sparc and parisc define the same values, each in its own header: one encoding. */
export const sparcPariscLockTypes: LockTypeEncoding = {
  name: 'sparc/parisc',
  types: { F_RDLCK: 1, F_WRLCK: 2, F_UNLCK: 3 },
};
