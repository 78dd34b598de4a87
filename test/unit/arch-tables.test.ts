/**
 * The client/arch tables against the real uapi headers of every architecture:
 * each header set is preprocessed with cpp, each macro's expansion evaluated,
 * and the result compared with the hand-written tables.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import {
  architectures,
  genericErrno,
  genericLockTypes,
  genericOpenFlags,
  hostArch,
  ioctlCommandName,
  ioctlCommandValue,
  translator,
  kernelOpenFlags,
  openFlagValue,
  resolveArch,
  type Architecture,
  type ArchFamily,
} from '../../client/arch/index.ts';
import { evaluateC } from '../helpers/c-expr.ts';

const SETUP_HINT = 'run `bash scripts/setup.sh --for-tests` (installs the linux-libc-dev-<arch>-cross headers)';

interface HeaderSet {
  label: string;
  family: ArchFamily;
  /** Include directory, or undefined for the host compiler's own search path. */
  include?: string;
  /** Macros the architecture's own compiler predefines that these headers test. */
  defines?: string[];
}

/** Debian's cross headers: triplet, the family it belongs to, and what its compiler predefines that matters. */
const triplets: [triplet: string, family: ArchFamily, defines?: string[]][] = [
  ['x86_64-linux-gnu', 'x86'],
  ['i686-linux-gnu', 'x86'],
  ['aarch64-linux-gnu', 'arm64'],
  ['arm-linux-gnueabihf', 'arm'],
  ['alpha-linux-gnu', 'alpha'],
  ['hppa-linux-gnu', 'parisc'],
  ['m68k-linux-gnu', 'm68k'],
  ['mips64el-linux-gnuabi64', 'mips'],
  ['mipsel-linux-gnu', 'mips'],
  ['powerpc-linux-gnu', 'powerpc'],
  ['powerpc64le-linux-gnu', 'powerpc'],
  ['riscv64-linux-gnu', 'riscv'],
  ['s390x-linux-gnu', 's390'],
  // sparc's fcntl.h spells O_NDELAY by these: 0x0004 on sparc64, (0x0004 | O_NONBLOCK) on sparc32.
  ['sparc64-linux-gnu', 'sparc', ['__sparc__', '__arch64__']],
];

const headerSets: HeaderSet[] = [
  ...triplets.map(([label, family, defines]) => ({ label, family, include: `/usr/${label}/include`, defines })),
  { label: `host (${process.arch}, default include path)`, family: hostArch().family },
];

/** cpp, with the headers of `set` and nothing of the host's unless it is the host set. */
function preprocess(set: HeaderSet, source: string, flags: string[]): string {
  const args = set.include === undefined ? [] : ['-undef', '-nostdinc', `-I${set.include}`];
  args.push(...(set.defines ?? []).map((d) => `-D${d}`), ...flags, '-');
  try {
    return execFileSync('cpp', args, { input: source, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new Error('cpp (the C preprocessor) is not installed: apt-get install cpp');
    throw new Error(`cpp failed for ${set.label}: ${e.stderr ?? e.message}; ${SETUP_HINT}`);
  }
}

interface Macro {
  value: number;
  /** The macro names its definition refers to: an alias, or a composite flag. */
  refersTo: string[];
}

interface HeaderValues {
  open: Map<string, Macro>;
  errno: Map<string, Macro>;
  lock: Map<string, Macro>;
}

const isOpenFlag = (name: string) => /^(O_[A-Z]+|__O_[A-Z]+|FASYNC)$/.test(name) && name !== 'O_TMPFILE_MASK';
const isErrno = (name: string) => /^E[A-Z0-9]+$/.test(name);
const isLockType = (name: string) => /^F_(RD|WR|UN)LCK$/.test(name);

/** Every O_*, E* and F_*LCK macro of asm/fcntl.h and asm/errno.h, evaluated. */
function readHeaders(set: HeaderSet): HeaderValues {
  const includes = '#include <asm/fcntl.h>\n#include <asm/errno.h>\n';
  const definitions = new Map<string, string>();
  for (const m of preprocess(set, includes, ['-dM']).matchAll(/^#define ([A-Za-z_]\w*) (.*)$/gm)) {
    definitions.set(m[1]!, m[2]!.trim());
  }
  const wanted = [...definitions.keys()].filter((n) => isOpenFlag(n) || isErrno(n) || isLockType(n));
  // A second pass expands each macro fully; the quoted label is left alone by cpp.
  const probe = includes + wanted.map((n) => `@@ "${n}" = ${n}\n`).join('');
  const values = new Map<string, number>();
  for (const m of preprocess(set, probe, ['-P']).matchAll(/^@@ "(\w+)" = (.*)$/gm)) values.set(m[1]!, evaluateC(m[2]!));

  const result: HeaderValues = { open: new Map(), errno: new Map(), lock: new Map() };
  for (const name of wanted) {
    const refersTo = definitions.get(name)!.match(/[A-Za-z_]\w*/g)?.filter((w) => definitions.has(w)) ?? [];
    const macro = { value: values.get(name)!, refersTo };
    const kind = isOpenFlag(name) ? 'open' : isErrno(name) ? 'errno' : 'lock';
    result[kind].set(name, macro);
  }
  return result;
}

const sorted = <V>(entries: Iterable<[string, V]>): [string, V][] => [...entries].sort(([a], [b]) => (a < b ? -1 : 1));

function compare(t: import('ava').ExecutionContext, arch: Architecture, headers: HeaderValues): void {
  const { accessModes, bits, composites } = arch.openFlags;
  const tableOpenNames = [...Object.keys(accessModes), ...Object.keys(bits), ...Object.keys(composites)];
  t.deepEqual(
    sorted(tableOpenNames.map((n): [string, number] => [n, openFlagValue(n, arch)!])),
    sorted([...headers.open].map(([n, m]): [string, number] => [n, m.value])),
    'every open flag name and value',
  );
  t.deepEqual(
    Object.keys(composites).sort(),
    [...headers.open].filter(([, m]) => m.refersTo.length > 0).map(([n]) => n).sort(),
    'composites are exactly the names the header defines through other flags',
  );
  for (const [name, parts] of Object.entries(composites)) {
    t.deepEqual([...parts].sort(), [...headers.open.get(name)!.refersTo].sort(), `${name} is made of`);
  }

  const headerAliases = [...headers.errno].filter(([, m]) => m.refersTo.length > 0);
  t.deepEqual(
    sorted(Object.entries(arch.errno.numbers)),
    sorted([...headers.errno].filter(([, m]) => m.refersTo.length === 0).map(([n, m]): [string, number] => [n, m.value])),
    'every errno number',
  );
  t.deepEqual(
    sorted(Object.entries(arch.errno.aliases)),
    sorted(headerAliases.map(([n, m]): [string, string] => [n, m.refersTo[0]!])),
    'every errno alias',
  );

  t.deepEqual(
    sorted(Object.entries(arch.lockTypes.types)),
    sorted([...headers.lock].map(([n, m]): [string, number] => [n, m.value])),
    'lock types',
  );
}

for (const set of headerSets) {
  test(`${set.label}: the ${set.family} tables equal the header values`, (t) => {
    const probe = set.include === undefined ? '/usr/include/asm-generic/fcntl.h' : `${set.include}/asm/fcntl.h`;
    if (!existsSync(probe)) {
      t.fail(`${probe} is missing: ${set.include === undefined ? 'install linux-libc-dev' : SETUP_HINT}`);
      return;
    }
    compare(t, resolveArch(set.family), readHeaders(set));
  });
}

/** sizeof(long) on a triplet: 8 on the 64-bit ones. */
const longBytes = (label: string) => (/^(x86_64|aarch64|alpha|mips64|powerpc64|riscv64|s390x|sparc64)|^host/.test(label) ? 8 : 4);
const IOCTL_NAMES = ['FS_IOC_GETFLAGS', 'FS_IOC_SETFLAGS', 'FS_IOC32_GETFLAGS', 'FS_IOC32_SETFLAGS', 'FS_IOC_FSGETXATTR', 'FS_IOC_FSSETXATTR'];

/** The fileattr ioctl commands as linux/fs.h defines them for `set`, sizeof() replaced by the triplet's sizes. */
function readIoctls(set: HeaderSet): Map<string, number> {
  const probe = '#include <linux/fs.h>\n' + IOCTL_NAMES.map((n) => `@@ "${n}" = ${n}\n`).join('');
  const sizes: Record<string, number> = { long: longBytes(set.label), int: 4, 'struct fsxattr': 28 };
  const values = new Map<string, number>();
  for (const m of preprocess(set, probe, ['-P']).matchAll(/^@@ "(\w+)" = (.*)$/gm)) {
    const expression = m[2]!.replace(/\(unsigned int\)/g, "").replace(/sizeof\(([^)]+)\)/g, (_, type: string) => {
      const size = sizes[type.trim()];
      if (size === undefined) throw new Error(`${m[1]}: sizeof(${type}) unknown`);
      return String(size);
    });
    values.set(m[1]!, evaluateC(expression));
  }
  return values;
}

for (const set of headerSets) {
  test(`${set.label}: the fileattr ioctl commands of the ${set.family} layout equal linux/fs.h's`, (t) => {
    const probe = set.include === undefined ? '/usr/include/linux/fs.h' : `${set.include}/linux/fs.h`;
    if (!existsSync(probe)) {
      t.fail(`${probe} is missing: ${set.include === undefined ? 'install linux-libc-dev' : SETUP_HINT}`);
      return;
    }
    const arch = resolveArch(set.family);
    const headers = readIoctls(set);
    t.deepEqual([...headers.keys()].sort(), [...IOCTL_NAMES].sort(), 'every command found');
    for (const name of IOCTL_NAMES) {
      t.is(ioctlCommandValue(name, arch, longBytes(set.label)), headers.get(name), name);
    }
    // Each header value names its command back (4-byte flags commands as FS_IOC32_*).
    t.is(ioctlCommandName(headers.get('FS_IOC_FSSETXATTR')!, arch), 'FS_IOC_FSSETXATTR');
    t.is(ioctlCommandName(headers.get('FS_IOC32_GETFLAGS')!, arch), 'FS_IOC32_GETFLAGS');
    // From x86_64 (the canonical encoding) to this triplet and back: the header's own values.
    const x86 = resolveArch('x86_64');
    const out = translator('ioctl', x86, arch);
    const back = translator('ioctl', arch, x86);
    for (const name of IOCTL_NAMES) {
      const x86Value = ioctlCommandValue(name, x86, longBytes(set.label))!;
      t.is(out.translate(x86Value), headers.get(name)!, `x86_64 ${name} -> ${set.label}`);
      t.is(back.translate(headers.get(name)!), x86Value, `${set.label} ${name} -> x86_64`);
    }
    // A command the kernel does not interpret passes untouched (FS_IOC_GETVERSION, _IOR('v', 1, long)).
    const getVersion = ((2 << 30) | (8 << 16) | (0x76 << 8) | 1) >>> 0;
    t.is(out.translate(getVersion), getVersion);
  });
}

test('loongarch has no asm/fcntl.h or asm/errno.h of its own upstream: it uses the generic tables', (t) => {
  const loongarch = resolveArch('loongarch64');
  t.is(loongarch.openFlags, genericOpenFlags);
  t.is(loongarch.errno, genericErrno);
  t.is(loongarch.lockTypes, genericLockTypes);
});

test('every open flag bit is one bit, outside the access mode field, and unique within its encoding', (t) => {
  for (const { openFlags } of architectures) {
    const seen = new Map<number, string>();
    for (const [name, bit] of Object.entries(openFlags.bits)) {
      t.true(bit > 0 && (bit & (bit - 1)) === 0, `${openFlags.name} ${name} is a single bit`);
      t.is(bit & openFlags.accessModes.O_ACCMODE, 0, `${openFlags.name} ${name} is outside O_ACCMODE`);
      t.false(seen.has(bit), `${openFlags.name} ${name} collides with ${seen.get(bit)}`);
      seen.set(bit, name);
    }
  }
});

test('kernel-internal bits are single bits clear of every encoding\'s uapi bits', (t) => {
  for (const [name, { value }] of Object.entries(kernelOpenFlags)) {
    t.true((value & (value - 1)) === 0 && value > 0, `${name} is a single bit`);
    for (const { openFlags } of architectures) {
      const clash = Object.entries(openFlags.bits).find(([, bit]) => bit === value);
      t.is(clash, undefined, `${name} overlaps ${openFlags.name} ${clash?.[0]}`);
      t.is(value & openFlags.accessModes.O_ACCMODE, 0);
    }
  }
});

test('every bit some encoding lacks states its outcome there (no bit relies on the default refusal)', (t) => {
  const encodings = new Set(architectures.map((a) => a.openFlags));
  for (const source of encodings) {
    for (const name of Object.keys(source.bits)) {
      const lackedBy = [...encodings].filter((e) => !Object.hasOwn(e.bits, name)).map((e) => e.name);
      if (lackedBy.length > 0) t.truthy(source.withoutCounterpart[name], `${source.name} ${name} (absent on ${lackedBy.join(', ')})`);
    }
    for (const name of Object.keys(source.withoutCounterpart)) t.true(Object.hasOwn(source.bits, name), `${source.name} ${name} is a bit`);
  }
});

test('errno: one primary name per number, aliases name a primary', (t) => {
  for (const errno of new Set(architectures.map((a) => a.errno))) {
    const numbers = Object.values(errno.numbers);
    t.is(new Set(numbers).size, numbers.length, `${errno.name}: numbers are unique`);
    for (const [alias, primary] of Object.entries(errno.aliases)) {
      t.true(Object.hasOwn(errno.numbers, primary), `${errno.name}: ${alias} -> ${primary}`);
      t.false(Object.hasOwn(errno.numbers, alias), `${errno.name}: ${alias} is not also a primary name`);
    }
  }
});
