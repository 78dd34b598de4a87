import test from 'ava';
import { getSystemErrorName } from 'node:util';
import {
  FUSE_ARCH_NONE,
  UnknownArchError,
  archByIndicator,
  architectures,
  canonicalArch,
  errnoName,
  errnoNumber,
  errnoToNodeCode,
  flagsToNames,
  hostArch,
  lockTypeName,
  lockTypeValue,
  openFlagValue,
  resolveArch,
  splitOpenFlags,
  type ArchFamily,
} from '../../client/arch/index.ts';

const x86 = resolveArch('x86_64');
const mips = resolveArch('mips64');

test('arch indicators are the project-wide numbers', (t) => {
  t.is(FUSE_ARCH_NONE, 0);
  t.deepEqual(
    architectures.map((a) => [a.indicator, a.family, a.name]),
    [
      [1, 'x86', 'x86_64'],
      [2, 'arm64', 'arm64'],
      [3, 'arm', 'arm'],
      [4, 'riscv', 'riscv64'],
      [5, 's390', 's390x'],
      [6, 'powerpc', 'ppc64'],
      [7, 'mips', 'mips64'],
      [8, 'sparc', 'sparc64'],
      [9, 'alpha', 'alpha'],
      [10, 'parisc', 'parisc'],
      [11, 'm68k', 'm68k'],
      [12, 'loongarch', 'loongarch64'],
    ],
  );
  t.is(archByIndicator(7), mips);
  t.is(archByIndicator(FUSE_ARCH_NONE), undefined);
  t.is(archByIndicator(13), undefined);
  t.is(canonicalArch, x86);
});

test('names and aliases resolve, in any case', (t) => {
  const expected: Record<string, string> = {
    x86: 'x86_64', i386: 'x86_64', amd64: 'x86_64', x64: 'x86_64', ia32: 'x86_64', X86_64: 'x86_64',
    aarch64: 'arm64', armhf: 'arm', armel: 'arm', riscv: 'riscv64', s390: 's390x',
    powerpc: 'ppc64', ppc64le: 'ppc64', ppc64el: 'ppc64', ppc: 'ppc64',
    mips: 'mips64', mips64el: 'mips64', mipsel: 'mips64', sparc: 'sparc64', hppa: 'parisc',
    loongarch: 'loongarch64', loong64: 'loongarch64',
  };
  for (const [name, arch] of Object.entries(expected)) t.is(resolveArch(name).name, arch, name);
  t.throws(() => resolveArch('vax'), { instanceOf: UnknownArchError, code: 'ERR_ARCH_UNKNOWN' });
});

test("hostArch maps every Linux value of Node's process.arch", (t) => {
  const node: Record<string, ArchFamily> = {
    x64: 'x86', ia32: 'x86', arm64: 'arm64', arm: 'arm', riscv64: 'riscv', s390: 's390', s390x: 's390',
    ppc: 'powerpc', ppc64: 'powerpc', mips: 'mips', mipsel: 'mips', loong64: 'loongarch',
  };
  for (const [value, family] of Object.entries(node)) t.is(hostArch(value).family, family, value);
  t.is(hostArch(), resolveArch(process.arch));
});

test('flagsToNames: access mode, then each bit; unknown bits in octal', (t) => {
  t.deepEqual(flagsToNames(0o2 | 0o40000, x86), ['O_RDWR', 'O_DIRECT']);
  t.deepEqual(flagsToNames(0, x86), ['O_RDONLY']);
  t.deepEqual(flagsToNames(0o3, x86), ['O_ACCMODE']);
  t.deepEqual(flagsToNames(0x1 | 0x8 | 0x8000 | 0x20, mips), ['O_WRONLY', 'O_APPEND', '__FMODE_EXEC', 'O_DIRECT']);
  t.deepEqual(flagsToNames(0o4010000, x86), ['O_RDONLY', 'O_DSYNC', '__O_SYNC'], 'O_SYNC is two bits');
  t.deepEqual(flagsToNames(0x4 | 0x80000000, x86), ['O_RDONLY', '04', '020000000000']);
  t.like(splitOpenFlags(0x4, x86)[1], { kind: 'bit', value: 4, known: false });
});

test('openFlagValue: bits, composites, access modes, kernel bits', (t) => {
  t.is(openFlagValue('O_DIRECT', resolveArch('arm64')), 0o200000);
  t.is(openFlagValue('O_SYNC', x86), 0o4010000);
  t.is(openFlagValue('O_TMPFILE', x86), 0o20200000);
  t.is(openFlagValue('O_NDELAY', x86), 0o4000);
  t.is(openFlagValue('O_NDELAY', resolveArch('sparc64')), 0x4);
  t.is(openFlagValue('O_RDWR', mips), 2);
  t.is(openFlagValue('__FMODE_EXEC', mips), 0x20);
  t.is(openFlagValue('O_BOGUS', x86), undefined);
  t.is(openFlagValue('toString', x86), undefined);
});

test('errnoName / errnoNumber, aliases included', (t) => {
  t.is(errnoName(93, mips), 'ENOTEMPTY');
  t.is(errnoName(11, x86), 'EAGAIN');
  t.is(errnoNumber('EWOULDBLOCK', x86), 11);
  t.is(errnoNumber('EDEADLOCK', x86), 35);
  t.is(errnoNumber('EDEADLOCK', resolveArch('ppc64')), 58);
  t.is(errnoNumber('ECANCELED', resolveArch('parisc')), 253);
  t.is(errnoName(253, resolveArch('parisc')), 'ECANCELLED');
  t.is(errnoName(1000, x86), undefined);
  t.is(errnoNumber('EINIT', x86), undefined);
});

test('errnoToNodeCode: the canonical name of the same error, as Node spells it', (t) => {
  t.is(errnoToNodeCode(2, x86), 'ENOENT');
  t.is(errnoToNodeCode(93, mips), 'ENOTEMPTY');
  t.is(errnoToNodeCode(253, resolveArch('parisc')), 'ECANCELED');
  t.is(errnoToNodeCode(58, resolveArch('ppc64')), 'EDEADLK');
  t.is(errnoToNodeCode(35, resolveArch('alpha')), 'EAGAIN');
  t.is(errnoToNodeCode(141, mips), 'EINIT', 'no x86 counterpart: its own name');
  t.is(errnoToNodeCode(122, mips), 'ENOTSUP', 'EOPNOTSUPP, as libuv names it');
  t.is(errnoToNodeCode(4000, x86), undefined);
});

test("errnoToNodeCode agrees with Node's own names on this host", (t) => {
  const host = hostArch();
  for (const n of Object.values(host.errno.numbers)) {
    const node = getSystemErrorName(-n);
    if (!node.startsWith('Unknown')) t.is(errnoToNodeCode(n, host), node, `errno ${n}`);
  }
});

test('lock type names', (t) => {
  t.is(lockTypeName(8, resolveArch('alpha')), 'F_UNLCK');
  t.is(lockTypeName(3, x86), undefined);
  t.is(lockTypeValue('F_WRLCK', resolveArch('sparc64')), 2);
  t.is(lockTypeValue('F_EXLCK', x86), undefined);
});
