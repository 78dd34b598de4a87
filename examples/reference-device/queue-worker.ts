/**
 * One frontend request queue, one thread, as the kernel's virtio_fs and this project's relay
 * (client/frontend/queue-thread.ts) run theirs: the thread sleeps in epoll_wait on the queue's
 * kick eventfd, its wake eventfd and the backend's completion eventfd, and does everything a
 * request needs itself:
 *
 *   pops the chain (device-ring.ts: every descriptor checked once), checks fuse_in_header against
 *   it, copies the request into one of its backend slots, has the request engine
 *   (client/fuse/engine.ts) size the reply and translate the request, puts it on the backend's
 *   request queue (shared with the other workers: client/virtio/queue-share.ts) and kicks; takes
 *   the backend's used entries, has the engine judge and translate each reply, writes it into the
 *   frontend's chain, returns the chain on the frontend's used ring and signals its call eventfd.
 *
 * Nothing passes through the main thread, which keeps what is not per request: vhost-user
 * messages, the memory table, FUSE_INIT (this thread hands the INIT chain to it and writes the
 * answer it gets back), the hiprio queue (a FORGET that arrives on a request queue is handed
 * over too), teardown. Commands from the main thread come on a MessagePort, read synchronously
 * (receiveMessageOnPort) when the wake eventfd rings; the ones the main thread waits for are
 * acknowledged through shared memory.
 */
import { performance } from 'node:perf_hooks';
import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { resolveArch, type Architecture } from '../../client/arch/index.ts';
import { EngineFailure, ReplySpace, RequestEngine, isRelayable } from '../../client/fuse/engine.ts';
import { DATA_AT, REPLY_AT, REQUEST_AT, REQUEST_ROOM, WRITE_HEAD } from '../../client/fuse/slot-layout.ts';
import { setSegments, toRegion } from '../../client/virtio/buffer-pool.ts';
import { WireTranslation } from '../../client/fuse/wire-translation.ts';
import { PollAdvisor } from '../../client/frontend/poll-advisor.ts';
import { describeReply, describeRequest } from '../../client/frontend/trace.ts';
import { Opcode, ProtocolError, fuse_attr, fuse_attr_out, fuse_getattr_in, fuse_in_header, fuse_out_header, messageShape, opcodeName } from '../../client/protocol/index.ts';
import { QueueShare, memberRange, type QueueShareLayout } from '../../client/virtio/queue-share.ts';
import { availRingBytes, usedRingBytes } from '../../client/virtio/ring-layout.ts';
import { adoptLoan, type QueueLoan } from '../../client/virtio/virtio-fs-device.ts';
import { VIRTIO_RING_F_EVENT_IDX, hasFeature } from '../../client/virtio/features.ts';
import { Virtqueue, type UsedRingProblem } from '../../client/virtio/virtqueue.ts';
import { RegionMirror } from '../../ffi/dma.ts';
import { EPOLLET, EPOLLEXCLUSIVE, EPOLLIN, EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EpollEventBuffer, close, epollCreate1, epollCtl, epollWait, signalEventFd } from '../../ffi/libc.ts';
import { DeviceRing, RingBrokenError, readChain, writeChain, type Chain, type RingConfig } from './device-ring.ts';
import { FileattrServer, type FileattrCommand } from './fileattr.ts';
import { GuestMemory, type MemoryMirror } from './guest-memory.ts';

/** Int32 words of WorkerSetup.control. */
export const CTL_POSTED = 0; // commands posted by the main thread
export const CTL_ACK = 1; // the last command (its seq) this thread has carried out
export const CTL_RESULT = 2; // detach: the avail index to resume from; remap: -1 failed
export const CTL_SERVED = 3; // requests taken off the frontend's ring
export const CTL_ROUTED = 4; // backend replies of this thread's another thread took off the used ring
export const CTL_WORDS = 5;

export interface WorkerSetup {
  /** 'request0', ... */
  name: string;
  /** Which request queue (0-based): the worker's share of the backend's queue. */
  member: number;
  port: MessagePort;
  wakeFd: number;
  control: SharedArrayBuffer;
  /** The device's own encoding (--arch). */
  ownArch: string;
  trace: boolean;
  fileattrDir: string | undefined;
  /** After FUSE_INIT (a queue started late): what 'ready' carries. */
  ready: ReadyCommand | undefined;
  /** Test hook (--stall-lookup): a LOOKUP of this name holds this thread for `ms`. */
  stall: { name: string; ms: number } | undefined;
  /**
   * Before sleeping with requests at the backend, poll its used ring this long (us), as the
   * relay's queue threads do (client/frontend/poll-advisor.ts decides when it pays). 0: never.
   */
  pollUs: number;
}

/** The backend's request queue and this worker's part of it. */
export interface BackendPart {
  loan: QueueLoan;
  share: QueueShareLayout;
  /** Every member's wake eventfd (a harvester wakes the owner of an entry). */
  wakeFds: number[];
  /** This worker's slots: region offsets. */
  slotOffsets: number[];
}

export interface ReadyCommand {
  kind: 'ready';
  /** The encoding the frontend's values arrive in (the INIT answer settled it). */
  clientArch: string;
  backend: BackendPart;
}

export type WorkerCommand =
  | { kind: 'attach'; seq: number; ring: RingConfig; memory: MemoryMirror; kickFd: number; callFd: number | undefined; errFd: number | undefined }
  | { kind: 'detach'; seq: number }
  | { kind: 'fds'; seq: number; kickFd: number; callFd: number | undefined; errFd: number | undefined }
  | { kind: 'remap'; seq: number; memory: MemoryMirror }
  | ReadyCommand
  /** A request handed to the main thread is answered: `reply` written into the chain, else `errno` sent, else nothing. */
  | { kind: 'answer'; token: number; reply?: Uint8Array; errno?: EngineFailure['errnoName'] }
  | { kind: 'exit'; seq: number };

export type WorkerMessage =
  | { kind: 'log'; line: string }
  | { kind: 'trace'; line: string }
  /** INIT (answered by the main thread) or FORGET/BATCH_FORGET (sent on the backend's hiprio queue). */
  | { kind: 'delegate'; token: number; opcode: number; bytes: Uint8Array; writableBytes: number }
  /** The frontend's ring is damaged: this thread stopped serving it and signalled its error eventfd. */
  | { kind: 'broken'; reason: string; lastAvail: number }
  /** The frontend's DESTROY reached the backend: its session is over. */
  | { kind: 'destroyed' }
  | { kind: 'exit'; inFlight: number };

const IN_HEADER = fuse_in_header.size;
const OUT_HEADER = fuse_out_header.size;
const UNIQUE_AT = fuse_in_header.offsetOf('unique');
const LEN_AT = fuse_in_header.offsetOf('len');
const OPCODE_AT = fuse_in_header.offsetOf('opcode');
const INO_AT = fuse_attr_out.offsetOf('attr') + fuse_attr.offsetOf('ino');
const EXIT_WAIT_MS = 5000;

const TOKEN_WAKE = 1;
const TOKEN_KICK = 2;
const TOKEN_BACKEND = 3;

/** What a slot is doing at the backend. */
const FORWARD = 0;
/** A GETATTR of the device's own, to find the file of a fileattr ioctl. */
const FILEATTR_GETATTR = 1;

interface Delegated {
  chain: Chain;
  ring: DeviceRing;
  unique: bigint;
}

export class QueueWorker {
  private readonly setup: WorkerSetup;
  private readonly post: (m: WorkerMessage) => void;
  private readonly control: Int32Array;
  private readonly own: Architecture;
  private readonly epfd: number;
  private readonly events = new EpollEventBuffer(8);
  private commandsSeen = 0;
  private exiting = false;

  // The frontend's ring, while attached.
  private ring: DeviceRing | undefined;
  /** Where the last ring served stopped: its avail index to resume from (-1: none yet). */
  private resumeAt = -1;
  private memory = GuestMemory.empty();
  private kickFd = -1;
  private callFd: number | undefined;
  private errFd: number | undefined;

  // After INIT.
  private translation: WireTranslation | undefined;
  private engine: RequestEngine | undefined;
  private queue: Virtqueue<number> | undefined;
  private share: QueueShare | undefined;
  private backendKickFd: number | undefined;
  private backendBroken = false;
  private readonly fileattr: FileattrServer | undefined;

  // Per slot, built once (at 'ready').
  private slotBytes: Uint8Array[] = [];
  private slotViews: DataView[] = [];
  private slotBase: number[] = [];
  private spaces: ReplySpace[] = [];
  private slotChain: (Chain | undefined)[] = [];
  private slotRing: (DeviceRing | undefined)[] = [];
  private slotKind = new Uint8Array(0);
  private slotCommand: (FileattrCommand | undefined)[] = [];
  private opcodes = new Int32Array(0);
  private uniqueLow = new Uint32Array(0);
  private uniqueHigh = new Uint32Array(0);
  private free = new Int32Array(0);
  private freeCount = 0;
  private inFlight = 0;
  private submittedAt = new Float64Array(0);
  private advisor: PollAdvisor | undefined;

  private readonly delegated = new Map<number, Delegated>();
  private nextToken = 1;
  private notifyPending = false;

  // Scratch.
  private readonly header = new Uint8Array(IN_HEADER);
  private readonly headerView = new DataView(this.header.buffer);
  private readonly errorReply = new Uint8Array(OUT_HEADER);
  private readonly errorView = new DataView(this.errorReply.buffer);
  private readonly oneReply: Uint8Array[] = [new Uint8Array(0)];
  private readonly twoReply: Uint8Array[] = [new Uint8Array(0), new Uint8Array(0)];
  private readonly readable = [0, 0, 0, 0];
  private readonly regionReadable: number[] = [0, 0, 0, 0];
  private readonly regionWritable: number[] = [0, 0, 0, 0];
  private readonly stallName: Uint8Array | undefined;

  constructor(setup: WorkerSetup, post: (m: WorkerMessage) => void) {
    this.setup = setup;
    this.post = post;
    this.control = new Int32Array(setup.control);
    this.own = resolveArch(setup.ownArch);
    if (setup.fileattrDir !== undefined) {
      this.fileattr = new FileattrServer(setup.fileattrDir, this.own, (line) => this.log(line), setup.trace ? (line) => this.trace(line) : undefined);
    }
    if (setup.stall) this.stallName = new TextEncoder().encode(`${setup.stall.name}\0`);
    this.epfd = epollCreate1(EPOLL_CLOEXEC);
    // Edge-triggered eventfds: each signal is reported once, so they are never read.
    epollCtl(this.epfd, EPOLL_CTL_ADD, setup.wakeFd, EPOLLIN | EPOLLET, TOKEN_WAKE);
    if (setup.ready) this.becomeReady(setup.ready);
  }

  /** Serves until told to exit; returns once the backend has returned this thread's requests (or 5 s). */
  run(): void {
    let exitDeadline = 0;
    try {
      for (;;) {
        this.commands();
        if (this.exiting) {
          if (this.inFlight === 0 || this.backendBroken) break;
          if (exitDeadline === 0) exitDeadline = Date.now() + EXIT_WAIT_MS;
          else if (Date.now() > exitDeadline) {
            this.log(`${this.setup.name}: ${this.inFlight} request(s) still with the backend after ${EXIT_WAIT_MS} ms; leaving them`);
            break;
          }
        }
        this.completions();
        this.pump();
        if (this.queue?.kickNeeded()) signalEventFd(this.backendKickFd!);
        this.notifyFrontend();
        this.sleep(exitDeadline > 0 ? 50 : -1);
      }
    } finally {
      close(this.epfd);
      this.post({ kind: 'exit', inFlight: this.inFlight });
    }
  }

  // --- the loop's parts ------------------------------------------------------------------

  private sleep(timeoutMs: number): void {
    if (this.commandsPending()) return;
    const share = this.share;
    if (share && this.inFlight > 0 && this.advisor!.pollForCompletion) {
      // A wake-up costs tens of us on these machines, more than a small request at the backend.
      const end = performance.now() + this.setup.pollUs / 1000;
      do {
        if (share.hasUsed() || share.hasInbox() || share.broken || this.commandsPending()) return;
      } while (performance.now() < end);
    }
    if (share && !share.goingToSleep()) return;
    epollWait(this.epfd, this.events, timeoutMs);
    share?.awake();
  }

  private commandsPending(): boolean {
    return Atomics.load(this.control, CTL_POSTED) !== this.commandsSeen;
  }

  private commands(): void {
    if (!this.commandsPending()) return;
    this.commandsSeen = Atomics.load(this.control, CTL_POSTED);
    for (let m = receiveMessageOnPort(this.setup.port); m; m = receiveMessageOnPort(this.setup.port)) {
      const c = m.message as WorkerCommand;
      switch (c.kind) {
        case 'attach': {
          // Not waited for by the main thread: a ring that cannot be served is reported as broken.
          try {
            this.memory = GuestMemory.mirror(c.memory);
            this.ring = new DeviceRing(this.memory, c.ring);
            this.setKickFd(c.kickFd);
            this.callFd = c.callFd;
            this.errFd = c.errFd;
          } catch (error) {
            const reason = `cannot start: ${(error as Error).message}`;
            this.log(`${this.setup.name}: ${reason}`);
            this.ring = undefined;
            this.resumeAt = c.ring.lastAvailIdx;
            if (c.errFd !== undefined) signalEventFd(c.errFd);
            this.post({ kind: 'broken', reason, lastAvail: c.ring.lastAvailIdx });
          }
          this.ack(c.seq, 0);
          break;
        }
        case 'detach':
          this.ack(c.seq, this.detach());
          break;
        case 'fds':
          this.setKickFd(c.kickFd);
          this.callFd = c.callFd;
          this.errFd = c.errFd;
          this.ack(c.seq, 0);
          break;
        case 'remap': {
          const memory = GuestMemory.mirror(c.memory);
          let result = 0;
          try {
            this.ring?.remap(memory);
            this.memory = memory;
          } catch (error) {
            // The main thread stops the queue and signals its error eventfd.
            this.log(`${this.setup.name}: ${(error as Error).message}; queue stopped`);
            this.detach();
            result = -1;
          }
          this.ack(c.seq, result);
          break;
        }
        case 'ready':
          this.becomeReady(c);
          break;
        case 'answer':
          this.answered(c.token, c.reply, c.errno);
          break;
        case 'exit':
          this.exiting = true;
          this.detach();
          this.ack(c.seq, 0);
          break;
      }
    }
  }

  private ack(seq: number, result: number): void {
    Atomics.store(this.control, CTL_RESULT, result);
    Atomics.store(this.control, CTL_ACK, seq);
    Atomics.notify(this.control, CTL_ACK);
  }

  private setKickFd(fd: number): void {
    if (fd === this.kickFd) return;
    if (this.kickFd >= 0) epollCtl(this.epfd, EPOLL_CTL_DEL, this.kickFd, 0, 0);
    this.kickFd = fd;
    if (fd >= 0) epollCtl(this.epfd, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLET, TOKEN_KICK);
  }

  /** Stops serving the frontend's ring; returns the avail index to resume from. */
  private detach(): number {
    const ring = this.ring;
    if (!ring) return this.resumeAt;
    this.notifyFrontend();
    const inFlight = ring.inFlightCount;
    if (inFlight > 0) this.log(`${ring.name} stopped with ${inFlight} request(s) in flight: their replies are dropped`);
    this.ring = undefined;
    this.setKickFd(-1);
    this.callFd = this.errFd = undefined;
    this.resumeAt = ring.lastAvailIdx;
    return this.resumeAt;
  }

  /** FUSE_INIT is settled: the translation, and this thread's part of the backend's request queue. */
  private becomeReady(c: ReadyCommand): void {
    const log = (line: string) => this.log(line);
    this.translation = new WireTranslation(resolveArch(c.clientArch), this.own, log);
    const { loan, share: layout, wakeFds, slotOffsets } = c.backend;
    this.engine = new RequestEngine({ dataRoom: loan.dataRoom, translation: this.translation, log });
    const region = new RegionMirror(loan.region);
    const member = this.setup.member;
    let share: QueueShare | undefined;
    const queue = adoptLoan(loan, region, {
      name: `backend ${loan.name} (${this.setup.name})`,
      share: { ...memberRange(member, layout.members, layout.size), publish: (head) => share!.publish(head) },
    });
    const block = region.bytes.byteOffset + loan.ringOffset;
    const buffer = region.bytes.buffer;
    share = new QueueShare(
      layout,
      member,
      new Uint16Array(buffer, block + queue.layout.availRing, availRingBytes(loan.queueSize) / 2),
      new Uint16Array(buffer, block + queue.layout.usedRing, usedRingBytes(loan.queueSize) / 2),
      new Uint32Array(buffer, block + queue.layout.usedRing, 1 + 2 * loan.queueSize),
      hasFeature(loan.features, VIRTIO_RING_F_EVENT_IDX),
      wakeFds,
    );
    this.queue = queue;
    this.share = share;
    this.backendKickFd = loan.signals.kickFd;
    if (loan.signals.callFd !== undefined) epollCtl(this.epfd, EPOLL_CTL_ADD, loan.signals.callFd, EPOLLIN | EPOLLET | EPOLLEXCLUSIVE, TOKEN_BACKEND);

    const count = slotOffsets.length;
    this.opcodes = new Int32Array(count);
    this.uniqueLow = new Uint32Array(count);
    this.uniqueHigh = new Uint32Array(count);
    this.slotKind = new Uint8Array(count);
    this.free = new Int32Array(count);
    this.submittedAt = new Float64Array(count);
    this.advisor = new PollAdvisor(count, this.setup.pollUs);
    for (let s = 0; s < count; s++) {
      const offset = slotOffsets[s]!;
      const bytes = region.bytes.subarray(offset, offset + loan.slotSize);
      this.slotBytes.push(bytes);
      this.slotViews.push(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength));
      this.slotBase.push(offset);
      this.spaces.push(new ReplySpace());
      this.slotChain.push(undefined);
      this.slotRing.push(undefined);
      this.slotCommand.push(undefined);
      this.free[s] = count - 1 - s;
    }
    this.freeCount = count;
  }

  // --- requests ------------------------------------------------------------------------------

  /** Takes chains while the ring has them and a slot is free (before INIT: every chain). */
  private pump(): void {
    const ring = this.ring;
    if (!ring) return;
    try {
      do {
        while (this.ring === ring && (this.freeCount > 0 || !this.engine)) {
          const popped = ring.pop();
          if (!popped) break;
          Atomics.add(this.control, CTL_SERVED, 1);
          if (!popped.ok) {
            // Nowhere trustworthy to write an error to: return the chain empty (the frontend sees no reply: EIO).
            this.log(`${ring.name}: ${popped.reason}; returned with nothing written`);
            this.complete(ring, popped.head, 0);
          } else {
            this.request(ring, popped.chain);
          }
        }
        // No slot free: the chains wait on the ring, taken when a reply frees one (no kick needed).
        if (this.ring !== ring || (this.freeCount === 0 && this.engine)) return;
      } while (ring.armKick());
    } catch (error) {
      if (!(error instanceof RingBrokenError)) throw error;
      this.ringBroken(ring, error.message);
    }
  }

  /** The frontend damaged its ring: stop serving it and tell it on the queue's error eventfd. */
  private ringBroken(ring: DeviceRing, reason: string): void {
    if (this.ring !== ring) return;
    const errFd = this.errFd;
    this.log(`${ring.name}: ${reason}; queue stopped`);
    const lastAvail = this.detach();
    if (errFd !== undefined) signalEventFd(errFd);
    this.post({ kind: 'broken', reason, lastAvail });
  }

  private request(ring: DeviceRing, chain: Chain): void {
    const head = chain.head;
    // The request's header, checked against the chain: len must be exactly the readable bytes.
    if (chain.readableBytes < IN_HEADER) {
      this.log(`${ring.name}: chain ${head}: ${chain.readableBytes} readable bytes, fuse_in_header needs ${IN_HEADER}`);
      return this.complete(ring, head, 0);
    }
    try {
      readChain(this.memory, chain, 0, this.header);
    } catch (error) {
      this.log(`${ring.name}: chain ${head}: ${(error as Error).message}`);
      return this.complete(ring, head, 0);
    }
    const h = this.headerView;
    const len = h.getUint32(LEN_AT, true);
    const opcode = h.getUint32(OPCODE_AT, true);
    const unique = h.getBigUint64(UNIQUE_AT, true);
    if (len !== chain.readableBytes) {
      this.log(`${ring.name}: chain ${head}: ${opcodeName(opcode)} unique ${unique} says len ${len}, the chain has ${chain.readableBytes} readable bytes`);
      if (chain.writableBytes >= OUT_HEADER) this.fail(ring, chain, unique, 'EIO');
      else this.complete(ring, head, 0);
      return;
    }
    if (chain.writableBytes < OUT_HEADER) {
      this.log(`${ring.name}: chain ${head}: ${chain.writableBytes} writable bytes, no room for a reply`);
      return this.complete(ring, head, 0);
    }
    if (opcode === Opcode.INIT || opcode === Opcode.FORGET || opcode === Opcode.BATCH_FORGET) return this.delegate(ring, chain, opcode, unique, len);
    const engine = this.engine;
    if (!engine) return this.failWith(ring, chain, opcode, unique, new EngineFailure('EIO', `${opcodeName(opcode)} unique ${unique} before FUSE_INIT completed`));
    if (this.stallName && opcode === Opcode.LOOKUP) this.maybeStall(chain, len);
    const s = this.free[--this.freeCount]!;
    this.slotChain[s] = chain;
    this.slotRing[s] = ring;
    this.opcodes[s] = opcode;
    this.slotKind[s] = FORWARD;
    this.uniqueLow[s] = Number(unique & 0xffff_ffffn);
    this.uniqueHigh[s] = Number(unique >> 32n);
    try {
      if (opcode === Opcode.IOCTL && this.fileattr && this.fileattrRequest(s, chain, len)) return;
      this.forward(s, chain, opcode, len);
    } catch (error) {
      this.failSlot(s, error);
    }
  }

  /**
   * Copies the request into slot `s`, has the engine size its reply and translate it, and puts it
   * on the backend's queue. Throws EngineFailure when the device cannot carry it.
   */
  private forward(s: number, chain: Chain, opcode: number, len: number): void {
    const engine = this.engine!;
    const shape = messageShape(opcode);
    if (!shape || !isRelayable(opcode) || shape.reply.kind === 'none') throw new EngineFailure('ENOSYS', `${opcodeName(opcode)} is not relayed`);
    const view = this.slotViews[s]!;
    const hasTail = this.copyRequest(s, chain, opcode, len);
    // READLINK states no size: the frontend's buffer is the limit too.
    const space = engine.replySpace(opcode, view, REQUEST_AT + IN_HEADER, Math.max(0, chain.writableBytes - OUT_HEADER), this.spaces[s]);
    if (space.room.data > 0 && hasTail) throw new EngineFailure('EIO', `${opcodeName(opcode)}: request of ${len} bytes leaves no room for reply data`);
    const needed = OUT_HEADER + space.room.fixed + space.room.data;
    if (needed > chain.writableBytes) {
      throw new EngineFailure('EIO', `${opcodeName(opcode)}: frontend offered ${chain.writableBytes} writable bytes, the reply may take ${needed}`);
    }
    if (WireTranslation.translatesRequest(opcode) && len < IN_HEADER + shape.arg!.size) {
      throw new EngineFailure('EIO', `${opcodeName(opcode)}: request of ${len} bytes is shorter than its ${shape.arg!.name}`);
    }
    if (this.setup.trace) this.trace(describeRequest(view, Math.min(len, REQUEST_ROOM), engine.translation));
    engine.translateRequest(opcode, view);
    this.submit(s, space);
  }

  /** Puts slot `s` (readable segments in this.readable) on the backend's queue. */
  private submit(s: number, space: ReplySpace): void {
    if (this.backendBroken || this.share!.broken) throw new EngineFailure('EIO', 'backend unavailable: its queue is broken or it is gone');
    const base = this.slotBase[s]!;
    toRegion(this.readable, base, this.regionReadable);
    toRegion(this.engine!.writableSegments(space), base, this.regionWritable);
    if (!this.queue!.add(this.regionReadable, this.regionWritable, s)) throw new EngineFailure('EIO', `${this.queue!.name} has no free descriptors`);
    this.inFlight++;
    this.submittedAt[s] = performance.now();
    this.advisor!.submitted(s, this.readable[1]! + this.readable[3]! + space.room.data);
  }

  /**
   * Copies the request into slot `s` and sets this.readable to its device-readable segments: a
   * WRITE's data in its own page-aligned buffer, the slot's data area (a backend doing O_DIRECT I/O
   * on it needs the alignment; the kernel's virtio_fs driver lays WRITEs out the same way),
   * anything else at REQUEST_AT, with a long tail (a large SETXATTR value) in the data area, which
   * forward() then refuses if the reply needs that area too. Returns whether there is such a tail.
   */
  private copyRequest(s: number, chain: Chain, opcode: number, len: number): boolean {
    let head: number;
    if (opcode === Opcode.WRITE) {
      if (len < WRITE_HEAD) throw new EngineFailure('EIO', `WRITE of ${len} bytes is shorter than its headers`);
      head = WRITE_HEAD;
    } else {
      head = Math.min(len, REQUEST_ROOM);
    }
    const tail = len - head;
    if (tail > this.engine!.dataRoom) throw new EngineFailure('EIO', `${opcodeName(opcode)}: request of ${len} bytes exceeds the device's buffers`);
    const bytes = this.slotBytes[s]!;
    readChain(this.memory, chain, 0, bytes.subarray(REQUEST_AT, REQUEST_AT + head));
    if (tail > 0) readChain(this.memory, chain, head, bytes.subarray(DATA_AT, DATA_AT + tail));
    setSegments(this.readable, REQUEST_AT, head, DATA_AT, tail);
    return tail > 0;
  }

  /**
   * A fileattr ioctl (--fileattr-dir): served here once a GETATTR of the device's own, sent on the
   * request's slot, has found the node's inode number. Returns false for any other ioctl.
   */
  private fileattrRequest(s: number, chain: Chain, len: number): boolean {
    const bytes = new Uint8Array(len);
    readChain(this.memory, chain, 0, bytes);
    const command = this.fileattr!.parse(bytes, this.translation!);
    if (!command) return false;
    if (command.invalid) {
      this.respondSlot(s, this.fileattr!.answer(command, undefined, this.translation!));
      return true;
    }
    this.slotCommand[s] = command;
    this.slotKind[s] = FILEATTR_GETATTR;
    const view = this.slotViews[s]!;
    const total = IN_HEADER + fuse_getattr_in.size;
    this.slotBytes[s]!.set(bytes.subarray(0, IN_HEADER), REQUEST_AT);
    view.setUint32(REQUEST_AT + LEN_AT, total, true);
    view.setUint32(REQUEST_AT + OPCODE_AT, Opcode.GETATTR, true);
    fuse_getattr_in.encode(view, REQUEST_AT + IN_HEADER, { getattr_flags: 0, dummy: 0, fh: 0n });
    this.opcodes[s] = Opcode.GETATTR;
    setSegments(this.readable, REQUEST_AT, total, 0, 0);
    this.submit(s, this.engine!.replySpace(Opcode.GETATTR, view, REQUEST_AT + IN_HEADER, undefined, this.spaces[s]));
    return true;
  }

  /** INIT and FORGETs go to the main thread; a FORGET's chain is returned at once (nothing comes back). */
  private delegate(ring: DeviceRing, chain: Chain, opcode: number, unique: bigint, len: number): void {
    const bytes = new Uint8Array(len);
    try {
      readChain(this.memory, chain, 0, bytes);
    } catch (error) {
      this.log(`${ring.name}: chain ${chain.head}: ${(error as Error).message}`);
      return this.complete(ring, chain.head, 0);
    }
    const token = this.nextToken++;
    if (opcode === Opcode.INIT) this.delegated.set(token, { chain, ring, unique });
    this.post({ kind: 'delegate', token, opcode, bytes, writableBytes: chain.writableBytes });
    if (opcode !== Opcode.INIT) this.complete(ring, chain.head, 0);
  }

  private answered(token: number, reply: Uint8Array | undefined, errno: EngineFailure['errnoName'] | undefined): void {
    const d = this.delegated.get(token);
    if (!d) return;
    this.delegated.delete(token);
    if (this.ring !== d.ring) return; // the queue stopped meanwhile
    if (reply) {
      try {
        this.oneReply[0] = reply;
        this.respond(d.ring, d.chain, this.oneReply);
      } catch (error) {
        this.log(`${d.ring.name}: cannot answer unique ${d.unique}: ${(error as Error).message}`);
      }
    } else if (errno) this.fail(d.ring, d.chain, d.unique, errno);
    else this.complete(d.ring, d.chain.head, 0);
  }

  /** Test hook (--stall-lookup): a LOOKUP of the configured name holds this thread. */
  private maybeStall(chain: Chain, len: number): void {
    const name = this.stallName!;
    if (len !== IN_HEADER + name.length) return;
    const bytes = new Uint8Array(name.length);
    readChain(this.memory, chain, IN_HEADER, bytes);
    if (!bytes.every((b, i) => b === name[i])) return;
    this.log(`${this.setup.name}: LOOKUP ${this.setup.stall!.name}: holding this thread for ${this.setup.stall!.ms} ms (--stall-lookup)`);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, this.setup.stall!.ms);
  }

  // --- completions -----------------------------------------------------------------------

  private completions(): void {
    const share = this.share;
    if (!share) return;
    if (!this.backendBroken) {
      share.harvest(this.onEntry);
      share.takeInbox(this.onRouted);
    }
    if (share.broken && !this.backendBroken) this.failBackend();
  }

  /** The backend's queue is broken or the backend is gone: everything in flight fails with EIO, as will every later request. */
  private failBackend(): void {
    this.backendBroken = true;
    this.queue!.failAll('backend failed', (s) => {
      this.inFlight--;
      this.advisor!.completed(s, 0, false);
      this.failSlot(s, new EngineFailure('EIO', 'backend failed', true));
    });
  }

  private readonly onEntry = (position: number, id: number, len: number): void => {
    this.queue!.completeUsed(position, id, len, this.onUsed, this.onProblem);
    if (this.queue!.brokenReason !== undefined && !this.backendBroken) {
      this.log(`${this.queue!.name}: ${this.queue!.brokenReason}; every request now fails with EIO`);
      this.share!.markBroken();
      this.failBackend();
    }
  };

  private readonly onRouted = (position: number, id: number, len: number): void => {
    Atomics.add(this.control, CTL_ROUTED, 1);
    this.onEntry(position, id, len);
  };

  private readonly onUsed = (s: number, usedLen: number): void => {
    this.inFlight--;
    this.advisor!.completed(s, (performance.now() - this.submittedAt[s]!) * 1000, true);
    const opcode = this.opcodes[s]!;
    const view = this.slotViews[s]!;
    const engine = this.engine!;
    try {
      const errno = engine.judge(view, opcode, this.uniqueLow[s]!, this.uniqueHigh[s]!, usedLen, this.spaces[s]!);
      if (this.slotKind[s] === FILEATTR_GETATTR) {
        const command = this.slotCommand[s]!;
        this.slotCommand[s] = undefined;
        if (errno !== 0) throw new EngineFailure('EIO', `IOCTL ${command.name}: GETATTR of node ${command.nodeid}: errno ${errno}`);
        return this.respondSlot(s, this.fileattr!.answer(command, view.getBigUint64(engine.bodyAt + INO_AT, true), this.translation!));
      }
      const bytes = this.slotBytes[s]!;
      const header = bytes.subarray(REPLY_AT, REPLY_AT + OUT_HEADER);
      let parts: Uint8Array[];
      if (errno !== 0) {
        if (this.setup.trace) this.trace(`<- ${opcodeName(opcode)} unique ${this.unique(s)}: errno ${errno} (${engine.translation.client.name})`);
        parts = this.oneReply;
        parts[0] = header;
      } else {
        if (this.setup.trace) this.trace(describeReply(opcode, this.unique(s), engine.bodyLen));
        parts = this.twoReply;
        parts[0] = header;
        parts[1] = bytes.subarray(engine.bodyAt, engine.bodyAt + engine.bodyLen);
      }
      const ring = this.slotRing[s]!;
      if (this.ring === ring) this.respond(ring, this.slotChain[s]!, parts);
      if (opcode === Opcode.DESTROY) this.post({ kind: 'destroyed' });
      this.release(s);
    } catch (error) {
      this.failSlot(s, error);
    }
  };

  // An entry with a token (a len beyond its chain) fails that request, logged by the engine naming
  // the opcode and the field; one without has broken the queue (onEntry).
  private readonly onProblem = (problem: UsedRingProblem<number>): void => {
    const s = problem.token;
    if (s === undefined) return;
    this.inFlight--;
    this.advisor!.completed(s, 0, false);
    this.failSlot(s, this.engine!.usedLenFailure(this.opcodes[s]!, this.unique(s), problem.reason));
  };

  // --- replies ---------------------------------------------------------------------------

  private unique(s: number): bigint {
    return (BigInt(this.uniqueHigh[s]!) << 32n) | BigInt(this.uniqueLow[s]!);
  }

  /** Answers slot `s`'s request with `reply` (a whole reply) and frees the slot. */
  private respondSlot(s: number, reply: Uint8Array): void {
    const ring = this.slotRing[s]!;
    try {
      this.oneReply[0] = reply;
      if (this.ring === ring) this.respond(ring, this.slotChain[s]!, this.oneReply);
    } catch (error) {
      this.log(`${ring.name}: cannot answer: ${(error as Error).message}`);
    }
    this.release(s);
  }

  /** Fails slot `s`'s request (the errno of an EngineFailure, else EIO) and frees the slot. */
  private failSlot(s: number, error: unknown): void {
    const ring = this.slotRing[s]!;
    const chain = this.slotChain[s]!;
    // A fileattr ioctl's own GETATTR failing fails the IOCTL.
    const opcode = this.slotCommand[s] ? Opcode.IOCTL : this.opcodes[s]!;
    this.slotCommand[s] = undefined;
    this.release(s);
    if (this.ring === ring) this.failWith(ring, chain, opcode, this.unique(s), error);
  }

  private failWith(ring: DeviceRing, chain: Chain, opcode: number, unique: bigint, error: unknown): void {
    if (!(error instanceof EngineFailure || error instanceof ProtocolError)) {
      this.log(`${opcodeName(opcode)} unique ${unique}: ${(error as Error).stack ?? error}`);
    } else if (!(error instanceof EngineFailure && error.logged)) {
      this.log(`${opcodeName(opcode)} unique ${unique}: ${error.message}`);
    }
    this.fail(ring, chain, unique, error instanceof EngineFailure ? error.errnoName : 'EIO');
  }

  /**
   * Answers with an errno the device itself produced. It is named in no encoding until now: the
   * device's own number, carried to the client's encoding like any backend errno (before INIT,
   * the device's own).
   */
  private fail(ring: DeviceRing, chain: Chain, unique: bigint, name: EngineFailure['errnoName']): void {
    const own = this.own.errno.numbers[name]!;
    const errno = this.translation ? this.translation.errno(own) : own;
    this.errorView.setUint32(0, OUT_HEADER, true);
    this.errorView.setInt32(4, -errno, true);
    this.errorView.setBigUint64(8, unique, true);
    try {
      this.oneReply[0] = this.errorReply;
      this.respond(ring, chain, this.oneReply);
    } catch (error) {
      // The frontend's memory went away: nothing to answer into.
      this.log(`${ring.name}: cannot answer unique ${unique}: ${(error as Error).message}`);
    }
  }

  /** Scatters the reply over the chain's writable buffers and returns the chain with its length. */
  private respond(ring: DeviceRing, chain: Chain, parts: readonly Uint8Array[]): void {
    let total = 0;
    for (const p of parts) total += p.length;
    if (total > chain.writableBytes) throw new EngineFailure('EIO', `reply of ${total} bytes, ${chain.writableBytes} writable`);
    let at = 0;
    for (const part of parts) {
      writeChain(this.memory, chain, at, part);
      at += part.length;
    }
    this.complete(ring, chain.head, total);
  }

  private complete(ring: DeviceRing, head: number, len: number): void {
    if (this.ring !== ring) return;
    ring.pushUsed(head, len);
    this.notifyPending = true;
  }

  /** The used-buffer notification, decided once per turn of the loop for everything returned in it. */
  private notifyFrontend(): void {
    if (!this.notifyPending) return;
    this.notifyPending = false;
    const ring = this.ring;
    if (ring && ring.shouldNotify() && this.callFd !== undefined) signalEventFd(this.callFd);
  }

  private release(s: number): void {
    this.slotChain[s] = undefined;
    this.slotRing[s] = undefined;
    this.free[this.freeCount++] = s;
  }

  private log(line: string): void {
    this.post({ kind: 'log', line });
  }

  private trace(line: string): void {
    this.post({ kind: 'trace', line });
  }
}
