/**
 * Path -> node id cache for the path-based fuse-native frontend: what the
 * kernel's dentry cache does for the relay, done here because libfuse's
 * high-level API hands us paths and the device wants node ids.
 *
 * - A tree of names under the root, each with the node id the device gave
 *   and how many lookups it counted for this name (nlookup). Every LOOKUP,
 *   MKNOD, MKDIR, SYMLINK and LINK reply adds one; the sum is given back with
 *   FORGET (or one BATCH_FORGET for several) when the name drops out: it is
 *   unlinked, removed, renamed over, replaced on the device, or evicted.
 * - Entries are trusted for the device's entry_valid, attributes (kept per
 *   node id, so hard links share them) for its attr_valid; after that the
 *   name is looked up again: the same node id adds one lookup, another one
 *   replaces the entry (and everything cached under it), ENOENT drops it.
 * - Renames move the cached subtree (node ids do not change), so later paths
 *   under the new name need no lookups.
 * - A node id in use (an operation in flight, an open file) is pinned: its
 *   FORGET waits until it is unpinned, so the device never forgets a node a
 *   request is about to name.
 * - A lookup that raced with a change of the same name in the same directory
 *   is not cached (its reference is handed back at once).
 * - At most `maxEntries` names are kept; the least recently used go first
 *   (ancestors are touched after their descendants, so leaves go first).
 *
 * Forgets are sent from a later turn of the event loop (setImmediate), never
 * from inside an operation.
 */
import { ErrnoError, errnoNumber, isErrnoError } from '../../../ffi/errno.ts';
import type { Attr } from '../../client.ts';

export const ROOT_NODEID = 1n;

/** A LOOKUP-style reply: the node and how long the device lets us trust the name and the attributes. */
export interface EntryReply {
  nodeid: bigint;
  entryValidMs: number;
  attrValidMs: number;
  attr: Attr;
}

export interface AttrReply {
  attr: Attr;
  attrValidMs: number;
}

export interface ForgetItem {
  nodeid: bigint;
  nlookup: bigint;
}

/** What the cache needs from the device. */
export interface CacheDevice {
  lookup(parent: bigint, name: string): Promise<EntryReply>;
  getattr(nodeid: bigint): Promise<AttrReply>;
  /** Gives back lookup references; one item is a FORGET, several a BATCH_FORGET. No reply. */
  forget(items: ForgetItem[]): void;
}

export interface NodeCacheOptions {
  /** Names kept at most (default 65536); the least recently used are forgotten beyond that. */
  maxEntries?: number;
  /** Clock in ms (default performance.now). */
  now?: () => number;
  /** Runs the forget flush later (default setImmediate). */
  schedule?: (fn: () => void) => void;
}

export interface NodeCacheStats {
  /** Names cached (without the root). */
  entries: number;
  /** Node ids tracked (cached, pinned or with forgets pending). */
  nodes: number;
  /** Node ids pinned by operations in flight or open files. */
  pinned: number;
  hits: number;
  lookups: number;
  /** FORGET / BATCH_FORGET messages sent, and the lookups they gave back. */
  forgetMessages: number;
  forgottenLookups: bigint;
  evictions: number;
  /** Lookups not cached because the name changed while they were in flight. */
  racedLookups: number;
}

/** One cached name. */
export class CachedNode {
  readonly children = new Map<string, CachedNode>();
  /** Lookups in flight for children, by name. */
  readonly pending = new Map<string, PendingLookup>();
  /** The device's lookups counted for this name and not yet forgotten. */
  nlookup = 0n;
  entryExpires = 0;
  /** No longer in the tree (removed, replaced, evicted, or never cached). */
  dropped = false;

  constructor(
    public name: string,
    public parent: CachedNode | undefined,
    readonly nodeid: bigint,
  ) {}

  /** The path this name is cached under now ('/' for the root). */
  get path(): string {
    const parts: string[] = [];
    for (let n: CachedNode | undefined = this; n?.parent; n = n.parent) parts.push(n.name);
    return `/${parts.reverse().join('/')}`;
  }
}

interface PendingLookup {
  promise: Promise<CachedNode>;
  /** The name changed while the lookup was in flight: its answer is not cached. */
  stale: boolean;
}

interface NodeState {
  /** Cached names with this node id. */
  names: number;
  pins: number;
  /** Lookups to give back once unpinned. */
  owed: bigint;
  attr?: Attr;
  attrExpires: number;
  /** Bumped by every invalidation: a GETATTR that started before one is not cached. */
  attrVersion: number;
}

/** Splits '/a/b/c' into ['a', 'b', 'c']; '/' into []. */
export function pathParts(path: string): string[] {
  return path.split('/').filter((p) => p !== '' && p !== '.');
}

/** '/a/b' -> ['/a', 'b']; '/a' -> ['/', 'a']. */
export function splitPath(path: string): [parent: string, name: string] {
  const parts = pathParts(path);
  const name = parts.pop();
  if (name === undefined) throw new ErrnoError('path', errnoNumber('EINVAL'), `${path} has no last component`);
  return [`/${parts.join('/')}`, name];
}

export class NodeCache {
  readonly root: CachedNode;
  private readonly nodes = new Map<bigint, NodeState>();
  /** Least recently used first. */
  private readonly lru = new Map<CachedNode, true>();
  private readonly owing = new Set<bigint>();
  private flushScheduled = false;
  private readonly maxEntries: number;
  private readonly now: () => number;
  private readonly schedule: (fn: () => void) => void;
  private readonly counters = { hits: 0, lookups: 0, forgetMessages: 0, forgottenLookups: 0n, evictions: 0, racedLookups: 0 };

  constructor(
    private readonly device: CacheDevice,
    options: NodeCacheOptions = {},
  ) {
    this.maxEntries = options.maxEntries ?? 65536;
    this.now = options.now ?? (() => performance.now());
    this.schedule = options.schedule ?? ((fn) => void setImmediate(fn));
    this.root = new CachedNode('', undefined, ROOT_NODEID);
    this.root.entryExpires = Infinity;
    this.state(ROOT_NODEID).names = 1;
  }

  // --- resolving paths -------------------------------------------------------------

  /** The node cached or looked up for `path`, pinned: call release(node.nodeid) when done with it. */
  async acquire(path: string): Promise<CachedNode> {
    let node = this.root;
    for (const name of pathParts(path)) node = await this.child(node, name);
    // Still the continuation of the last lookup: nothing was flushed in between.
    this.pin(node.nodeid);
    for (let n: CachedNode | undefined = node; n && n !== this.root; n = n.parent) this.touch(n);
    return node;
  }

  /** Resolves `path`, runs `fn` with its node pinned, then unpins. */
  async use<T>(path: string, fn: (node: CachedNode) => Promise<T>): Promise<T> {
    const node = await this.acquire(path);
    try {
      return await fn(node);
    } finally {
      this.release(node.nodeid);
    }
  }

  /** The attributes of `node`: cached while the device's attr_valid lasts, else a GETATTR. */
  async getattr(node: CachedNode): Promise<Attr> {
    const cached = this.attrOf(node.nodeid);
    if (cached) return cached;
    const version = this.state(node.nodeid).attrVersion;
    const reply = await this.device.getattr(node.nodeid);
    const s = this.nodes.get(node.nodeid);
    if (s && s.attrVersion === version) this.storeAttr(s, reply.attr, reply.attrValidMs);
    return reply.attr;
  }

  /** Cached attributes of `nodeid` that are still valid. */
  attrOf(nodeid: bigint): Attr | undefined {
    const s = this.nodes.get(nodeid);
    return s?.attr && this.now() < s.attrExpires ? s.attr : undefined;
  }

  /** Attributes a reply just brought (SETATTR, ...). */
  setAttr(nodeid: bigint, attr: Attr, validMs: number): void {
    const s = this.nodes.get(nodeid);
    if (!s) return;
    s.attrVersion++;
    this.storeAttr(s, attr, validMs);
  }

  /** The node changed (written, truncated, linked, renamed): its attributes must be fetched again. */
  invalidateAttr(nodeid: bigint): void {
    const s = this.nodes.get(nodeid);
    if (!s) return;
    s.attrVersion++;
    s.attr = undefined;
    s.attrExpires = 0;
  }

  // --- pins ------------------------------------------------------------------------

  pin(nodeid: bigint): void {
    this.state(nodeid).pins++;
  }

  release(nodeid: bigint): void {
    const s = this.nodes.get(nodeid);
    if (!s || s.pins === 0) throw new Error(`node ${nodeid} released more often than pinned`);
    s.pins--;
    if (s.pins === 0) {
      if (s.owed > 0n) this.scheduleFlush();
      else this.maybeDelete(nodeid, s);
    }
  }

  // --- what the device changed ---------------------------------------------------------

  /** MKNOD, MKDIR, SYMLINK or LINK of `name` in `parent` succeeded with `reply` (one lookup counted). */
  created(parent: CachedNode, name: string, reply: EntryReply): CachedNode {
    this.nameChanged(parent, name);
    if (parent.dropped) return this.detached(reply);
    return this.adopt(parent, name, reply);
  }

  /**
   * Records a reply that named `reply.nodeid` under `name` (one lookup counted):
   * the same node gains a lookup; a different one replaces what was cached there.
   */
  private adopt(parent: CachedNode, name: string, reply: EntryReply): CachedNode {
    const current = parent.children.get(name);
    if (current && current.nodeid === reply.nodeid) {
      current.nlookup++;
      this.refreshEntry(current, reply);
      return current;
    }
    if (current) this.drop(current);
    const node = this.insert(parent, name, reply);
    this.evict();
    return node;
  }

  /** UNLINK or RMDIR of `name` in `parent` succeeded. */
  removed(parent: CachedNode, name: string): void {
    this.nameChanged(parent, name);
    const current = parent.children.get(name);
    if (!current) return;
    this.invalidateAttr(current.nodeid); // nlink and ctime of other names of the node
    this.drop(current);
  }

  /** RENAME of `fromName` in `fromParent` to `toName` in `toParent` succeeded. */
  renamed(fromParent: CachedNode, fromName: string, toParent: CachedNode, toName: string): void {
    if (fromParent === toParent && fromName === toName) return;
    this.nameChanged(fromParent, fromName);
    this.nameChanged(toParent, toName);
    const source = fromParent.children.get(fromName);
    const target = toParent.children.get(toName);
    if (source && target && source.nodeid === target.nodeid) return; // two names of one file: rename(2) does nothing
    if (target) {
      this.invalidateAttr(target.nodeid);
      this.drop(target);
    }
    if (!source) return;
    this.invalidateAttr(source.nodeid); // ctime
    fromParent.children.delete(fromName);
    if (toParent.dropped) {
      source.parent = undefined;
      this.dropDetachedSubtree(source);
      return;
    }
    source.name = toName;
    source.parent = toParent;
    toParent.children.set(toName, source);
  }

  /** Forgets everything cached under `path` (not the root itself); the next use looks the names up again. */
  invalidate(path: string): void {
    const node = this.peek(path);
    if (node && node !== this.root) {
      if (node.parent) this.nameChanged(node.parent, node.name);
      this.drop(node);
    } else if (node === this.root) {
      for (const child of [...this.root.children.values()]) this.drop(child);
    }
  }

  /** The cached node for `path`, valid or not, without asking the device. */
  peek(path: string): CachedNode | undefined {
    let node: CachedNode | undefined = this.root;
    for (const name of pathParts(path)) {
      node = node.children.get(name);
      if (!node) return undefined;
    }
    return node;
  }

  /** Gives back every lookup reference (at unmount). */
  forgetAll(): void {
    for (const child of [...this.root.children.values()]) this.drop(child);
    this.flush();
  }

  stats(): NodeCacheStats {
    let pinned = 0;
    for (const s of this.nodes.values()) if (s.pins > 0) pinned++;
    return {
      entries: this.lru.size,
      nodes: this.nodes.size,
      pinned,
      hits: this.counters.hits,
      lookups: this.counters.lookups,
      forgetMessages: this.counters.forgetMessages,
      forgottenLookups: this.counters.forgottenLookups,
      evictions: this.counters.evictions,
      racedLookups: this.counters.racedLookups,
    };
  }

  /** Lookups the device has counted and not been given back, per node id (for tests and checks). */
  outstanding(): Map<bigint, bigint> {
    const out = new Map<bigint, bigint>();
    const add = (nodeid: bigint, n: bigint) => n > 0n && out.set(nodeid, (out.get(nodeid) ?? 0n) + n);
    for (const node of this.lru.keys()) add(node.nodeid, node.nlookup);
    for (const [nodeid, s] of this.nodes) add(nodeid, s.owed);
    return out;
  }

  // --- internals -------------------------------------------------------------------------

  private child(parent: CachedNode, name: string): Promise<CachedNode> {
    const current = parent.children.get(name);
    if (current && this.now() < current.entryExpires) {
      this.counters.hits++;
      return Promise.resolve(current);
    }
    const inFlight = parent.pending.get(name);
    if (inFlight) return inFlight.promise;
    // Registered before the lookup starts, so its clean-up (even a synchronous failure) finds it.
    const record: PendingLookup = { promise: undefined as unknown as Promise<CachedNode>, stale: false };
    parent.pending.set(name, record);
    record.promise = this.lookup(parent, name, current, record);
    return record.promise;
  }

  private async lookup(parent: CachedNode, name: string, previous: CachedNode | undefined, record: PendingLookup): Promise<CachedNode> {
    this.pin(parent.nodeid);
    try {
      let reply: EntryReply;
      try {
        reply = await this.device.lookup(parent.nodeid, name);
      } catch (e) {
        if (isErrnoError(e, 'ENOENT') && previous && !record.stale && parent.children.get(name) === previous) this.drop(previous);
        throw e;
      }
      this.counters.lookups++;
      if (reply.nodeid === 0n) {
        // A negative entry: nothing counted, nothing cached.
        if (previous && !record.stale && parent.children.get(name) === previous) this.drop(previous);
        throw new ErrnoError('lookup', errnoNumber('ENOENT'), name);
      }
      if (record.stale || parent.dropped) {
        this.counters.racedLookups++;
        return this.detached(reply);
      }
      return this.adopt(parent, name, reply);
    } finally {
      if (parent.pending.get(name) === record) parent.pending.delete(name);
      this.release(parent.nodeid);
    }
  }

  private insert(parent: CachedNode, name: string, reply: EntryReply): CachedNode {
    const node = new CachedNode(name, parent, reply.nodeid);
    node.nlookup = 1n;
    parent.children.set(name, node);
    this.state(reply.nodeid).names++;
    this.refreshEntry(node, reply);
    this.touch(node);
    return node;
  }

  private refreshEntry(node: CachedNode, reply: EntryReply): void {
    const now = this.now();
    node.entryExpires = now + reply.entryValidMs;
    const s = this.state(node.nodeid);
    s.attrVersion++;
    this.storeAttr(s, reply.attr, reply.attrValidMs);
  }

  /** A reply that cannot be cached: its lookup is owed back at once (after the caller's pin ends). */
  private detached(reply: EntryReply): CachedNode {
    const node = new CachedNode('', undefined, reply.nodeid);
    node.dropped = true;
    const s = this.state(reply.nodeid);
    this.storeAttr(s, reply.attr, reply.attrValidMs);
    this.owe(reply.nodeid, s, 1n);
    return node;
  }

  /** A name in `parent` changed on the device: lookups of it in flight must not be cached; the directory's attributes changed. */
  private nameChanged(parent: CachedNode, name: string): void {
    const pending = parent.pending.get(name);
    if (pending) {
      pending.stale = true;
      parent.pending.delete(name);
    }
    this.invalidateAttr(parent.nodeid);
  }

  /** Takes `node` and everything under it out of the tree and owes their lookups back. */
  private drop(node: CachedNode): void {
    if (node === this.root) throw new Error('the root is never dropped');
    if (node.parent && node.parent.children.get(node.name) === node) node.parent.children.delete(node.name);
    node.parent = undefined;
    this.dropDetachedSubtree(node);
  }

  private dropDetachedSubtree(node: CachedNode): void {
    const stack = [node];
    while (stack.length > 0) {
      const n = stack.pop()!;
      for (const child of n.children.values()) stack.push(child);
      n.children.clear();
      for (const p of n.pending.values()) p.stale = true;
      n.pending.clear();
      if (n.dropped) continue;
      n.dropped = true;
      this.lru.delete(n);
      const s = this.state(n.nodeid);
      s.names--;
      this.owe(n.nodeid, s, n.nlookup);
      n.nlookup = 0n;
    }
  }

  private owe(nodeid: bigint, s: NodeState, n: bigint): void {
    if (n > 0n) {
      s.owed += n;
      this.owing.add(nodeid);
      this.scheduleFlush();
    } else {
      this.maybeDelete(nodeid, s);
    }
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    this.schedule(() => this.flush());
  }

  /** Sends what is owed for every node id not pinned. */
  private flush(): void {
    this.flushScheduled = false;
    const items: ForgetItem[] = [];
    for (const nodeid of this.owing) {
      const s = this.nodes.get(nodeid);
      if (!s) {
        this.owing.delete(nodeid);
        continue;
      }
      if (s.pins > 0) continue; // sent when unpinned
      if (s.owed > 0n) items.push({ nodeid, nlookup: s.owed });
      s.owed = 0n;
      this.owing.delete(nodeid);
      this.maybeDelete(nodeid, s);
    }
    if (items.length === 0) return;
    this.counters.forgetMessages++;
    for (const i of items) this.counters.forgottenLookups += i.nlookup;
    this.device.forget(items);
  }

  private evict(): void {
    while (this.lru.size > this.maxEntries) {
      const oldest = this.lru.keys().next().value as CachedNode;
      this.drop(oldest);
      this.counters.evictions++;
    }
  }

  private touch(node: CachedNode): void {
    if (node.dropped) return;
    this.lru.delete(node);
    this.lru.set(node, true);
  }

  private state(nodeid: bigint): NodeState {
    let s = this.nodes.get(nodeid);
    if (!s) this.nodes.set(nodeid, (s = { names: 0, pins: 0, owed: 0n, attrExpires: 0, attrVersion: 0 }));
    return s;
  }

  private storeAttr(s: NodeState, attr: Attr, validMs: number): void {
    s.attr = attr;
    s.attrExpires = this.now() + validMs;
  }

  private maybeDelete(nodeid: bigint, s: NodeState): void {
    if (s.names === 0 && s.pins === 0 && s.owed === 0n && nodeid !== ROOT_NODEID) this.nodes.delete(nodeid);
  }
}
