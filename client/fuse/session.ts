/**
 * A FUSE session with a virtio-fs device: FUSE_INIT and the architecture
 * negotiation, unique ids, encoding each request into a device slot,
 * translating its architecture-dependent fields, checking the reply, and
 * turning device errors into Node-style errors. One request in, one reply out;
 * what the requests mean is the caller's business.
 */
import { errnoToNodeCode, hostArch, type Architecture } from '../arch/index.ts';
import { ErrnoError, errnoNumber } from '../../ffi/errno.ts';
import {
  FUSE_ROOT_ID,
  InitFlag,
  Opcode,
  ProtocolError,
  decodeInitReply,
  decodeReplyBody,
  encodeRequest,
  fuse_in_header,
  initFlagNames,
  initRequest,
  type InitRequestOptions,
  type InitResult,
  type ReplyBody,
  type RequestBody,
  type SupportedOpcode,
} from '../protocol/index.ts';
import { fill, type Slot, type VirtioFsDevice } from '../virtio/virtio-fs-device.ts';
import { EngineFailure, RequestEngine, type Judged, type ReplySpace } from './engine.ts';
import { DATA_AT, REQUEST_AT, REQUEST_ROOM } from './slot-layout.ts';
import { archOffer, describeArchMode, wireEncoding, type ArchMode } from './arch-mode.ts';
import { WireTranslation } from './wire-translation.ts';

/** What we ask the device for in FUSE_INIT. */
export const DEFAULT_INIT_FLAGS =
  InitFlag.ASYNC_READ |
  InitFlag.POSIX_LOCKS |
  InitFlag.ATOMIC_O_TRUNC |
  InitFlag.EXPORT_SUPPORT |
  InitFlag.BIG_WRITES |
  InitFlag.DONT_MASK |
  InitFlag.FLOCK_LOCKS |
  InitFlag.DO_READDIRPLUS |
  InitFlag.READDIRPLUS_AUTO |
  InitFlag.ASYNC_DIO |
  InitFlag.PARALLEL_DIROPS |
  InitFlag.MAX_PAGES |
  InitFlag.CACHE_SYMLINKS |
  InitFlag.SETXATTR_EXT;

export interface SessionOptions {
  archMode?: ArchMode;
  /** The encoding the caller's values are in; default this machine's. */
  clientArch?: Architecture;
  /** Capabilities to ask for; default DEFAULT_INIT_FLAGS. */
  initFlags?: bigint;
  /** Newest FUSE minor to offer; default 45 (a relay offers the local kernel's). */
  maxMinor?: number;
  maxReadahead?: number;
  /** A request unanswered this long gets FUSE_INTERRUPT, and fails with ETIMEDOUT after as long again. */
  timeoutMs?: number;
  /** Credentials stamped on every request; default this process's. */
  uid?: number;
  gid?: number;
  pid?: number;
  log?: (line: string) => void;
}

export interface CallOptions {
  /** FORGET/BATCH_FORGET/INTERRUPT: hiprio queue, no reply. */
  hiprio?: boolean;
  /** Text for error messages: the name or path involved. */
  detail?: string;
}

/** A checked reply, valid only inside the callback that receives it (its bytes are the device's buffer). */
export interface Reply {
  body: ReplyBody;
  /** The slot's bytes: ReplyBody 'bytes' offsets and bodyAt index into this. */
  bytes: Uint8Array;
  view: DataView;
  bodyAt: number;
  bodyLen: number;
}

const EIO = errnoNumber('EIO');
const EMPTY: ReplyBody = { kind: 'empty' };

/** How long a request may wait for the device before it fails (the client API and the relay alike). */
export const DEFAULT_TIMEOUT_MS = 60_000;

export class FuseSession {
  /** Most data bytes per READ/WRITE request. */
  readonly maxWrite: number;
  readonly maxRead: number;
  /** The request engine every request of this session goes through. */
  readonly engine: RequestEngine;
  private uniqueCounter = 0;
  private closed = false;
  private readonly readable = [0, 0, 0, 0];

  private constructor(
    readonly device: VirtioFsDevice,
    readonly init: InitResult,
    readonly archMode: ArchMode,
    readonly clientArch: Architecture,
    readonly wireArchReason: string,
    /** How architecture-dependent fields are rewritten between client and wire encodings. */
    translation: WireTranslation,
    private readonly options: Required<Pick<SessionOptions, 'timeoutMs' | 'uid' | 'gid' | 'pid'>>,
    private readonly log: (line: string) => void,
  ) {
    this.engine = new RequestEngine({ dataRoom: device.dataRoom, translation, log, device });
    const pageBytes = init.maxPages * 4096;
    this.maxWrite = Math.min(init.maxWrite, pageBytes, device.dataRoom);
    this.maxRead = Math.min(pageBytes, device.dataRoom);
  }

  /** Sends FUSE_INIT and settles the architecture encoding. */
  static async open(device: VirtioFsDevice, options: SessionOptions = {}): Promise<FuseSession> {
    const log = options.log ?? ((line: string) => console.error(`virtiofs-client: ${line}`));
    const clientArch = options.clientArch ?? hostArch();
    const archMode = options.archMode ?? { kind: 'auto' };
    const initOptions: InitRequestOptions = {
      minor: options.maxMinor,
      maxReadahead: options.maxReadahead ?? 128 * 1024,
      flags: options.initFlags ?? DEFAULT_INIT_FLAGS,
      arch: archOffer(archMode, clientArch),
    };
    const settings = {
      timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      uid: options.uid ?? process.getuid?.() ?? 0,
      gid: options.gid ?? process.getgid?.() ?? 0,
      pid: options.pid ?? process.pid,
    };
    // INIT carries no architecture-dependent field: send it before the encoding is known.
    const bootstrap = new FuseSession(device, provisionalInit, archMode, clientArch, '', new WireTranslation(clientArch, clientArch, log), settings, log);
    const init = await bootstrap.call('INIT', 0n, { arg: initRequest(initOptions) }, {}, (r) =>
      decodeInitReply(r.view, r.bodyAt, r.bodyLen, initOptions),
    );
    const { wire, reason } = wireEncoding(archMode, clientArch, init.arch.outcome, init.arch.deviceIndicator);
    const session = new FuseSession(device, init, archMode, clientArch, reason, new WireTranslation(clientArch, wire, log), settings, log);
    session.uniqueCounter = bootstrap.uniqueCounter;
    return session;
  }

  /** How architecture-dependent fields are rewritten between client and wire encodings (the engine's). */
  get translation(): WireTranslation {
    return this.engine.translation;
  }

  /** The encoding architecture-dependent values travel in. */
  get wireArch(): Architecture {
    return this.translation.wire;
  }

  /** One line per fact, for people: what INIT settled. */
  describe(): string[] {
    const i = this.init;
    return [
      `FUSE ${i.major}.${i.minor} (device ${i.major}.${i.deviceMinor})`,
      `max_write ${i.maxWrite}, max_pages ${i.maxPages}, max_readahead ${i.maxReadahead}, time_gran ${i.timeGran} ns`,
      `flags ${initFlagNames(i.flags).join(' ')}`,
      `arch mode ${describeArchMode(this.archMode)}; device answer ${i.arch.outcome}` +
        (i.arch.deviceIndicator ? ` (device says it is indicator ${i.arch.deviceIndicator})` : ''),
      `wire encoding ${this.wireArch.name}: ${this.wireArchReason}`,
    ];
  }

  /**
   * Sends one request and hands the checked reply to `decode` while the
   * reply bytes are still in the device buffer (so data is copied at most
   * once). Device errors reject with ErrnoError in the client's encoding;
   * malformed replies with EIO after a log line naming opcode and field.
   */
  async call<T>(
    opcode: SupportedOpcode,
    nodeid: bigint,
    body: RequestBody,
    options: CallOptions,
    decode: (reply: Reply) => T,
  ): Promise<T> {
    const syscall = opcode.toLowerCase();
    if (this.closed) throw new ErrnoError(syscall, errnoNumber('ENOTCONN'), 'session closed');
    const slot = await this.device.acquireSlot();
    let owned = true;
    const op = Opcode[opcode];
    try {
      const unique = this.nextUnique();
      // Data (WRITE, SETXATTR, BATCH_FORGET payloads) goes to the slot's page-aligned data area.
      const data = body.data;
      if (data && data.length > this.device.dataRoom) throw new RangeError(`${opcode}: ${data.length} data bytes, more than ${this.device.dataRoom}`);
      const head = new DataView(slot.bytes.buffer, slot.bytes.byteOffset + REQUEST_AT, REQUEST_ROOM);
      const { written } = encodeRequest(head, 0, opcode, this.header(unique, nodeid), { ...body, data: undefined, dataLength: data?.length });
      if (data) slot.bytes.set(data, DATA_AT);
      this.engine.translateRequest(op, slot.view);
      // Scratch segment list: submit copies it before it returns, so one serves every request.
      const readable = fill(this.readable, REQUEST_AT, written, DATA_AT, data?.length ?? 0);
      if (options.hiprio) {
        await this.engine.sendHiprio(slot, op, readable);
        return undefined as T;
      }
      const space = this.engine.replySpace(op, slot.view, REQUEST_AT + fuse_in_header.size);
      const judged = await this.sendWithTimeout(slot, opcode, unique, readable, space, () => (owned = false));
      if (judged.errno !== 0) throw new ErrnoError(syscall, judged.errno, options.detail, errnoToNodeCode(judged.errno, this.clientArch));
      const { bodyAt, bodyLen } = judged;
      const reply = opcode === 'INIT' ? EMPTY : decodeReplyBody(op, slot.view, bodyAt, bodyLen, { requestedSize: space.requested });
      return decode({ body: reply, bytes: slot.bytes, view: slot.view, bodyAt, bodyLen });
    } catch (e) {
      if (e instanceof EngineFailure) {
        if (!e.logged) this.log(e.message);
        throw new ErrnoError(syscall, errnoNumber(e.errnoName), e.message);
      }
      // What only the caller's decoding can judge (FUSE_INIT's reply against what INIT asked for).
      if (e instanceof ProtocolError) {
        this.log(`malformed reply: ${e.message}; failing the request with EIO`);
        throw new ErrnoError(syscall, EIO, `malformed reply: ${e.field}: ${e.reason}`);
      }
      throw e;
    } finally {
      if (owned) this.device.releaseSlot(slot);
    }
  }

  /** Tells the device to drop `nlookup` references to `nodeid` (no reply). */
  forget(nodeid: bigint, nlookup: bigint): Promise<void> {
    return this.call('FORGET', nodeid, { arg: { nlookup } }, { hiprio: true }, () => undefined);
  }

  /** Sends FUSE_DESTROY (best effort) and closes the device. */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.device.failed) await this.call('DESTROY', FUSE_ROOT_ID, {}, {}, () => undefined);
    } catch (e) {
      this.log(`DESTROY: ${(e as Error).message}`);
    } finally {
      this.closed = true;
      this.device.close();
    }
  }

  private nextUnique(): bigint {
    // Even numbers, as the kernel does: the low bit is left for interrupt-style tagging.
    this.uniqueCounter += 2;
    return BigInt(this.uniqueCounter);
  }

  private header(unique: bigint, nodeid: bigint) {
    return { unique, nodeid, uid: this.options.uid, gid: this.options.gid, pid: this.options.pid };
  }

  /** engine.send, with FUSE_INTERRUPT after timeoutMs and ETIMEDOUT (the slot abandoned) after as long again. */
  private sendWithTimeout(slot: Slot, opcode: SupportedOpcode, unique: bigint, readable: number[], space: ReplySpace, onAbandon: () => void): Promise<Judged> {
    const result = this.engine.send(slot, Opcode[opcode], unique, readable, space);
    const timeout = this.options.timeoutMs;
    let interrupted = false;
    const timer = setInterval(() => {
      if (!interrupted) {
        interrupted = true;
        this.log(`${opcode} unique ${unique}: no reply after ${timeout} ms, sending FUSE_INTERRUPT`);
        this.interrupt(unique);
        return;
      }
      onAbandon();
      this.device.abandon(slot, new ErrnoError(opcode.toLowerCase(), errnoNumber('ETIMEDOUT'), `no reply from the device in ${2 * timeout} ms`));
    }, timeout);
    timer.unref();
    return result.finally(() => clearInterval(timer));
  }

  private interrupt(unique: bigint): void {
    void this.call('INTERRUPT', 0n, { arg: { unique } }, { hiprio: true }, () => undefined).catch((e: Error) =>
      this.log(`INTERRUPT ${unique}: ${e.message}`),
    );
  }
}

/** Stand-in limits while INIT itself is in flight. */
const provisionalInit: InitResult = {
  major: 7,
  minor: 31,
  deviceMinor: 31,
  maxReadahead: 0,
  flags: 0n,
  maxBackground: 0,
  congestionThreshold: 0,
  maxWrite: 4096,
  timeGran: 1,
  maxPages: 1,
  mapAlignment: 0,
  maxStackDepth: 0,
  requestTimeout: 0,
  arch: { outcome: 'legacy', deviceIndicator: 0 },
};

