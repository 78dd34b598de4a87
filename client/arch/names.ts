/** Names for architecture-encoded values, in the encoding of a given architecture. */
import { canonicalArch, type Architecture } from './architectures.ts';
import type { ErrnoEncoding } from './errno.ts';
import type { LockTypeName } from './lock-types.ts';
import { kernelOpenFlags, type AccessModeName, type OpenFlagEncoding } from './open-flags.ts';

/** One component of an open flags value: the access mode, or one bit. */
export interface OpenFlagPart {
  readonly kind: 'access' | 'bit';
  /** The flag's name; for a bit the encoding does not define, its value in octal. */
  readonly name: string;
  readonly value: number;
  readonly known: boolean;
}

/** Single bits by value: the encoding's uapi bits and the kernel-internal ones. */
const bitNamesCache = new WeakMap<OpenFlagEncoding, Map<number, string>>();

function openFlagBitNames(encoding: OpenFlagEncoding): ReadonlyMap<number, string> {
  let names = bitNamesCache.get(encoding);
  if (!names) {
    names = new Map(Object.entries(encoding.bits).map(([name, bit]) => [bit, name]));
    for (const [name, { value }] of Object.entries(kernelOpenFlags)) names.set(value, name);
    bitNamesCache.set(encoding, names);
  }
  return names;
}

/** Access mode first, then each set bit from lowest to highest. */
export function splitOpenFlags(flags: number, arch: Architecture): OpenFlagPart[] {
  const { accessModes } = arch.openFlags;
  const mode = flags & accessModes.O_ACCMODE;
  const modeName = (Object.keys(accessModes) as AccessModeName[]).find((n) => accessModes[n] === mode)!;
  const parts: OpenFlagPart[] = [{ kind: 'access', name: modeName, value: mode, known: true }];
  const names = openFlagBitNames(arch.openFlags);
  for (let rest = flags & ~accessModes.O_ACCMODE; rest !== 0; ) {
    const bit = rest & -rest;
    rest ^= bit;
    const value = bit >>> 0;
    const name = names.get(value);
    parts.push({ kind: 'bit', name: name ?? octal(value), value, known: name !== undefined });
  }
  return parts;
}

/** ['O_RDWR', 'O_DIRECT', ...]: one name per bit (O_SYNC shows as __O_SYNC and O_DSYNC); unknown bits in octal. */
export function flagsToNames(flags: number, arch: Architecture): string[] {
  return splitOpenFlags(flags, arch).map((p) => p.name);
}

/** The value of an open flag name on `arch`: access mode, bit, kernel-internal bit or composite (O_SYNC). */
export function openFlagValue(name: string, arch: Architecture): number | undefined {
  const { accessModes, bits, composites } = arch.openFlags;
  if (Object.hasOwn(accessModes, name)) return accessModes[name as AccessModeName];
  if (Object.hasOwn(bits, name)) return bits[name];
  if (Object.hasOwn(kernelOpenFlags, name)) return kernelOpenFlags[name]!.value;
  if (Object.hasOwn(composites, name)) {
    return composites[name]!.reduce((value, part) => value | openFlagValue(part, arch)!, 0) >>> 0;
  }
  return undefined;
}

/** C-style octal, as the headers write open flags: 0, 040000. */
export function octal(value: number): string {
  return value === 0 ? '0' : `0${value.toString(8)}`;
}

const errnoNamesCache = new WeakMap<ErrnoEncoding, Map<number, readonly string[]>>();

function errnoIndex(encoding: ErrnoEncoding): Map<number, readonly string[]> {
  let index = errnoNamesCache.get(encoding);
  if (!index) {
    const names = new Map<number, string[]>();
    for (const [name, n] of Object.entries(encoding.numbers)) names.set(n, [name]);
    for (const [alias, primary] of Object.entries(encoding.aliases)) names.get(encoding.numbers[primary]!)!.push(alias);
    index = names;
    errnoNamesCache.set(encoding, index);
  }
  return index;
}

/** Every name of an errno number on `arch`, primary first; empty when undefined there. */
export function errnoNames(errno: number, arch: Architecture): readonly string[] {
  return errnoIndex(arch.errno).get(errno) ?? [];
}

/** The primary name of an errno number on `arch` (EAGAIN, not EWOULDBLOCK). */
export function errnoName(errno: number, arch: Architecture): string | undefined {
  return errnoNames(errno, arch)[0];
}

/** The number of an errno name (primary or alias) on `arch`. */
export function errnoNumber(name: string, arch: Architecture): number | undefined {
  const { numbers, aliases } = arch.errno;
  if (Object.hasOwn(numbers, name)) return numbers[name];
  if (Object.hasOwn(aliases, name)) return numbers[aliases[name]!];
  return undefined;
}

/**
 * Where Node's code differs from the kernel's primary name: libuv names 95
 * ENOTSUP (glibc's alias of EOPNOTSUPP), so Node's own errors say 'ENOTSUP'.
 */
const nodeCodeOverrides: Readonly<Record<string, string>> = { EOPNOTSUPP: 'ENOTSUP' };

/**
 * The Node-style code ('ENOENT') for an errno number in `arch`'s encoding:
 * the canonical (x86) primary name of the same error, so parisc's 253
 * (ECANCELLED) gives 'ECANCELED' and powerpc's 58 (EDEADLOCK) 'EDEADLK'. An
 * error x86 does not have keeps its own name (mips 'EINIT'); undefined when
 * `arch` does not define the number.
 */
export function errnoToNodeCode(errno: number, arch: Architecture): string | undefined {
  const names = errnoNames(errno, arch);
  const shared = names.find((name) => errnoNumber(name, canonicalArch) !== undefined);
  const code = shared === undefined ? names[0] : errnoName(errnoNumber(shared, canonicalArch)!, canonicalArch)!;
  return code === undefined ? undefined : (nodeCodeOverrides[code] ?? code);
}

/** The name of a lock type value on `arch`. */
export function lockTypeName(type: number, arch: Architecture): LockTypeName | undefined {
  const { types } = arch.lockTypes;
  return (Object.keys(types) as LockTypeName[]).find((name) => types[name] === type);
}

/** The value of F_RDLCK, F_WRLCK or F_UNLCK on `arch`. */
export function lockTypeValue(name: string, arch: Architecture): number | undefined {
  const { types } = arch.lockTypes;
  return Object.hasOwn(types, name) ? types[name as LockTypeName] : undefined;
}
