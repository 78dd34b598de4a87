/**
 * The relay to the backend: the device reaches a real virtio-fs device (a
 * virtiofsd, possibly of another architecture under qemu-user) as a driver,
 * with the project's own client stack: transport, VirtioFsDevice (rings and
 * slots in memory the backend maps), and FuseSession for FUSE_INIT.
 *
 * It is client/frontend/relay.ts with the frontend's virtqueues in place of
 * /dev/fuse: after FUSE_INIT the backend's request queue is lent to the
 * frontend request queues' threads (queue-worker.ts), which share it
 * (client/virtio/queue-share.ts): each copies its requests into slots of its
 * own and sends them through the client's request engine
 * (client/fuse/engine.ts), which rewrites their architecture-dependent fields
 * from the negotiated encoding to the device's own and judges the replies,
 * whose errno and GETLK lock type it rewrites the other way. Uniques, node ids
 * and file handles pass through unchanged. This thread keeps the backend's
 * hiprio queue (FORGETs) and a few slots for it and for DESTROY.
 */
import type { Architecture } from '../../client/arch/index.ts';
import { EngineFailure } from '../../client/fuse/engine.ts';
import { FuseSession } from '../../client/fuse/session.ts';
import { DATA_AT, REQUEST_AT, REQUEST_ROOM } from '../../client/fuse/slot-layout.ts';
import { WireTranslation } from '../../client/fuse/wire-translation.ts';
import { opcodeName } from '../../client/protocol/index.ts';
import { openTransport } from '../../client/transport/open.ts';
import { QueueShare, type QueueShareLayout } from '../../client/virtio/queue-share.ts';
import { IDX_WORD } from '../../client/virtio/ring-layout.ts';
import { VirtioFsDevice, adoptLoan, type QueueLoan, type Slot } from '../../client/virtio/virtio-fs-device.ts';
import { NOT_RELAYED, type BackendTerms, type ClientInit } from './negotiation.ts';
import type { BackendPart } from './queue-worker.ts';

/** Slots the main thread keeps when the request queue is lent: FORGETs on hiprio, DESTROY at the end. */
const KEPT_SLOTS = 4;
/** The backend's request queue: the first after hiprio (QEMU 7.2's virtiofsd has no other). */
const REQUEST_QUEUE = 1;

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


export interface BackendOptions {
  log: (line: string) => void;
  /** One line per request and reply, decoded. */
  trace?: (line: string) => void;
}

export class BackendRelay {
  private session: FuseSession | undefined;
  /** The frontend's DESTROY went through: the backend session is over. */
  destroyed = false;
  /** The request queue while lent to the queue threads. */
  private lent: { loan: QueueLoan; share: QueueShareLayout; wakeFds: number[] } | undefined;
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

  /** The backend's INIT, once done: for logs. */
  describe(): string[] {
    return this.session?.describe() ?? [];
  }

  /**
   * Lends the request queue to `members` threads (one per frontend request queue), which share it:
   * the slots but KEPT_SLOTS are split between them, and so are the descriptors
   * (QueueShare). `wakeFds[m]` wakes member m. Call once, after init().
   */
  lendRequestQueue(members: number, wakeFds: number[]): BackendPart[] {
    if (this.lent) throw new Error('the request queue is lent already');
    if (this.device.failed) throw new EngineFailure('EIO', `backend unavailable: ${this.device.failed.message}`);
    const per = Math.floor((this.device.freeSlots - KEPT_SLOTS) / members);
    if (per < 1) throw new EngineFailure('EIO', `${this.device.freeSlots} backend slots cannot serve ${members} request queues`);
    const loan = this.device.lendQueue(REQUEST_QUEUE, per * members, wakeFds[0]!);
    // Where the share starts harvesting: the used idx now (nothing is in flight).
    const rings = adoptLoan(loan, this.device.memory);
    const region = this.device.memory.bytes;
    const usedIdx = new Uint16Array(region.buffer, region.byteOffset + loan.ringOffset + rings.layout.usedRing, 2)[IDX_WORD]!;
    const share = QueueShare.create(members, loan.queueSize, usedIdx);
    this.lent = { loan, share, wakeFds };
    return Array.from({ length: members }, (_, m) => ({ loan, share, wakeFds, slotOffsets: loan.slotOffsets.slice(m * per, (m + 1) * per) }));
  }

  /** The threads make every request fail (the backend is gone): they fail what they have in flight with EIO. */
  breakShare(): void {
    if (this.lent) QueueShare.breakShare(this.lent.share, this.lent.wakeFds);
  }

  /**
   * Every thread has stopped: the request queue comes back (`quiet`: nothing of theirs is still
   * with the backend), so that close() can send DESTROY on it.
   */
  reclaimRequestQueue(quiet: boolean): boolean {
    const lent = this.lent;
    if (!lent) return true;
    if (!quiet || this.device.failed) return false;
    try {
      this.device.reclaimQueue(lent.loan);
      this.lent = undefined;
      return true;
    } catch (error) {
      this.options.log(`backend ${lent.loan.name}: ${(error as Error).message}; not sending DESTROY`);
      return false;
    }
  }

  onFailure(callback: (error: Error) => void): void {
    this.device.onFailure(callback);
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

  /**
   * Ends the backend session: DESTROY (unless the frontend's went through already, or the request
   * queue could not be taken back from the threads), then the connection.
   */
  close(): Promise<void> {
    this.closeRequested = true;
    this.closing ??= (async () => {
      if (this.session && !this.destroyed && !this.lent) await this.session.close();
      else this.device.close();
    })();
    return this.closing;
  }

  /** Copies a FORGET/BATCH_FORGET into the slot (a long batch's tail in the data area); returns its device-readable segments. */
  private copyRequest(request: FrontendRequest, slot: Slot): number[] {
    const { opcode, len } = request;
    const head = Math.min(len, REQUEST_ROOM);
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
