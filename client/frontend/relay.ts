/**
 * The local mount: this machine's own FUSE module makes the requests, exactly
 * as its virtio_fs driver would, and we carry them to the device and the
 * replies back. Node ids, file handles and uniques pass through unchanged;
 * only the architecture-dependent fields are rewritten. Requests are read from
 * /dev/fuse straight into device-visible slots and replies written to
 * /dev/fuse straight from them.
 *
 * This thread mounts, relays FUSE_INIT, answers status and tears down. The requests themselves
 * never pass through it: each virtqueue is lent to a thread of its own (queue-thread.ts), every
 * request queue's thread with its own clone of the /dev/fuse descriptor, the hiprio queue's thread
 * fed FORGETs by the others.
 */
import type { Worker } from 'node:worker_threads';
import { errnoNumber, ErrnoError } from '../../ffi/errno.ts';
import { EventFd } from '../../ffi/event-fd.ts';
import { readv, writev } from '../../ffi/libc.ts';
import { sharedPoller } from '../../ffi/poller.ts';
import { startThread } from '../../ffi/thread.ts';
import { DEFAULT_TIMEOUT_MS, FuseSession, type SessionOptions } from '../fuse/session.ts';
import { DATA_AT, WRITE_HEAD } from '../fuse/slot-layout.ts';
import {
  FUSE_KERNEL_VERSION,
  InitFlag,
  NOT_RELAYABLE,
  Opcode,
  ProtocolError,
  decodeInitRequest,
  fuse_in_header,
  fuse_init_out,
  fuse_out_header,
} from '../protocol/index.ts';
import { openTransport } from '../transport/open.ts';
import { TransportError, type VirtioTransport } from '../transport/transport.ts';
import { HIPRIO_QUEUE, VirtioFsDevice, type DeviceOptions, type QueueLoan, type Slot } from '../virtio/virtio-fs-device.ts';
import { ForgetMailbox } from './forget-mailbox.ts';
import { FuseMount } from './fuse-mount.ts';
import { OpStats, type OpcodeSummary, type PhaseSummary } from './op-stats.ts';
import { measureClockReadUs, measureWakeUpUs, pollBudgetFor, timeEveryFor } from './machine-costs.ts';
import { ABORT, CONTROL_IN_FLIGHT, CONTROL_STOP, CONTROL_WORDS, FINISH, type QueueThreadMessage, type QueueThreadSetup } from './queue-thread.ts';

/** Slots the hiprio thread gets for FORGETs; the request queues share the rest. */
const HIPRIO_SLOTS = 2;
/** How long a stopping thread waits for the device to return its requests. */
const FINISH_TIMEOUT_MS = 5000;

export interface RelayOptions extends DeviceOptions, Omit<SessionOptions, 'initFlags' | 'maxMinor' | 'maxReadahead'> {
  /** 'vhost-user:/path', or a transport already open. */
  transport: string | VirtioTransport;
  mountpoint: string;
  allowOther?: boolean;
  /** mount(8)'s generic flags (ro, noexec, noatime, suid, dev, ...); default nosuid,nodev. */
  mountFlags?: readonly string[];
  /** Called with one decoded line per request and per reply. */
  trace?: (line: string) => void;
  /** Time one request in this many (default: machine-costs.ts decides from a measured clock read). */
  timeEvery?: number;
}

export interface RelayStatus {
  mountpoint: string;
  transport: string;
  pid: number;
  startedAt: string;
  negotiation: string[];
  archOutcome: string;
  wireArch: string;
  inFlight: number;
  /**
   * Per queue thread: the requests it carried (FORGETs count on the request queue that read them, and
   * on hiprio), and whether it waits on its queue's own completion signal (a PCI function's MSI-X
   * vector, a vhost-user call eventfd) or is woken by the main thread (INTx, polling).
   */
  queues?: { name: string; requests: number; ownSignal: boolean; onThreadOf?: string }[];
  /** How a PCI transport hears completions (msix, intx, polling); absent for vhost-user. */
  interrupts?: string;
  /** Mean time per relayed request inside the client, by phase (the relay only). */
  phases?: PhaseSummary;
  /**
   * How long the request threads poll before sleeping (us): --poll-us, or (`wakeUpUs` given) what a
   * wake-up measured at mount time (machine-costs.ts measureWakeUpUs).
   */
  polling?: { budgetUs: number; wakeUpUs?: number; busy?: boolean };
  /** One request in `every` is timed (phases, latencies): every one unless a clock read is slow here (machine-costs.ts). */
  timing?: { every: number; clockReadUs: number };
  operations: OpcodeSummary[];
}

/** A queue lent to its thread. */
interface QueueWorker {
  readonly loan: QueueLoan;
  /** The hiprio queue, when this (the only) request thread drives it too. */
  readonly hiprioLoan?: QueueLoan;
  readonly worker: Worker;
  readonly wake: EventFd;
  readonly control: Int32Array;
  readonly stats: OpStats;
  readonly role: 'request' | 'hiprio';
  exited: boolean;
  /** Requests the device still held when the thread exited. */
  leftInFlight: number;
}

export class FuseRelay {
  /** Resolves with the reason once the mount is gone (unmounted, or the device died). */
  readonly closed: Promise<string>;
  private resolveClosed!: (reason: string) => void;
  private readonly startedAt = new Date();
  private readonly workers: QueueWorker[] = [];
  private mailboxFd: EventFd | undefined;
  private stopping: string | undefined;
  private finishing = false;
  private readonly log: (line: string) => void;
  /** The request threads' poll budget (us), and the wake-up it was measured from (undefined: --poll-us). */
  private readonly pollBudgetUs: number;
  private readonly wakeUpUs: number | undefined;
  private readonly clockReadUs: number;
  private readonly timeEvery: number;

  private constructor(
    private readonly mount: FuseMount,
    private readonly device: VirtioFsDevice,
    readonly session: FuseSession,
    private readonly options: RelayOptions,
  ) {
    this.log = options.log ?? ((line) => console.error(`virtiofs-client: ${line}`));
    // Unless told, poll as long as a wake-up costs here (at least 50 us): ~200 us under TCG.
    this.wakeUpUs = options.pollUs === undefined && !options.busyPoll ? measureWakeUpUs() : undefined;
    this.pollBudgetUs = options.pollUs ?? (this.wakeUpUs === undefined ? 0 : pollBudgetFor(this.wakeUpUs));
    this.clockReadUs = measureClockReadUs();
    this.timeEvery = options.timeEvery ?? timeEveryFor(this.clockReadUs);
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    device.onFailure((error) => this.teardown(`device failed: ${error.message}`));
    process.once('exit', this.onProcessExit);
  }

  /** At exit Node joins every thread: one still serving sleeps in epoll_wait, so wake it to stop. */
  private readonly onProcessExit = (): void => {
    for (const w of this.workers) this.signal(w, ABORT);
  };

  /**
   * Connects to the device, mounts /dev/fuse on the mountpoint, and relays the
   * kernel's FUSE_INIT through the device's (so both sides agree on one
   * protocol minor and one capability set), then serves until unmounted.
   */
  static async mount(options: RelayOptions): Promise<FuseRelay> {
    const log = options.log ?? ((line: string) => console.error(`virtiofs-client: ${line}`));
    // Mount before touching the device, so a refused mount leaves the device unused
    // (a virtiofsd serves one connection). The kernel's INIT simply waits meanwhile.
    const source = typeof options.transport === 'string' ? options.transport : options.transport.description;
    const mount = FuseMount.open(options.mountpoint, { allowOther: options.allowOther, flags: options.mountFlags, source });
    let transport: VirtioTransport | undefined;
    let device: VirtioFsDevice | undefined;
    try {
      transport = typeof options.transport === 'string' ? openTransport(options.transport) : options.transport;
      device = VirtioFsDevice.open(transport, { ...options, log });
      const slot = device.tryAcquireSlot()!;
      const kernelInit = await readKernelInit(mount.fd, slot, device.dataRoom);
      device.releaseSlot(slot);
      const session = await FuseSession.open(device, {
        ...options,
        log,
        initFlags: kernelInit.flags & ~NOT_RELAYABLE,
        maxMinor: kernelInit.minor,
        maxReadahead: kernelInit.maxReadahead,
      });
      const relay = new FuseRelay(mount, device, session, options);
      // The threads first, then the kernel's INIT answer: its requests start right after it.
      relay.startThreads();
      relay.answerKernelInit(kernelInit);
      return relay;
    } catch (e) {
      mount.close();
      if (device) device.close();
      else transport?.close();
      throw e;
    }
  }

  get mountpoint(): string {
    return this.mount.mountpoint;
  }

  status(): RelayStatus {
    return {
      mountpoint: this.mount.mountpoint,
      transport: this.device.transport.description,
      pid: process.pid,
      startedAt: this.startedAt.toISOString(),
      negotiation: this.session.describe(),
      archOutcome: this.session.init.arch.outcome,
      wireArch: this.session.wireArch.name,
      inFlight: this.workers.reduce((n, w) => n + Atomics.load(w.control, CONTROL_IN_FLIGHT), 0),
      queues: this.workers.flatMap((w) => [
        { name: w.loan.name, requests: w.stats.total(), ownSignal: w.loan.signals.callFd !== undefined },
        ...(w.hiprioLoan ? [{ name: w.hiprioLoan.name, requests: w.stats.forgets(), ownSignal: false, onThreadOf: w.loan.name }] : []),
      ]),
      ...interruptsOf(this.device.transport),
      phases: OpStats.phases(this.workers.map((w) => w.stats)),
      timing: { every: this.timeEvery, clockReadUs: Math.round(this.clockReadUs * 1000) / 1000 },
      polling: { budgetUs: this.pollBudgetUs, ...(this.options.busyPoll ? { busy: true } : {}), ...(this.wakeUpUs !== undefined ? { wakeUpUs: Math.round(this.wakeUpUs * 10) / 10 } : {}) },
      operations: OpStats.summary(this.workers.filter((w) => w.role === 'request').map((w) => w.stats)),
    };
  }

  /** Unmounts and closes the device session. */
  async unmount(): Promise<void> {
    this.teardown('unmounted');
    await this.closed;
  }

  // --- INIT ----------------------------------------------------------------------

  private answerKernelInit(kernel: KernelInit): void {
    const init = this.session.init;
    const flags = init.flags & kernel.flags & ~NOT_RELAYABLE;
    const out = new Uint8Array(fuse_out_header.size + fuse_init_out.size);
    const view = new DataView(out.buffer);
    fuse_init_out.encode(view, fuse_out_header.size, {
      major: FUSE_KERNEL_VERSION,
      minor: init.minor,
      max_readahead: Math.min(kernel.maxReadahead, init.maxReadahead || kernel.maxReadahead),
      flags: Number(flags & 0xffff_ffffn) | (kernel.ext ? Number(InitFlag.INIT_EXT) : 0),
      flags2: kernel.ext ? Number(flags >> 32n) : 0,
      max_background: init.maxBackground,
      congestion_threshold: init.congestionThreshold,
      max_write: this.session.maxWrite,
      time_gran: init.timeGran,
      max_pages: Math.min(init.maxPages, Math.floor(this.device.dataRoom / 4096)),
      request_timeout: init.requestTimeout,
    });
    fuse_out_header.encode(view, 0, { len: out.length, error: 0, unique: kernel.unique });
    writev(this.mount.fd, [out]);
  }

  // --- the queue threads ------------------------------------------------------------

  /**
   * Lends each request queue to a thread of its own: request queue i reads the mount's descriptor
   * (queue 1) or a clone of it. With one request queue its thread drives hiprio too, putting
   * FORGETs there itself (hiprio-sender.ts); with several, a hiprio thread takes them from the
   * FORGET mailbox. The slots are shared out; one stays here for DESTROY at the end.
   */
  private startThreads(): void {
    const requestQueues = this.device.requestQueueCount;
    const free = this.device.freeSlots - 1;
    const perQueue = Math.floor((free - HIPRIO_SLOTS) / requestQueues);
    if (perQueue < 1) throw new ErrnoError('relay', errnoNumber('EINVAL'), `${free} slots cannot serve ${requestQueues} request queues`);
    const ownHiprio = requestQueues === 1;
    let mailbox: SharedArrayBuffer | undefined;
    if (!ownHiprio) {
      this.mailboxFd = new EventFd();
      mailbox = ForgetMailbox.create(WRITE_HEAD + this.device.dataRoom);
    }
    const translation = this.session.translation;
    for (let qi = ownHiprio ? HIPRIO_QUEUE + 1 : HIPRIO_QUEUE; qi <= requestQueues; qi++) {
      const role = qi === HIPRIO_QUEUE ? 'hiprio' : 'request';
      const wake = new EventFd();
      const control = new Int32Array(new SharedArrayBuffer(CONTROL_WORDS * 4));
      const stats = new OpStats();
      const loan = this.device.lendQueue(qi, role === 'hiprio' ? HIPRIO_SLOTS : perQueue, wake.fd);
      const hiprioLoan = ownHiprio ? this.device.lendQueue(HIPRIO_QUEUE, HIPRIO_SLOTS, wake.fd) : undefined;
      const setup: QueueThreadSetup = {
        role,
        loan,
        fuseFd: role === 'hiprio' ? -1 : qi === 1 ? this.mount.fd : this.mount.cloneFd(),
        wakeFd: wake.fd,
        control: control.buffer as SharedArrayBuffer,
        ...(mailbox ? { mailbox, mailboxFd: this.mailboxFd!.fd } : {}),
        ...(hiprioLoan ? { hiprioLoan } : {}),
        stats: stats.buffer,
        clientArch: translation.client.name,
        wireArch: translation.wire.name,
        busyPoll: this.options.busyPoll ?? false,
        pollUs: role === 'hiprio' ? 0 : this.pollBudgetUs,
        timeEvery: this.timeEvery,
        requestThreads: requestQueues,
        trace: this.options.trace !== undefined,
        finishTimeoutMs: FINISH_TIMEOUT_MS,
        // FORGETs have no application waiting on them.
        requestTimeoutMs: role === 'hiprio' ? 0 : (this.options.timeoutMs ?? DEFAULT_TIMEOUT_MS),
      };
      const worker = startThread(new URL('./queue-thread-main.ts', import.meta.url), setup, loan.name);
      const entry: QueueWorker = { loan, ...(hiprioLoan ? { hiprioLoan } : {}), worker, wake, control, stats, role, exited: false, leftInFlight: 0 };
      this.workers.push(entry);
      worker.on('message', (m: QueueThreadMessage) => this.onThreadMessage(entry, m));
      worker.on('error', (e) => {
        this.log(`${loan.name} thread failed: ${e.stack ?? e.message}`);
        this.onThreadExit(entry, `${loan.name} thread failed: ${e.message}`, -1);
      });
      worker.on('exit', () => this.onThreadExit(entry, 'exited', entry.leftInFlight));
    }
  }

  private onThreadMessage(entry: QueueWorker, m: QueueThreadMessage): void {
    if (m.kind === 'log') this.log(m.line);
    else if (m.kind === 'trace') this.options.trace?.(m.line);
    else {
      entry.leftInFlight = m.inFlight;
      // A thread that found its ring corrupt has found the device broken: the other threads abort,
      // and no FUSE_DESTROY goes down a ring the device has lost track of.
      if (m.broken !== undefined) this.device.fail(new TransportError(m.broken, 'EPROTO'));
      this.onThreadExit(entry, m.reason, m.inFlight);
    }
  }

  private onThreadExit(entry: QueueWorker, reason: string, inFlight: number): void {
    if (entry.exited) return;
    entry.exited = true;
    entry.leftInFlight = inFlight;
    // One request thread seeing the unmount (or failing) ends the mount for all.
    if (entry.role === 'request') this.teardown(reason === 'unmounted' || reason === 'exited' ? 'unmounted' : reason);
    const requestThreadsLeft = this.workers.some((w) => w.role === 'request' && !w.exited);
    const hiprio = this.workers.find((w) => w.role === 'hiprio');
    // The hiprio thread finishes last: request threads may still hand it FORGETs.
    if (!requestThreadsLeft && hiprio && !hiprio.exited) this.signal(hiprio, this.deviceFailed() ? ABORT : FINISH);
    if (this.workers.every((w) => w.exited)) this.finishTeardown();
  }

  private signal(w: QueueWorker, stop: number): void {
    if (w.exited) return;
    Atomics.store(w.control, CONTROL_STOP, Math.max(Atomics.load(w.control, CONTROL_STOP), stop));
    w.wake.signal();
  }

  private deviceFailed(): boolean {
    return this.device.failed !== undefined;
  }

  private teardown(reason: string): void {
    if (this.stopping !== undefined) return;
    this.stopping = reason;
    if (reason !== 'unmounted') this.log(`${reason}: unmounting ${this.mount.mountpoint}`);
    // Unmount first (lazily if files are open) with the descriptors still open: the request
    // threads answer what they hold, see ENODEV and stop; then the descriptors close.
    try {
      this.mount.unmount();
    } catch (e) {
      this.log(`unmount ${this.mount.mountpoint}: ${(e as Error).message}`);
    }
    const stop = this.deviceFailed() ? ABORT : FINISH;
    for (const w of this.workers) if (w.role === 'request') this.signal(w, stop);
    if (this.workers.length === 0 || this.workers.every((w) => w.exited)) this.finishTeardown();
  }

  /** Every thread has stopped: take the queues back, close the descriptors, end the device session. */
  private finishTeardown(): void {
    if (this.finishing) return;
    this.finishing = true;
    let quiet = !this.deviceFailed();
    for (const w of this.workers) {
      w.wake.close();
      if (!quiet) continue;
      for (const loan of w.hiprioLoan ? [w.loan, w.hiprioLoan] : [w.loan]) {
        try {
          this.device.reclaimQueue(loan);
        } catch (e) {
          this.log(`${loan.name}: ${(e as Error).message}; not sending DESTROY`);
          quiet = false;
        }
      }
    }
    this.mailboxFd?.close();
    try {
      this.mount.close();
    } catch (e) {
      this.log(`unmount ${this.mount.mountpoint}: ${(e as Error).message}`);
    }
    process.off('exit', this.onProcessExit);
    const reason = this.stopping ?? 'unmounted';
    const done = quiet ? this.session.close() : Promise.resolve(this.device.close());
    void done.finally(() => this.resolveClosed(reason));
  }
}

interface KernelInit {
  unique: bigint;
  minor: number;
  maxReadahead: number;
  flags: bigint;
  /** The kernel sent the 64-byte form with FUSE_INIT_EXT. */
  ext: boolean;
}

/** Waits for the kernel's FUSE_INIT on a new mount and reads it (either size). */
function readKernelInit(fd: number, slot: Slot, dataRoom: number): Promise<KernelInit> {
  return new Promise((resolve, reject) => {
    const poller = sharedPoller();
    const timer = setTimeout(() => {
      poller.unwatch(fd);
      reject(new ErrnoError('read', errnoNumber('ETIMEDOUT'), 'no FUSE_INIT from the kernel after mounting'));
    }, 10_000);
    poller.watch(fd, 'readable', () => {
      try {
        const n = readv(fd, [slot.bytes.subarray(0, WRITE_HEAD), slot.bytes.subarray(DATA_AT, DATA_AT + dataRoom)]);
        if (n < 0) return;
        poller.unwatch(fd);
        clearTimeout(timer);
        const bytes = new Uint8Array(n);
        bytes.set(slot.bytes.subarray(0, Math.min(n, WRITE_HEAD)));
        if (n > WRITE_HEAD) bytes.set(slot.bytes.subarray(DATA_AT, DATA_AT + n - WRITE_HEAD), WRITE_HEAD);
        const view = new DataView(bytes.buffer);
        const header = fuse_in_header.decode(view);
        if (header.opcode !== Opcode.INIT) throw new ProtocolError(header.opcode, 'opcode', 'the kernel did not start with FUSE_INIT');
        const init = decodeInitRequest(view, fuse_in_header.size, n - fuse_in_header.size);
        if (init.major !== FUSE_KERNEL_VERSION) throw new ProtocolError(Opcode.INIT, 'major', `kernel speaks FUSE ${init.major}`);
        resolve({
          unique: header.unique,
          minor: init.minor,
          maxReadahead: init.max_readahead,
          flags: init.allFlags,
          ext: (init.allFlags & InitFlag.INIT_EXT) !== 0n,
        });
      } catch (e) {
        poller.unwatch(fd);
        clearTimeout(timer);
        reject(e);
      }
    });
  });
}

/** A PCI transport's interrupt mode (VirtioPciTransport.interruptMode), for status. */
function interruptsOf(transport: object): { interrupts?: string } {
  const mode = (transport as { interruptMode?: unknown }).interruptMode;
  return typeof mode === 'string' ? { interrupts: mode } : {};
}
