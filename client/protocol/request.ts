import { fuse_in_header } from './abi.ts';
import { messages, type MessageShape, type SupportedOpcode } from './messages.ts';
import { Opcode } from './opcodes.ts';

export interface RequestHeader {
  unique: bigint;
  nodeid: bigint;
  uid: number;
  gid: number;
  pid: number;
}

export interface RequestBody {
  /** The opcode's fixed argument struct (absent fields are zero). */
  arg?: object;
  /** Bytes of `arg` actually sent, for the compat forms (SETXATTR without SETXATTR_EXT). */
  argSize?: number;
  /** NUL-terminated names after the argument, as many as the opcode takes. */
  names?: readonly string[];
  /** Payload copied after the names (WRITE, SETXATTR, BATCH_FORGET). */
  data?: Uint8Array;
  /** Payload the caller places itself (a separate buffer segment): counted in `len`, not written. */
  dataLength?: number;
}

export interface EncodedRequest {
  /** Bytes written at `at`: header, argument, names and copied data. */
  written: number;
  /** fuse_in_header.len: `written` plus a `dataLength` the caller places. */
  len: number;
}

const utf8 = new TextEncoder();

/**
 * Encodes one request at `view[at...]`. Throws RangeError when it does not fit
 * and TypeError for a name with an embedded NUL (the device would see a shorter name).
 */
export function encodeRequest(
  view: DataView,
  at: number,
  opcode: SupportedOpcode,
  header: RequestHeader,
  body: RequestBody = {},
): EncodedRequest {
  const shape: MessageShape = messages[opcode];
  const limit = view.byteLength;
  let pos = at + fuse_in_header.size;

  if (shape.arg) {
    const size = body.argSize ?? shape.arg.size;
    if (size > shape.arg.size || size < 0) throw new RangeError(`${opcode}: argSize ${size} exceeds the struct`);
    if (pos + shape.arg.size > limit) throw new RangeError(`${opcode}: request does not fit in ${limit - at} bytes`);
    // Encode the full struct (zeroing it), then send only `size` bytes of it.
    shape.arg.encode(view, pos, body.arg ?? {});
    pos += size;
  }

  const names = body.names ?? [];
  if (names.length !== (shape.names ?? 0)) {
    throw new TypeError(`${opcode} takes ${shape.names ?? 0} name(s), got ${names.length}`);
  }
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  for (const name of names) {
    if (name.includes('\0')) throw new TypeError(`${opcode}: name contains a NUL byte`);
    const { read, written } = utf8.encodeInto(name, bytes.subarray(pos, limit));
    if (read !== name.length || pos + written + 1 > limit) {
      throw new RangeError(`${opcode}: request does not fit in ${limit - at} bytes`);
    }
    pos += written;
    bytes[pos++] = 0;
  }

  if ((body.data !== undefined || body.dataLength !== undefined) && !shape.data) {
    throw new TypeError(`${opcode} carries no data`);
  }
  if (body.data) {
    if (pos + body.data.length > limit) throw new RangeError(`${opcode}: request does not fit in ${limit - at} bytes`);
    bytes.set(body.data, pos);
    pos += body.data.length;
  }

  const written = pos - at;
  const len = written + (body.dataLength ?? 0);
  fuse_in_header.encode(view, at, {
    len,
    opcode: Opcode[opcode],
    unique: header.unique,
    nodeid: header.nodeid,
    uid: header.uid,
    gid: header.gid,
    pid: header.pid,
  });
  return { written, len };
}
