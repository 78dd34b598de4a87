/** READDIR / READDIRPLUS record streams, parsed with the same bounds discipline as fixed replies. */
import { fuse_dirent, fuse_direntplus, fuse_entry_out } from './abi.ts';
import { ProtocolError } from './errors.ts';
import type { Struct } from '../../ffi/struct.ts';

/** The kernel's FUSE_NAME_MAX: longer names in a directory stream are rejected. */
export const FUSE_NAME_MAX = 1024;

export interface Dirent {
  ino: bigint;
  /** Cookie for the next READDIR's offset. */
  off: bigint;
  /** DT_* type (d_type), architecture independent. */
  type: number;
  name: string;
}

type EntryOut = typeof fuse_entry_out extends Struct<infer E> ? E : never;
export interface DirentPlus extends Dirent {
  entry: EntryOut;
}

const align8 = (n: number) => (n + 7) & ~7;
const utf8 = new TextDecoder();

const NAMELEN = fuse_dirent.offsetOf('namelen');
const SLASH = 0x2f;

/**
 * Checks a READDIR (`fixed` = fuse_dirent's size) or READDIRPLUS (fuse_direntplus's) record stream
 * of `length` bytes at `at`, building nothing: every record header complete, namelen 1..FUSE_NAME_MAX,
 * the name inside the stream and free of '/' and NUL. The last record may omit its trailing padding.
 */
export function checkDirentStream(opcode: number, view: DataView, at: number, length: number, fixed: number): void {
  const namelenAt = fixed - fuse_dirent.size + NAMELEN;
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  let pos = 0;
  for (let record = 0; pos < length; record++) {
    if (length - pos < fixed) {
      throw new ProtocolError(opcode, 'fuse_dirent', `record ${record} at byte ${pos}: ${length - pos} bytes left, a record header is ${fixed}`);
    }
    const namelen = view.getUint32(at + pos + namelenAt, true);
    if (namelen === 0 || namelen > FUSE_NAME_MAX) {
      throw new ProtocolError(opcode, 'fuse_dirent.namelen', `record ${record} at byte ${pos}: namelen ${namelen}`);
    }
    if (fixed + namelen > length - pos) {
      throw new ProtocolError(opcode, 'fuse_dirent.namelen', `record ${record} at byte ${pos}: name of ${namelen} bytes runs past the end`);
    }
    const name = at + pos + fixed;
    for (let i = name; i < name + namelen; i++) {
      if (bytes[i] === SLASH || bytes[i] === 0) {
        throw new ProtocolError(opcode, 'fuse_dirent.name', `record ${record} at byte ${pos}: name contains '/' or NUL`);
      }
    }
    pos += Math.min(align8(fixed + namelen), length - pos);
  }
}

/** Decodes a record stream that checkDirentStream has passed. */
function decodeStream<T>(
  view: DataView,
  at: number,
  length: number,
  fixed: number,
  read: (recordAt: number, name: string, dirent: { ino: bigint; off: bigint; type: number }) => T,
): T[] {
  const out: T[] = [];
  const direntAt = fixed - fuse_dirent.size; // where the fuse_dirent part sits in a record
  let pos = 0;
  while (pos < length) {
    const d = fuse_dirent.decode(view, at + pos + direntAt);
    const nameBytes = new Uint8Array(view.buffer, view.byteOffset + at + pos + fixed, d.namelen);
    out.push(read(at + pos, utf8.decode(nameBytes), d));
    pos += Math.min(align8(fixed + d.namelen), length - pos);
  }
  return out;
}

/** A READDIR stream that checkDirentStream has passed, as Dirents. */
export function decodeDirents(view: DataView, at: number, length: number): Dirent[] {
  return decodeStream(view, at, length, fuse_dirent.size, (_r, name, d) => ({ ino: d.ino, off: d.off, type: d.type, name }));
}

/** A READDIRPLUS stream that checkDirentStream has passed, as DirentPlus records. */
export function decodeDirentsPlus(view: DataView, at: number, length: number): DirentPlus[] {
  return decodeStream(view, at, length, fuse_direntplus.size, (recordAt, name, d) => ({
    ino: d.ino,
    off: d.off,
    type: d.type,
    name,
    entry: fuse_entry_out.decode(view, recordAt),
  }));
}
