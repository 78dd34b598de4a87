/**
 * Scripting a virtio-fs device without mounting anything: every FUSE
 * operation as a promise. Node ids and file handles are the device's own
 * (bigint); errors are ErrnoError with Node-style codes (err.code === 'ENOENT')
 * in this machine's encoding, whatever the device's architecture.
 */
import { lockTypeName, type LockTypeName } from './arch/index.ts';
import { FuseSession, type SessionOptions } from './fuse/session.ts';
import {
  FSYNC_FDATASYNC,
  FUSE_ROOT_ID,
  InitFlag,
  Opcode,
  SetattrValid,
  fuse_attr,
  fuse_entry_out,
  fuse_kstatfs,
  fuse_open_out,
  parseXattrNames,
  type Dirent,
  type DirentPlus,
  type ReplyBody,
} from './protocol/index.ts';
import type { Struct } from '../ffi/struct.ts';
import { openTransport } from './transport/open.ts';
import type { VirtioTransport } from './transport/transport.ts';
import { VirtioFsDevice, type DeviceOptions } from './virtio/virtio-fs-device.ts';

type Value<S> = S extends Struct<infer V> ? V : never;
export type Attr = Value<typeof fuse_attr>;
export type Entry = Value<typeof fuse_entry_out>;
export type StatFs = Value<typeof fuse_kstatfs>;
export interface OpenFile {
  fh: bigint;
  /** FOPEN_* flags the device chose. */
  openFlags: number;
}
export interface Created extends OpenFile {
  entry: Entry;
}
export interface Lock {
  type: LockTypeName;
  start: bigint;
  end: bigint;
  pid: number;
}
export interface SetattrChanges {
  mode?: number;
  uid?: number;
  gid?: number;
  size?: bigint | number;
  /** Seconds and nanoseconds since the epoch, or 'now'. */
  atime?: { sec: bigint | number; nsec: number } | 'now';
  mtime?: { sec: bigint | number; nsec: number } | 'now';
  /** Act through this open file (ftruncate rather than truncate). */
  fh?: bigint;
}

export interface ConnectOptions extends SessionOptions, DeviceOptions {
  /** 'vhost-user:/path/to.sock', or a transport already open. */
  transport: string | VirtioTransport;
}

export const ROOT = FUSE_ROOT_ID;

export class VirtioFsClient {
  private closing = false;

  private constructor(readonly session: FuseSession) {}

  /** Opens the transport, sets up the queues, and negotiates FUSE_INIT. */
  static async connect(options: ConnectOptions): Promise<VirtioFsClient> {
    const transport = typeof options.transport === 'string' ? openTransport(options.transport) : options.transport;
    let device: VirtioFsDevice | undefined;
    try {
      device = VirtioFsDevice.open(transport, options);
      const client = new VirtioFsClient(await FuseSession.open(device, options));
      // Said once, here (the relay and the reference device say it their own way): each request
      // that fails because of it carries only its code.
      const log = options.log ?? ((line: string) => console.error(`virtiofs-client: ${line}`));
      device.onFailure((error) => {
        if (!client.closing) log(`device failed: ${error.message}; every request now fails with ${(error as { code?: string }).code ?? 'EIO'}`);
      });
      return client;
    } catch (e) {
      if (device) device.close();
      else transport.close();
      throw e;
    }
  }

  /** What INIT settled, one fact per line. */
  describe(): string[] {
    return this.session.describe();
  }

  close(): Promise<void> {
    this.closing = true;
    return this.session.close();
  }

  // --- names -------------------------------------------------------------------

  lookup(parent: bigint, name: string): Promise<Entry> {
    return this.entry('LOOKUP', parent, {}, [name], name);
  }

  /** Looks up each component of a '/'-separated path from the root. Each lookup counts (FORGET them if you care). */
  async resolve(path: string): Promise<Entry> {
    let entry: Entry | undefined;
    for (const part of path.split('/').filter((p) => p && p !== '.')) {
      entry = await this.lookup(entry?.nodeid ?? ROOT, part);
    }
    return entry ?? { ...(await this.rootEntry()) };
  }

  forget(nodeid: bigint, nlookup: bigint = 1n): Promise<void> {
    return this.session.forget(nodeid, nlookup);
  }

  mkdir(parent: bigint, name: string, mode: number, umask = 0): Promise<Entry> {
    return this.entry('MKDIR', parent, { mode, umask }, [name], name);
  }

  mknod(parent: bigint, name: string, mode: number, rdev = 0, umask = 0): Promise<Entry> {
    return this.entry('MKNOD', parent, { mode, rdev, umask }, [name], name);
  }

  symlink(parent: bigint, name: string, target: string): Promise<Entry> {
    return this.entry('SYMLINK', parent, undefined, [name, target], name);
  }

  link(nodeid: bigint, newParent: bigint, newName: string): Promise<Entry> {
    return this.entry('LINK', newParent, { oldnodeid: nodeid }, [newName], newName);
  }

  unlink(parent: bigint, name: string): Promise<void> {
    return this.empty('UNLINK', parent, { names: [name] }, name);
  }

  rmdir(parent: bigint, name: string): Promise<void> {
    return this.empty('RMDIR', parent, { names: [name] }, name);
  }

  /** RENAME2 when `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE) are given. */
  rename(parent: bigint, name: string, newParent: bigint, newName: string, flags = 0): Promise<void> {
    return flags
      ? this.empty('RENAME2', parent, { arg: { newdir: newParent, flags }, names: [name, newName] }, name)
      : this.empty('RENAME', parent, { arg: { newdir: newParent }, names: [name, newName] }, name);
  }

  readlink(nodeid: bigint): Promise<string> {
    return this.session.call('READLINK', nodeid, {}, {}, (r) => {
      const { offset, length } = bytesOf(r.body);
      return new TextDecoder().decode(r.bytes.subarray(offset, offset + length));
    });
  }

  // --- attributes ----------------------------------------------------------------

  getattr(nodeid: bigint, fh?: bigint): Promise<Attr> {
    const arg = fh === undefined ? {} : { getattr_flags: 1, fh };
    return this.session.call('GETATTR', nodeid, { arg }, {}, (r) => structOf(r.body).attr as Attr);
  }

  setattr(nodeid: bigint, changes: SetattrChanges): Promise<Attr> {
    let valid = 0;
    const arg: Record<string, unknown> = {};
    if (changes.mode !== undefined) (valid |= SetattrValid.MODE), (arg.mode = changes.mode);
    if (changes.uid !== undefined) (valid |= SetattrValid.UID), (arg.uid = changes.uid);
    if (changes.gid !== undefined) (valid |= SetattrValid.GID), (arg.gid = changes.gid);
    if (changes.size !== undefined) (valid |= SetattrValid.SIZE), (arg.size = BigInt(changes.size));
    if (changes.fh !== undefined) (valid |= SetattrValid.FH), (arg.fh = changes.fh);
    for (const [which, bit, now] of [
      ['atime', SetattrValid.ATIME, SetattrValid.ATIME_NOW],
      ['mtime', SetattrValid.MTIME, SetattrValid.MTIME_NOW],
    ] as const) {
      const t = changes[which];
      if (t === undefined) continue;
      valid |= bit;
      if (t === 'now') valid |= now;
      else (arg[which] = BigInt(t.sec)), (arg[`${which}nsec`] = t.nsec);
    }
    arg.valid = valid;
    return this.session.call('SETATTR', nodeid, { arg }, {}, (r) => structOf(r.body).attr as Attr);
  }

  statfs(nodeid: bigint = ROOT): Promise<StatFs> {
    return this.session.call('STATFS', nodeid, {}, {}, (r) => structOf(r.body).st as StatFs);
  }

  access(nodeid: bigint, mask: number): Promise<void> {
    return this.empty('ACCESS', nodeid, { arg: { mask } });
  }

  // --- files ---------------------------------------------------------------------

  /** `flags` are open(2) flags in this machine's encoding (fs.constants.O_*); translated as negotiated. */
  open(nodeid: bigint, flags: number): Promise<OpenFile> {
    return this.openAs('OPEN', nodeid, flags);
  }

  create(parent: bigint, name: string, flags: number, mode: number, umask = 0): Promise<Created> {
    return this.session.call('CREATE', parent, { arg: { flags, mode, umask }, names: [name] }, { detail: name }, (r) => {
      if (r.body.kind !== 'entry+open') throw new Error('unreachable: CREATE reply shape');
      return { entry: r.body.entry, fh: r.body.open.fh, openFlags: r.body.open.open_flags };
    });
  }

  /** Reads up to `size` bytes at `offset`, in as many requests as max_pages allows; short at EOF. */
  async read(nodeid: bigint, fh: bigint, offset: bigint | number, size: number, flags = 0): Promise<Buffer> {
    const out = Buffer.allocUnsafe(size);
    let done = 0;
    while (done < size) {
      const want = Math.min(size - done, this.session.maxRead);
      const got = await this.session.call(
        'READ',
        nodeid,
        { arg: { fh, offset: BigInt(offset) + BigInt(done), size: want, flags } },
        {},
        (r) => {
          const { offset: at, length } = bytesOf(r.body);
          out.set(r.bytes.subarray(at, at + length), done);
          return length;
        },
      );
      done += got;
      if (got < want) break;
    }
    return out.subarray(0, done);
  }

  /** Writes all of `data` at `offset`, split at max_write; resolves with the bytes written. */
  async write(nodeid: bigint, fh: bigint, offset: bigint | number, data: Uint8Array, flags = 0): Promise<number> {
    let done = 0;
    do {
      const chunk = data.subarray(done, done + this.session.maxWrite);
      const written = await this.session.call(
        'WRITE',
        nodeid,
        { arg: { fh, offset: BigInt(offset) + BigInt(done), size: chunk.length, flags }, data: chunk },
        {},
        (r) => structOf(r.body).size as number,
      );
      if (written > chunk.length) throw new RangeError(`device wrote ${written} of ${chunk.length} bytes`);
      done += written;
      if (written < chunk.length) break;
    } while (done < data.length);
    return done;
  }

  flush(nodeid: bigint, fh: bigint, lockOwner = 0n): Promise<void> {
    return this.empty('FLUSH', nodeid, { arg: { fh, lock_owner: lockOwner } });
  }

  fsync(nodeid: bigint, fh: bigint, datasync = false): Promise<void> {
    return this.empty('FSYNC', nodeid, { arg: { fh, fsync_flags: datasync ? FSYNC_FDATASYNC : 0 } });
  }

  release(nodeid: bigint, fh: bigint, flags = 0): Promise<void> {
    return this.empty('RELEASE', nodeid, { arg: { fh, flags } });
  }

  fallocate(nodeid: bigint, fh: bigint, offset: bigint | number, length: bigint | number, mode = 0): Promise<void> {
    return this.empty('FALLOCATE', nodeid, { arg: { fh, offset: BigInt(offset), length: BigInt(length), mode } });
  }

  lseek(nodeid: bigint, fh: bigint, offset: bigint | number, whence: number): Promise<bigint> {
    return this.session.call('LSEEK', nodeid, { arg: { fh, offset: BigInt(offset), whence } }, {}, (r) => structOf(r.body).offset as bigint);
  }

  // --- locks ---------------------------------------------------------------------

  /** The first lock that would conflict with `lock`, or type F_UNLCK if none. */
  getlk(nodeid: bigint, fh: bigint, owner: bigint, lock: Lock): Promise<Lock> {
    return this.session.call('GETLK', nodeid, { arg: this.lkArg(fh, owner, lock) }, {}, (r) => {
      const lk = structOf(r.body).lk as { type: number; start: bigint; end: bigint; pid: number };
      const type = lockTypeName(lk.type, this.session.clientArch);
      if (!type) throw new RangeError(`device returned lock type ${lk.type}`);
      return { type, start: lk.start, end: lk.end, pid: lk.pid };
    });
  }

  /** SETLK, or SETLKW when `wait`; EAGAIN when a conflicting lock is held. */
  setlk(nodeid: bigint, fh: bigint, owner: bigint, lock: Lock, wait = false): Promise<void> {
    return this.empty(wait ? 'SETLKW' : 'SETLK', nodeid, { arg: this.lkArg(fh, owner, lock) });
  }

  // --- directories -----------------------------------------------------------------

  opendir(nodeid: bigint, flags = 0): Promise<OpenFile> {
    return this.openAs('OPENDIR', nodeid, flags);
  }

  readdir(nodeid: bigint, fh: bigint, offset: bigint, size = 65536): Promise<Dirent[]> {
    return this.session.call('READDIR', nodeid, { arg: { fh, offset, size } }, {}, (r) => direntsOf(r.body));
  }

  readdirplus(nodeid: bigint, fh: bigint, offset: bigint, size = 65536): Promise<DirentPlus[]> {
    return this.session.call('READDIRPLUS', nodeid, { arg: { fh, offset, size } }, {}, (r) => direntsOf(r.body) as DirentPlus[]);
  }

  releasedir(nodeid: bigint, fh: bigint): Promise<void> {
    return this.empty('RELEASEDIR', nodeid, { arg: { fh } });
  }

  fsyncdir(nodeid: bigint, fh: bigint, datasync = false): Promise<void> {
    return this.empty('FSYNCDIR', nodeid, { arg: { fh, fsync_flags: datasync ? FSYNC_FDATASYNC : 0 } });
  }

  /**
   * Every entry of a directory through READDIRPLUS (open, read until empty,
   * release). Entries other than '.' and '..' carry a lookup reference each.
   */
  async list(nodeid: bigint): Promise<DirentPlus[]> {
    const { fh } = await this.opendir(nodeid);
    try {
      const all: DirentPlus[] = [];
      let offset = 0n;
      for (;;) {
        const batch = await this.readdirplus(nodeid, fh, offset);
        if (batch.length === 0) return all;
        all.push(...batch);
        offset = batch[batch.length - 1]!.off;
      }
    } finally {
      await this.releasedir(nodeid, fh);
    }
  }

  // --- extended attributes ------------------------------------------------------------

  setxattr(nodeid: bigint, name: string, value: Uint8Array, flags = 0): Promise<void> {
    const ext = (this.session.init.flags & InitFlag.SETXATTR_EXT) !== 0n; // 16-byte argument, else the 8-byte compat one
    return this.empty('SETXATTR', nodeid, { arg: { size: value.length, flags }, argSize: ext ? 16 : 8, names: [name], data: value }, name);
  }

  /** The value of one attribute (asks for its size first, as the kernel does). */
  async getxattr(nodeid: bigint, name: string): Promise<Buffer> {
    const size = await this.session.call('GETXATTR', nodeid, { arg: { size: 0 }, names: [name] }, { detail: name }, (r) => xattrSizeOf(r.body));
    if (size === 0) return Buffer.alloc(0);
    return this.session.call('GETXATTR', nodeid, { arg: { size }, names: [name] }, { detail: name }, (r) => {
      const { offset, length } = bytesOf(r.body);
      return Buffer.from(r.bytes.subarray(offset, offset + length));
    });
  }

  async listxattr(nodeid: bigint): Promise<string[]> {
    const size = await this.session.call('LISTXATTR', nodeid, { arg: { size: 0 } }, {}, (r) => xattrSizeOf(r.body));
    if (size === 0) return [];
    return this.session.call('LISTXATTR', nodeid, { arg: { size } }, {}, (r) => {
      const { offset, length } = bytesOf(r.body);
      return parseXattrNames(Opcode.LISTXATTR, r.bytes.subarray(offset, offset + length));
    });
  }

  removexattr(nodeid: bigint, name: string): Promise<void> {
    return this.empty('REMOVEXATTR', nodeid, { names: [name] }, name);
  }

  // --- helpers ---------------------------------------------------------------------

  private async rootEntry(): Promise<Entry> {
    const attr = await this.getattr(ROOT);
    return { nodeid: ROOT, generation: 0n, entry_valid: 0n, attr_valid: 0n, entry_valid_nsec: 0, attr_valid_nsec: 0, attr };
  }

  private entry(op: 'LOOKUP' | 'MKDIR' | 'MKNOD' | 'SYMLINK' | 'LINK', parent: bigint, arg: object | undefined, names: string[], detail: string): Promise<Entry> {
    return this.session.call(op, parent, { arg, names }, { detail }, (r) => structOf(r.body) as Entry);
  }

  private empty(op: Parameters<FuseSession['call']>[0], nodeid: bigint, body: Parameters<FuseSession['call']>[2], detail?: string): Promise<void> {
    return this.session.call(op, nodeid, body, { detail }, () => undefined);
  }

  private openAs(op: 'OPEN' | 'OPENDIR', nodeid: bigint, flags: number): Promise<OpenFile> {
    return this.session.call(op, nodeid, { arg: { flags } }, {}, (r) => {
      const o = structOf(r.body) as Value<typeof fuse_open_out>;
      return { fh: o.fh, openFlags: o.open_flags };
    });
  }

  private lkArg(fh: bigint, owner: bigint, lock: Lock) {
    const type = this.session.clientArch.lockTypes.types[lock.type];
    return { fh, owner, lk: { start: lock.start, end: lock.end, type, pid: lock.pid } };
  }
}

function structOf(body: ReplyBody): Record<string, any> {
  if (body.kind !== 'struct') throw new Error(`unreachable: expected a struct reply, got ${body.kind}`);
  return body.value;
}

function bytesOf(body: ReplyBody): { offset: number; length: number } {
  if (body.kind !== 'bytes') throw new Error(`unreachable: expected a data reply, got ${body.kind}`);
  return body;
}

function direntsOf(body: ReplyBody): Dirent[] {
  if (body.kind !== 'dirents' && body.kind !== 'direntplus') throw new Error(`unreachable: expected dirents, got ${body.kind}`);
  return body.entries;
}

function xattrSizeOf(body: ReplyBody): number {
  if (body.kind !== 'xattr-size') throw new Error(`unreachable: expected an xattr size, got ${body.kind}`);
  return body.size;
}
