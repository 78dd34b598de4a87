/**
 * The architecture families FUSE architecture negotiation knows
 * (docs/arch-negotiation.md section 2): each family shares one encoding of
 * open flags, errno and lock types, and has a fixed arch indicator number.
 */
import { alphaErrno, genericErrno, mipsErrno, pariscErrno, powerpcErrno, sparcErrno, type ErrnoEncoding } from './errno.ts';
import { UnknownArchError } from './errors.ts';
import { genericIoctl, pariscIoctl, powerpcIoctl, type IoctlEncoding } from './ioctl.ts';
import { alphaLockTypes, genericLockTypes, sparcPariscLockTypes, type LockTypeEncoding } from './lock-types.ts';
import {
  alphaOpenFlags,
  armOpenFlags,
  genericOpenFlags,
  mipsOpenFlags,
  pariscOpenFlags,
  powerpcOpenFlags,
  sparcOpenFlags,
  type OpenFlagEncoding,
} from './open-flags.ts';

/** Arch indicator values, fixed project-wide (fuse_init_in/out.arch_indicator). */
export const FUSE_ARCH_NONE = 0;
export const FUSE_ARCH_X86 = 1;
export const FUSE_ARCH_ARM64 = 2;
export const FUSE_ARCH_ARM = 3;
export const FUSE_ARCH_RISCV = 4;
export const FUSE_ARCH_S390 = 5;
export const FUSE_ARCH_POWERPC = 6;
export const FUSE_ARCH_MIPS = 7;
export const FUSE_ARCH_SPARC = 8;
export const FUSE_ARCH_ALPHA = 9;
export const FUSE_ARCH_PARISC = 10;
export const FUSE_ARCH_M68K = 11;
export const FUSE_ARCH_LOONGARCH = 12;

export type ArchFamily =
  | 'x86'
  | 'arm64'
  | 'arm'
  | 'riscv'
  | 's390'
  | 'powerpc'
  | 'mips'
  | 'sparc'
  | 'alpha'
  | 'parisc'
  | 'm68k'
  | 'loongarch';

export interface Architecture {
  readonly family: ArchFamily;
  readonly indicator: number;
  /** Primary display name. */
  readonly name: string;
  /** Other names it answers to (Debian, GNU triplet, Node's process.arch). */
  readonly aliases: readonly string[];
  readonly openFlags: OpenFlagEncoding;
  readonly errno: ErrnoEncoding;
  readonly lockTypes: LockTypeEncoding;
  /** How ioctl command numbers are laid out (ioctl.ts). */
  readonly ioctl: IoctlEncoding;
}

export const architectures: readonly Architecture[] = [
  {
    family: 'x86',
    indicator: FUSE_ARCH_X86,
    name: 'x86_64',
    aliases: ['i386', 'amd64', 'x64', 'ia32'],
    openFlags: genericOpenFlags,
    errno: genericErrno,
    lockTypes: genericLockTypes,
    ioctl: genericIoctl,
  },
  {
    family: 'arm64',
    indicator: FUSE_ARCH_ARM64,
    name: 'arm64',
    aliases: ['aarch64'],
    openFlags: armOpenFlags,
    errno: genericErrno,
    lockTypes: genericLockTypes,
    ioctl: genericIoctl,
  },
  {
    family: 'arm',
    indicator: FUSE_ARCH_ARM,
    name: 'arm',
    aliases: ['armhf', 'armel'],
    openFlags: armOpenFlags,
    errno: genericErrno,
    lockTypes: genericLockTypes,
    ioctl: genericIoctl,
  },
  {
    family: 'riscv',
    indicator: FUSE_ARCH_RISCV,
    name: 'riscv64',
    aliases: [],
    openFlags: genericOpenFlags,
    errno: genericErrno,
    lockTypes: genericLockTypes,
    ioctl: genericIoctl,
  },
  {
    family: 's390',
    indicator: FUSE_ARCH_S390,
    name: 's390x',
    aliases: [],
    openFlags: genericOpenFlags,
    errno: genericErrno,
    lockTypes: genericLockTypes,
    ioctl: genericIoctl,
  },
  {
    family: 'powerpc',
    indicator: FUSE_ARCH_POWERPC,
    name: 'ppc64',
    aliases: ['ppc64le', 'ppc64el', 'ppc'],
    openFlags: powerpcOpenFlags,
    errno: powerpcErrno,
    lockTypes: genericLockTypes,
    ioctl: powerpcIoctl,
  },
  {
    family: 'mips',
    indicator: FUSE_ARCH_MIPS,
    name: 'mips64',
    aliases: ['mips64el', 'mipsel'],
    openFlags: mipsOpenFlags,
    errno: mipsErrno,
    lockTypes: genericLockTypes,
    ioctl: powerpcIoctl,
  },
  {
    family: 'sparc',
    indicator: FUSE_ARCH_SPARC,
    name: 'sparc64',
    aliases: [],
    openFlags: sparcOpenFlags,
    errno: sparcErrno,
    lockTypes: sparcPariscLockTypes,
    ioctl: powerpcIoctl,
  },
  {
    family: 'alpha',
    indicator: FUSE_ARCH_ALPHA,
    name: 'alpha',
    aliases: [],
    openFlags: alphaOpenFlags,
    errno: alphaErrno,
    lockTypes: alphaLockTypes,
    ioctl: powerpcIoctl,
  },
  {
    family: 'parisc',
    indicator: FUSE_ARCH_PARISC,
    name: 'parisc',
    aliases: ['hppa'],
    openFlags: pariscOpenFlags,
    errno: pariscErrno,
    lockTypes: sparcPariscLockTypes,
    ioctl: pariscIoctl,
  },
  {
    family: 'm68k',
    indicator: FUSE_ARCH_M68K,
    name: 'm68k',
    aliases: [],
    openFlags: armOpenFlags,
    errno: genericErrno,
    lockTypes: genericLockTypes,
    ioctl: genericIoctl,
  },
  {
    family: 'loongarch',
    indicator: FUSE_ARCH_LOONGARCH,
    name: 'loongarch64',
    aliases: ['loong64'],
    openFlags: genericOpenFlags,
    errno: genericErrno,
    lockTypes: genericLockTypes,
    ioctl: genericIoctl,
  },
];

/** The canonical encoding of docs/arch-negotiation.md: x86's. */
export const canonicalArch: Architecture = architectures[0]!;

const byName = new Map<string, Architecture>();
for (const arch of architectures) {
  for (const name of [arch.family, arch.name, ...arch.aliases]) byName.set(name, arch);
}

/** The architecture called `name` (family, display name or alias, any case); throws UnknownArchError. */
export function resolveArch(name: string): Architecture {
  const arch = byName.get(name.toLowerCase());
  if (!arch) throw new UnknownArchError(name);
  return arch;
}

/** The architecture with this indicator, undefined for FUSE_ARCH_NONE and unassigned numbers. */
export function archByIndicator(indicator: number): Architecture | undefined {
  return architectures.find((a) => a.indicator === indicator);
}

/**
 * The architecture Node runs on. Every value process.arch can take on Linux
 * is a family name or alias above ('x64', 'ia32', 'mipsel', 'ppc64', 's390',
 * 'loong64', ...).
 */
export function hostArch(nodeArch: string = process.arch): Architecture {
  return resolveArch(nodeArch);
}
