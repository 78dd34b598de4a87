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

function parseStream<T>(
  opcode: number,
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
    const where = `record ${out.length} at byte ${pos}`;
    if (length - pos < fixed) {
      throw new ProtocolError(opcode, 'fuse_dirent', `${where}: ${length - pos} bytes left, a record header is ${fixed}`);
    }
    const d = fuse_dirent.decode(view, at + pos + direntAt);
    if (d.namelen === 0 || d.namelen > FUSE_NAME_MAX) {
      throw new ProtocolError(opcode, 'fuse_dirent.namelen', `${where}: namelen ${d.namelen}`);
    }
    // The last record may omit its trailing padding; its name may not run past the end.
    if (fixed + d.namelen > length - pos) {
      throw new ProtocolError(opcode, 'fuse_dirent.namelen', `${where}: name of ${d.namelen} bytes runs past the end`);
    }
    const nameBytes = new Uint8Array(view.buffer, view.byteOffset + at + pos + fixed, d.namelen);
    if (nameBytes.includes(0x2f) || nameBytes.includes(0)) {
      throw new ProtocolError(opcode, 'fuse_dirent.name', `${where}: name contains '/' or NUL`);
    }
    out.push(read(at + pos, utf8.decode(nameBytes), d));
    pos += Math.min(align8(fixed + d.namelen), length - pos);
  }
  return out;
}

export function parseDirents(opcode: number, view: DataView, at: number, length: number): Dirent[] {
  return parseStream(opcode, view, at, length, fuse_dirent.size, (_r, name, d) => ({
    ino: d.ino,
    off: d.off,
    type: d.type,
    name,
  }));
}

export function parseDirentsPlus(opcode: number, view: DataView, at: number, length: number): DirentPlus[] {
  return parseStream(opcode, view, at, length, fuse_direntplus.size, (recordAt, name, d) => ({
    ino: d.ino,
    off: d.off,
    type: d.type,
    name,
    entry: fuse_entry_out.decode(view, recordAt),
  }));
}
