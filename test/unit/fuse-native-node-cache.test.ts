// The fuse-native frontend's path -> node id cache against a scripted device:
// lookup counts given back exactly (FORGET / BATCH_FORGET), the device's
// timeouts, coherence across rename/unlink/rmdir, pins, races, eviction.
import test from 'ava';
import { ErrnoError, errnoNumber } from '../../ffi/errno.ts';
import type { Attr } from '../../client/client.ts';
import { NodeCache, pathParts, splitPath, type CacheDevice, type EntryReply, type ForgetItem } from '../../client/frontend/fuse-native/node-cache.ts';

function attrOf(ino: bigint, size = 0n): Attr {
  return {
    ino,
    size,
    blocks: 0n,
    atime: 0n,
    mtime: 0n,
    ctime: 0n,
    atimensec: 0,
    mtimensec: 0,
    ctimensec: 0,
    mode: 0o100644,
    nlink: 1,
    uid: 0,
    gid: 0,
    rdev: 0,
    blksize: 4096,
    flags: 0,
  };
}

interface Deferred {
  resolve: () => void;
}

/**
 * A device with a name tree, which counts lookups per node id exactly as
 * virtiofsd does and takes them back on FORGET. Lookups can be held back
 * (`hold`) to stage races.
 */
class FakeDevice implements CacheDevice {
  readonly names = new Map<bigint, Map<string, bigint>>([[1n, new Map()]]);
  readonly counts = new Map<bigint, bigint>();
  readonly forgets: ForgetItem[][] = [];
  readonly calls: string[] = [];
  entryValidMs = 1000;
  attrValidMs = 1000;
  sizes = new Map<bigint, bigint>();
  private nextId = 100n;
  private held: Deferred[] | undefined;

  add(parent: bigint, name: string, dir = false): bigint {
    const id = this.nextId++;
    this.names.get(parent)!.set(name, id);
    if (dir) this.names.set(id, new Map());
    return id;
  }

  /** Creates the node and counts the lookup its reply carries (MKNOD/MKDIR). */
  create(parent: bigint, name: string, dir = false): EntryReply {
    const id = this.add(parent, name, dir);
    this.counts.set(id, (this.counts.get(id) ?? 0n) + 1n);
    return this.reply(id);
  }

  reply(id: bigint): EntryReply {
    return { nodeid: id, entryValidMs: this.entryValidMs, attrValidMs: this.attrValidMs, attr: attrOf(id, this.sizes.get(id) ?? 0n) };
  }

  hold(): void {
    this.held = [];
  }

  releaseHeld(): void {
    const held = this.held ?? [];
    this.held = undefined;
    for (const d of held) d.resolve();
  }

  async lookup(parent: bigint, name: string): Promise<EntryReply> {
    this.calls.push(`lookup ${parent} ${name}`);
    if (this.held) await new Promise<void>((resolve) => this.held!.push({ resolve }));
    const id = this.names.get(parent)?.get(name);
    if (id === undefined) throw new ErrnoError('lookup', errnoNumber('ENOENT'), name);
    this.counts.set(id, (this.counts.get(id) ?? 0n) + 1n);
    return this.reply(id);
  }

  async getattr(nodeid: bigint) {
    this.calls.push(`getattr ${nodeid}`);
    if (this.held) await new Promise<void>((resolve) => this.held!.push({ resolve }));
    return { attr: attrOf(nodeid, this.sizes.get(nodeid) ?? 0n), attrValidMs: this.attrValidMs };
  }

  forget(items: ForgetItem[]): void {
    this.forgets.push(items);
    for (const { nodeid, nlookup } of items) {
      const left = (this.counts.get(nodeid) ?? 0n) - nlookup;
      if (left < 0n) throw new Error(`forgot ${nlookup} of node ${nodeid}, which had ${left + nlookup}`);
      if (left === 0n) this.counts.delete(nodeid);
      else this.counts.set(nodeid, left);
    }
  }

  lookupCalls(): number {
    return this.calls.filter((c) => c.startsWith('lookup')).length;
  }
}

function setup(options: { maxEntries?: number } = {}) {
  const device = new FakeDevice();
  let clock = 0;
  const scheduled: (() => void)[] = [];
  const cache = new NodeCache(device, { now: () => clock, schedule: (fn) => scheduled.push(fn), ...options });
  return {
    device,
    cache,
    advance: (ms: number) => (clock += ms),
    /** Runs the scheduled forget flushes, as the next turn of the event loop would. */
    flush: () => {
      while (scheduled.length) scheduled.shift()!();
    },
  };
}

/** Lookups the device still counts equal what the cache says it owes: nothing leaked, nothing forgotten twice. */
function balanced(device: FakeDevice, cache: NodeCache): boolean {
  const owed = cache.outstanding();
  if (owed.size !== device.counts.size) return false;
  for (const [id, n] of device.counts) if (owed.get(id) !== n) return false;
  return true;
}

test('paths split into components', (t) => {
  t.deepEqual(pathParts('/'), []);
  t.deepEqual(pathParts('/a//b/./c/'), ['a', 'b', 'c']);
  t.deepEqual(splitPath('/a/b'), ['/a', 'b']);
  t.deepEqual(splitPath('/a'), ['/', 'a']);
  t.throws(() => splitPath('/'), { code: 'EINVAL' });
});

test('a path is looked up once per component and then served from the cache while the entry is valid', async (t) => {
  const { device, cache } = setup();
  const a = device.add(1n, 'a', true);
  const b = device.add(a, 'b');
  const node = await cache.acquire('/a/b');
  t.is(node.nodeid, b);
  t.is(node.path, '/a/b');
  cache.release(b);
  t.deepEqual(device.calls, ['lookup 1 a', `lookup ${a} b`]);
  await cache.use('/a/b', async () => undefined);
  await cache.use('/a', async () => undefined);
  t.is(device.lookupCalls(), 2, 'no more lookups');
  t.is(cache.stats().hits, 3);
  t.is((await cache.acquire('/')).nodeid, 1n, 'the root needs no lookup');
  cache.release(1n);
  t.true(balanced(device, cache));
});

test('after entry_valid the name is looked up again; the same node id adds a lookup, given back in one FORGET', async (t) => {
  const { device, cache, advance, flush } = setup();
  const f = device.add(1n, 'f');
  await cache.use('/f', async () => undefined);
  advance(999);
  await cache.use('/f', async () => undefined);
  t.is(device.lookupCalls(), 1, 'still valid at 999 ms');
  advance(2);
  await cache.use('/f', async () => undefined);
  t.is(device.lookupCalls(), 2, 'looked up again after 1000 ms');
  t.is(device.counts.get(f), 2n);
  t.true(balanced(device, cache));
  cache.removed(cache.root, 'f');
  flush();
  t.deepEqual(device.forgets, [[{ nodeid: f, nlookup: 2n }]]);
  t.is(device.counts.size, 0);
});

test('a name replaced on the device: the old node and everything cached under it are forgotten', async (t) => {
  const { device, cache, advance, flush } = setup();
  const d = device.add(1n, 'd', true);
  const x = device.add(d, 'x');
  const y = device.add(d, 'y');
  await cache.use('/d/x', async () => undefined);
  await cache.use('/d/y', async () => undefined);
  // On the host: d is moved away and a new d created.
  device.names.get(1n)!.delete('d');
  const d2 = device.add(1n, 'd', true);
  const z = device.add(d2, 'x');
  advance(1001);
  const node = await cache.acquire('/d/x');
  t.is(node.nodeid, z, 'the new tree');
  cache.release(z);
  flush();
  t.deepEqual(
    device.forgets.flat().sort((p, q) => Number(p.nodeid - q.nodeid)),
    [
      { nodeid: d, nlookup: 1n },
      { nodeid: x, nlookup: 1n },
      { nodeid: y, nlookup: 1n },
    ],
    'the old d, x and y in one batch',
  );
  t.is(device.forgets.length, 1, 'one BATCH_FORGET');
  t.true(balanced(device, cache));
});

test('a name gone on the device (ENOENT on the refresh) is dropped and forgotten', async (t) => {
  const { device, cache, advance, flush } = setup();
  const f = device.add(1n, 'f');
  await cache.use('/f', async () => undefined);
  device.names.get(1n)!.delete('f');
  advance(1001);
  await t.throwsAsync(cache.acquire('/f'), { code: 'ENOENT' });
  flush();
  t.deepEqual(device.forgets, [[{ nodeid: f, nlookup: 1n }]]);
  t.is(cache.peek('/f'), undefined);
  t.true(balanced(device, cache));
});

test('unlink and rmdir drop the names (and a removed directory\'s cached children) and forget them', async (t) => {
  const { device, cache, flush } = setup();
  const dir = device.create(1n, 'dir', true);
  cache.created(cache.root, 'dir', dir);
  const inner = await cache.acquire('/dir');
  const f = device.create(dir.nodeid, 'f');
  cache.created(inner, 'f', f);
  cache.release(dir.nodeid);
  t.is(cache.peek('/dir/f')?.nodeid, f.nodeid, 'created names are cached without a lookup');
  t.is(device.lookupCalls(), 0);

  device.names.get(dir.nodeid)!.delete('f');
  cache.removed(inner, 'f');
  flush();
  t.deepEqual(device.forgets.pop(), [{ nodeid: f.nodeid, nlookup: 1n }], 'a single FORGET');

  // A stale child still cached under a directory that goes.
  const g = device.add(dir.nodeid, 'g');
  await cache.use('/dir/g', async () => undefined);
  cache.removed(cache.root, 'dir');
  flush();
  t.deepEqual(
    device.forgets.pop()!.sort((p, q) => Number(p.nodeid - q.nodeid)),
    [
      { nodeid: dir.nodeid, nlookup: 1n },
      { nodeid: g, nlookup: 1n },
    ],
  );
  t.is(cache.stats().entries, 0);
  t.is(device.counts.size, 0);
});

test('rename moves the cached subtree (no lookups under the new name) and forgets a replaced target', async (t) => {
  const { device, cache, flush } = setup();
  const a = device.add(1n, 'a', true);
  const x = device.add(a, 'x');
  const b = device.add(1n, 'b', true);
  const target = device.add(b, 'a2');
  await cache.use('/a/x', async () => undefined);
  await cache.use('/b/a2', async () => undefined);
  const before = device.lookupCalls();

  // rename /a -> /b/a2 (replacing the node there)
  const bNode = cache.peek('/b')!;
  device.names.get(1n)!.delete('a');
  device.names.get(b)!.set('a2', a);
  cache.renamed(cache.root, 'a', bNode, 'a2');
  flush();
  t.deepEqual(device.forgets, [[{ nodeid: target, nlookup: 1n }]], 'the replaced target only');

  const moved = await cache.acquire('/b/a2/x');
  t.is(moved.nodeid, x);
  t.is(moved.path, '/b/a2/x');
  cache.release(x);
  t.is(device.lookupCalls(), before, 'served from the moved subtree');
  await t.throwsAsync(cache.acquire('/a/x'), { code: 'ENOENT' }, 'the old path is gone');
  t.true(balanced(device, cache));
});

test('rename between two names of the same file changes nothing', async (t) => {
  const { device, cache } = setup();
  const f = device.add(1n, 'f');
  device.names.get(1n)!.set('g', f);
  await cache.use('/f', async () => undefined);
  await cache.use('/g', async () => undefined);
  cache.renamed(cache.root, 'f', cache.root, 'g');
  t.is(cache.peek('/f')?.nodeid, f);
  t.is(cache.peek('/g')?.nodeid, f);
  t.true(balanced(device, cache));
});

test('a pinned node id (operation in flight, open file) is forgotten only once released', async (t) => {
  const { device, cache, flush } = setup();
  const f = device.add(1n, 'f');
  const node = await cache.acquire('/f'); // e.g. open(): pinned until release()
  cache.removed(cache.root, 'f');
  flush();
  t.deepEqual(device.forgets, [], 'not while open');
  t.is(device.counts.get(f), 1n);
  cache.release(node.nodeid);
  flush();
  t.deepEqual(device.forgets, [[{ nodeid: f, nlookup: 1n }]]);
  t.throws(() => cache.release(node.nodeid), { message: /released more often than pinned/ });
});

test('concurrent resolutions of one path share a single lookup', async (t) => {
  const { device, cache } = setup();
  const a = device.add(1n, 'a', true);
  device.add(a, 'b');
  device.hold();
  const all = Promise.all([cache.acquire('/a/b'), cache.acquire('/a/b'), cache.acquire('/a')]);
  await new Promise((r) => setImmediate(r));
  device.releaseHeld();
  await new Promise((r) => setImmediate(r));
  device.releaseHeld();
  const nodes = await all;
  t.is(device.lookupCalls(), 2);
  for (const n of nodes) cache.release(n.nodeid);
  t.true(balanced(device, cache));
});

test('a lookup that races with an unlink of the same name is not cached, and its lookup is given back', async (t) => {
  const { device, cache, flush } = setup();
  const f = device.add(1n, 'f');
  device.hold();
  const pending = cache.acquire('/f');
  await new Promise((r) => setImmediate(r));
  // The unlink completes while the lookup is in flight (its reply counted a lookup).
  cache.removed(cache.root, 'f');
  device.releaseHeld();
  const node = await pending;
  t.is(node.nodeid, f, 'the caller still gets the node it asked for');
  t.true(node.dropped);
  t.is(cache.peek('/f'), undefined, 'but it is not cached');
  flush();
  t.deepEqual(device.forgets, [], 'pinned by the caller');
  cache.release(f);
  flush();
  t.deepEqual(device.forgets, [[{ nodeid: f, nlookup: 1n }]]);
  t.is(cache.stats().racedLookups, 1);
  t.is(device.counts.size, 0);
});

test('a lookup failing synchronously does not wedge later lookups of the name', async (t) => {
  const { device, cache } = setup();
  let fail = true;
  const lookup = device.lookup.bind(device);
  device.lookup = (parent, name) => {
    if (fail) throw new ErrnoError('lookup', errnoNumber('EIO'));
    return lookup(parent, name);
  };
  device.add(1n, 'f');
  await t.throwsAsync(cache.acquire('/f'), { code: 'EIO' });
  fail = false;
  const node = await cache.acquire('/f');
  cache.release(node.nodeid);
  t.pass();
});

test('beyond maxEntries the least recently used names are forgotten, leaves before their directories', async (t) => {
  const { device, cache, flush } = setup({ maxEntries: 3 });
  const d = device.add(1n, 'd', true);
  const ids = ['f1', 'f2', 'f3'].map((n) => device.add(d, n));
  await cache.use('/d/f1', async () => undefined);
  await cache.use('/d/f2', async () => undefined);
  t.is(cache.stats().entries, 3);
  await cache.use('/d/f3', async () => undefined);
  flush();
  t.deepEqual(device.forgets, [[{ nodeid: ids[0], nlookup: 1n }]], 'f1 (least recently used), not its directory');
  t.truthy(cache.peek('/d'));
  t.is(cache.stats().evictions, 1);
  t.true(balanced(device, cache));
});

test('attributes: cached for attr_valid, shared by hard links, refetched after invalidation; a stale GETATTR is not stored', async (t) => {
  const { device, cache, advance } = setup();
  const f = device.add(1n, 'f');
  device.names.get(1n)!.set('link', f);
  const node = await cache.acquire('/f');
  t.is((await cache.getattr(node)).ino, f, 'from the LOOKUP reply');
  t.deepEqual(device.calls.filter((c) => c.startsWith('getattr')), []);
  const link = await cache.acquire('/link');
  device.sizes.set(f, 10n);
  cache.invalidateAttr(f); // a write through /f
  t.is((await cache.getattr(link)).size, 10n, 'the other name sees it');
  t.deepEqual(device.calls.filter((c) => c.startsWith('getattr')), [`getattr ${f}`]);
  advance(1001);
  await cache.getattr(node);
  t.is(device.calls.filter((c) => c.startsWith('getattr')).length, 2, 'refetched after attr_valid');

  // A GETATTR in flight while the file is written again: its answer is not kept.
  advance(1001);
  device.hold();
  const racing = cache.getattr(node);
  await new Promise((r) => setImmediate(r));
  device.sizes.set(f, 20n);
  cache.invalidateAttr(f);
  device.releaseHeld();
  t.is((await racing).size, 20n);
  t.is(cache.attrOf(f), undefined, 'nothing cached from the racing reply');
  cache.release(f);
  cache.release(f);
});

test('the device\'s timeouts are per reply: a zero entry_valid (cache=none) looks the name up every time', async (t) => {
  const { device, cache } = setup();
  device.entryValidMs = 0;
  device.attrValidMs = 0;
  const f = device.add(1n, 'f');
  for (let i = 0; i < 3; i++) await cache.use('/f', async (n) => cache.getattr(n));
  t.is(device.lookupCalls(), 3);
  t.is(device.counts.get(f), 3n, 'each lookup counted');
  t.true(balanced(device, cache));
});

test('random operations leave the device\'s lookup counts equal to what the cache owes; forgetAll gives everything back', async (t) => {
  const { device, cache, advance, flush } = setup({ maxEntries: 20 });
  let seed = 42;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
  const dirs = [1n];
  const dirPath = new Map<bigint, string>([[1n, '']]);
  for (let i = 0; i < 400; i++) {
    const parent = dirs[rand(dirs.length)]!;
    const parentPath = dirPath.get(parent)!;
    const name = `n${rand(6)}`;
    const exists = device.names.get(parent)!.get(name);
    const op = rand(5);
    const parentNode = await cache.acquire(parentPath || '/').catch(() => undefined);
    if (!parentNode) continue;
    try {
      if (op === 0 && exists === undefined) {
        const dir = rand(2) === 0;
        const reply = device.create(parent, name, dir);
        cache.created(parentNode, name, reply);
        if (dir) {
          dirs.push(reply.nodeid);
          dirPath.set(reply.nodeid, `${parentPath}/${name}`);
        }
      } else if (op === 1 && exists !== undefined && !device.names.has(exists)) {
        device.names.get(parent)!.delete(name);
        cache.removed(parentNode, name);
      } else if (op === 2) {
        advance(rand(1500));
      } else {
        await cache.use(`${parentPath}/${name}`, async () => undefined).catch(() => undefined);
      }
    } finally {
      cache.release(parentNode.nodeid);
    }
    if (rand(3) === 0) flush();
  }
  flush();
  t.true(balanced(device, cache), 'after 400 operations');
  t.true(cache.stats().forgetMessages > 0);
  cache.forgetAll();
  flush();
  t.is(device.counts.size, 0, 'every lookup given back');
});
