import test from 'ava';
import {
  ArchTranslationError,
  architectures,
  errnoNames,
  errnoNumber,
  kernelOpenFlags,
  openFlagValue,
  resolveArch,
  translateErrno,
  translateLockType,
  translateOpenFlags,
  translator,
  type Architecture,
  type Dropped,
} from '../../client/arch/index.ts';

const pairs: [Architecture, Architecture][] = architectures.flatMap((a) => architectures.map((b): [Architecture, Architecture] => [a, b]));
const crossPairs = pairs.filter(([a, b]) => a.openFlags !== b.openFlags);

/** Runs `fn`, returning its result and what it reported dropped. */
function collect(fn: (onDrop: (d: Dropped) => void) => number): { value: number; dropped: Dropped[] } {
  const dropped: Dropped[] = [];
  const value = fn((d) => dropped.push(d));
  return { value, dropped };
}

// ---- the classic cases ----

test('x86 O_DIRECT (040000) is arm64 0200000, and x86 O_DIRECTORY (0200000) is arm64 040000', (t) => {
  t.is(translateOpenFlags(0o40000, 'x86_64', 'arm64'), 0o200000);
  t.is(translateOpenFlags(0o200000, 'x86_64', 'arm64'), 0o40000);
  t.is(translateOpenFlags(0o200000, 'arm64', 'x86_64'), 0o40000);
  t.is(translateOpenFlags(0o40000, 'arm64', 'x86_64'), 0o200000);
});

test('x86 O_APPEND (02000) is mips 0x8; x86 O_WRONLY|O_CREAT|O_TRUNC|O_LARGEFILE is mips 0x2301', (t) => {
  t.is(translateOpenFlags(0o2000, 'x86_64', 'mips64'), 0x8);
  t.is(translateOpenFlags(0o1 | 0o100 | 0o1000 | 0o100000, 'x86_64', 'mipsel'), 0x1 | 0x100 | 0x200 | 0x2000);
});

test('mips ENOTEMPTY (93) is x86 39, and the other way', (t) => {
  t.is(translateErrno(93, 'mips64', 'x86_64'), 39);
  t.is(translateErrno(39, 'x86_64', 'mips64'), 93);
  t.is(translateErrno(-93, 'mips64', 'x86_64'), -39, 'fuse_out_header.error keeps its sign');
  t.is(translateErrno(0, 'mips64', 'x86_64'), 0);
});

test('sparc and alpha lock types', (t) => {
  t.is(translateLockType(1, 'sparc64', 'x86_64'), 0, 'F_RDLCK');
  t.is(translateLockType(2, 'sparc64', 'x86_64'), 1, 'F_WRLCK');
  t.is(translateLockType(3, 'sparc64', 'x86_64'), 2, 'F_UNLCK');
  t.is(translateLockType(3, 'sparc64', 'alpha'), 8, 'F_UNLCK');
  t.is(translateLockType(8, 'alpha', 'x86_64'), 2, 'F_UNLCK');
  t.is(translateLockType(2, 'x86_64', 'alpha'), 8, 'F_UNLCK');
  t.is(translateLockType(0, 'x86_64', 'sparc64'), 1, 'F_RDLCK');
  t.is(translateLockType(3, 'parisc', 'sparc64'), 3, 'parisc and sparc agree');
});

// ---- every pair ----

function form(name: string, arch: Architecture): string | undefined {
  const { accessModes, bits, composites } = arch.openFlags;
  if (Object.hasOwn(accessModes, name)) return 'access mode';
  if (Object.hasOwn(bits, name)) return 'bit';
  return Object.hasOwn(composites, name) ? 'composite' : undefined;
}

test('open flags: every flag both encodings define maps by name, both ways, for every pair', (t) => {
  for (const [a, b] of pairs) {
    const names = [...Object.keys(a.openFlags.accessModes), ...Object.keys(a.openFlags.bits), ...Object.keys(a.openFlags.composites)];
    // O_NDELAY is a bit on sparc and O_NONBLOCK elsewhere: that one has its own test.
    for (const name of names.filter((n) => form(n, a) === form(n, b))) {
      const here = openFlagValue(name, a)!;
      const there = openFlagValue(name, b)!;
      t.is(translateOpenFlags(here, a, b), there, `${name}: ${a.name} -> ${b.name}`);
      t.is(translateOpenFlags(translateOpenFlags(here, a, b), b, a), here, `${name}: ${a.name} -> ${b.name} -> back`);
    }
  }
});

test('open flags: all of an encoding\'s bits at once, and a full round trip', (t) => {
  for (const [a, b] of pairs) {
    const shared = Object.entries(a.openFlags.bits).filter(([name]) => Object.hasOwn(b.openFlags.bits, name));
    const flags = shared.reduce((v, [, bit]) => v | bit, 0o2) >>> 0;
    const expected = shared.reduce((v, [name]) => v | b.openFlags.bits[name]!, 0o2) >>> 0;
    const { value, dropped } = collect((onDrop) => translateOpenFlags(flags, a, b, onDrop));
    t.is(value, expected, `${a.name} -> ${b.name}`);
    t.deepEqual(dropped, []);
    t.is(translateOpenFlags(value, b, a), flags);
  }
});

test('open flags: __FMODE_EXEC is carried unchanged, __FMODE_NONOTIFY dropped with its reason', (t) => {
  const exec = kernelOpenFlags.__FMODE_EXEC!.value;
  const nonotify = kernelOpenFlags.__FMODE_NONOTIFY!.value;
  for (const [a, b] of crossPairs) {
    t.is(translateOpenFlags(exec, a, b), exec);
    const { value, dropped } = collect((onDrop) => translateOpenFlags(nonotify | a.openFlags.bits.O_CREAT!, a, b, onDrop));
    t.is(value, b.openFlags.bits.O_CREAT!);
    t.like(dropped, [{ kind: 'open', name: '__FMODE_NONOTIFY', value: nonotify, reason: kernelOpenFlags.__FMODE_NONOTIFY!.reason }]);
  }
});

test('open flags: sparc\'s own O_NDELAY bit is dropped everywhere else, with its reason', (t) => {
  const sparc = resolveArch('sparc64');
  for (const other of architectures.filter((a) => a.openFlags !== sparc.openFlags)) {
    const { value, dropped } = collect((onDrop) => translateOpenFlags(0x4004, sparc, other, onDrop));
    t.is(value, other.openFlags.bits.O_NONBLOCK!, `O_NDELAY|O_NONBLOCK -> ${other.name}: O_NONBLOCK alone`);
    t.is(dropped.length, 1);
    t.like(dropped[0], { kind: 'open', name: 'O_NDELAY', value: 0x4 });
    t.regex(dropped[0]!.reason, /no counterpart/);
    t.is(translateOpenFlags(openFlagValue('O_NDELAY', other)!, other, sparc), 0x4000, 'their O_NDELAY is O_NONBLOCK');
  }
});

test('open flags: a bit the source does not define is refused, naming it and both architectures', (t) => {
  for (const [a, b] of crossPairs) {
    const defined = Object.values(a.openFlags.bits).reduce((v, bit) => v | bit, a.openFlags.accessModes.O_ACCMODE)
      | Object.values(kernelOpenFlags).reduce((v, k) => v | k.value, 0);
    for (let i = 0; i < 32; i++) {
      const bit = 2 ** i;
      if ((defined & bit) !== 0) continue;
      const err = t.throws(() => translateOpenFlags(bit | 0o2, a, b), { instanceOf: ArchTranslationError });
      t.like(err, { code: 'ERR_ARCH_UNDEFINED_VALUE', kind: 'open', value: bit, from: a.name, to: b.name });
      t.true(err!.message.includes(a.name) && err!.message.includes(b.name));
    }
  }
});

test('open flags: a bit without counterpart and without a stated outcome is refused (ERR_ARCH_NO_COUNTERPART)', (t) => {
  const x86 = resolveArch('x86_64');
  // A made-up architecture with one extra bit, to exercise the default outcome.
  const extra: Architecture = {
    ...x86,
    name: 'extra',
    openFlags: { ...x86.openFlags, name: 'extra', bits: { ...x86.openFlags.bits, O_EXTRA: 0o100000000 } },
  };
  const err = t.throws(() => translateOpenFlags(0o100000000 | 0o100, extra, x86), { instanceOf: ArchTranslationError });
  t.like(err, { code: 'ERR_ARCH_NO_COUNTERPART', valueName: 'O_EXTRA', from: 'extra', to: 'x86_64' });
  t.is(translateOpenFlags(0o100, extra, x86), 0o100);
});

test('errno: every name both encodings define maps by name, and round trips where both give it its own number', (t) => {
  for (const [a, b] of pairs) {
    for (const [name, n] of Object.entries(a.errno.numbers)) {
      const there = errnoNumber(name, b);
      if (there === undefined) continue;
      const { value, dropped } = collect((onDrop) => translateErrno(n, a, b, onDrop));
      t.is(value, there, `${name}: ${a.name} ${n} -> ${b.name}`);
      t.deepEqual(dropped, []);
      if (Object.hasOwn(b.errno.numbers, name)) t.is(translateErrno(value, b, a), n, `${name}: back to ${a.name}`);
    }
  }
});

test('errno: a number known only by another name crosses by that name', (t) => {
  t.is(translateErrno(253, 'parisc', 'x86_64'), 125, 'ECANCELLED is ECANCELED');
  t.is(translateErrno(125, 'x86_64', 'parisc'), 253);
  t.is(translateErrno(58, 'ppc64', 'x86_64'), 35, "powerpc's own EDEADLOCK is x86's EDEADLOCK, i.e. EDEADLK");
  t.is(translateErrno(56, 'mips64', 'sparc64'), 108, 'EDEADLOCK has its own number on both');
  t.is(translateErrno(35, 'alpha', 'x86_64'), 11, 'alpha EAGAIN');
  t.is(translateErrno(11, 'alpha', 'x86_64'), 35, 'alpha EDEADLK');
});

test('errno: a device errno with no counterpart becomes EIO, with the reason', (t) => {
  const onlyHere: [string, string[]][] = [
    ['mips64', ['EINIT', 'EREMDEV']],
    ['sparc64', ['EPROCLIM', 'ERREMOTE']],
    ['parisc', ['ENOSYM', 'EREMOTERELEASE']],
  ];
  for (const [device, names] of onlyHere) {
    for (const name of names) {
      for (const client of architectures.filter((a) => a.errno !== resolveArch(device).errno)) {
        const n = errnoNumber(name, resolveArch(device))!;
        const { value, dropped } = collect((onDrop) => translateErrno(-n, device, client, onDrop));
        t.is(value, -errnoNumber('EIO', client)!, `${device} ${name} -> ${client.name}`);
        t.like(dropped, [{ kind: 'errno', name, value: n }]);
        t.true(dropped[0]!.reason.includes(name) && dropped[0]!.reason.includes(client.name));
      }
    }
  }
});

test('errno: every number without counterpart is reported, on every pair', (t) => {
  for (const [a, b] of pairs) {
    if (a.errno === b.errno) continue;
    for (const [name, n] of Object.entries(a.errno.numbers)) {
      if (errnoNames(n, a).some((alias) => errnoNumber(alias, b) !== undefined)) continue;
      const { value, dropped } = collect((onDrop) => translateErrno(n, a, b, onDrop));
      t.is(value, 5);
      t.like(dropped, [{ name, value: n }]);
    }
  }
});

test('errno: a number the device does not define becomes EIO, with the reason', (t) => {
  const { value, dropped } = collect((onDrop) => translateErrno(-4000, 'mips64', 'x86_64', onDrop));
  t.is(value, -5);
  t.like(dropped, [{ kind: 'errno', name: '4000', value: 4000 }]);
  t.regex(dropped[0]!.reason, /not defined on mips64/);
});

test('lock types: all three map by name for every pair; anything else is refused', (t) => {
  for (const [a, b] of pairs) {
    for (const [name, type] of Object.entries(a.lockTypes.types)) {
      const there = b.lockTypes.types[name as keyof typeof b.lockTypes.types];
      t.is(translateLockType(type, a, b), there, `${name}: ${a.name} -> ${b.name}`);
      t.is(translateLockType(there, b, a), type);
    }
    if (a.lockTypes === b.lockTypes) continue;
    for (const bad of [-1, 4, 16, 0x7fff].filter((v) => !Object.values(a.lockTypes.types).includes(v))) {
      const err = t.throws(() => translateLockType(bad, a, b), { instanceOf: ArchTranslationError });
      t.like(err, { code: 'ERR_ARCH_UNDEFINED_VALUE', kind: 'lock', value: bad, from: a.name, to: b.name });
    }
  }
});

// ---- identity and caching ----

test('identical encodings: the translator is the identity and looks at nothing', (t) => {
  const x86 = resolveArch('x86_64');
  for (const kind of ['open', 'errno', 'lock'] as const) {
    const same = translator(kind, x86, 'riscv64');
    t.true(same.identity);
    for (const v of [0, 0o40000, 0xffffffff, 12345]) t.is(same.translate(v), v);
  }
  t.true(translator('open', 'arm64', 'm68k').identity);
  t.true(translator('errno', 'ppc64', 'powerpc').identity);
  t.true(translator('lock', 'sparc64', 'parisc').identity);
  t.false(translator('open', 'x86_64', 'arm64').identity);
  t.false(translator('errno', 'x86_64', 'ppc64').identity, 'powerpc differs in EDEADLOCK');
});

test('translators are built once per pair and kind', (t) => {
  t.is(translator('open', 'x86_64', 'mips64'), translator('open', resolveArch('amd64'), 'mipsel'));
  t.not(translator('open', 'x86_64', 'mips64'), translator('errno', 'x86_64', 'mips64'));
});

test('an unknown architecture name is an UnknownArchError', (t) => {
  t.throws(() => translateOpenFlags(0, 'vax', 'x86_64'), { code: 'ERR_ARCH_UNKNOWN', message: /'vax'/ });
});
