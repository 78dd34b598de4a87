/**
 * The request engine: the one place where a FUSE request laid out in a device slot goes to the
 * device and its reply is judged. Every path to a device goes through it: the client API
 * (FuseSession.call), the /dev/fuse relay (frontend/relay.ts) and the reference device's
 * request-queue threads relaying to its backend (examples/reference-device/queue-worker.ts). Each
 * caller puts the request in its slot (header and arguments at REQUEST_AT, data at DATA_AT) and
 * turns the outcome into what its own user wants (a Node error, a /dev/fuse reply, a frontend's
 * used element); the engine owns the rest: the reply room an opcode needs, translating the
 * architecture-dependent fields both ways, the descriptor segments, submitting, and checking the
 * reply field by field.
 */
import { ArchTranslationError } from '../arch/index.ts';
import {
  Opcode,
  ProtocolError,
  checkReplyBody,
  checkReplyHeader,
  fuse_in_header,
  fuse_out_header,
  messageShape,
  opcodeName,
  replyRoom,
  requestedReplySize,
  type ReplyRoom,
} from '../protocol/index.ts';
import { TransportError } from '../transport/transport.ts';
import { fill, type Slot, type VirtioFsDevice } from '../virtio/virtio-fs-device.ts';
import { DATA_AT, REPLY_AT, REPLY_ROOM, REQUEST_AT } from './slot-layout.ts';
import type { WireTranslation } from './wire-translation.ts';
import { VirtiofsError } from '../../ffi/errors.ts';

/**
 * READLINK states no size: the kernel offers a page less the terminating NUL
 * (fs/fuse/dir.c, fuse_readlink_folio), and so does every caller here.
 */
export const READLINK_MAX = 4095;

const ERROR_AT = REPLY_AT + fuse_out_header.offsetOf('error');
const REPLY_UNIQUE_AT = REPLY_AT + fuse_out_header.offsetOf('unique');
const REQUEST_UNIQUE_AT = REQUEST_AT + fuse_in_header.offsetOf('unique');
const BODY_AT = REPLY_AT + fuse_out_header.size;
const NO_SEGMENTS: readonly number[] = [];
const MAX_FIXED_REPLY = REPLY_ROOM - fuse_out_header.size;

/** Why the engine failed a request: an errno name (in no encoding yet) and one line saying why. */
export class EngineFailure extends VirtiofsError {
  override name = 'EngineFailure';
  /** The errno the request fails with, by name. */
  readonly code: string;
  constructor(
    readonly errnoName: 'EIO' | 'EINVAL' | 'ENOSYS',
    message: string,
    /** The engine logged it already (a malformed reply: one line naming opcode and field). */
    readonly logged = false,
  ) {
    super(message);
    this.code = errnoName;
  }
}

/**
 * How much reply a request may get: `room` in the slot, `requested` the size its arguments asked
 * for (undefined: none). Mutable so the request path keeps one per slot and allocates nothing.
 */
export class ReplySpace {
  readonly room: ReplyRoom = { fixed: 0, data: 0 };
  requested: number | undefined = undefined;
}

/** A judged reply: `errno` 0 (its body is checked and translated, at `bodyAt`) or a device errno in the client's encoding. */
export interface Judged {
  errno: number;
  bodyAt: number;
  bodyLen: number;
}

export interface EngineOptions {
  /** Bytes of data a slot carries (the device's dataRoom). */
  dataRoom: number;
  /** Client <-> wire encodings; replaced once FUSE_INIT has settled the wire encoding. */
  translation: WireTranslation;
  log: (line: string) => void;
  /** For send()/sendHiprio(): the device the async callers submit to. The per-queue threads submit themselves. */
  device?: VirtioFsDevice;
}

export class RequestEngine {
  readonly dataRoom: number;
  /** Client <-> wire encodings; replaced once FUSE_INIT has settled the wire encoding. */
  translation: WireTranslation;
  /** Where judge() left the last good reply's body (valid until the next judge()). */
  bodyAt = 0;
  bodyLen = 0;
  private readonly log: (line: string) => void;
  private readonly device: VirtioFsDevice | undefined;
  private readonly writable = [0, 0, 0, 0];

  constructor(options: EngineOptions) {
    this.dataRoom = options.dataRoom;
    this.translation = options.translation;
    this.log = options.log;
    this.device = options.device;
  }

  /**
   * The reply room of a request whose argument struct starts at `argAt` in `view`, written into
   * `into` (the request path passes one per slot). `readlinkLimit`: what the caller's own reply
   * buffer holds for READLINK (default READLINK_MAX).
   */
  replySpace(opcode: number, view: DataView, argAt: number, readlinkLimit = READLINK_MAX, into = new ReplySpace()): ReplySpace {
    const requested = opcode === Opcode.READLINK ? Math.min(readlinkLimit, READLINK_MAX) : requestedReplySize(opcode, view, argAt);
    replyRoom(opcode, requested, into.room);
    into.requested = requested;
    if (into.room.data > this.dataRoom) {
      throw new EngineFailure('EIO', `${opcodeName(opcode)}: a reply of ${into.room.data} bytes exceeds the ${this.dataRoom}-byte buffers`);
    }
    // IOCTL's out data rides in the fixed room, behind fuse_ioctl_out: 4,064 bytes at most.
    if (into.room.fixed > MAX_FIXED_REPLY) {
      throw new EngineFailure('EIO', `${opcodeName(opcode)}: a reply of ${into.room.fixed} bytes exceeds the ${MAX_FIXED_REPLY}-byte reply area`);
    }
    return into;
  }

  /**
   * Rewrites the request's architecture-dependent fields (open flags, lock types) from the client's
   * encoding to the wire's, in place. A value the wire encoding cannot carry fails with EINVAL: the
   * request must not be sent.
   */
  translateRequest(opcode: number, view: DataView): void {
    try {
      this.translation.request(opcode, view, REQUEST_AT + fuse_in_header.size);
    } catch (e) {
      if (!(e instanceof ArchTranslationError)) throw e;
      throw new EngineFailure('EINVAL', `${opcodeName(opcode)} unique ${view.getBigUint64(REQUEST_UNIQUE_AT, true)}: not sent: ${e.message}`);
    }
  }

  /**
   * The slot's device-writable (offset, length) pairs for a reply of `space`: the out header and
   * fixed part at REPLY_AT, data in the data area. A scratch list: use it before the next call.
   */
  writableSegments(space: ReplySpace): number[] {
    return fill(this.writable, REPLY_AT, fuse_out_header.size + space.room.fixed, DATA_AT, space.room.data);
  }

  /**
   * Submits a request that gets a reply and judges the reply (the async callers: the client API,
   * the reference device's backend session). `readable` are the slot's device-readable (offset,
   * length) pairs.
   */
  async send(slot: Slot, opcode: number, unique: bigint, readable: readonly number[], space: ReplySpace): Promise<Judged> {
    const device = this.requireDevice();
    let usedLen: number;
    try {
      usedLen = await device.submit(slot, false, readable, this.writableSegments(space));
    } catch (e) {
      // The virtqueue refused this request's used element (len beyond its writable bytes): a malformed
      // reply to this request alone. A dead device rejects with its failure, which passes through.
      if (e instanceof TransportError && e.code === 'EIO' && e !== device.failed) throw this.usedLenFailure(opcode, unique, e.message);
      throw e;
    }
    const errno = this.judge(slot.view, opcode, Number(unique & 0xffff_ffffn), Number(unique >> 32n), usedLen, space);
    return { errno, bodyAt: this.bodyAt, bodyLen: this.bodyLen };
  }

  /** The EngineFailure (logged) for a used element whose len exceeds the chain's writable bytes. */
  usedLenFailure(opcode: number, unique: bigint, reason: string): EngineFailure {
    this.log(`malformed reply: ${opcodeName(opcode)}: virtq_used_elem.len: ${reason} (unique ${unique}); failing the request with EIO`);
    return new EngineFailure('EIO', `malformed reply: virtq_used_elem.len: ${reason}`, true);
  }

  /**
   * Submits to the hiprio queue (FORGET, BATCH_FORGET, INTERRUPT). An INTERRUPT gets room for a
   * reply: a device may answer one (EAGAIN: not yet), and QEMU 7.2's virtiofsd crashes without it.
   */
  sendHiprio(slot: Slot, opcode: number, readable: readonly number[]): Promise<number> {
    const writable = opcode === Opcode.INTERRUPT ? fill(this.writable, REPLY_AT, fuse_out_header.size, 0, 0) : NO_SEGMENTS;
    return this.requireDevice().submit(slot, true, readable, writable);
  }

  /**
   * The one place a reply is judged. Checks fuse_out_header (len against what arrived, unique
   * against `uniqueLow`/`uniqueHigh`, the request's as the caller sent it, error) and the body
   * against the opcode's shape and the size asked for; a device errno is rewritten in the header
   * in the client's encoding; a good body's architecture-dependent fields (GETLK's lock type) are
   * translated in place. Returns 0 (the body is at this.bodyAt, this.bodyLen bytes) or the errno.
   * A malformed reply logs one line naming the opcode and the field and throws EngineFailure(EIO).
   * Reads at precomputed offsets and builds nothing for a good reply.
   */
  judge(view: DataView, opcode: number, uniqueLow: number, uniqueHigh: number, usedLen: number, space: ReplySpace): number {
    const room = space.room;
    this.bodyLen = 0;
    this.bodyAt = room.data > 0 ? DATA_AT : BODY_AT;
    // Debian trixie's Rust virtiofsd (1.13) answers DESTROY with no bytes at all. Nothing can follow
    // a DESTROY, so its silence is taken as the end of the session rather than logged as malformed.
    if (opcode === Opcode.DESTROY && usedLen === 0) return 0;
    try {
      // The header and the fixed part sit in one buffer, variable data in the other.
      const len = checkReplyHeader(opcode, view, REPLY_AT, Math.min(usedLen, fuse_out_header.size + room.fixed + room.data));
      if (view.getUint32(REPLY_UNIQUE_AT, true) !== uniqueLow || view.getUint32(REPLY_UNIQUE_AT + 4, true) !== uniqueHigh) {
        const sent = (BigInt(uniqueHigh) << 32n) | BigInt(uniqueLow);
        throw new ProtocolError(opcode, 'fuse_out_header.unique', `reply for unique ${view.getBigUint64(REPLY_UNIQUE_AT, true)}, request was ${sent}`);
      }
      const error = view.getInt32(ERROR_AT, true);
      if (error !== 0) {
        const errno = this.translation.errno(-error);
        view.setInt32(ERROR_AT, -errno, true);
        return errno;
      }
      const bodyLen = len - fuse_out_header.size;
      // INIT's reply is checked where it is decoded (it depends on what INIT asked for).
      if (opcode !== Opcode.INIT) checkReplyBody(opcode, view, this.bodyAt, bodyLen, space.requested);
      this.translation.reply(opcode, view, this.bodyAt);
      this.bodyLen = bodyLen;
      return 0;
    } catch (e) {
      const unique = (BigInt(uniqueHigh) << 32n) | BigInt(uniqueLow);
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

  private requireDevice(): VirtioFsDevice {
    if (!this.device) throw new Error('this engine submits nothing itself (a per-queue thread submits its requests)');
    return this.device;
  }
}

/** Whether the relays carry `opcode` to a device (INIT is answered locally; unknown opcodes get ENOSYS). */
export function isRelayable(opcode: number): boolean {
  return opcode !== Opcode.INIT && messageShape(opcode) !== undefined;
}
