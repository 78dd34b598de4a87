// Every declared wire struct against the C compiler's layout of the system's
// own <linux/fuse.h>: size and each field's offset, so a declaration that
// drifts from the kernel ABI fails here rather than on the wire.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as protocol from '../../client/protocol/index.ts';
import { Struct } from '../../ffi/struct.ts';

const HEADER = '/usr/include/linux/fuse.h';

/** Our names for words that are `unused`/`__reserved` upstream (the arch extension, C keywords). */
const cName: Record<string, string> = {
  'fuse_init_in.arch_indicator': 'unused[0]',
  'fuse_init_in.unused': 'unused[1]',
  'fuse_init_out.unused0': 'unused[0]',
  'fuse_init_out.arch_indicator': 'unused[1]',
  'fuse_init_out.unused': 'unused[3]',
  'fuse_sx_time.reserved': '__reserved',
  'fuse_statx.spare0': '__spare0',
  'fuse_statx.spare2': '__spare2',
};

const structs: Struct<any>[] = (Object.values(protocol) as unknown[]).filter((v): v is Struct<any> => v instanceof Struct);

test('the header is there to compare with', (t) => {
  t.true(existsSync(HEADER), `${HEADER} is missing: run bash scripts/setup.sh --for-tests`);
  t.true(structs.length >= 40, `found ${structs.length} declared structs`);
});

test('every struct matches the C layout of <linux/fuse.h>', (t) => {
  const headerText = execFileSync('cpp', ['-P', HEADER], { encoding: 'utf8' });
  const present = structs.filter((s) => new RegExp(`struct ${s.name}\\s*\\{`).test(headerText));
  const absent = structs.filter((s) => !present.includes(s)).map((s) => s.name);
  if (absent.length) t.log(`not in this ${HEADER} (newer than its protocol), checked by size only: ${absent.join(', ')}`);
  t.true(present.length >= 35);

  // Fields newer than this header (it may be an older protocol) are compared by offset only where present.
  const body = (s: Struct<any>) => new RegExp(`struct ${s.name}\\s*\\{([^}]*)\\}`).exec(headerText)?.[1] ?? '';
  const lines = ['#include <stddef.h>', '#include <stdio.h>', `#include "${HEADER}"`, 'int main(void) {'];
  const compared: string[] = [];
  const newer: string[] = [];
  for (const s of present) {
    const members = body(s);
    lines.push(`printf("${s.name} %zu\\n", sizeof(struct ${s.name}));`);
    const inHeader = (c: string) => new RegExp(`\\b${c.replace(/\[.*/, '')}\\b`).test(members);
    // Renamed words (`unused[...]`) sit where they do only in a header as new as our declaration.
    const headerIsCurrent = s.fields.every((f) => `${s.name}.${f.name}` in cName || inHeader(f.name));
    for (const f of s.fields) {
      const renamed = cName[`${s.name}.${f.name}`];
      const c = renamed ?? f.name;
      if (!inHeader(c) || (renamed && !headerIsCurrent)) {
        newer.push(`${s.name}.${f.name}`);
        continue;
      }
      compared.push(`${s.name}.${f.name}`);
      lines.push(`printf("${s.name}.${f.name} %zu\\n", offsetof(struct ${s.name}, ${c}));`);
    }
  }
  if (newer.length) t.log(`fields newer than ${HEADER}: ${newer.join(', ')}`);
  lines.push('return 0; }');
  const dir = mkdtempSync(join(tmpdir(), 'fuse-layout-'));
  writeFileSync(join(dir, 'layout.c'), lines.join('\n'));
  execFileSync('cc', ['-o', join(dir, 'layout'), join(dir, 'layout.c')]);
  const c = new Map(
    execFileSync(join(dir, 'layout'), { encoding: 'utf8' })
      .trim()
      .split('\n')
      .map((l) => l.split(' ') as [string, string]),
  );
  for (const s of present) t.is(s.size, Number(c.get(s.name)), `sizeof(struct ${s.name})`);
  for (const name of compared) {
    const [sName, fName] = name.split('.') as [string, string];
    const s = present.find((x) => x.name === sName)!;
    t.is(s.field(fName as never).offset, Number(c.get(name)), name);
  }
  t.true(compared.length > 170, `compared ${compared.length} field offsets`);
});

/** A value for every field, different per field, covering the full width of each type. */
function sample(s: Struct<any>, seed: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  let n = seed;
  const next = (bits: number, signed: boolean): number | bigint => {
    n = (n * 1103515245 + 12345) % 2 ** 31;
    if (bits === 64) {
      const v = (BigInt(n) << 33n) ^ BigInt(n * 7919) ^ (1n << 63n);
      return signed ? BigInt.asIntN(64, v) : v;
    }
    const v = (n * 2654435761) % 2 ** bits;
    return signed ? v - 2 ** (bits - 1) : v;
  };
  for (const f of s.fields) {
    const t = f.type;
    if (typeof t === 'string') out[f.name] = next(t === 'u8' ? 8 : t === 'u16' ? 16 : t.endsWith('64') ? 64 : 32, t.startsWith('i'));
    else if (t instanceof Struct) out[f.name] = sample(t, n + 1);
    else out[f.name] = Array.from({ length: t.count }, () => next(t.array.endsWith('64') ? 64 : t.array === 'u16' ? 16 : 32, false));
  }
  return out;
}

test('codec round trip for every struct', (t) => {
  for (const s of structs) {
    const value = sample(s, s.size);
    const bytes = new Uint8Array(s.size + 16);
    s.encode(new DataView(bytes.buffer), 8, value);
    t.deepEqual(s.decode(new DataView(bytes.buffer), 8), value, s.name);
    // Encoding stays inside its struct.
    t.deepEqual([...bytes.subarray(0, 8), ...bytes.subarray(8 + s.size)], new Array(16).fill(0), `${s.name} writes outside`);
  }
});

test('a declaration that disagrees with the documented size is rejected at load', (t) => {
  t.throws(() => protocol.struct('bad', { a: 'u32', b: 'u64' }, 12), { message: /16 bytes, the header says 12/ });
});

test('single-field access matches full decode', (t) => {
  const s = protocol.fuse_in_header;
  const bytes = s.toBytes({ len: 99, opcode: 15, unique: 7n, nodeid: 1n << 60n });
  const view = new DataView(bytes.buffer);
  t.is(s.get(view, 0, 'nodeid'), 1n << 60n);
  s.set(view, 0, 'len', 1234);
  t.is(s.decode(view).len, 1234);
  t.is(s.offsetOf('unique'), 8);
});
