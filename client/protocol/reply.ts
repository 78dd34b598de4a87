/**
 * Reply validation and decoding. Every length comes from the device and is
 * checked before it is used: the out header against the bytes that arrived,
 * the body against the size its opcode declares, variable records against the
 * end of the body. Nothing here reads past `available`.
 */
import * as abi from './abi.ts';
import { checkDirentStream, decodeDirents, decodeDirentsPlus, type DirentPlus, type Dirent } from './dirent.ts';
import { ProtocolError } from './errors.ts';
import { messageShape } from './messages.ts';
import type { Struct } from '../../ffi/struct.ts';

/** Largest errno a reply may carry (the kernel's MAX_ERRNO). */
const MAX_ERRNO = 4095;

export interface ReplyHeader {
  len: number;
  /** Positive errno in the device's encoding, 0 for success. */
  errno: number;
  unique: bigint;
}

/**
 * Reads and checks fuse_out_header. `available` is how many bytes the device
 * says it wrote (the used ring's len), capped by the buffer we gave it.
 */
export function readReplyHeader(opcode: number, view: DataView, at: number, available: number): ReplyHeader {
  const len = checkReplyHeader(opcode, view, at, available);
  return { len, errno: -view.getInt32(at + OUT_ERROR, true), unique: view.getBigUint64(at + OUT_UNIQUE, true) };
}

const OUT_LEN = abi.fuse_out_header.offsetOf('len');
const OUT_ERROR = abi.fuse_out_header.offsetOf('error');
const OUT_UNIQUE = abi.fuse_out_header.offsetOf('unique');

/**
 * Checks fuse_out_header's len and error (not unique: the caller knows what it sent) and
 * returns len; reads at precomputed offsets and builds nothing, for the request path.
 */
export function checkReplyHeader(opcode: number, view: DataView, at: number, available: number): number {
  if (available < abi.fuse_out_header.size) {
    throw new ProtocolError(opcode, 'fuse_out_header', `reply is ${available} bytes, the header alone is 16`);
  }
  const len = view.getUint32(at + OUT_LEN, true);
  const error = view.getInt32(at + OUT_ERROR, true);
  if (len < abi.fuse_out_header.size || len > available) {
    if (view.getUint32(at + OUT_LEN, false) === available) {
      // Measured: Debian's s390x virtiofsd reads and writes FUSE headers in its own byte order.
      throw new ProtocolError(
        opcode,
        'fuse_out_header.len',
        `len ${len} is ${available} byte-swapped, exactly what arrived: the device answered byte-swapped, it reads this session in the other byte order (virtio-fs: the driver's; a big-endian device that uses its own)`,
      );
    }
    throw new ProtocolError(opcode, 'fuse_out_header.len', `len ${len} but ${available} bytes arrived`);
  }
  if (error > 0 || error < -MAX_ERRNO) {
    throw new ProtocolError(opcode, 'fuse_out_header.error', `error ${error} is not a negative errno`);
  }
  if (error !== 0 && len !== abi.fuse_out_header.size) {
    throw new ProtocolError(opcode, 'fuse_out_header.len', `error reply carries ${len - 16} body bytes`);
  }
  return len;
}

/** Checks a fixed-size body's length; names the field where a short body ends. */
function checkStruct(opcode: number, s: Struct<unknown>, bodyLen: number): void {
  if (bodyLen !== s.size) {
    const cut = s.fields.find((f) => f.offset + f.size > bodyLen);
    const field = bodyLen < s.size && cut ? `${s.name}.${cut.name}` : s.name;
    throw new ProtocolError(opcode, field, `body is ${bodyLen} bytes, ${s.name} is ${s.size}`);
  }
}

const ENTRY_OPEN_SIZE = abi.fuse_entry_out.size + abi.fuse_open_out.size;
const IOCTL_RESULT = abi.fuse_ioctl_out.offsetOf('result');
const IOCTL_FLAGS = abi.fuse_ioctl_out.offsetOf('flags');
/** fuse_ioctl_out.flags: the device asks to be sent the named iovecs (unrestricted ioctls, CUSE only). */
const FUSE_IOCTL_RETRY = 1 << 2;

/** fuse_ioctl_out, then at most the out_size the request asked for. */
function checkIoctlReply(opcode: number, view: DataView, at: number, bodyLen: number, limit: number | undefined): void {
  const s = abi.fuse_ioctl_out as Struct<unknown>;
  if (bodyLen < s.size) {
    const cut = s.fields.find((f) => f.offset + f.size > bodyLen)!;
    throw new ProtocolError(opcode, `${s.name}.${cut.name}`, `body is ${bodyLen} bytes, ${s.name} alone is ${s.size}`);
  }
  if ((view.getUint32(at + IOCTL_FLAGS, true) & FUSE_IOCTL_RETRY) !== 0) {
    throw new ProtocolError(opcode, 'fuse_ioctl_out.flags', 'FUSE_IOCTL_RETRY in answer to a restricted ioctl (only CUSE servers may ask for one)');
  }
  const result = view.getInt32(at + IOCTL_RESULT, true);
  if (result < -MAX_ERRNO) throw new ProtocolError(opcode, 'fuse_ioctl_out.result', `result ${result} is neither a return value nor a negative errno`);
  if (limit !== undefined && bodyLen - s.size > limit) {
    throw new ProtocolError(opcode, 'body', `${bodyLen - s.size} bytes after fuse_ioctl_out, more than the out_size ${limit}`);
  }
}

function checkLimit(opcode: number, bodyLen: number, limit: number | undefined): void {
  if (limit !== undefined && bodyLen > limit) throw new ProtocolError(opcode, 'body', `${bodyLen} bytes, more than the ${limit} requested`);
}

/**
 * Checks the body of a successful reply to `opcode` (header already checked, body =
 * view[at, at+bodyLen)) against the opcode's shape and the size the request asked for, building
 * nothing: what the relays need before passing a reply on. decodeReplyBody checks the same way.
 */
export function checkReplyBody(opcode: number, view: DataView, at: number, bodyLen: number, requestedSize?: number): void {
  const shape = messageShape(opcode);
  if (!shape) throw new ProtocolError(opcode, 'opcode', 'not an opcode this client sends');
  const reply = shape.reply;
  switch (reply.kind) {
    case 'none':
    case 'empty':
      if (bodyLen !== 0) throw new ProtocolError(opcode, 'body', `expected no body, got ${bodyLen} bytes`);
      return;
    case 'struct':
      return checkStruct(opcode, reply.struct as Struct<unknown>, bodyLen);
    case 'entry+open':
      if (bodyLen !== ENTRY_OPEN_SIZE) throw new ProtocolError(opcode, 'fuse_entry_out+fuse_open_out', `body is ${bodyLen} bytes, expected ${ENTRY_OPEN_SIZE}`);
      return;
    case 'bytes':
      return checkLimit(opcode, bodyLen, requestedSize);
    case 'dirents':
    case 'direntplus':
      checkLimit(opcode, bodyLen, requestedSize);
      return checkDirentStream(opcode, view, at, bodyLen, reply.kind === 'dirents' ? abi.fuse_dirent.size : abi.fuse_direntplus.size);
    case 'xattr':
      if (requestedSize === 0) return checkStruct(opcode, abi.fuse_getxattr_out as Struct<unknown>, bodyLen);
      return checkLimit(opcode, bodyLen, requestedSize);
    case 'init':
      throw new ProtocolError(opcode, 'body', 'INIT replies are decoded by decodeInitReply');
    case 'ioctl':
      return checkIoctlReply(opcode, view, at, bodyLen, requestedSize);
  }
}

export type ReplyBody =
  | { kind: 'empty' }
  | { kind: 'struct'; value: any }
  | { kind: 'entry+open'; entry: typeof abi.fuse_entry_out extends Struct<infer E> ? E : never; open: typeof abi.fuse_open_out extends Struct<infer O> ? O : never }
  /** A zero-copy range of the reply buffer. */
  | { kind: 'bytes'; offset: number; length: number }
  | { kind: 'dirents'; entries: Dirent[] }
  | { kind: 'direntplus'; entries: DirentPlus[] }
  | { kind: 'xattr-size'; size: number }
  /** IOCTL: the ioctl's result (a negative errno already in the client's encoding) and its out data. */
  | { kind: 'ioctl'; result: number; flags: number; offset: number; length: number };

export interface ReplyContext {
  /** The size the request asked for: READ/READDIR/GETXATTR/LISTXATTR size, READLINK's page. */
  requestedSize?: number;
}

/**
 * Decodes the body of a successful reply to `opcode` (header already checked,
 * body = view[at, at+bodyLen)). INIT has its own decoder in init.ts.
 */
export function decodeReplyBody(
  opcode: number,
  view: DataView,
  at: number,
  bodyLen: number,
  context: ReplyContext = {},
): ReplyBody {
  const limit = context.requestedSize;
  checkReplyBody(opcode, view, at, bodyLen, limit);
  const reply = messageShape(opcode)!.reply;
  switch (reply.kind) {
    case 'none':
    case 'empty':
      return { kind: 'empty' };
    case 'struct':
      return { kind: 'struct', value: reply.struct.decode(view, at) };
    case 'entry+open':
      return { kind: 'entry+open', entry: abi.fuse_entry_out.decode(view, at), open: abi.fuse_open_out.decode(view, at + abi.fuse_entry_out.size) };
    case 'bytes':
      return { kind: 'bytes', offset: at, length: bodyLen };
    case 'dirents':
      return { kind: 'dirents', entries: decodeDirents(view, at, bodyLen) };
    case 'direntplus':
      return { kind: 'direntplus', entries: decodeDirentsPlus(view, at, bodyLen) };
    case 'xattr':
      return limit === 0 ? { kind: 'xattr-size', size: abi.fuse_getxattr_out.decode(view, at).size } : { kind: 'bytes', offset: at, length: bodyLen };
    case 'init':
      throw new ProtocolError(opcode, 'body', 'INIT replies are decoded by decodeInitReply');
    case 'ioctl': {
      const size = abi.fuse_ioctl_out.size;
      return { kind: 'ioctl', result: view.getInt32(at + IOCTL_RESULT, true), flags: view.getUint32(at + IOCTL_FLAGS, true), offset: at + size, length: bodyLen - size };
    }
  }
}

/** Splits a LISTXATTR name list (each name NUL-terminated) with bounds checks. */
export function parseXattrNames(opcode: number, bytes: Uint8Array): string[] {
  if (bytes.length === 0) return [];
  if (bytes[bytes.length - 1] !== 0) {
    throw new ProtocolError(opcode, 'body', 'xattr name list does not end with NUL');
  }
  const names: string[] = [];
  const text = new TextDecoder();
  let start = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] !== 0) continue;
    if (i === start) throw new ProtocolError(opcode, 'body', `empty xattr name at byte ${i}`);
    names.push(text.decode(bytes.subarray(start, i)));
    start = i + 1;
  }
  return names;
}
