/**
 * What each opcode carries (include/uapi/linux/fuse.h, fs/fuse/*.c): the
 * fixed argument struct of the request, how many NUL-terminated names follow
 * it, whether raw data follows, and the shape of the reply body.
 */
import * as abi from './abi.ts';
import { Opcode, type OpcodeName } from './opcodes.ts';
import type { Struct } from '../../ffi/struct.ts';

export type ReplyShape =
  /** The device sends no reply body we wait for (FORGET, BATCH_FORGET, INTERRUPT). */
  | { readonly kind: 'none' }
  | { readonly kind: 'empty' }
  | { readonly kind: 'struct'; readonly struct: Struct<any> }
  /** CREATE/TMPFILE: fuse_entry_out then fuse_open_out. */
  | { readonly kind: 'entry+open' }
  /** Raw bytes up to the size the request asked for (READ, READLINK). */
  | { readonly kind: 'bytes' }
  | { readonly kind: 'dirents' }
  | { readonly kind: 'direntplus' }
  /** GETXATTR/LISTXATTR: fuse_getxattr_out when the request's size is 0, else bytes. */
  | { readonly kind: 'xattr' }
  /** FUSE_INIT: fuse_init_out, shorter from old devices. */
  | { readonly kind: 'init' }
  /** IOCTL: fuse_ioctl_out, then up to the request's out_size bytes, all in the fixed room. */
  | { readonly kind: 'ioctl' };

export interface MessageShape {
  readonly arg?: Struct<any>;
  readonly names?: 1 | 2;
  readonly data?: true;
  readonly reply: ReplyShape;
}

const empty = { kind: 'empty' } as const;
const none = { kind: 'none' } as const;
const bytes = { kind: 'bytes' } as const;
const entry = { kind: 'struct', struct: abi.fuse_entry_out } as const;
const attr = { kind: 'struct', struct: abi.fuse_attr_out } as const;
const open = { kind: 'struct', struct: abi.fuse_open_out } as const;

export const messages = {
  LOOKUP: { names: 1, reply: entry },
  FORGET: { arg: abi.fuse_forget_in, reply: none },
  BATCH_FORGET: { arg: abi.fuse_batch_forget_in, data: true, reply: none },
  GETATTR: { arg: abi.fuse_getattr_in, reply: attr },
  SETATTR: { arg: abi.fuse_setattr_in, reply: attr },
  READLINK: { reply: bytes },
  SYMLINK: { names: 2, reply: entry }, // new entry's name, then the link target
  MKNOD: { arg: abi.fuse_mknod_in, names: 1, reply: entry },
  MKDIR: { arg: abi.fuse_mkdir_in, names: 1, reply: entry },
  UNLINK: { names: 1, reply: empty },
  RMDIR: { names: 1, reply: empty },
  RENAME: { arg: abi.fuse_rename_in, names: 2, reply: empty },
  RENAME2: { arg: abi.fuse_rename2_in, names: 2, reply: empty },
  LINK: { arg: abi.fuse_link_in, names: 1, reply: entry },
  OPEN: { arg: abi.fuse_open_in, reply: open },
  READ: { arg: abi.fuse_read_in, reply: bytes },
  WRITE: { arg: abi.fuse_write_in, data: true, reply: { kind: 'struct', struct: abi.fuse_write_out } },
  STATFS: { reply: { kind: 'struct', struct: abi.fuse_statfs_out } },
  RELEASE: { arg: abi.fuse_release_in, reply: empty },
  FSYNC: { arg: abi.fuse_fsync_in, reply: empty },
  SETXATTR: { arg: abi.fuse_setxattr_in, names: 1, data: true, reply: empty },
  GETXATTR: { arg: abi.fuse_getxattr_in, names: 1, reply: { kind: 'xattr' } },
  LISTXATTR: { arg: abi.fuse_getxattr_in, reply: { kind: 'xattr' } },
  REMOVEXATTR: { names: 1, reply: empty },
  FLUSH: { arg: abi.fuse_flush_in, reply: empty },
  INIT: { arg: abi.fuse_init_in, reply: { kind: 'init' } },
  OPENDIR: { arg: abi.fuse_open_in, reply: open },
  READDIR: { arg: abi.fuse_read_in, reply: { kind: 'dirents' } },
  RELEASEDIR: { arg: abi.fuse_release_in, reply: empty },
  FSYNCDIR: { arg: abi.fuse_fsync_in, reply: empty },
  GETLK: { arg: abi.fuse_lk_in, reply: { kind: 'struct', struct: abi.fuse_lk_out } },
  SETLK: { arg: abi.fuse_lk_in, reply: empty },
  SETLKW: { arg: abi.fuse_lk_in, reply: empty },
  ACCESS: { arg: abi.fuse_access_in, reply: empty },
  CREATE: { arg: abi.fuse_create_in, names: 1, reply: { kind: 'entry+open' } },
  INTERRUPT: { arg: abi.fuse_interrupt_in, reply: none },
  DESTROY: { reply: empty },
  FALLOCATE: { arg: abi.fuse_fallocate_in, reply: empty },
  READDIRPLUS: { arg: abi.fuse_read_in, reply: { kind: 'direntplus' } },
  LSEEK: { arg: abi.fuse_lseek_in, reply: { kind: 'struct', struct: abi.fuse_lseek_out } },
  COPY_FILE_RANGE: {
    arg: abi.fuse_copy_file_range_in,
    reply: { kind: 'struct', struct: abi.fuse_write_out },
  },
  COPY_FILE_RANGE_64: {
    arg: abi.fuse_copy_file_range_in,
    reply: { kind: 'struct', struct: abi.fuse_copy_file_range_out },
  },
  SYNCFS: { arg: abi.fuse_syncfs_in, reply: empty },
  TMPFILE: { arg: abi.fuse_create_in, names: 1, reply: { kind: 'entry+open' } },
  STATX: { arg: abi.fuse_statx_in, reply: { kind: 'struct', struct: abi.fuse_statx_out } },
  // The kernel sends it for lsattr/chattr (fileattr) and for ioctl(2) on a file, restricted: in_size
  // bytes follow fuse_ioctl_in, and the reply carries at most out_size.
  IOCTL: { arg: abi.fuse_ioctl_in, data: true, reply: { kind: 'ioctl' } },
} as const satisfies Partial<Record<OpcodeName, MessageShape>>;

export type SupportedOpcode = keyof typeof messages;

const byNumber = new Map<number, MessageShape>(
  Object.entries(messages).map(([name, shape]) => [Opcode[name as SupportedOpcode], shape]),
);

/** The shape of an opcode this client knows how to send, or undefined. */
export function messageShape(opcode: number): MessageShape | undefined {
  return byNumber.get(opcode);
}

/** Where a reply's bytes go: the fixed part after the out header, and variable data. */
export interface ReplyRoom {
  /** Bytes of fixed struct(s) following fuse_out_header. */
  fixed: number;
  /** Bytes of variable data (READ data, dirents, xattr values), placed in their own buffer. */
  data: number;
}

/**
 * How much writable buffer a well-behaved device needs for `opcode`'s reply,
 * given the size the request asked for. The driver offers exactly this, as
 * the kernel does: QEMU 7.2's virtiofsd, for one, fills a READ's whole
 * writable buffer from the file, past the size asked for.
 */
export function replyRoom(opcode: number, requestedSize = 0, into: ReplyRoom = { fixed: 0, data: 0 }): ReplyRoom {
  const shape = messageShape(opcode);
  if (!shape) throw new RangeError(`opcode ${opcode} is not one this client sends`);
  const reply = shape.reply;
  let fixed = 0;
  let data = 0;
  switch (reply.kind) {
    case 'none':
    case 'empty':
      break;
    case 'struct':
      fixed = reply.struct.size;
      break;
    case 'entry+open':
      fixed = ENTRY_OPEN_SIZE;
      break;
    case 'init':
      fixed = abi.fuse_init_out.size;
      break;
    case 'ioctl':
      fixed = abi.fuse_ioctl_out.size + requestedSize;
      break;
    case 'xattr':
      if (requestedSize === 0) fixed = abi.fuse_getxattr_out.size;
      else data = requestedSize;
      break;
    case 'bytes':
    case 'dirents':
    case 'direntplus':
      data = requestedSize;
      break;
  }
  // Written into the caller's object: the request path reuses one per slot.
  into.fixed = fixed;
  into.data = data;
  return into;
}

const ENTRY_OPEN_SIZE = abi.fuse_entry_out.size + abi.fuse_open_out.size;
const READ_SIZE_AT = abi.fuse_read_in.offsetOf('size');
const GETXATTR_SIZE_AT = abi.fuse_getxattr_in.offsetOf('size');
const IOCTL_OUT_SIZE_AT = abi.fuse_ioctl_in.offsetOf('out_size');

/**
 * The size a request asks its reply's data to fit in (READ, READDIR*,
 * GETXATTR, LISTXATTR; IOCTL its out_size), read from the argument struct at `argAt`; undefined
 * for other opcodes. READLINK states none: its limit is the buffer offered.
 */
export function requestedReplySize(opcode: number, view: DataView, argAt: number): number | undefined {
  switch (opcode) {
    case Opcode.READ:
    case Opcode.READDIR:
    case Opcode.READDIRPLUS:
      return view.getUint32(argAt + READ_SIZE_AT, true);
    case Opcode.GETXATTR:
    case Opcode.LISTXATTR:
      return view.getUint32(argAt + GETXATTR_SIZE_AT, true);
    case Opcode.IOCTL:
      return view.getUint32(argAt + IOCTL_OUT_SIZE_AT, true);
    default:
      return undefined;
  }
}
