import { opcodeName } from './opcodes.ts';
import { VirtiofsError } from '../../ffi/errors.ts';

/**
 * A message that breaks the FUSE wire rules: a reply too short or too long for
 * its opcode, a header whose len disagrees with what arrived, a record that
 * runs past the end of its buffer. Carries the opcode and the field so a log
 * line says exactly what was wrong; callers fail that one request with EIO.
 */
export class ProtocolError extends VirtiofsError {
  override name = 'ProtocolError';
  /** Stable, for programs: always 'EPROTO_FUSE'. The request fails with EIO. */
  readonly code = 'EPROTO_FUSE';

  constructor(
    readonly opcode: number,
    readonly field: string,
    readonly reason: string,
  ) {
    super(`${opcodeName(opcode)}: ${field}: ${reason}`);
  }
}
