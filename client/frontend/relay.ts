/**
 * The local mount: this machine's own FUSE module makes the requests, exactly
 * as its virtio_fs driver would, and we carry them to the device and the
 * replies back. Node ids, file handles and uniques pass through unchanged;
 * only the architecture-dependent fields are rewritten. Requests are read from
 * /dev/fuse straight into device-visible slots and replies written to
 * /dev/fuse straight from them.
 */
import { errnoNumber, ErrnoError, isErrnoError, errnoName } from '../../ffi/errno.ts';
import { readv, writev } from '../../ffi/libc.ts';
import { sharedPoller } from '../../ffi/poller.ts';
import { FuseSession, type SessionOptions } from '../fuse/session.ts';
import { EngineFailure, isRelayable } from '../fuse/engine.ts';
import { DATA_AT, REPLY_AT, REQUEST_ROOM } from '../fuse/slot-layout.ts';
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
  opcodeName,
} from '../protocol/index.ts';
import { openTransport } from '../transport/open.ts';
import type { VirtioTransport } from '../transport/transport.ts';
import { VirtioFsDevice, fill, type DeviceOptions, type Slot } from '../virtio/virtio-fs-device.ts';
import { FuseMount } from './fuse-mount.ts';
import { OpStats, type OpcodeSummary } from './op-stats.ts';
import { describeRequest, describeReply } from './trace.ts';

/**
 * The first read segment: fuse_in_header + fuse_write_in. A WRITE's data then
 * lands page-aligned in the slot's data area, ready for the device's O_DIRECT.
 */
const HEAD = fuse_in_header.size + 40;


const NO_REPLY = new Set<number>([Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT]);
const EIO = errnoNumber('EIO');
const ENOSYS = errnoNumber('ENOSYS');

export interface RelayOptions extends DeviceOptions, Omit<SessionOptions, 'initFlags' | 'maxMinor' | 'maxReadahead'> {
  /** 'vhost-user:/path', or a transport already open. */
  transport: string | VirtioTransport;
  mountpoint: string;
  allowOther?: boolean;
  /** mount(8)'s generic flags (ro, noexec, noatime, suid, dev, ...); default nosuid,nodev. */
  mountFlags?: readonly string[];
  /** Called with one decoded line per request and per reply. */
  trace?: (line: string) => void;
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
  operations: OpcodeSummary[];
}

export class FuseRelay {
  /** Resolves with the reason once the mount is gone (unmounted, or the device died). */
  readonly closed: Promise<string>;
  private resolveClosed!: (reason: string) => void;
  private readonly stats = new OpStats();
  private readonly startedAt = new Date();
  private reading = false;
  private stopped = false;
  private readonly errorReply = new Uint8Array(fuse_out_header.size);
  private readonly readable = [0, 0, 0, 0];
  /** Per slot: where readv puts a request (head, then the page-aligned data area). */
  private readonly slotReadBuffers: Uint8Array[][] = [];
  private readonly log: (line: string) => void;

  private constructor(
    private readonly mount: FuseMount,
    private readonly device: VirtioFsDevice,
    readonly session: FuseSession,
    private readonly options: RelayOptions,
  ) {
    this.log = options.log ?? ((line) => console.error(`virtiofs-client: ${line}`));
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    device.onFailure((error) => this.teardown(`device failed: ${error.message}`));
  }

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
      const session = await FuseSession.open(device, {
        ...options,
        log,
        initFlags: kernelInit.flags & ~NOT_RELAYABLE,
        maxMinor: kernelInit.minor,
        maxReadahead: kernelInit.maxReadahead,
      });
      const relay = new FuseRelay(mount, device, session, options);
      relay.answerKernelInit(kernelInit);
      device.releaseSlot(slot);
      relay.startReading();
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
      inFlight: this.device.inFlight,
      operations: this.stats.summary(),
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

  // --- the relay loop ---------------------------------------------------------------

  private startReading(): void {
    if (this.reading || this.stopped) return;
    this.reading = true;
    sharedPoller().watch(this.mount.fd, 'readable', () => this.pump());
  }

  private stopReading(): void {
    if (!this.reading) return;
    this.reading = false;
    sharedPoller().unwatch(this.mount.fd);
  }

  /** Reads every request the kernel has queued, one slot each, until EAGAIN or no slot is free. */
  private pump(): void {
    while (!this.stopped) {
      const slot = this.device.tryAcquireSlot();
      if (!slot) {
        // Level-triggered poll: stop watching until a slot comes back.
        this.stopReading();
        this.device.onSlotReleased(() => this.startReading());
        return;
      }
      let n: number;
      try {
        n = readv(this.mount.fd, this.readBuffers(slot));
      } catch (e) {
        this.device.releaseSlot(slot);
        if (isErrnoError(e, 'ENODEV')) this.teardown('unmounted');
        else if (!isErrnoError(e, 'EINTR', 'ENOENT')) this.teardown(`reading /dev/fuse: ${(e as Error).message}`);
        return;
      }
      if (n < 0) {
        this.device.releaseSlot(slot);
        return;
      }
      void this.forward(slot, n);
    }
  }

  private readBuffers(slot: Slot): Uint8Array[] {
    return (this.slotReadBuffers[slot.index] ??= [
      slot.bytes.subarray(0, HEAD),
      slot.bytes.subarray(DATA_AT, DATA_AT + this.device.dataRoom),
    ]);
  }

  private async forward(slot: Slot, n: number): Promise<void> {
    const view = slot.view;
    const opcode = view.getUint32(4, true);
    const unique = view.getBigUint64(8, true);
    const started = performance.now();
    const engine = this.session.engine;
    let failed = true;
    try {
      if (n < fuse_in_header.size || view.getUint32(0, true) !== n) {
        this.log(`kernel request of ${n} bytes with len ${view.getUint32(0, true)}: dropped`);
        return;
      }
      if (!isRelayable(opcode)) {
        this.options.trace?.(`-> ${opcodeName(opcode)} unique ${unique}: not relayed, ENOSYS`);
        this.replyError(unique, ENOSYS);
        return;
      }
      this.options.trace?.(describeRequest(view, n, engine.translation));
      if (opcode === Opcode.INTERRUPT) {
        // Kept here, as Linux's virtio_fs driver keeps them: the request finishes normally.
        // QEMU 7.2's virtiofsd answers an INTERRUPT that comes after its request with
        // EAGAIN on a queue element that has no reply room, and crashes (SIGSEGV).
        this.options.trace?.(`   INTERRUPT unique ${unique}: not relayed (virtio-fs devices get no interrupts)`);
        failed = false;
        return;
      }
      const space = engine.replySpace(opcode, view, fuse_in_header.size);
      // A reply with data needs the data area: move a request's spill-over (names) up behind its head.
      // Scratch segment lists: submit copies them before it returns, so one pair serves every request.
      let readable: number[];
      if (n <= HEAD) readable = fill(this.readable, 0, n, 0, 0);
      else if (space.room.data === 0) readable = fill(this.readable, 0, HEAD, DATA_AT, n - HEAD);
      else if (n <= REQUEST_ROOM) {
        slot.bytes.copyWithin(HEAD, DATA_AT, DATA_AT + n - HEAD);
        readable = fill(this.readable, 0, n, 0, 0);
      } else {
        throw new EngineFailure('EIO', `${opcodeName(opcode)}: request of ${n} bytes leaves no room for its reply's data`);
      }
      engine.translateRequest(opcode, view, unique);
      if (NO_REPLY.has(opcode)) {
        await engine.sendHiprio(slot, opcode, readable);
        failed = false;
        return;
      }
      const judged = await engine.send(slot, opcode, unique, readable, space);
      const head = slot.bytes.subarray(REPLY_AT, REPLY_AT + fuse_out_header.size);
      if (judged.errno !== 0) {
        this.options.trace?.(`<- ${opcodeName(opcode)} unique ${unique}: ${errnoName(judged.errno)}`);
        this.write([head]);
        return;
      }
      this.options.trace?.(describeReply(opcode, unique, judged.bodyLen));
      this.write(judged.bodyLen > 0 ? [head, slot.bytes.subarray(judged.bodyAt, judged.bodyAt + judged.bodyLen)] : [head]);
      failed = false;
    } catch (e) {
      if (e instanceof EngineFailure) {
        if (!e.logged) this.log(e.message);
        if (!NO_REPLY.has(opcode)) this.replyError(unique, errnoNumber(e.errnoName));
      } else {
        this.log(`${opcodeName(opcode)} unique ${unique}: ${(e as Error).message}`);
        if (!NO_REPLY.has(opcode)) this.replyError(unique, EIO);
      }
    } finally {
      this.stats.record(opcode, performance.now() - started, failed);
      this.device.releaseSlot(slot);
    }
  }

  private replyError(unique: bigint, errno: number): void {
    fuse_out_header.encode(new DataView(this.errorReply.buffer), 0, { len: fuse_out_header.size, error: -errno, unique });
    this.write([this.errorReply]);
  }

  private write(parts: Uint8Array[]): void {
    try {
      writev(this.mount.fd, parts);
    } catch (e) {
      // ENOENT: the kernel gave up on the request (interrupted or aborted) meanwhile.
      if (!isErrnoError(e, 'ENOENT', 'ENODEV')) this.log(`writing to /dev/fuse: ${(e as Error).message}`);
    }
  }

  private teardown(reason: string): void {
    if (this.stopped) return;
    this.stopped = true;
    this.stopReading();
    if (reason !== 'unmounted') this.log(`${reason}: unmounting ${this.mount.mountpoint}`);
    // Next turn of the loop, so requests the device failed just now get their EIO replies first.
    // Then unmount (lazily if files are open) and close /dev/fuse: the kernel fails whatever is left.
    setImmediate(() => {
      try {
        this.mount.close();
      } catch (e) {
        this.log(`unmount ${this.mount.mountpoint}: ${(e as Error).message}`);
      }
      void this.session.close().finally(() => this.resolveClosed(reason));
    });
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
        const n = readv(fd, [slot.bytes.subarray(0, HEAD), slot.bytes.subarray(DATA_AT, DATA_AT + dataRoom)]);
        if (n < 0) return;
        poller.unwatch(fd);
        clearTimeout(timer);
        const bytes = new Uint8Array(n);
        bytes.set(slot.bytes.subarray(0, Math.min(n, HEAD)));
        if (n > HEAD) bytes.set(slot.bytes.subarray(DATA_AT, DATA_AT + n - HEAD), HEAD);
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

