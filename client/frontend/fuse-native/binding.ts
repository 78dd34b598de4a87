/**
 * fuse-native 2.2.6 (libfuse 2.9's high-level, path-based API) with the
 * defects of its JavaScript layer (index.js) fixed where JavaScript can fix
 * them, by overriding its methods in a subclass:
 *
 * - Mount options: index.js has no use_ino, big_writes, max_write,
 *   atomic_o_trunc, nonempty or negative_timeout, and drops a timeout of 0
 *   (`if (opts.entryTimeout)`). The whole -o string is built here instead.
 * - utimens: fuse-native.c passes the access time twice
 *   (FUSE_UINT64_TO_INTS_ARGV(l->atime, 5)), but it did store the
 *   modification time in the calling thread's record (l->mtime), a Buffer
 *   JavaScript allocated (_malloc) and the handler receives first. The
 *   modification time is read from there, after checking that the record's
 *   op and access time are the ones this call was given; if they are not
 *   (another build of the addon, another layout), the access time is used
 *   for both and counted.
 * - getxattr, listxattr: index.js ignores the size of libfuse's buffer:
 *   a value larger than it is copied short and its full length returned
 *   (libfuse then replies with bytes past its buffer), and listxattr's size
 *   query adds 128 bytes. Here: ERANGE when it does not fit, exact sizes.
 *
 * What stays as fuse-native.c has it (32-bit st_ino/fh/statvfs counts,
 * millisecond times, no create flags, no lock/fallocate/lseek/ioctl/poll/
 * copy_file_range operations) is handled in convert.ts and frontend.ts and
 * listed in the README's Frontends section.
 */
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { errnoNumber } from '../../../ffi/errno.ts';

const require = createRequire(import.meta.url);
const fuseNativeMain = require.resolve('fuse-native');
const fuseNativeRequire = createRequire(fuseNativeMain);

/** Calls back into libfuse: (result, ...values). */
type Signal = (result: number, ...values: unknown[]) => void;
// fuse-native's operations are untyped callbacks with per-operation signatures.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type FuseNativeOps = Record<string, (...args: any[]) => void>;

interface NativeBinding {
  fuse_native_unmount(mnt: string, thread: Buffer): void;
  op_utimens: number;
}

interface FuseBase {
  readonly mnt: string;
  readonly ops: FuseNativeOps;
  readonly _thread: Buffer | null;
  mount(cb: (err: Error | null) => void): void;
}

interface FuseBaseConstructor {
  new (mnt: string, ops: FuseNativeOps, opts: Record<string, unknown>): FuseBase;
  prototype: FuseBase & { _makeHandlerArray(): unknown[] };
}

const FuseNative = require('fuse-native') as FuseBaseConstructor;
// The same addon module instance index.js loaded (require caches it by path).
const binding = (fuseNativeRequire('node-gyp-build') as (dir: string) => NativeBinding)(dirname(fuseNativeMain));

const ERANGE = errnoNumber('ERANGE');
const ENODATA = errnoNumber('ENODATA');

/**
 * Where fuse-native.c's fuse_thread_locals_t keeps `op`, `atime` and `mtime`
 * on x86_64/arm64 Linux (LP64): self 0, op 8, op_fn 16, path 24, dest 32,
 * linkname 40, info 48, buf 56, offset 64, len 72, mode 80, dev 88, uid 96,
 * gid 100, atime 104, mtime 112. Checked on every call (op and atime must match).
 */
export const LOCALS_OP_AT = 8;
export const LOCALS_ATIME_AT = 104;
export const LOCALS_MTIME_AT = 112;

/**
 * The modification time fuse-native.c stored for a utimens call, read from
 * the thread record `locals`, or undefined if the record is not laid out as
 * expected (its op is not utimens, or its access time is not `atimeMs`).
 */
export function recoverMtime(locals: Uint8Array | undefined, atimeMs: number, opUtimens = binding.op_utimens): number | undefined {
  if (!locals || locals.byteLength < LOCALS_MTIME_AT + 8) return undefined;
  const view = new DataView(locals.buffer, locals.byteOffset, locals.byteLength);
  if (view.getUint32(LOCALS_OP_AT, true) !== opUtimens) return undefined;
  if (view.getBigUint64(LOCALS_ATIME_AT, true) !== BigInt(Math.round(atimeMs))) return undefined;
  return Number(view.getBigUint64(LOCALS_MTIME_AT, true));
}

/** libfuse -o options: a value with ',' or '\' escaped for fuse_opt. */
export function optionValue(value: string): string {
  return value.replace(/[\\,]/g, (c) => `\\${c}`);
}

export interface UtimensOutcome {
  /** Calls whose mtime was read from the thread record and differed from the atime fuse-native passed. */
  recovered: number;
  /** Calls where the record could not be read: the access time was used for both. */
  unrecovered: number;
}

/** fuse-native's Fuse, with the index.js defects above fixed. */
export class VirtioFuse extends (FuseNative as unknown as FuseBaseConstructor) {
  /** The thread record of the utimens call being dispatched (set only while its handler runs). */
  private utimensLocals: Buffer | undefined;
  readonly utimens: UtimensOutcome = { recovered: 0, unrecovered: 0 };

  constructor(
    mnt: string,
    ops: FuseNativeOps,
    /** The complete libfuse option list, without the leading -o. */
    private readonly fuseOptions: string[],
  ) {
    // No timeout: fuse-native would answer ETIMEDOUT after 15 s (a long fsync) while the
    // device still works on the request; the session has its own timeouts.
    super(mnt, ops, { timeout: false });
  }

  /** Lets the process exit once unmounted: fuse-native keeps a libuv handle referenced until this. */
  releaseLoop(): void {
    if (this._thread) binding.fuse_native_unmount(this.mnt, this._thread);
  }

  _fuseOptions(): string {
    return this.fuseOptions.length ? `-o${this.fuseOptions.join(',')}` : '';
  }

  _makeHandlerArray(): unknown[] {
    const handlers = (FuseNative.prototype._makeHandlerArray as () => unknown[]).call(this);
    const utimens = handlers[binding.op_utimens] as ((locals: Buffer, ...rest: unknown[]) => unknown) | undefined;
    if (utimens) {
      // Called by the addon with the thread record first; _op_utimens runs synchronously inside.
      handlers[binding.op_utimens] = (locals: Buffer, ...rest: unknown[]) => {
        this.utimensLocals = locals;
        try {
          return utimens(locals, ...rest);
        } finally {
          this.utimensLocals = undefined;
        }
      };
    }
    return handlers;
  }

  _op_utimens(signal: Signal, path: string, atimeLow: number, atimeHigh: number): void {
    const atime = atimeLow + atimeHigh * 4294967296;
    let mtime = recoverMtime(this.utimensLocals, atime);
    if (mtime === undefined) {
      this.utimens.unrecovered++;
      mtime = atime;
    } else if (mtime !== atime) {
      this.utimens.recovered++;
    }
    this.ops.utimens!(path, atime, mtime, (err: number) => signal(err));
  }

  _op_getxattr(signal: Signal, path: string, name: string, valueBuf: Buffer, position: number): void {
    this.ops.getxattr!(path, name, position, (err: number, value?: Buffer) => {
      if (err) return signal(err, valueBuf.buffer);
      if (!value) return signal(-ENODATA, valueBuf.buffer);
      if (valueBuf.length === 0) return signal(value.length, valueBuf.buffer);
      if (value.length > valueBuf.length) return signal(-ERANGE, valueBuf.buffer);
      value.copy(valueBuf);
      return signal(value.length, valueBuf.buffer);
    });
  }

  _op_listxattr(signal: Signal, path: string, listBuf: Buffer): void {
    this.ops.listxattr!(path, (err: number, list?: string[]) => {
      if (err) return signal(err, listBuf.buffer);
      const bytes = Buffer.from((list ?? []).map((n) => `${n}\0`).join(''));
      if (listBuf.length === 0) return signal(bytes.length, listBuf.buffer);
      if (bytes.length > listBuf.length) return signal(-ERANGE, listBuf.buffer);
      bytes.copy(listBuf);
      return signal(bytes.length, listBuf.buffer);
    });
  }
}
