import { VirtiofsError } from '../../ffi/errors.ts';

/** The kinds of architecture-encoded values FUSE carries. */
export type ValueKind = 'open' | 'errno' | 'lock' | 'ioctl';

/** How one value of each kind is called in messages. */
export const kindLabel: Readonly<Record<ValueKind, string>> = {
  open: 'open flag',
  errno: 'errno',
  lock: 'lock type',
  ioctl: 'ioctl command',
};

/** A name that is not an architecture we know (see `architectures`). */
export class UnknownArchError extends VirtiofsError {
  override name = 'UnknownArchError';
  /** Stable, for programs. */
  readonly code = 'ERR_ARCH_UNKNOWN';

  constructor(readonly input: string) {
    super(`unknown architecture '${input}'`);
  }
}

/**
 * Stable codes of ArchTranslationError:
 * - ERR_ARCH_UNDEFINED_VALUE: the value (an open flag bit, a lock type) means
 *   nothing in the source encoding, so there is nothing to translate.
 * - ERR_ARCH_NO_COUNTERPART: the value is defined in the source encoding, the
 *   target has no same-named counterpart, and its table entry says to refuse
 *   (which is also what a bit without an entry gets).
 */

export type ArchTranslationErrorCode = 'ERR_ARCH_UNDEFINED_VALUE' | 'ERR_ARCH_NO_COUNTERPART';

/** A value that cannot be carried from one architecture's encoding to another's. */
export class ArchTranslationError extends VirtiofsError {
  override name = 'ArchTranslationError';

  constructor(
    readonly code: ArchTranslationErrorCode,
    readonly kind: ValueKind,
    /** The offending source value: the undefined bits, the refused bit, or the lock type. */
    readonly value: number,
    /** Its name on the source architecture, or its number in text when it has none. */
    readonly valueName: string,
    /** Display names of the two architectures. */
    readonly from: string,
    readonly to: string,
    /** Why, without the names above. */
    readonly reason: string,
  ) {
    super(`${kindLabel[kind]} ${valueName} (${from} -> ${to}): ${reason}`);
  }
}
