// Device file handles (64-bit) behind the small numbers fuse-native can carry.
import test from 'ava';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { HandleMap, MAX_HANDLE } from '../../client/frontend/fuse-native/handles.ts';

test('handles start at 1 (0 means "none" to fuse-native) and map back to the device fh', (t) => {
  const map = new HandleMap<{ fh: bigint }>();
  const big = 0xdead_beef_cafe_f00dn;
  const h = map.add({ fh: big });
  t.is(h, 1);
  t.is(map.get(h)?.fh, big, 'the full 64-bit device fh');
  t.is(map.add({ fh: 2n }), 2);
  t.is(map.size, 2);
  t.is(map.remove(h)?.fh, big);
  t.is(map.get(h), undefined);
  t.is(map.remove(h), undefined, 'releasing twice finds nothing');
});

test('a released number is not handed out again right away', (t) => {
  const map = new HandleMap<string>();
  const a = map.add('a');
  map.remove(a);
  t.not(map.add('b'), a);
});

test('numbers wrap around below the limit, skipping those still open', (t) => {
  const map = new HandleMap<string>(4);
  t.deepEqual([map.add('a'), map.add('b'), map.add('c'), map.add('d')], [1, 2, 3, 4]);
  const full = t.throws(() => map.add('e'));
  t.is((full as Error & { code?: string }).code, 'EMFILE');
  map.remove(2);
  map.remove(4);
  t.is(map.add('e'), 2, 'after 4 comes 1 (open), then 2');
  t.is(map.add('f'), 4);
  t.deepEqual([...map.values()].sort(), ['a', 'c', 'e', 'f']);
});

test('every handle fits the int32 fuse-native returns from open', (t) => {
  t.is(MAX_HANDLE, 2 ** 31 - 1);
  t.throws(() => new HandleMap(2 ** 31), { instanceOf: RangeError });
  const map = new HandleMap<number>();
  for (let i = 0; i < 1000; i++) {
    const h = map.add(i);
    t.true(h >= 1 && h <= MAX_HANDLE && (h | 0) === h);
  }
});

test('known limitation, proven in the installed fuse-native: a file handle crosses as 32 bits', (t) => {
  // Why the map exists: fuse-native.c returns open's handle with NAPI_ARGV_INT32 and hands
  // fuse_file_info.fh to read/write/release with napi_create_uint32 (truncating a uint64_t).
  const source = readFileSync(createRequire(import.meta.url).resolve('fuse-native/fuse-native.c'), 'utf8');
  const open = /FUSE_METHOD\(open,[\s\S]*?\n\}\)/.exec(source)?.[0] ?? '';
  t.regex(open, /NAPI_ARGV_INT32\(fd, 2\)/, 'open: the handle comes back as an int32');
  const read = /FUSE_METHOD\(read,[\s\S]*?\n\}\)/.exec(source)?.[0] ?? '';
  t.regex(read, /napi_create_uint32\(env, l->info->fh/, 'read: fh passed as a uint32');
});
