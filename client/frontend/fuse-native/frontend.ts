/**
 * The second local mount: libfuse 2's high-level (path-based) API through
 * fuse-native, each operation mapped onto the project's VirtioFsClient. The
 * driver, transports, FUSE session and architecture translation are the
 * relay's; what differs is who speaks FUSE to the kernel (libfuse here, the
 * kernel's requests relayed verbatim there) and so what can be carried.
 *
 * Paths become node ids through NodeCache (lookup counts, FORGETs, the
 * device's timeouts); 64-bit device file handles become small numbers
 * through HandleMap; attributes are reduced to what fuse-native's 32-bit and
 * millisecond fields hold (convert.ts). `create` is deliberately not
 * implemented: libfuse then makes the kernel fall back to MKNOD + OPEN, and
 * OPEN carries the open flags fuse-native's create would drop.
 *
 * fuse-native runs every callback on this process's event loop (libfuse's
 * threads wait for it): nothing here may block the loop, and no synchronous
 * file system call may touch the mount from this process.
 */
import { constants } from 'node:fs';
import { resolve } from 'node:path';
import { ErrnoError, errnoName, errnoNumber } from '../../../ffi/errno.ts';
import { flagsToNames, octal } from '../../arch/index.ts';
import { VirtioFsClient, type Attr, type Entry } from '../../client.ts';
import type { FuseSession, SessionOptions } from '../../fuse/session.ts';
import type { VirtioTransport } from '../../transport/transport.ts';
import type { DeviceOptions } from '../../virtio/virtio-fs-device.ts';
import { checkMountpoint, mountsAt, unmount, FS_TYPE } from '../fuse-mount.ts';
import type { RelayStatus } from '../relay.ts';
import { VirtioFuse, optionValue, type FuseNativeOps } from './binding.ts';
import {
  direntTypeToMode,
  fromMillis,
  newCounters,
  toNativeStat,
  toNativeStatfs,
  toNegativeErrno,
  type ConversionCounters,
} from './convert.ts';
import { HandleMap } from './handles.ts';
import { NodeCache, ROOT_NODEID, splitPath, type AttrReply, type CacheDevice, type CachedNode, type EntryReply, type ForgetItem } from './node-cache.ts';

export interface FuseNativeOptions extends DeviceOptions, Omit<SessionOptions, 'initFlags' | 'maxMinor' | 'maxReadahead'> {
  /** 'vhost-user:/path', or a transport already open. */
  transport: string | VirtioTransport;
  mountpoint: string;
  allowOther?: boolean;
  /** mount(8)'s generic flags (ro, noexec, noatime, ...), passed to libfuse as they are. */
  mountFlags?: readonly string[];
  /** Called with one line per operation and its outcome. */
  trace?: (line: string) => void;
  /** Names the node cache keeps at most. */
  maxCachedNames?: number;
}

interface OpenFile {
  nodeid: bigint;
  fh: bigint;
  flags: number;
}

/** libfuse 2.9's largest write (its channel buffer is 128 KiB of data plus a page). */
const MAX_WRITE = 128 * 1024;
/** Forgets per BATCH_FORGET (16 bytes each). */
const FORGETS_PER_BATCH = 512;
/** How often an unmount by someone else (virtiofs-client unmount, umount) is looked for. */
const UNMOUNT_POLL_MS = 250;
const UID_UNCHANGED = 0xffff_ffff;

function validMs(sec: bigint, nsec: number): number {
  return Number(sec) * 1000 + nsec / 1e6;
}

function entryReply(e: Entry): EntryReply {
  return {
    nodeid: e.nodeid,
    entryValidMs: validMs(e.entry_valid, e.entry_valid_nsec),
    attrValidMs: validMs(e.attr_valid, e.attr_valid_nsec),
    attr: e.attr,
  };
}

/** Per-callback counts and latency percentiles (the status table's rows). */
class CallStats {
  private static readonly WINDOW = 2048;
  private readonly byName = new Map<string, { count: number; errors: number; latenciesMs: Float64Array }>();

  record(name: string, latencyMs: number, failed: boolean): void {
    let s = this.byName.get(name);
    if (!s) this.byName.set(name, (s = { count: 0, errors: 0, latenciesMs: new Float64Array(CallStats.WINDOW) }));
    s.latenciesMs[s.count % CallStats.WINDOW] = latencyMs;
    s.count++;
    if (failed) s.errors++;
  }

  summary(): RelayStatus['operations'] {
    return [...this.byName.entries()]
      .map(([name, s]) => {
        const sorted = s.latenciesMs.slice(0, Math.min(s.count, CallStats.WINDOW)).sort();
        const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
        return { opcode: name, count: s.count, errors: s.errors, p50Ms: at(0.5), p90Ms: at(0.9), p99Ms: at(0.99) };
      })
      .sort((a, b) => b.count - a.count);
  }
}

export class FuseNativeFrontend {
  /** Resolves with the reason once the mount is gone (unmounted, or the device died). */
  readonly closed: Promise<string>;
  private resolveClosed!: (reason: string) => void;
  private readonly cache: NodeCache;
  private readonly handles = new HandleMap<OpenFile>();
  private readonly counters: ConversionCounters = newCounters();
  private readonly stats = new CallStats();
  private readonly startedAt = new Date();
  private readonly log: (line: string) => void;
  private fuse: VirtioFuse | undefined;
  private stopped = false;
  private watch: NodeJS.Timeout | undefined;
  /** The device's attribute timeout, as its latest reply gave it (virtiofsd has one for everything). */
  private attrValidMs: number;

  private constructor(
    readonly client: VirtioFsClient,
    readonly mountpoint: string,
    private readonly options: FuseNativeOptions,
    rootAttr: AttrReply,
  ) {
    this.log = options.log ?? ((line) => console.error(`virtiofs-client: ${line}`));
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.attrValidMs = rootAttr.attrValidMs;
    this.cache = new NodeCache(this.cacheDevice(), { maxEntries: options.maxCachedNames });
    this.cache.setAttr(ROOT_NODEID, rootAttr.attr, rootAttr.attrValidMs);
  }

  /** Connects to the device, mounts through libfuse, and serves until unmounted. */
  static async mount(options: FuseNativeOptions): Promise<FuseNativeFrontend> {
    const mountpoint = resolve(options.mountpoint);
    // Before touching the device: a virtiofsd serves only one connection.
    checkMountpoint(mountpoint);
    if (process.getuid?.() !== 0) throw Object.assign(new Error('mounting needs root; run as root'), { code: 'EPERM' });
    const log = options.log ?? ((line: string) => console.error(`virtiofs-client: ${line}`));
    const client = await VirtioFsClient.connect({ ...options, log });
    let frontend: FuseNativeFrontend | undefined;
    try {
      const root = await getattrReply(client.session, ROOT_NODEID);
      frontend = new FuseNativeFrontend(client, mountpoint, options, root);
      await frontend.start();
      return frontend;
    } catch (e) {
      // A mount that half-happened (libfuse mounted, then failed) must not stay behind.
      if (mountsAt(mountpoint).some((m) => m.fstype === FS_TYPE)) unmount(mountpoint);
      await client.close();
      throw e;
    }
  }

  get session(): FuseSession {
    return this.client.session;
  }

  status(): RelayStatus {
    const c = this.cache.stats();
    const k = this.counters;
    const u = this.fuse?.utimens ?? { recovered: 0, unrecovered: 0 };
    return {
      mountpoint: this.mountpoint,
      transport: this.client.session.device.transport.description,
      pid: process.pid,
      startedAt: this.startedAt.toISOString(),
      negotiation: [
        ...this.session.describe(),
        'frontend    fuse-native (libfuse 2 high-level API, FUSE 7.19 to the kernel); the table counts its callbacks, not FUSE opcodes',
        `node cache  ${c.entries} names, ${c.nodes} node ids (${c.pinned} pinned), ${this.handles.size} open files; ` +
          `${c.lookups} lookups, ${c.hits} hits, ${c.forgetMessages} forget messages (${c.forgottenLookups} lookups given back), ${c.evictions} evicted, ${c.racedLookups} raced`,
        `32-bit/ms   ${k.inoTruncated} inode numbers truncated, ${k.timeRounded} times rounded to ms, statfs ${k.statfsRescaled} rescaled / ${k.statfsClamped} clamped; ` +
          `utimens mtime recovered ${u.recovered}, not recoverable ${u.unrecovered}`,
      ],
      archOutcome: this.session.init.arch.outcome,
      wireArch: this.session.wireArch.name,
      inFlight: this.session.device.inFlight,
      operations: this.stats.summary(),
    };
  }

  /** Unmounts and closes the device session. */
  async unmount(): Promise<void> {
    this.teardown('unmounted');
    await this.closed;
  }

  // --- mounting -------------------------------------------------------------------------

  private async start(): Promise<void> {
    const seconds = (ms: number) => String(Math.max(0, ms / 1000));
    const fuseOptions = [
      `fsname=${optionValue(this.client.session.device.transport.description)}`,
      `subtype=${FS_TYPE.replace(/^fuse\./, '')}`,
      // The kernel checks permissions from the attributes, as for the relay.
      'default_permissions',
      ...(this.options.allowOther ? ['allow_other'] : []),
      ...(this.options.mountFlags ?? []),
      // The device's inode numbers in stat(2), not libfuse's own (low 32 bits: fuse-native's limit).
      'use_ino',
      'nonempty',
      'big_writes',
      `max_write=${MAX_WRITE}`,
      // O_TRUNC reaches OPEN instead of a separate truncate.
      'atomic_o_trunc',
      // libfuse has one timeout for every reply; ours follow the device's per reply underneath.
      `entry_timeout=${seconds(this.attrValidMs)}`,
      `attr_timeout=${seconds(this.attrValidMs)}`,
      'negative_timeout=0',
    ];
    const fuse = new VirtioFuse(this.mountpoint, this.operations(), fuseOptions);
    this.fuse = fuse;
    await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));
    this.session.device.onFailure((error) => this.teardown(`device failed: ${error.message}`));
    this.watch = setInterval(() => {
      if (!mountsAt(this.mountpoint).some((m) => m.fstype === FS_TYPE)) this.teardown('unmounted');
    }, UNMOUNT_POLL_MS);
    this.watch.unref();
  }

  private teardown(reason: string): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.watch) clearInterval(this.watch);
    if (reason !== 'unmounted') this.log(`${reason}: unmounting ${this.mountpoint}`);
    // Next turn of the loop, so callbacks failing right now answer libfuse first.
    setImmediate(() => {
      try {
        unmount(this.mountpoint); // lazily if busy; nothing to do if someone else unmounted
      } catch (e) {
        this.log(`unmount ${this.mountpoint}: ${(e as Error).message}`);
      }
      this.fuse?.releaseLoop();
      void this.client.close().finally(() => this.resolveClosed(reason));
    });
  }

  // --- what the node cache asks of the device ------------------------------------------

  private cacheDevice(): CacheDevice {
    return {
      lookup: async (parent, name) => {
        const reply = entryReply(await this.client.lookup(parent, name));
        this.attrValidMs = reply.attrValidMs;
        return reply;
      },
      getattr: async (nodeid) => {
        const reply = await getattrReply(this.client.session, nodeid);
        this.attrValidMs = reply.attrValidMs;
        return reply;
      },
      forget: (items) => this.sendForgets(items),
    };
  }

  private sendForgets(items: ForgetItem[]): void {
    if (this.stopped) return; // DESTROY drops every reference
    const failed = (e: Error) => this.log(`forget: ${e.message}`);
    if (items.length === 1) {
      this.client.forget(items[0]!.nodeid, items[0]!.nlookup).catch(failed);
      return;
    }
    for (let i = 0; i < items.length; i += FORGETS_PER_BATCH) {
      const batch = items.slice(i, i + FORGETS_PER_BATCH);
      const data = new Uint8Array(batch.length * 16);
      const view = new DataView(data.buffer);
      batch.forEach((item, k) => {
        view.setBigUint64(k * 16, item.nodeid, true);
        view.setBigUint64(k * 16 + 8, item.nlookup, true);
      });
      this.session.call('BATCH_FORGET', 0n, { arg: { count: batch.length }, data }, { hiprio: true }, () => undefined).catch(failed);
    }
  }

  // --- running a callback -----------------------------------------------------------------

  /** Runs `fn` for libfuse and answers `cb(0, ...values)` or `cb(-errno)`. */
  private call<T extends unknown[]>(name: string, detail: string, cb: (result: number, ...values: never[]) => void, fn: () => Promise<T>): void {
    const answer = cb as (result: number, ...values: unknown[]) => void;
    const started = performance.now();
    const finish = (result: number, values: unknown[], error?: unknown) => {
      this.stats.record(name, performance.now() - started, result < 0);
      if (error !== undefined && !(error instanceof ErrnoError)) this.log(`${name} ${detail}: ${(error as Error).stack ?? String(error)}`);
      this.options.trace?.(`${name} ${detail} -> ${result < 0 ? `-${errnoName(-result)}` : typeof values[0] === 'number' ? values[0] : result}`);
      answer(result, ...values);
    };
    if (this.stopped) return finish(-errnoNumber('ENOTCONN'), []);
    // A synchronous throw must not escape into fuse-native's dispatcher (that would end the process).
    new Promise<T>((resolve) => resolve(fn())).then(
      (values) => finish(0, values),
      (e: unknown) => finish(toNegativeErrno(e), [], e),
    );
  }

  /** Like call, for read/write: answers `cb(bytes)` or `cb(-errno)`. */
  private count(name: string, detail: string, cb: (result: number) => void, fn: () => Promise<number>): void {
    const answer = (result: number, bytes?: number) => cb(result < 0 ? result : (bytes ?? 0));
    this.call(name, detail, answer, async () => [await fn()] as [number]);
  }

  private file(fd: number): OpenFile {
    const f = this.handles.get(fd);
    if (!f) throw new ErrnoError('fh', errnoNumber('EBADF'), `handle ${fd}`);
    return f;
  }

  private async setattr(nodeid: bigint, changes: Parameters<VirtioFsClient['setattr']>[1]): Promise<void> {
    const attr = await this.client.setattr(nodeid, changes);
    this.cache.setAttr(nodeid, attr, this.attrValidMs);
  }

  /** Runs `fn` with the parent directory of `path` resolved (pinned) and the last name. */
  private inParent<T>(path: string, fn: (parent: CachedNode, name: string) => Promise<T>): Promise<T> {
    const [dir, name] = splitPath(path);
    return this.cache.use(dir, (parent) => fn(parent, name));
  }

  // --- the operations ------------------------------------------------------------------------

  private operations(): FuseNativeOps {
    const cache = this.cache;
    const client = this.client;
    const stat = (attr: Attr) => toNativeStat(attr, this.counters);
    return {
      init: (cb: (err: number) => void) => cb(0),

      getattr: (path: string, cb: (err: number, stat?: unknown) => void) =>
        this.call('getattr', path, cb, async () => [stat(await cache.use(path, (n) => cache.getattr(n)))]),

      access: (path: string, mode: number, cb: (err: number) => void) =>
        this.call('access', path, cb, async () => (await cache.use(path, (n) => client.access(n.nodeid, mode)), [])),

      statfs: (path: string, cb: (err: number, st?: unknown) => void) =>
        this.call('statfs', path, cb, async () => [toNativeStatfs(await cache.use(path, (n) => client.statfs(n.nodeid)), this.counters)]),

      readlink: (path: string, cb: (err: number, target?: string) => void) =>
        this.call('readlink', path, cb, async () => [await cache.use(path, (n) => client.readlink(n.nodeid))]),

      readdir: (path: string, cb: (err: number, names?: string[], stats?: unknown[]) => void) =>
        this.call('readdir', path, cb, () =>
          cache.use(path, async (dir) => {
            const { fh } = await client.opendir(dir.nodeid);
            const names: string[] = [];
            const stats: { ino: number; mode: number }[] = [];
            try {
              for (let offset = 0n; ; ) {
                const batch = await client.readdir(dir.nodeid, fh, offset);
                if (batch.length === 0) break;
                for (const d of batch) {
                  names.push(d.name);
                  // libfuse takes d_ino (use_ino) and d_type from these.
                  stats.push({ ino: Number(d.ino & 0xffff_ffffn), mode: direntTypeToMode(d.type) });
                }
                offset = batch[batch.length - 1]!.off;
              }
            } finally {
              await client.releasedir(dir.nodeid, fh);
            }
            return [names, stats] as [string[], unknown[]];
          }),
        ),

      fsyncdir: (path: string, datasync: number, _fd: number, cb: (err: number) => void) =>
        this.call('fsyncdir', path, cb, () =>
          cache.use(path, async (dir) => {
            const { fh } = await client.opendir(dir.nodeid);
            try {
              await client.fsyncdir(dir.nodeid, fh, datasync !== 0);
            } finally {
              await client.releasedir(dir.nodeid, fh);
            }
            return [];
          }),
        ),

      // --- changing names ---

      mknod: (path: string, mode: number, dev: number, cb: (err: number) => void) =>
        this.call('mknod', path, cb, () =>
          // The kernel already applied the umask (libfuse 2 does not ask for DONT_MASK).
          this.inParent(path, async (parent, name) => (cache.created(parent, name, entryReply(await client.mknod(parent.nodeid, name, mode, dev))), [])),
        ),

      mkdir: (path: string, mode: number, cb: (err: number) => void) =>
        this.call('mkdir', path, cb, () =>
          this.inParent(path, async (parent, name) => (cache.created(parent, name, entryReply(await client.mkdir(parent.nodeid, name, mode))), [])),
        ),

      // fuse-native's (src, dest) are libfuse's (link contents, new path).
      symlink: (target: string, path: string, cb: (err: number) => void) =>
        this.call('symlink', path, cb, () =>
          this.inParent(path, async (parent, name) => (cache.created(parent, name, entryReply(await client.symlink(parent.nodeid, name, target))), [])),
        ),

      link: (existing: string, path: string, cb: (err: number) => void) =>
        this.call('link', `${existing} ${path}`, cb, () =>
          cache.use(existing, (node) =>
            this.inParent(path, async (parent, name) => (cache.created(parent, name, entryReply(await client.link(node.nodeid, parent.nodeid, name))), [])),
          ),
        ),

      unlink: (path: string, cb: (err: number) => void) =>
        this.call('unlink', path, cb, () => this.inParent(path, async (parent, name) => (await client.unlink(parent.nodeid, name), cache.removed(parent, name), []))),

      rmdir: (path: string, cb: (err: number) => void) =>
        this.call('rmdir', path, cb, () => this.inParent(path, async (parent, name) => (await client.rmdir(parent.nodeid, name), cache.removed(parent, name), []))),

      rename: (from: string, to: string, cb: (err: number) => void) =>
        this.call('rename', `${from} ${to}`, cb, () =>
          this.inParent(from, (fromParent, fromName) =>
            this.inParent(to, async (toParent, toName) => {
              await client.rename(fromParent.nodeid, fromName, toParent.nodeid, toName);
              cache.renamed(fromParent, fromName, toParent, toName);
              return [];
            }),
          ),
        ),

      // --- attributes ---

      chmod: (path: string, mode: number, cb: (err: number) => void) =>
        this.call('chmod', path, cb, () => cache.use(path, async (n) => (await this.setattr(n.nodeid, { mode }), []))),

      chown: (path: string, uid: number, gid: number, cb: (err: number) => void) =>
        this.call('chown', path, cb, () =>
          cache.use(path, async (n) => {
            await this.setattr(n.nodeid, { uid: uid === UID_UNCHANGED ? undefined : uid, gid: gid === UID_UNCHANGED ? undefined : gid });
            return [];
          }),
        ),

      truncate: (path: string, size: number, cb: (err: number) => void) =>
        this.call('truncate', path, cb, () => cache.use(path, async (n) => (await this.setattr(n.nodeid, { size }), []))),

      ftruncate: (path: string, fd: number, size: number, cb: (err: number) => void) =>
        this.call('ftruncate', path, cb, async () => {
          const f = this.handles.get(fd);
          if (f) await this.setattr(f.nodeid, { size, fh: f.fh });
          else await cache.use(path, (n) => this.setattr(n.nodeid, { size }));
          return [];
        }),

      // libfuse 2 calls utimens only when both times are set; binding.ts recovers the mtime fuse-native drops.
      utimens: (path: string, atimeMs: number, mtimeMs: number, cb: (err: number) => void) =>
        this.call('utimens', path, cb, () =>
          cache.use(path, async (n) => (await this.setattr(n.nodeid, { atime: fromMillis(atimeMs), mtime: fromMillis(mtimeMs) }), [])),
        ),

      // --- files ---

      open: (path: string, flags: number, cb: (err: number, fd?: number) => void) =>
        this.call('open', `${path} flags=${flagsToNames(flags, this.session.clientArch).join('|')} (${octal(flags)})`, cb, async () => {
          const node = await cache.acquire(path); // pinned while the file is open
          try {
            const opened = await client.open(node.nodeid, flags); // this machine's flags; the session translates
            if (flags & constants.O_TRUNC) cache.invalidateAttr(node.nodeid);
            return [this.handles.add({ nodeid: node.nodeid, fh: opened.fh, flags })] as [number];
          } catch (e) {
            cache.release(node.nodeid);
            throw e;
          }
        }),

      read: (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) =>
        this.count('read', path, cb, async () => {
          const f = this.file(fd);
          const data = await client.read(f.nodeid, f.fh, pos, len);
          data.copy(buf);
          return data.length;
        }),

      write: (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) =>
        this.count('write', path, cb, async () => {
          const f = this.file(fd);
          try {
            return await client.write(f.nodeid, f.fh, pos, buf.subarray(0, len));
          } finally {
            cache.invalidateAttr(f.nodeid);
          }
        }),

      flush: (path: string, fd: number, cb: (err: number) => void) =>
        this.call('flush', path, cb, async () => {
          const f = this.file(fd);
          await client.flush(f.nodeid, f.fh);
          return [];
        }),

      fsync: (path: string, datasync: number, fd: number, cb: (err: number) => void) =>
        this.call('fsync', path, cb, async () => {
          const f = this.file(fd);
          await client.fsync(f.nodeid, f.fh, datasync !== 0);
          return [];
        }),

      release: (path: string, fd: number, cb: (err: number) => void) =>
        this.call('release', path, cb, async () => {
          const f = this.handles.remove(fd);
          if (!f) throw new ErrnoError('release', errnoNumber('EBADF'), `handle ${fd}`);
          try {
            await client.release(f.nodeid, f.fh, f.flags);
          } finally {
            cache.invalidateAttr(f.nodeid);
            cache.release(f.nodeid);
          }
          return [];
        }),

      // --- extended attributes ---

      setxattr: (path: string, name: string, value: Buffer, _position: number, flags: number, cb: (err: number) => void) =>
        this.call('setxattr', path, cb, () => cache.use(path, async (n) => (await client.setxattr(n.nodeid, name, value, flags), []))),

      getxattr: (path: string, name: string, _position: number, cb: (err: number, value?: Buffer) => void) =>
        this.call('getxattr', path, cb, async () => [await cache.use(path, (n) => client.getxattr(n.nodeid, name))]),

      listxattr: (path: string, cb: (err: number, list?: string[]) => void) =>
        this.call('listxattr', path, cb, async () => [await cache.use(path, (n) => client.listxattr(n.nodeid))]),

      removexattr: (path: string, name: string, cb: (err: number) => void) =>
        this.call('removexattr', path, cb, () => cache.use(path, async (n) => (await client.removexattr(n.nodeid, name), []))),
    };
  }
}

/** GETATTR with the reply's attr_valid (VirtioFsClient.getattr returns the attributes only). */
async function getattrReply(session: FuseSession, nodeid: bigint): Promise<AttrReply> {
  return session.call('GETATTR', nodeid, { arg: {} }, {}, (r) => {
    if (r.body.kind !== 'struct') throw new Error(`unreachable: GETATTR reply of kind ${r.body.kind}`);
    const v = r.body.value as { attr_valid: bigint; attr_valid_nsec: number; attr: Attr };
    return { attr: v.attr, attrValidMs: validMs(v.attr_valid, v.attr_valid_nsec) };
  });
}
