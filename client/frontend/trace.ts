/** --trace: one line per FUSE request and reply, open flags by name in both encodings. */
import { flagsToNames, octal, translator } from '../arch/index.ts';
import type { WireTranslation } from '../fuse/wire-translation.ts';
import { fuse_in_header, messageShape, opcodeName, Opcode } from '../protocol/index.ts';

const OPEN_FLAG_OPCODES = new Set<number>([
  Opcode.OPEN, Opcode.OPENDIR, Opcode.CREATE, Opcode.TMPFILE, Opcode.READ, Opcode.READDIR,
  Opcode.READDIRPLUS, Opcode.WRITE, Opcode.RELEASE, Opcode.RELEASEDIR,
]);

function scalars(value: Record<string, unknown>, prefix = ''): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(value)) {
    if (k.startsWith('padding') || k.startsWith('unused') || k === 'dummy') continue;
    if (typeof v === 'number' || typeof v === 'bigint') out.push(`${prefix}${k}=${v}`);
    else if (v && typeof v === 'object' && !Array.isArray(v)) out.push(...scalars(v as Record<string, unknown>, `${prefix}${k}.`));
  }
  return out;
}

/** The request in `view` (client encoding, before translation), e.g. `-> OPEN unique 8 nodeid 2 flags=O_RDWR|O_DIRECT (040002 x86_64 -> 0200002 arm64)`. */
export function describeRequest(view: DataView, length: number, translation: WireTranslation): string {
  const h = fuse_in_header.decode(view, 0);
  const parts = [`-> ${opcodeName(h.opcode)} unique ${h.unique} nodeid ${h.nodeid} len ${h.len} uid ${h.uid} pid ${h.pid}`];
  const shape = messageShape(h.opcode);
  const argAt = fuse_in_header.size;
  if (shape?.arg && length >= argAt + shape.arg.size) {
    const arg = shape.arg.decode(view, argAt) as Record<string, unknown>;
    if (OPEN_FLAG_OPCODES.has(h.opcode) && typeof arg.flags === 'number') {
      const flags = arg.flags;
      delete arg.flags;
      let wire: string;
      try {
        const v = translator('open', translation.client, translation.wire).translate(flags);
        wire = `${octal(v)} ${translation.wire.name} ${flagsToNames(v, translation.wire).join('|')}`;
      } catch (e) {
        wire = `not translatable: ${(e as Error).message}`;
      }
      parts.push(`flags=${flagsToNames(flags, translation.client).join('|')} (${octal(flags)} ${translation.client.name} -> ${wire})`);
    }
    parts.push(...scalars(arg));
  }
  if (shape?.names && length > argAt + (shape.arg?.size ?? 0)) {
    const start = argAt + (shape.arg?.size ?? 0);
    const text = new TextDecoder().decode(new Uint8Array(view.buffer, view.byteOffset + start, Math.min(length - start, 512)));
    parts.push(`names=${JSON.stringify(text.split('\0').slice(0, shape.names))}`);
  }
  return parts.join(' ');
}

export function describeReply(opcode: number, unique: bigint, bodyLen: number): string {
  return `<- ${opcodeName(opcode)} unique ${unique}: ok, ${bodyLen} bytes`;
}
