/**
 * The request engine: the one place where a FUSE request laid out in a device slot goes to the
 * device and its reply is judged. Every path to a device goes through it: the client API
 * (FuseSession.call), the /dev/fuse relay (frontend/relay.ts) and the reference device's relay to
 * its backend (examples/reference-device/backend-relay.ts). Each caller puts the request in its
 * slot (header and arguments at REQUEST_AT, data at DATA_AT) and turns the outcome into what its
 * own user wants (a Node error, a /dev/fuse reply, a frontend's used element); the engine owns the
 * rest: the reply room an opcode needs, translating the architecture-dependent fields both ways,
 * the descriptor segments, submitting, and checking the reply field by field.
 */
import { ArchTranslationError } from '../arch/index.ts';
import {
  Opcode,
  ProtocolError,
  checkReplyBody,
  fuse_in_header,
  fuse_out_header,
  messageShape,
  opcodeName,
  readReplyHeader,
  replyRoom,
  requestedReplySize,
  type ReplyRoom,
} from '../protocol/index.ts';
import { TransportError } from '../transport/transport.ts';
import { fill, type Slot, type VirtioFsDevice } from '../virtio/virtio-fs-device.ts';
import { DATA_AT, REPLY_AT, REQUEST_AT } from './slot-layout.ts';
import type { WireTranslation } from './wire-translation.ts';

/**
 * READLINK states no size: the kernel offers a page less the terminating NUL
 * (fs/fuse/dir.c, fuse_readlink_folio), and so does every caller here.
 */
export const READLINK_MAX = 4095;

const ERROR_AT = REPLY_AT + fuse_out_header.offsetOf('error');
const NO_SEGMENTS: readonly number[] = [];

/** Why the engine failed a request: an errno name (in no encoding yet) and one line saying why. */
export class EngineFailure extends Error {
  override name = 'EngineFailure';
  constructor(
    readonly errnoName: 'EIO' | 'EINVAL' | 'ENOSYS',
    message: string,
    /** The engine logged it already (a malformed reply: one line naming opcode and field). */
    readonly logged = false,
  ) {
    super(message);
  }
}

/** How much reply a request may get: `room` in the slot, `requested` the size its arguments asked for. */
export interface ReplySpace {
  room: ReplyRoom;
  requested: number | undefined;
}

/** A judged reply: `errno` 0 (its body is checked and translated, at `bodyAt`) or a device errno in the client's encoding. */
export interface Judged {
  errno: number;
  bodyAt: number;
  bodyLen: number;
}

export class RequestEngine {
  private readonly writable = [0, 0, 0, 0];

  constructor(
    readonly device: VirtioFsDevice,
    /** Client <-> wire encodings; replaced once FUSE_INIT has settled the wire encoding. */
    public translation: WireTranslation,
    private readonly log: (line: string) => void,
  ) {}

  /**
   * The reply room of a request whose argument struct starts at `argAt` in `slot`'s view.
   * `readlinkLimit`: what the caller's own reply buffer holds for READLINK (default READLINK_MAX).
   */
  replySpace(opcode: number, view: DataView, argAt: number, readlinkLimit = READLINK_MAX): ReplySpace {
    const requested = opcode === Opcode.READLINK ? Math.min(readlinkLimit, READLINK_MAX) : requestedReplySize(opcode, view, argAt);
    const room = replyRoom(opcode, requested);
    if (room.data > this.device.dataRoom) {
      throw new EngineFailure('EIO', `${opcodeName(opcode)}: a reply of ${room.data} bytes exceeds the ${this.device.dataRoom}-byte buffers`);
    }
    return { room, requested };
  }

  /**
   * Rewrites the request's architecture-dependent fields (open flags, lock types) from the client's
   * encoding to the wire's, in place. A value the wire encoding cannot carry fails with EINVAL: the
   * request must not be sent.
   */
  translateRequest(opcode: number, view: DataView, unique: bigint): void {
    try {
      this.translation.request(opcode, view, REQUEST_AT + fuse_in_header.size);
    } catch (e) {
      if (!(e instanceof ArchTranslationError)) throw e;
      throw new EngineFailure('EINVAL', `${opcodeName(opcode)} unique ${unique}: not sent: ${e.message}`);
    }
  }

  /**
   * Submits a request that gets a reply and judges the reply. `readable` are the slot's
   * device-readable (offset, length) pairs; the writable ones follow from `space`.
   */
  async send(slot: Slot, opcode: number, unique: bigint, readable: readonly number[], space: ReplySpace): Promise<Judged> {
    const { room } = space;
    const writable = fill(this.writable, REPLY_AT, fuse_out_header.size + room.fixed, DATA_AT, room.data);
    let usedLen: number;
    try {
      usedLen = await this.device.submit(slot, false, readable, writable);
    } catch (e) {
      // The virtqueue refused this request's used element (len beyond its writable bytes): a malformed
      // reply to this request alone. A dead device rejects with its failure, which passes through.
      if (e instanceof TransportError && e.code === 'EIO' && e !== this.device.failed) {
        this.log(`malformed reply: ${opcodeName(opcode)}: virtq_used_elem.len: ${e.message} (unique ${unique}); failing the request with EIO`);
        throw new EngineFailure('EIO', `malformed reply: virtq_used_elem.len: ${e.message}`, true);
      }
      throw e;
    }
    return this.judge(slot, opcode, unique, usedLen, space);
  }

  /**
   * Submits to the hiprio queue (FORGET, BATCH_FORGET, INTERRUPT). An INTERRUPT gets room for a
   * reply: a device may answer one (EAGAIN: not yet), and QEMU 7.2's virtiofsd crashes without it.
   */
  sendHiprio(slot: Slot, opcode: number, readable: readonly number[]): Promise<number> {
    const writable = opcode === Opcode.INTERRUPT ? fill(this.writable, REPLY_AT, fuse_out_header.size, 0, 0) : NO_SEGMENTS;
    return this.device.submit(slot, true, readable, writable);
  }

  /**
   * The one place a reply is judged. Checks fuse_out_header (len against what arrived, unique,
   * error) and the body against the opcode's shape and the size asked for; a device errno is
   * rewritten in the header in the client's encoding; a good body's architecture-dependent fields
   * (GETLK's lock type) are translated in place. A malformed reply logs one line naming the
   * opcode and the field, and fails with EIO. A good reply builds no objects.
   */
  judge(slot: Slot, opcode: number, unique: bigint, usedLen: number, space: ReplySpace): Judged {
    const { room, requested } = space;
    const view = slot.view;
    // Debian trixie's Rust virtiofsd (1.13) answers DESTROY with no bytes at all. Nothing can follow
    // a DESTROY, so its silence is taken as the end of the session rather than logged as malformed.
    if (opcode === Opcode.DESTROY && usedLen === 0) return { errno: 0, bodyAt: REPLY_AT + fuse_out_header.size, bodyLen: 0 };
    try {
      // The header and the fixed part sit in one buffer, variable data in the other.
      const header = readReplyHeader(opcode, view, REPLY_AT, Math.min(usedLen, fuse_out_header.size + room.fixed + room.data));
      if (header.unique !== unique) {
        throw new ProtocolError(opcode, 'fuse_out_header.unique', `reply for unique ${header.unique}, request was ${unique}`);
      }
      const bodyAt = room.data > 0 ? DATA_AT : REPLY_AT + fuse_out_header.size;
      if (header.errno !== 0) {
        const errno = this.translation.errno(header.errno);
        view.setInt32(ERROR_AT, -errno, true);
        return { errno, bodyAt, bodyLen: 0 };
      }
      const bodyLen = header.len - fuse_out_header.size;
      // INIT's reply is checked where it is decoded (it depends on what INIT asked for).
      if (opcode !== Opcode.INIT) checkReplyBody(opcode, view, bodyAt, bodyLen, requested);
      this.translation.reply(opcode, view, bodyAt);
      return { errno: 0, bodyAt, bodyLen };
    } catch (e) {
      if (e instanceof ProtocolError) {
        this.log(`malformed reply: ${e.message} (unique ${unique}); failing the request with EIO`);
        throw new EngineFailure('EIO', `malformed reply: ${e.field}: ${e.reason}`, true);
      }
      if (e instanceof ArchTranslationError) {
        this.log(`${opcodeName(opcode)}: reply not translatable: ${e.message} (unique ${unique}); failing the request with EIO`);
        throw new EngineFailure('EIO', e.message, true);
      }
      throw e;
    }
  }
}

/** Whether the relays carry `opcode` to a device (INIT is answered locally; unknown opcodes get ENOSYS). */
export function isRelayable(opcode: number): boolean {
  return opcode !== Opcode.INIT && messageShape(opcode) !== undefined;
}
