/**
 * The relay to the backend: the device reaches a real virtio-fs device (a
 * virtiofsd, possibly of another architecture under qemu-user) as a driver,
 * with the project's own client stack: transport, VirtioFsDevice (rings and
 * slots in memory the backend maps), and FuseSession for FUSE_INIT.
 *
 * It is client/frontend/relay.ts with the frontend's virtqueue in place of
 * /dev/fuse: each request is copied from the frontend's buffers into a slot
 * and goes through the client's request engine (client/fuse/engine.ts), which
 * rewrites its architecture-dependent fields from the negotiated encoding to
 * the device's own, sends it, and judges the reply, whose errno and GETLK lock
 * type it rewrites the other way. Uniques, node ids and file handles pass
 * through unchanged.
 */
import type { Architecture } from '../../client/arch/index.ts';
import { EngineFailure, isRelayable } from '../../client/fuse/engine.ts';
import { FuseSession } from '../../client/fuse/session.ts';
import { DATA_AT, REPLY_AT, REQUEST_AT, REQUEST_ROOM, WRITE_HEAD } from '../../client/fuse/slot-layout.ts';
import { WireTranslation } from '../../client/fuse/wire-translation.ts';
import { describeReply, describeRequest } from '../../client/frontend/trace.ts';
import { Opcode, fuse_in_header, fuse_out_header, messageShape, opcodeName } from '../../client/protocol/index.ts';
import { openTransport } from '../../client/transport/open.ts';
import { VirtioFsDevice, type Slot } from '../../client/virtio/virtio-fs-device.ts';
import { NOT_RELAYED, type BackendTerms, type ClientInit } from './negotiation.ts';

/** A request as the frontend made it: its bytes are read on demand from the frontend's buffers. */
export interface FrontendRequest {
  readonly opcode: number;
  readonly unique: bigint;
  /** fuse_in_header.len: every readable byte of the request. */
  readonly len: number;
  /** Copies request bytes [from, from + into.length) into `into`. */
  read(from: number, into: Uint8Array): void;
  /** Writable bytes the frontend offered for the reply, fuse_out_header included. */
  readonly replyRoom: number;
}

/**
 * Delivers a reply: `parts` concatenated are fuse_out_header (len and error
 * already in the client's encoding) and the body. Called while the bytes are
 * still in the backend's buffer, so they are copied once.
 */
export type Respond = (parts: readonly Uint8Array[]) => void;


export interface BackendOptions {
  log: (line: string) => void;
  /** One line per request and reply, decoded. */
  trace?: (line: string) => void;
}

export class BackendRelay {
  private session: FuseSession | undefined;
  /** The frontend's DESTROY went through: the backend session is over. */
  private destroyed = false;
  private closing: Promise<void> | undefined;
  private closeRequested = false;

  private constructor(
    readonly description: string,
    private readonly device: VirtioFsDevice,
    private readonly options: BackendOptions,
  ) {
    device.onFailure((error) => {
      if (!this.closeRequested) options.log(`backend ${description} failed: ${error.message}; every request now fails with EIO`);
    });
  }

  /**
   * Connects to the backend (`vhost-user:<socket>`, or any transport the
   * client accepts) and starts its queues. FUSE_INIT waits for the
   * frontend's, whose flags and minor it carries.
   */
  static open(spec: string, options: BackendOptions): BackendRelay {
    const transport = openTransport(spec);
    try {
      return new BackendRelay(transport.description, VirtioFsDevice.open(transport, { log: options.log }), options);
    } catch (error) {
      transport.close();
      throw error;
    }
  }

  get failed(): Error | undefined {
    return this.device.failed;
  }

  /**
   * The backend's FUSE_INIT, asking for what the client asked for (less what
   * the device cannot relay) in the device's own encoding and without arch
   * bits: the backend is a device of today, the translation is ours.
   */
  async init(client: ClientInit, own: Architecture): Promise<BackendTerms> {
    if (this.session) throw new Error('backend session already initialised');
    this.session = await FuseSession.open(this.device, {
      archMode: { kind: 'native' },
      clientArch: own,
      initFlags: client.flags & ~NOT_RELAYED,
      maxMinor: client.minor,
      maxReadahead: client.maxReadahead,
      log: this.options.log,
    });
    const init = this.session.init;
    return { init, maxWrite: this.session.maxWrite, maxPages: Math.min(init.maxPages, Math.floor(this.device.dataRoom / 4096)) };
  }

  /**
   * The encodings the frontend's INIT settled (client's <-> this device's own): every request from
   * now on is translated by the backend session's engine with it.
   */
  useTranslation(translation: WireTranslation): void {
    this.engine().translation = translation;
  }

  /**
   * The backend's inode number of `nodeid` (a GETATTR of the device's own, outside the frontend's
   * requests): how the device finds a node's file in its directory (fileattr.ts).
   */
  inodeOf(nodeid: bigint): Promise<bigint> {
    if (!this.session) throw new EngineFailure('EIO', 'backend session not initialised');
    return this.session.call('GETATTR', nodeid, { arg: {} }, {}, (r) => {
      if (r.body.kind !== 'struct') throw new EngineFailure('EIO', 'GETATTR: no attributes');
      return BigInt((r.body.value as { attr: { ino: bigint | number } }).attr.ino);
    });
  }

  /** The backend's INIT, once done: for logs. */
  describe(): string[] {
    return this.session?.describe() ?? [];
  }

  /**
   * Forwards one request that expects a reply and delivers the reply through
   * `respond`. Throws EngineFailure when the device itself cannot carry the
   * request or the backend's reply; the caller answers with that errno.
   */
  async forward(request: FrontendRequest, respond: Respond): Promise<void> {
    const { opcode, unique, len } = request;
    const shape = messageShape(opcode);
    if (!shape || !isRelayable(opcode) || shape.reply.kind === 'none') throw new EngineFailure('ENOSYS', `${opcodeName(opcode)} is not relayed`);
    const engine = this.engine();
    const translation = engine.translation;
    const slot = await this.device.acquireSlot().catch((error: Error) => {
      throw new EngineFailure('EIO', `backend unavailable: ${error.message}`);
    });
    try {
      const readable = this.copyRequest(request, slot);
      // READLINK states no size: the frontend's buffer is the limit too.
      const space = engine.replySpace(opcode, slot.view, REQUEST_AT + fuse_in_header.size, Math.max(0, request.replyRoom - fuse_out_header.size));
      if (space.room.data > 0 && readable.length > 2) throw new EngineFailure('EIO', `${opcodeName(opcode)}: request of ${len} bytes leaves no room for reply data`);
      const needed = fuse_out_header.size + space.room.fixed + space.room.data;
      if (needed > request.replyRoom) {
        throw new EngineFailure('EIO', `${opcodeName(opcode)}: frontend offered ${request.replyRoom} writable bytes, the reply may take ${needed}`);
      }
      if (WireTranslation.translatesRequest(opcode) && len < fuse_in_header.size + shape.arg!.size) {
        throw new EngineFailure('EIO', `${opcodeName(opcode)}: request of ${len} bytes is shorter than its ${shape.arg!.name}`);
      }
      this.options.trace?.(describeRequest(slot.view, Math.min(len, REQUEST_ROOM), translation));
      engine.translateRequest(opcode, slot.view);
      const judged = await engine.send(slot, opcode, unique, readable, space).catch((error: Error) => {
        throw error instanceof EngineFailure ? error : new EngineFailure('EIO', `backend: ${error.message}`);
      });
      const head = slot.bytes.subarray(REPLY_AT, REPLY_AT + fuse_out_header.size);
      if (judged.errno !== 0) {
        this.options.trace?.(`<- ${opcodeName(opcode)} unique ${unique}: errno ${judged.errno} (${translation.client.name})`);
        respond([head]);
      } else {
        this.options.trace?.(describeReply(opcode, unique, judged.bodyLen));
        respond([head, slot.bytes.subarray(judged.bodyAt, judged.bodyAt + judged.bodyLen)]);
      }
      if (opcode === Opcode.DESTROY) this.destroyed = true;
    } finally {
      this.device.releaseSlot(slot);
    }
  }

  /** FORGET and BATCH_FORGET: to the backend's hiprio queue; nothing comes back. */
  async forwardNoReply(request: FrontendRequest): Promise<void> {
    const slot = await this.device.acquireSlot().catch((error: Error) => {
      throw new EngineFailure('EIO', `backend unavailable: ${error.message}`);
    });
    try {
      const readable = this.copyRequest(request, slot);
      this.options.trace?.(`-> ${opcodeName(request.opcode)} unique ${request.unique} len ${request.len} (hiprio, no reply)`);
      await this.device.submit(slot, true, readable, []);
    } finally {
      this.device.releaseSlot(slot);
    }
  }

  /** Ends the backend session: DESTROY (unless the frontend's went through already), then the connection. */
  close(): Promise<void> {
    this.closeRequested = true;
    this.closing ??= (async () => {
      if (this.session && !this.destroyed) await this.session.close();
      else this.device.close();
    })();
    return this.closing;
  }

  /**
   * Copies the request into the slot and returns the device-readable
   * segments: a WRITE's data in its own page-aligned buffer, the slot's data
   * area (a backend doing O_DIRECT I/O on it needs the alignment; the kernel's
   * virtio_fs driver lays WRITEs out the same way), anything else at REQUEST_AT, with a
   * long tail (a large SETXATTR value) in the data area, which forward()
   * then refuses if the reply needs that area too.
   */
  private copyRequest(request: FrontendRequest, slot: Slot): number[] {
    const { opcode, len } = request;
    let head: number;
    if (opcode === Opcode.WRITE) {
      if (len < WRITE_HEAD) throw new EngineFailure('EIO', `WRITE of ${len} bytes is shorter than its headers`);
      head = WRITE_HEAD;
    } else {
      head = Math.min(len, REQUEST_ROOM);
    }
    const tail = len - head;
    if (tail > this.device.dataRoom) throw new EngineFailure('EIO', `${opcodeName(opcode)}: request of ${len} bytes exceeds the device's buffers`);
    request.read(0, slot.bytes.subarray(REQUEST_AT, REQUEST_AT + head));
    if (tail > 0) request.read(head, slot.bytes.subarray(DATA_AT, DATA_AT + tail));
    return tail > 0 ? [REQUEST_AT, head, DATA_AT, tail] : [REQUEST_AT, head];
  }

  /** The backend session's request engine (after init). */
  private engine() {
    if (!this.session) throw new EngineFailure('EIO', 'backend session not initialised');
    return this.session.engine;
  }
}
