/**
 * Translation of open flags, errno values and lock types from one
 * architecture's encoding to another's. Every defined value maps to the
 * same-named value of the target. Anything else has a stated outcome, never a
 * silent remap:
 * - open flags: a bit undefined on the source throws ERR_ARCH_UNDEFINED_VALUE;
 *   a bit the target lacks follows its table entry (withoutCounterpart: drop
 *   with a reason, or throw ERR_ARCH_NO_COUNTERPART, the default);
 *   kernel-internal bits are carried or dropped as kernelOpenFlags says.
 * - errno: a number the target lacks, or that the source does not define,
 *   becomes the target's EIO, reported as a drop with the reason.
 * - lock types: anything but F_RDLCK/F_WRLCK/F_UNLCK throws ERR_ARCH_UNDEFINED_VALUE.
 *
 * Between architectures that share an encoding the translator is the
 * identity and looks at nothing: the value reaches the other side exactly as
 * a same-architecture peer would send it, unknown bits included.
 *
 * Translators are built once per pair and kind; the hot path is a loop over
 * the set bits (or one table lookup) and allocates nothing unless the
 * source value is undefined.
 */
import { resolveArch, type Architecture } from './architectures.ts';
import { ArchTranslationError, type ValueKind } from './errors.ts';
import type { LockTypeName } from './lock-types.ts';
import { errnoNames, errnoNumber, octal } from './names.ts';
import { kernelOpenFlags, type AccessModeName } from './open-flags.ts';
import { translateIoctlCommand } from './ioctl.ts';

/** A value not carried to the target, and why. For errno the target receives EIO instead. */
export interface Dropped {
  readonly kind: ValueKind;
  /** Its name on the source architecture, or its number in text. */
  readonly name: string;
  /** The source value (for open flags, the one bit). */
  readonly value: number;
  readonly reason: string;
}

export type OnDrop = (dropped: Dropped) => void;

export interface Translator {
  readonly kind: ValueKind;
  readonly from: Architecture;
  readonly to: Architecture;
  /** Both sides share the encoding: translate() returns its input. */
  readonly identity: boolean;
  /** Throws ArchTranslationError for values that cannot be carried; reports drops to `onDrop`. */
  translate(value: number, onDrop?: OnDrop): number;
}

/** An architecture, or a name resolveArch() accepts. */
export type ArchRef = Architecture | string;

const builders: Record<ValueKind, (from: Architecture, to: Architecture) => Translator> = {
  open: openFlagsTranslator,
  errno: errnoTranslator,
  lock: lockTypeTranslator,
  ioctl: ioctlTranslator,
};

const cache: Record<ValueKind, WeakMap<Architecture, Map<Architecture, Translator>>> = {
  open: new WeakMap(),
  errno: new WeakMap(),
  lock: new WeakMap(),
  ioctl: new WeakMap(),
};

/** The translator for `kind` from `from` to `to`, built on first use. Throws UnknownArchError for bad names. */
export function translator(kind: ValueKind, from: ArchRef, to: ArchRef): Translator {
  const source = typeof from === 'string' ? resolveArch(from) : from;
  const target = typeof to === 'string' ? resolveArch(to) : to;
  let byTarget = cache[kind].get(source);
  if (!byTarget) cache[kind].set(source, (byTarget = new Map()));
  let built = byTarget.get(target);
  if (!built) byTarget.set(target, (built = builders[kind](source, target)));
  return built;
}

export function translateOpenFlags(flags: number, from: ArchRef, to: ArchRef, onDrop?: OnDrop): number {
  return translator('open', from, to).translate(flags, onDrop);
}

/** Keeps the sign, so fuse_out_header.error (a negated errno) can be passed as it is. */
export function translateErrno(errno: number, from: ArchRef, to: ArchRef, onDrop?: OnDrop): number {
  return translator('errno', from, to).translate(errno, onDrop);
}

export function translateLockType(type: number, from: ArchRef, to: ArchRef): number {
  return translator('lock', from, to).translate(type);
}

/**
 * ioctl commands: the fileattr commands the kernel interprets are re-encoded in the target's
 * layout; every other command passes as it is (ioctl.ts). Never throws.
 */
function ioctlTranslator(from: Architecture, to: Architecture): Translator {
  if (from.ioctl === to.ioctl) return identityTranslator('ioctl', from, to);
  const source = from.ioctl;
  const target = to.ioctl;
  return { kind: 'ioctl', from, to, identity: false, translate: (cmd: number) => translateIoctlCommand(cmd, source, target) };
}

function identityTranslator(kind: ValueKind, from: Architecture, to: Architecture): Translator {
  return { kind, from, to, identity: true, translate: (value: number) => value };
}

function openFlagsTranslator(from: Architecture, to: Architecture): Translator {
  const source = from.openFlags;
  const target = to.openFlags;
  if (source === target) return identityTranslator('open', from, to);

  // Indexed by source bit position: the target bit (0 when not carried), the
  // drop or the refusal reason, and the name for error messages.
  const targetBit: number[] = new Array(32).fill(0);
  const drops: (Dropped | undefined)[] = new Array(32);
  const refusals: string[] = new Array(32);
  const names: string[] = new Array(32);
  let defined = 0;
  let refused = 0;
  const define = (name: string, bit: number): number => {
    const i = 31 - Math.clz32(bit);
    defined |= bit;
    names[i] = name;
    return i;
  };

  for (const [name, bit] of Object.entries(source.bits)) {
    const i = define(name, bit);
    if (Object.hasOwn(target.bits, name)) {
      targetBit[i] = target.bits[name]!;
      continue;
    }
    const outcome = source.withoutCounterpart[name] ?? { action: 'error', reason: `${to.name} has no ${name}` };
    if (outcome.action === 'drop') drops[i] = { kind: 'open', name, value: bit, reason: outcome.reason };
    else {
      refused |= bit;
      refusals[i] = outcome.reason;
    }
  }
  for (const [name, { value, action, reason }] of Object.entries(kernelOpenFlags)) {
    const i = define(name, value);
    if (action === 'carry') targetBit[i] = value;
    else drops[i] = { kind: 'open', name, value, reason };
  }

  const modeMask = source.accessModes.O_ACCMODE;
  const targetMode: number[] = [];
  for (const [name, mode] of Object.entries(source.accessModes)) {
    targetMode[mode] = target.accessModes[name as AccessModeName];
  }

  return {
    kind: 'open',
    from,
    to,
    identity: false,
    translate(flags: number, onDrop?: OnDrop): number {
      let rest = flags & ~modeMask;
      const undefinedBits = (rest & ~defined) >>> 0;
      if (undefinedBits !== 0) {
        throw new ArchTranslationError('ERR_ARCH_UNDEFINED_VALUE', 'open', undefinedBits, octal(undefinedBits), from.name, to.name, `not an open flag on ${from.name}`);
      }
      const refusedBits = rest & refused;
      if (refusedBits !== 0) {
        const i = 31 - Math.clz32(refusedBits & -refusedBits);
        throw new ArchTranslationError('ERR_ARCH_NO_COUNTERPART', 'open', 2 ** i, names[i]!, from.name, to.name, refusals[i]!);
      }
      let out = targetMode[flags & modeMask]!;
      while (rest !== 0) {
        const bit = rest & -rest;
        rest ^= bit;
        const i = 31 - Math.clz32(bit);
        const mapped = targetBit[i]!;
        if (mapped !== 0) out |= mapped;
        else onDrop?.(drops[i]!);
      }
      return out >>> 0;
    },
  };
}

function errnoTranslator(from: Architecture, to: Architecture): Translator {
  if (from.errno === to.errno) return identityTranslator('errno', from, to);

  // Indexed by source number: the target number; 0 where the source defines
  // nothing, -1 where the target has no counterpart.
  const mapped = new Int32Array(Math.max(...Object.values(from.errno.numbers)) + 1);
  const drops = new Map<number, Dropped>();
  for (const [name, n] of Object.entries(from.errno.numbers)) {
    // By any of its names: parisc's ECANCELLED is everyone else's ECANCELED.
    const shared = errnoNames(n, from).find((alias) => errnoNumber(alias, to) !== undefined);
    if (shared !== undefined) {
      mapped[n] = errnoNumber(shared, to)!;
      continue;
    }
    mapped[n] = -1;
    const reason = `${name} (${n} on ${from.name}) has no counterpart on ${to.name}; replaced by EIO`;
    drops.set(n, { kind: 'errno', name, value: n, reason });
  }
  const eio = to.errno.numbers.EIO!;

  return {
    kind: 'errno',
    from,
    to,
    identity: false,
    translate(errno: number, onDrop?: OnDrop): number {
      if (errno === 0) return 0;
      const n = Math.abs(errno);
      let result = n < mapped.length ? mapped[n]! : 0;
      if (result <= 0) {
        onDrop?.(
          result < 0
            ? drops.get(n)!
            : { kind: 'errno', name: String(n), value: n, reason: `errno ${n} is not defined on ${from.name}; replaced by EIO` },
        );
        result = eio;
      }
      return errno < 0 ? -result : result;
    },
  };
}

function lockTypeTranslator(from: Architecture, to: Architecture): Translator {
  if (from.lockTypes === to.lockTypes) return identityTranslator('lock', from, to);

  const mapped = new Map<number, number>();
  for (const [name, type] of Object.entries(from.lockTypes.types)) {
    mapped.set(type, to.lockTypes.types[name as LockTypeName]);
  }
  const known = Object.entries(from.lockTypes.types).map(([name, type]) => `${name}=${type}`).join(', ');

  return {
    kind: 'lock',
    from,
    to,
    identity: false,
    translate(type: number): number {
      const result = mapped.get(type);
      if (result === undefined) {
        throw new ArchTranslationError('ERR_ARCH_UNDEFINED_VALUE', 'lock', type, String(type), from.name, to.name, `not a lock type on ${from.name} (${known})`);
      }
      return result;
    },
  };
}
