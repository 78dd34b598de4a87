/**
 * One virtqueue, one thread, as the kernel's virtio_fs and virtiofsd run theirs: the thread makes
 * blocking system calls and nothing else stands between the local kernel and the device.
 *
 * A request thread owns one request queue, a share of the slots and its own /dev/fuse descriptor
 * (a FUSE_DEV_IOC_CLONE of the mount's). It sleeps in epoll_wait on that descriptor, the queue's
 * completion eventfd and a wake eventfd; reads requests straight into device-visible slots; has the
 * request engine check and translate them; puts them on its queue and kicks; drains the used ring,
 * has the engine judge each reply, and writes it to /dev/fuse from the slot. FORGETs go to the
 * hiprio thread through the ForgetMailbox.
 *
 * The hiprio thread owns queue 0: it takes FORGET/BATCH_FORGET records from the mailbox and puts
 * them on its queue; nothing comes back but the descriptors.
 *
 * Per request nothing is allocated: slots, iovec arrays, segment lists and reply spaces are built
 * once; uniques are compared as two u32 halves; replies are judged at precomputed offsets. Strings
 * and objects appear only on the failure paths and with --trace.
 */
import { performance } from 'node:perf_hooks';
import { resolveArch } from '../arch/index.ts';
import { RegionMirror } from '../../ffi/dma.ts';
import { errnoNumber } from '../../ffi/errno.ts';
import {
  EPOLLET,
  EPOLLEXCLUSIVE,
  EPOLLIN,
  EPOLL_CLOEXEC,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EpollEventBuffer,
  IovecArray,
  close,
  drainEventFd,
  epollCreate1,
  epollCtl,
  epollWait,
  readvInto,
  writevFrom,
} from '../../ffi/libc.ts';
import { EngineFailure, READLINK_MAX, ReplySpace, RequestEngine, isRelayable } from '../fuse/engine.ts';
import { DATA_AT, REPLY_AT, REQUEST_ROOM, WRITE_HEAD } from '../fuse/slot-layout.ts';
import { setSegments, toRegion } from '../virtio/buffer-pool.ts';
import { WireTranslation } from '../fuse/wire-translation.ts';
import { Opcode, fuse_in_header, fuse_out_header, opcodeName } from '../protocol/index.ts';
import { QueueDoorbell, adoptLoan, type QueueLoan } from '../virtio/virtio-fs-device.ts';
import { Virtqueue, type UsedRingProblem } from '../virtio/virtqueue.ts';
import { HiprioSender } from './hiprio-sender.ts';
import { PollAdvisor } from './poll-advisor.ts';
import { ForgetMailbox } from './forget-mailbox.ts';
import { OpStats } from './op-stats.ts';
import { describeReply, describeRequest } from './trace.ts';


/** Words of QueueThreadSetup.control. */
export const CONTROL_STOP = 0;
export const CONTROL_IN_FLIGHT = 1;
/** CONTROL_STOP values: run; finish (serve what is in flight, then exit); abort (the device is gone). */
export const RUN = 0;
export const FINISH = 1;
export const ABORT = 2;
export const CONTROL_WORDS = 2;

export interface QueueThreadSetup {
  role: 'request' | 'hiprio';
  loan: QueueLoan;
  /** role 'request': this thread's /dev/fuse descriptor (non-blocking). */
  fuseFd: number;
  /** Wakes the thread: control changes, completions seen by the main thread (a shared interrupt). */
  wakeFd: number;
  /** Int32 words: CONTROL_STOP (set by the main thread), CONTROL_IN_FLIGHT (set by this one). */
  control: SharedArrayBuffer;
  /** With several request threads: where they put FORGETs for the hiprio thread. */
  mailbox?: SharedArrayBuffer;
  /** The mailbox's doorbell eventfd (the hiprio thread waits on it). */
  mailboxFd?: number;
  /** With one request thread (role 'request'): the hiprio queue, which it drives itself (hiprio-sender.ts). */
  hiprioLoan?: QueueLoan;
  stats: SharedArrayBuffer;
  clientArch: string;
  wireArch: string;
  /** Poll the used ring instead of sleeping until the device signals (one core busy per queue). */
  busyPoll: boolean;
  /**
   * Before sleeping, poll this long (us) for a request or a completion: on a virtual machine a
   * sleeping thread's wake-up costs the vCPU's halt and the host's wake-up of it, tens of us.
   * 0: sleep at once. (QEMU's iothreads do the same with poll-max-ns.)
   */
  pollUs: number;
  /**
   * Time one request in this many (1: every one). Where a clock read is a system call (a TCG
   * guest's HPET, 3-9 us) the five reads of a timed request cost more than the figures tell:
   * machine-costs.ts measures and chooses. Then one request in timeEvery, by lot, is timed
   * throughout (its latency and phases are the status figures: a random sample); a request the poll
   * advisor wants the device time of (a size's first 32, probes) is timed at the device only; the
   * others are counted. Timeouts use the thread's last clock reading, taken at every wake-up,
   * while polling, and at least every CLOCK_EVERY_TURNS busy turns.
   */
  timeEvery: number;
  /** Request threads of the mount: with several, one that waits on the device leaves new requests to the others. */
  requestThreads: number;
  trace: boolean;
  /** How long a finishing thread waits for the device to return what is in flight. */
  finishTimeoutMs: number;
  /**
   * A request the device has not answered after this long (ms) gets EIO for the application; its
   * buffers stay with the device until it returns them. 0: wait for ever.
   */
  requestTimeoutMs: number;
}

/** What a queue thread tells the main thread. */
export type QueueThreadMessage =
  | { kind: 'log'; line: string }
  | { kind: 'trace'; line: string }
  /** `broken`: why the thread found its queue broken (a corrupt used ring), if it did: the device is. */
  | { kind: 'exit'; reason: string; inFlight: number; broken?: string };

/** QueueThread.timed values: counted only; timed at the device (for the poll advisor); timed throughout. */
const UNTIMED = 0;
const DEVICE_TIMED = 1;
const TIMED = 2;
/** Polling: turns between looks at epoll while requests are at the device, and between reads of a slow clock. */
const POLL_EPOLL_EVERY = 8;
const POLL_CLOCK_EVERY = 8;
/** Busy loop turns (no sleep, no poll) between clock readings, for timeouts. */
const CLOCK_EVERY_TURNS = 8;
const TOKEN_SOURCE = 1;
const TOKEN_CALL = 2;
const TOKEN_WAKE = 3;
const UNIQUE_AT = fuse_in_header.offsetOf('unique');
const LEN_AT = fuse_in_header.offsetOf('len');
const OPCODE_AT = fuse_in_header.offsetOf('opcode');
const OUT_LEN_AT = REPLY_AT + fuse_out_header.offsetOf('len');
const OUT_ERROR_AT = REPLY_AT + fuse_out_header.offsetOf('error');
const OUT_UNIQUE_AT = REPLY_AT + fuse_out_header.offsetOf('unique');
const BODY_AT = REPLY_AT + fuse_out_header.size;

const EAGAIN = errnoNumber('EAGAIN');
const EINTR = errnoNumber('EINTR');
const ENODEV = errnoNumber('ENODEV');
const ENOENT = errnoNumber('ENOENT');
const EIO = errnoNumber('EIO');
const ENOSYS = errnoNumber('ENOSYS');
const NO_SEGMENTS: readonly number[] = [];

export class QueueThread {
  private readonly setup: QueueThreadSetup;
  private readonly post: (message: QueueThreadMessage) => void;
  private readonly queue: Virtqueue<number>;
  private readonly engine: RequestEngine;
  private readonly stats: OpStats;
  private readonly control: Int32Array;
  private readonly mailbox: ForgetMailbox | undefined;
  private readonly hiprio: HiprioSender | undefined;
  private readonly epfd: number;
  private readonly events = new EpollEventBuffer(8);
  private readonly doorbell: QueueDoorbell;

  // Per slot, built once.
  private readonly slotBytes: Uint8Array[] = [];
  private readonly slotData: Uint8Array[] = [];
  private readonly slotViews: DataView[] = [];
  private readonly slotBase: number[] = [];
  private readonly readIov: IovecArray[] = [];
  private readonly replyIov: IovecArray[] = [];
  private readonly spaces: ReplySpace[] = [];
  private readonly opcodes: Int32Array;
  private readonly uniqueLow: Uint32Array;
  private readonly uniqueHigh: Uint32Array;
  private readonly started: Float64Array;
  private readonly submitted: Float64Array;
  private readonly free: Int32Array;
  private freeCount: number;
  private inFlight = 0;
  /** Per slot: on the virtqueue (1) until its used entry comes back. */
  private readonly atDevice: Uint8Array;
  /** Per slot: answered EIO on timeout (1); its chain is still with the device. */
  private readonly abandoned: Uint8Array;
  private abandonedCount = 0;
  /** How often overdue requests are looked for: a quarter of the timeout, at most every second. */
  private readonly timeoutCheckMs: number;
  private nextTimeoutCheck = 0;
  /** Whether polling before sleeping pays, learned per request size (poll-advisor.ts). */
  private readonly advisor: PollAdvisor;
  /** Per slot: UNTIMED, DEVICE_TIMED or TIMED; see QueueThreadSetup.timeEvery. */
  private readonly timed: Uint8Array;
  /** xorshift32 state: which requests are timed is random, so no workload's period aliases with it. */
  private sampleState = 0x9e3779b9;
  /** The last clock reading (ms): taken on every wake-up, while polling, and for timed requests. */
  private clock = 0;
  /** Loop turns since the last reading, when no sleep or poll took one. */
  private turnsSinceClock = 0;

  // Scratch segment lists (Virtqueue.add copies them into descriptors before it returns).
  private readonly readable = [0, 0, 0, 0];
  private readonly regionReadable: number[] = [0, 0, 0, 0];
  private readonly regionWritable: number[] = [0, 0, 0, 0];

  private sourceWatched = false;
  private sourceReady = false;
  /** The source is gone (/dev/fuse answered ENODEV: unmounted). */
  private sourceClosed = false;
  private exitReason: string | undefined;

  constructor(setup: QueueThreadSetup, post: (message: QueueThreadMessage) => void) {
    this.setup = setup;
    this.post = post;
    const loan = setup.loan;
    const region = new RegionMirror(loan.region);
    this.queue = adoptLoan(loan, region);
    const log = (line: string) => this.post({ kind: 'log', line });
    const translation = new WireTranslation(resolveArch(setup.clientArch), resolveArch(setup.wireArch), log);
    this.engine = new RequestEngine({ dataRoom: loan.dataRoom, translation, log });
    this.stats = new OpStats(setup.stats);
    this.control = new Int32Array(setup.control);
    this.mailbox = setup.mailbox !== undefined ? new ForgetMailbox(setup.mailbox, setup.mailboxFd!) : undefined;
    this.hiprio = setup.hiprioLoan !== undefined ? new HiprioSender(setup.hiprioLoan, region) : undefined;
    if (setup.role === 'hiprio' ? !this.mailbox : !this.mailbox === !this.hiprio) {
      throw new Error(`${setup.loan.name}: FORGETs need ${setup.role === 'hiprio' ? 'the mailbox' : 'either the mailbox or the hiprio queue'}`);
    }
    this.doorbell = new QueueDoorbell(loan.signals);

    const count = loan.slotOffsets.length;
    this.opcodes = new Int32Array(count);
    this.uniqueLow = new Uint32Array(count);
    this.uniqueHigh = new Uint32Array(count);
    this.started = new Float64Array(count);
    this.submitted = new Float64Array(count);
    this.free = new Int32Array(count);
    this.atDevice = new Uint8Array(count);
    this.abandoned = new Uint8Array(count);
    this.timed = new Uint8Array(count);
    this.clock = performance.now();
    for (let s = 0; s < count; s++) {
      const offset = loan.slotOffsets[s]!;
      const bytes = region.bytes.subarray(offset, offset + loan.slotSize);
      this.slotBytes.push(bytes);
      this.slotData.push(bytes.subarray(DATA_AT));
      this.slotViews.push(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength));
      this.slotBase.push(offset);
      const address = loan.region.userAddress + BigInt(offset);
      const read = new IovecArray(2);
      read.set(0, address, WRITE_HEAD);
      read.set(1, address + BigInt(DATA_AT), loan.dataRoom);
      this.readIov.push(read);
      const reply = new IovecArray(2);
      reply.set(0, address + BigInt(REPLY_AT), fuse_out_header.size);
      reply.set(1, address + BigInt(DATA_AT), 0);
      this.replyIov.push(reply);
      this.spaces.push(new ReplySpace());
      this.free[s] = count - 1 - s;
    }
    this.freeCount = count;
    this.advisor = new PollAdvisor(count, setup.pollUs);
    this.timeoutCheckMs = Math.max(1, Math.min(1000, setup.requestTimeoutMs >> 2));

    this.epfd = epollCreate1(EPOLL_CLOEXEC);
    // Edge-triggered eventfds: every signal (each write) is reported once, so they are never read;
    // the counters grow by one per signal and cannot reach their 2^64-2 limit.
    if (loan.signals.callFd !== undefined) epollCtl(this.epfd, EPOLL_CTL_ADD, loan.signals.callFd, EPOLLIN | EPOLLET, TOKEN_CALL);
    epollCtl(this.epfd, EPOLL_CTL_ADD, setup.wakeFd, EPOLLIN | EPOLLET, TOKEN_WAKE);
    this.watchSource(true);
  }

  /** Serves until unmounted, told to stop, or the device fails; returns why. */
  run(): string {
    const reason = this.serve();
    // What this thread put on hiprio comes back before the queue goes back to the main thread.
    if (this.hiprio && reason === 'unmounted' && this.hiprio.finish(this.setup.finishTimeoutMs) > 0) {
      this.post({ kind: 'log', line: `${this.hiprio.name}: ${this.hiprio.requestsInFlight} FORGETs still with the device after ${this.setup.finishTimeoutMs} ms; leaving them` });
    }
    return reason;
  }

  private serve(): string {
    let finishDeadline = 0;
    try {
      while (this.exitReason === undefined) {
        let n: number;
        if (finishDeadline > 0) n = this.sleep(50);
        else if (this.setup.busyPoll) {
          n = epollWait(this.epfd, this.events, 0);
          if (++this.turnsSinceClock >= CLOCK_EVERY_TURNS) this.now();
        } else {
          n = this.poll();
          if (n < 0) n = this.sleep(this.sleepMs());
          else if (++this.turnsSinceClock >= CLOCK_EVERY_TURNS) this.now();
        }
        if (this.setup.requestTimeoutMs > 0 && this.inFlight > this.abandonedCount) this.expireOverdue();
        for (let i = 0; i < n; i++) if (this.events.tokenAt(i) === TOKEN_SOURCE) this.sourceReady = true;
        const stop = Atomics.load(this.control, CONTROL_STOP);
        if (stop === ABORT) {
          this.abort();
          return 'device failed';
        }
        this.complete();
        if (this.sourceReady) this.pump();
        if (stop === FINISH && !this.sourceClosed) this.closeSource();
        // A broken queue (complete() set exitReason and closed the source) says so, not 'unmounted'.
        if (this.exitReason !== undefined) break;
        if (this.sourceClosed) {
          if (this.inFlight === 0) return this.setup.role === 'request' ? 'unmounted' : 'finished';
          // What the device still holds was answered EIO on timeout already: nobody waits for it.
          if (this.inFlight === this.abandonedCount) {
            this.post({ kind: 'log', line: `${this.queue.name}: ${this.inFlight} timed-out requests still with the device; leaving them` });
            return 'unmounted';
          }
          if (finishDeadline === 0) finishDeadline = Date.now() + this.setup.finishTimeoutMs;
          else if (Date.now() > finishDeadline) {
            this.post({ kind: 'log', line: `${this.queue.name}: ${this.inFlight} requests still with the device after ${this.setup.finishTimeoutMs} ms; leaving them` });
            return 'unmounted';
          }
        }
      }
      return this.exitReason;
    } finally {
      Atomics.store(this.control, CONTROL_IN_FLIGHT, this.inFlight);
      close(this.epfd);
    }
  }

  /** Sleeps in epoll_wait up to `timeoutMs` (-1: no limit); reads the clock on waking. */
  private sleep(timeoutMs: number): number {
    const n = epollWait(this.epfd, this.events, timeoutMs);
    this.now();
    return n;
  }

  /** Reads the clock (ms) into this.clock. */
  private now(): number {
    this.turnsSinceClock = 0;
    return (this.clock = performance.now());
  }

  /**
   * Polls up to pollUs for work: a used entry while requests are at the device, or any fd ready.
   * Returns the events found (0: completions to drain), or -1 when nothing came: sleep then.
   * Polls only when the advisor says it has been paying for requests like the ones in flight
   * (or, idle, for the gap before the next request).
   */
  private poll(): number {
    const budget = this.setup.pollUs;
    if (budget <= 0) return -1;
    // With other request threads, poll only for completions: a new request then wakes a thread
    // asleep in epoll_wait (EPOLLEXCLUSIVE passes over a busy one), so the kernel's requests spread
    // over the queues instead of piling onto whichever thread polls.
    const alone = this.setup.requestThreads <= 1;
    if (this.inFlight > 0 ? !this.advisor.pollForCompletion : !(alone && this.advisor.pollForRequest)) return -1;
    const end = this.now() + budget / 1000;
    // A used entry is one load away; a new request is a system call. Where a clock read is slow
    // (timeEvery > 1: a TCG guest, where clock_gettime is itself a system call and each read of the
    // emulated HPET takes QEMU's big lock, which the device's notifications need too), epoll is
    // looked at every POLL_EPOLL_EVERY turns while requests are at the device and the clock every
    // POLL_CLOCK_EVERY: 4 of 5 pairs of guest runs better, +5 to +11 %. Where system calls are cheap,
    // both every turn: on the KVM machine an epoll_wait per turn did 16,415 against 15,686 4 KiB
    // random reads (three pairs), the spin without it slowing virtiofsd on the other vCPU.
    const slow = this.setup.timeEvery > 1;
    const clockEvery = slow ? POLL_CLOCK_EVERY : 1;
    const epollEvery = slow ? POLL_EPOLL_EVERY : 1;
    for (let turn = 1; ; turn++) {
      const waiting = this.inFlight > 0;
      if (waiting && this.queue.hasUsed()) return 0;
      if (alone && (!waiting || turn % epollEvery === 0)) {
        const n = epollWait(this.epfd, this.events, 0);
        if (n > 0) return n;
      }
      if (turn % clockEvery === 0 && this.now() >= end) return -1;
    }
  }

  /** How long to sleep: until the next look at overdue requests while any wait on the device. */
  private sleepMs(): number {
    return this.setup.requestTimeoutMs <= 0 || this.inFlight === this.abandonedCount ? -1 : this.timeoutCheckMs;
  }

  /**
   * Answers EIO for every request the device has held longer than requestTimeoutMs (looked at
   * every timeoutCheckMs). The chain stays the device's: its slot comes back only with the
   * used entry, as Linux's virtio_fs leaves a request's buffers to a device that may still write them.
   */
  private expireOverdue(): void {
    const now = this.clock;
    if (now < this.nextTimeoutCheck) return;
    const timeout = this.setup.requestTimeoutMs;
    this.nextTimeoutCheck = now + this.timeoutCheckMs;
    for (let s = 0; s < this.atDevice.length; s++) {
      if (this.atDevice[s] === 0 || this.abandoned[s] === 1 || now - this.submitted[s]! < timeout) continue;
      const opcode = this.opcodes[s]!;
      this.post({
        kind: 'log',
        line: `${opcodeName(opcode)} unique ${this.slotViews[s]!.getBigUint64(UNIQUE_AT, true)}: no reply from the device after ${timeout} ms: EIO to the application; its buffers stay with the device until it returns them`,
      });
      this.abandoned[s] = 1;
      this.abandonedCount++;
      if (this.setup.role === 'request') this.replyError(s, EIO);
      if (this.timed[s] === TIMED) this.stats.record(opcode, now - this.started[s]!, true);
      else this.stats.count(opcode, true);
    }
  }

  /**
   * Slot `s` is back from the device (`answered`: with a used entry, after `deviceUs`). Returns
   * true when the request had been answered on timeout already: the slot is then free again and
   * nothing more is to be done with it.
   */
  private leftDevice(s: number, deviceUs: number, answered: boolean): boolean {
    this.inFlight--;
    this.atDevice[s] = 0;
    // An untimed request's device time is not known: the advisor does not learn from it.
    this.advisor.completed(s, deviceUs, answered && this.timed[s] !== UNTIMED);
    if (this.abandoned[s] === 0) return false;
    this.abandoned[s] = 0;
    this.abandonedCount--;
    this.release(s);
    return true;
  }

  /** Why the queue is broken (the device wrote a corrupt used ring), or undefined. */
  get broken(): string | undefined {
    return this.queue.brokenReason === undefined ? this.hiprio?.broken : `${this.queue.name}: ${this.queue.brokenReason}`;
  }

  /** Requests the device still holds: this queue's, and the hiprio queue's when this thread drives it. */
  get requestsInFlight(): number {
    return this.inFlight + (this.hiprio?.requestsInFlight ?? 0);
  }

  // --- reading requests -----------------------------------------------------------------

  private sourceFd(): number {
    return this.setup.role === 'request' ? this.setup.fuseFd : this.setup.mailboxFd!;
  }

  private watchSource(on: boolean): void {
    if (on === this.sourceWatched || this.sourceClosed) return;
    this.sourceWatched = on;
    if (on) {
      // EXCLUSIVE: every request thread's descriptor sleeps on the one FUSE input queue; wake one.
      const events = this.setup.role === 'request' ? EPOLLIN | EPOLLEXCLUSIVE : EPOLLIN;
      epollCtl(this.epfd, EPOLL_CTL_ADD, this.sourceFd(), events, TOKEN_SOURCE);
      this.sourceReady = true;
    } else {
      epollCtl(this.epfd, EPOLL_CTL_DEL, this.sourceFd(), 0, 0);
    }
  }

  private closeSource(): void {
    this.watchSource(false);
    this.sourceClosed = true;
    this.sourceReady = false;
  }

  /** Takes requests while the source has them and a slot is free. */
  private pump(): void {
    if (this.setup.role === 'hiprio') drainEventFd(this.setup.mailboxFd!);
    while (this.freeCount > 0 && !this.sourceClosed) {
      const s = this.free[--this.freeCount]!;
      const n = this.setup.role === 'request' ? readvInto(this.setup.fuseFd, this.readIov[s]!, 2) : this.takeForget(s);
      if (n < 0) {
        this.free[this.freeCount++] = s;
        if (n === -EAGAIN) {
          this.sourceReady = false;
          break;
        }
        if (n === -EINTR || n === -ENOENT) continue;
        if (n !== -ENODEV) this.post({ kind: 'log', line: `reading /dev/fuse: errno ${-n}` });
        this.closeSource();
        break;
      }
      if (this.setup.role === 'request') {
        this.handleRequest(s, n);
        // One read per readiness: the descriptor is level-triggered, so epoll_wait reports it again
        // at once if more is queued, and an idle queue costs no readv that answers EAGAIN.
        this.sourceReady = false;
        break;
      }
      this.submitForget(s, n);
    }
    // Level-triggered: with no slot free, stop watching until one comes back.
    if (this.freeCount === 0) this.watchSource(false);
    if (this.queue.kickNeeded()) this.doorbell.ring();
  }

  private handleRequest(s: number, n: number): void {
    const view = this.slotViews[s]!;
    const bytes = this.slotBytes[s]!;
    if (n < fuse_in_header.size || view.getUint32(LEN_AT, true) !== n) {
      this.post({ kind: 'log', line: `kernel request of ${n} bytes with len ${n >= 4 ? view.getUint32(LEN_AT, true) : '?'}: dropped` });
      return this.release(s);
    }
    const opcode = view.getUint32(OPCODE_AT, true);
    this.opcodes[s] = opcode;
    this.arrived(s);
    if (!isRelayable(opcode)) {
      if (this.setup.trace) this.trace(`-> ${opcodeName(opcode)} unique ${view.getBigUint64(UNIQUE_AT, true)}: not relayed, ENOSYS`);
      this.replyError(s, ENOSYS);
      return this.finish(s, true);
    }
    if (this.setup.trace) this.trace(describeRequest(view, n, this.engine.translation));
    if (opcode === Opcode.INTERRUPT) {
      // Kept here, as Linux's virtio_fs driver keeps them: the request finishes normally.
      // QEMU 7.2's virtiofsd answers an INTERRUPT that comes after its request with
      // EAGAIN on a queue element that has no reply room, and crashes (SIGSEGV).
      return this.finish(s, false);
    }
    if (opcode === Opcode.FORGET || opcode === Opcode.BATCH_FORGET) {
      const head = Math.min(n, WRITE_HEAD);
      const rest = n > WRITE_HEAD ? n - WRITE_HEAD : 0;
      const base = this.slotBase[s]!;
      const ok = this.hiprio ? this.hiprio.send(base, head, base + DATA_AT, rest) : this.mailbox!.put(bytes, head, this.slotData[s]!, rest);
      if (!ok && !this.hiprio?.broken) this.post({ kind: 'log', line: `${opcodeName(opcode)}: the hiprio queue took nothing for 2 s; dropped` });
      return this.finish(s, !ok);
    }
    try {
      const space = this.engine.replySpace(opcode, view, fuse_in_header.size, READLINK_MAX, this.spaces[s]);
      // A reply with data needs the data area: move a request's spill-over (names) up behind its head.
      const r = this.readable;
      if (n <= WRITE_HEAD) setSegments(r, 0, n, 0, 0);
      else if (space.room.data === 0) setSegments(r, 0, WRITE_HEAD, DATA_AT, n - WRITE_HEAD);
      else if (n <= REQUEST_ROOM) {
        bytes.copyWithin(WRITE_HEAD, DATA_AT, DATA_AT + n - WRITE_HEAD);
        setSegments(r, 0, n, 0, 0);
      } else {
        throw new EngineFailure('EIO', `${opcodeName(opcode)}: request of ${n} bytes leaves no room for its reply's data`);
      }
      this.engine.translateRequest(opcode, view);
      this.uniqueLow[s] = view.getUint32(UNIQUE_AT, true);
      this.uniqueHigh[s] = view.getUint32(UNIQUE_AT + 4, true);
      const base = this.slotBase[s]!;
      toRegion(r, base, this.regionReadable);
      toRegion(this.engine.writableSegments(space), base, this.regionWritable);
      if (!this.queue.add(this.regionReadable, this.regionWritable, s)) {
        throw new EngineFailure('EIO', `${this.queue.name} has no free descriptors`);
      }
      this.advisor.submitted(s, n + space.room.data);
      if (this.timed[s] === UNTIMED && this.advisor.wantsTiming(s)) this.timed[s] = DEVICE_TIMED;
      this.submitted[s] = this.timed[s] !== UNTIMED ? this.now() : this.clock;
      this.atDevice[s] = 1;
      this.inFlight++;
    } catch (e) {
      this.failRequest(s, opcode, e);
    }
  }

  /**
   * A request arrived in slot `s`: timed from here (every one where a clock read is cheap, one in
   * timeEvery by lot where it is not), or started at the last reading (taken on waking or polling,
   * just before the read).
   */
  private arrived(s: number): void {
    const timed = this.setup.timeEvery <= 1 || this.drawSample();
    this.timed[s] = timed ? TIMED : UNTIMED;
    this.started[s] = timed ? this.now() : this.clock;
    this.advisor.arrived(this.started[s]!);
  }

  /** One in timeEvery, at random (xorshift32): no workload's period aliases with it. */
  private drawSample(): boolean {
    let x = this.sampleState;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.sampleState = x >>> 0;
    return this.sampleState % this.setup.timeEvery === 0;
  }

  /** The next FORGET record into slot `s`: its length, or -EAGAIN when the mailbox is empty. */
  private takeForget(s: number): number {
    const n = this.mailbox!.take(this.slotBytes[s]!);
    return n < 0 ? -EAGAIN : n;
  }

  private submitForget(s: number, n: number): void {
    this.opcodes[s] = this.slotViews[s]!.getUint32(OPCODE_AT, true);
    this.arrived(s);
    this.submitted[s] = this.started[s]!;
    const base = this.slotBase[s]!;
    setSegments(this.regionReadable, base, n, 0, 0);
    this.regionReadable.length = 2;
    try {
      if (!this.queue.add(this.regionReadable, NO_SEGMENTS, s)) throw new Error(`${this.queue.name} has no free descriptors`);
      this.atDevice[s] = 1;
      this.inFlight++;
      this.advisor.submitted(s, n);
    } catch (e) {
      this.post({ kind: 'log', line: `${opcodeName(this.opcodes[s]!)}: not sent: ${(e as Error).message}` });
      this.finish(s, true);
    }
  }

  // --- completions ----------------------------------------------------------------------

  private complete(): void {
    const q = this.queue;
    const before = this.inFlight;
    this.hiprio?.reclaim();
    do {
      q.drainUsed(this.onUsed, this.onProblem);
      if (q.brokenReason || this.hiprio?.broken) {
        const broken = this.broken!;
        this.post({ kind: 'log', line: broken });
        this.abort();
        this.exitReason = `device failed: ${broken}`;
        return;
      }
    } while (!this.setup.busyPoll && !q.enableCallbacks());
    Atomics.store(this.control, CONTROL_IN_FLIGHT, this.inFlight);
    // The idle gap is timed whatever the clock costs: polling for the next request saves a wake-up per request.
    if (this.inFlight === 0 && before > 0) this.advisor.idle(this.now());
  }

  private readonly onUsed = (s: number, usedLen: number): void => {
    const timed = this.timed[s] === TIMED;
    const usedAt = this.timed[s] !== UNTIMED ? this.now() : this.clock;
    if (this.leftDevice(s, (usedAt - this.submitted[s]!) * 1000, true)) return;
    if (this.setup.role === 'hiprio') return this.finish(s, false);
    const opcode = this.opcodes[s]!;
    const view = this.slotViews[s]!;
    let errno: number;
    try {
      errno = this.engine.judge(view, opcode, this.uniqueLow[s]!, this.uniqueHigh[s]!, usedLen, this.spaces[s]!);
    } catch (e) {
      this.failRequest(s, opcode, e);
      return;
    }
    const iov = this.replyIov[s]!;
    let count = 1;
    if (errno !== 0) {
      if (this.setup.trace) this.trace(`<- ${opcodeName(opcode)} unique ${view.getBigUint64(OUT_UNIQUE_AT, true)}: errno ${errno}`);
      iov.setLength(0, fuse_out_header.size);
    } else {
      const bodyAt = this.engine.bodyAt;
      const bodyLen = this.engine.bodyLen;
      if (this.setup.trace) this.trace(describeReply(opcode, view.getBigUint64(OUT_UNIQUE_AT, true), bodyLen));
      if (bodyAt === BODY_AT || bodyLen === 0) iov.setLength(0, fuse_out_header.size + bodyLen);
      else {
        iov.setLength(0, fuse_out_header.size);
        iov.setLength(1, bodyLen);
        count = 2;
      }
    }
    this.write(s, count);
    if (timed) {
      const submitted = this.submitted[s]!;
      this.stats.recordPhases(submitted - this.started[s]!, usedAt - submitted, this.now() - usedAt);
    }
    this.finish(s, errno !== 0);
  };

  // An entry with a token (a len beyond its chain) fails that request, logged by the engine naming
  // the opcode and the field; one without has broken the queue, logged by complete().
  private readonly onProblem = (problem: UsedRingProblem<number>): void => {
    const s = problem.token;
    if (s === undefined || this.leftDevice(s, 0, false)) return;
    if (this.setup.role === 'hiprio') return this.finish(s, true);
    const opcode = this.opcodes[s]!;
    const unique = (BigInt(this.uniqueHigh[s]!) << 32n) | BigInt(this.uniqueLow[s]!);
    this.failRequest(s, opcode, this.engine.usedLenFailure(opcode, unique, problem.reason));
  };

  // --- replies ----------------------------------------------------------------------------

  /** Answers the slot's request with an error (the client's errno) and frees the slot. */
  private failRequest(s: number, opcode: number, e: unknown): void {
    let errno = EIO;
    if (e instanceof EngineFailure) {
      if (!e.logged) this.post({ kind: 'log', line: e.message });
      errno = errnoNumber(e.errnoName);
    } else {
      this.post({ kind: 'log', line: `${opcodeName(opcode)} unique ${this.slotViews[s]!.getBigUint64(UNIQUE_AT, true)}: ${(e as Error).message}` });
    }
    if (this.setup.trace) this.trace(`<- ${opcodeName(opcode)}: failed here with errno ${errno}`);
    this.replyError(s, errno);
    this.finish(s, true);
  }

  /** An error reply built in the slot's reply header, unique copied from its request. */
  private replyError(s: number, errno: number): void {
    const view = this.slotViews[s]!;
    view.setUint32(OUT_LEN_AT, fuse_out_header.size, true);
    view.setInt32(OUT_ERROR_AT, -errno, true);
    view.setUint32(OUT_UNIQUE_AT, view.getUint32(UNIQUE_AT, true), true);
    view.setUint32(OUT_UNIQUE_AT + 4, view.getUint32(UNIQUE_AT + 4, true), true);
    this.replyIov[s]!.setLength(0, fuse_out_header.size);
    this.write(s, 1);
  }

  private write(s: number, count: number): void {
    const r = writevFrom(this.setup.fuseFd, this.replyIov[s]!, count);
    // ENOENT: the kernel gave up on the request (interrupted or aborted) meanwhile; ENODEV: unmounted.
    if (r < 0 && r !== -ENOENT && r !== -ENODEV) this.post({ kind: 'log', line: `writing to /dev/fuse: errno ${-r}` });
  }

  private finish(s: number, failed: boolean): void {
    if (this.timed[s] === TIMED) this.stats.record(this.opcodes[s]!, this.now() - this.started[s]!, failed);
    else this.stats.count(this.opcodes[s]!, failed);
    this.release(s);
  }

  private release(s: number): void {
    this.free[this.freeCount++] = s;
    if (!this.sourceWatched && !this.sourceClosed) this.watchSource(true);
  }

  /** The device is gone: every request in flight fails with EIO now, so no application waits on it. */
  private abort(): void {
    this.hiprio?.abort();
    this.queue.failAll('device failed', (s) => {
      if (this.leftDevice(s, 0, false)) return;
      if (this.setup.role === 'request') this.replyError(s, EIO);
      this.finish(s, true);
    });
    this.closeSource();
  }

  private trace(line: string): void {
    this.post({ kind: 'trace', line });
  }
}
