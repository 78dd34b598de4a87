/**
 * The virtio-fs device model (virtio spec 5.11): what a device does with the
 * chains its queues deliver. Queue 0 (hiprio) carries FORGET, BATCH_FORGET
 * and INTERRUPT, which get no reply; the request queues carry everything
 * else, each chain one FUSE request (device-readable: fuse_in_header and
 * arguments) and room for its reply (device-writable: fuse_out_header and
 * body).
 *
 * Each request queue is served on a thread of its own (queue-worker.ts),
 * which forwards its requests to the backend through the request engine
 * itself. This thread serves hiprio, and answers what the threads hand it:
 * FUSE_INIT (negotiation.ts decides the architecture answer; then the
 * threads get the translation and their share of the backend's request
 * queue) and FORGETs that came on a request queue (sent on the backend's
 * hiprio queue).
 */
import type { Architecture } from '../../client/arch/index.ts';
import type { WireTranslation } from '../../client/fuse/wire-translation.ts';
import { FUSE_KERNEL_VERSION, Opcode, ProtocolError, fuse_in_header, fuse_init_out, fuse_out_header, opcodeName } from '../../client/protocol/index.ts';
import { EngineFailure } from '../../client/fuse/engine.ts';
import { DEFAULT_POLL_US } from '../../client/virtio/virtio-fs-device.ts';
import { BackendRelay, type FrontendRequest } from './backend-relay.ts';
import type { Chain } from './device-ring.ts';
import { decideArch, initReply, majorOnlyReply, readClientInit, translationFor, type ArchAnswer } from './negotiation.ts';
import type { WorkerMessage } from './queue-worker.ts';
import type { DeviceModel, QueueThread, RunningQueue } from './vhost-user-backend.ts';
import { WorkerHandle } from './worker-handle.ts';
import { VirtiofsError } from '../../ffi/errors.ts';

export const HIPRIO_QUEUE = 0;

export interface FsDeviceOptions {
  /** The device's own encoding: the one its backend interprets. */
  arch: Architecture;
  /** What to answer a client that sends FUSE_ARCH_INDICATOR. */
  answer: ArchAnswer;
  /** Request queues offered (the frontend may use fewer); all go to the one backend. */
  requestQueues: number;
  log: (line: string) => void;
  trace?: (line: string) => void;
  /** Serves the fileattr ioctls itself on this directory (the backend's shared directory): fileattr.ts. */
  fileattrDir?: string;
  /** Test hook (--stall-lookup): a LOOKUP of this name holds its queue's thread for `ms`. */
  stall?: { name: string; ms: number };
  /** How long a request queue's thread polls for the backend's reply before sleeping (us; 0: never). */
  pollUs?: number;
}

/** A chain that does not hold a well-formed request; `unique` when the header could be read. */
class BadRequest extends VirtiofsError {
  readonly code = 'EPROTO';
  constructor(
    message: string,
    readonly unique?: bigint,
  ) {
    super(message);
  }
}

type State = 'waiting-for-init' | 'initialising' | 'ready' | 'destroyed';

export class ReferenceFsDevice implements DeviceModel {
  readonly queueCount: number;
  private state: State = 'waiting-for-init';
  /** Set by INIT: how values are rewritten between the client and the device. */
  private translation: WireTranslation | undefined;
  private readonly log: (line: string) => void;
  /** What the arch negotiation settled, for logs and tests. */
  negotiated: string | undefined;
  /** One thread per request queue offered, started when its queue first starts. */
  private readonly workers: WorkerHandle[];
  private readonly onProcessExit = (): void => {
    for (const w of this.workers) void w.exit();
  };

  constructor(
    private readonly backend: BackendRelay,
    private readonly options: FsDeviceOptions,
  ) {
    this.queueCount = 1 + options.requestQueues;
    this.log = options.log;
    this.workers = Array.from(
      { length: options.requestQueues },
      (_, member) =>
        new WorkerHandle(member, {
          ownArch: options.arch.name,
          trace: options.trace !== undefined,
          fileattrDir: options.fileattrDir,
          stall: options.stall,
          pollUs: options.pollUs ?? DEFAULT_POLL_US,
          log: options.log,
          onMessage: (handle, message) => this.onWorkerMessage(handle, message),
        }),
    );
    // The backend gone: the threads fail what they have in flight, and every later request.
    backend.onFailure(() => backend.breakShare());
    // Node joins threads at exit: one asleep in epoll_wait is told to stop.
    process.once('exit', this.onProcessExit);
  }

  queueStarted(queue: RunningQueue): void {
    this.options.trace?.(`${queue.name} started`);
  }

  queueStopped(queue: RunningQueue): void {
    if (queue.inFlight > 0) this.log(`${queue.name} stopped with ${queue.inFlight} request(s) in flight: their replies are dropped`);
  }

  /** Request queue i is served by its own thread; hiprio by this one. */
  queueThread(index: number, broken: (lastAvail: number) => void): QueueThread | undefined {
    const worker = this.workers[index - 1];
    if (worker) worker.broken = broken;
    return worker;
  }

  /** Takes every available chain (hiprio: the request queues have threads of their own). */
  queueKicked(queue: RunningQueue): void {
    do {
      for (let popped = queue.pop(); popped; popped = queue.pop()) {
        if (!popped.ok) {
          // Nowhere trustworthy to write an error to: return the chain empty (the frontend sees no reply: EIO).
          this.log(`${queue.name}: ${popped.reason}; returned with nothing written`);
          queue.complete(popped.head, 0);
        } else {
          void this.hiprio(queue, popped.chain);
        }
      }
    } while (queue.armKick());
  }

  /**
   * Ends the backend session (the frontend is gone): the threads stop once the backend has
   * returned their requests, the request queue comes back, DESTROY goes down it (unless the
   * frontend's went through already).
   */
  async close(): Promise<void> {
    this.state = 'destroyed';
    const left = await Promise.all(this.workers.map((w) => w.exit()));
    process.off('exit', this.onProcessExit);
    const served = this.workers.filter((w) => w.served > 0);
    if (served.length > 0) {
      const each = served.map((w) => `${w.name} ${w.served} requests (${w.routed} replies handed over by another thread)`);
      this.log(`served on their own threads: ${each.join(', ')}`);
    }
    this.backend.reclaimRequestQueue(left.every((n) => n === 0));
    for (const w of this.workers) w.close();
    await this.backend.close();
  }

  // --- the request queues' threads ------------------------------------------------------

  private onWorkerMessage(handle: WorkerHandle, m: WorkerMessage): void {
    switch (m.kind) {
      case 'log':
        return this.log(m.line);
      case 'trace':
        return this.options.trace?.(m.line);
      case 'broken':
        return handle.broken?.(m.lastAvail);
      case 'destroyed':
        this.backend.destroyed = true;
        return;
      case 'delegate':
        if (m.opcode === Opcode.INIT) void this.answerInit(handle, m.token, m.bytes, m.writableBytes);
        else void this.forget(m.bytes);
        return;
      case 'exit':
        return;
    }
  }

  /** A FORGET that came on a request queue: sent on the backend's hiprio queue (nothing comes back). */
  private async forget(bytes: Uint8Array): Promise<void> {
    // Before INIT there is no backend session to forget anything in.
    if (this.state !== 'ready') return;
    const request = requestOf(bytes);
    try {
      await this.backend.forwardNoReply(request);
    } catch (error) {
      this.log(`${opcodeName(request.opcode)} unique ${request.unique}: ${(error as Error).message}`);
    }
  }

  // --- hiprio ------------------------------------------------------------------------

  private async hiprio(queue: RunningQueue, chain: Chain): Promise<void> {
    try {
      const request = this.frontendRequest(queue, chain);
      if (request.opcode === Opcode.INTERRUPT) {
        // Not forwarded: QEMU 7.2's virtiofsd answers an INTERRUPT whose request already
        // finished with EAGAIN on a chain that has no room for it, and crashes. The request
        // itself finishes normally, as on Linux's virtio_fs, which never sends INTERRUPT.
        this.options.trace?.(`-> INTERRUPT unique ${request.unique}: acknowledged, not forwarded`);
      } else if (request.opcode === Opcode.FORGET || request.opcode === Opcode.BATCH_FORGET) {
        // Before INIT there is no backend session to forget anything in.
        if (this.state === 'ready') await this.backend.forwardNoReply(request);
      } else {
        this.log(`hiprio: ${opcodeName(request.opcode)} unique ${request.unique} does not belong on hiprio: dropped`);
      }
    } catch (error) {
      this.log(`hiprio: ${(error as Error).message}`);
    }
    queue.complete(chain.head, 0);
  }

  // --- FUSE_INIT -------------------------------------------------------------------

  /** INIT, handed over by a request queue's thread: the answer goes back to it to write. */
  private async answerInit(handle: WorkerHandle, token: number, bytes: Uint8Array, writableBytes: number): Promise<void> {
    const unique = new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(fuse_in_header.offsetOf('unique'), true);
    try {
      handle.answer({ kind: 'answer', token, reply: await this.init(bytes, writableBytes) });
    } catch (error) {
      if (!(error instanceof EngineFailure || error instanceof ProtocolError)) {
        this.log(`INIT unique ${unique}: ${(error as Error).stack ?? error}`);
      } else if (!(error instanceof EngineFailure && error.logged)) {
        this.log(`INIT unique ${unique}: ${error.message}`);
      }
      handle.answer({ kind: 'answer', token, errno: error instanceof EngineFailure ? error.errnoName : 'EIO' });
    }
  }

  /**
   * Answers the client's INIT (`bytes`: the whole request). Once the backend's INIT settled the
   * terms, every request queue's thread gets the translation and its share of the backend's
   * request queue, before the answer goes out: the client's next requests find them ready.
   */
  private async init(bytes: Uint8Array, writableBytes: number): Promise<Uint8Array> {
    const len = bytes.length;
    const unique = new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(fuse_in_header.offsetOf('unique'), true);
    if (this.state !== 'waiting-for-init') throw new EngineFailure('EIO', `INIT while ${this.state}`);
    const client = readClientInit(new DataView(bytes.buffer, bytes.byteOffset), fuse_in_header.size, len - fuse_in_header.size);
    const replyBytes = fuse_out_header.size + fuse_init_out.size;
    if (writableBytes < replyBytes) throw new EngineFailure('EIO', `INIT: ${writableBytes} writable bytes, fuse_init_out needs ${replyBytes}`);
    if (client.major < FUSE_KERNEL_VERSION) throw new EngineFailure('EIO', `INIT: client speaks FUSE ${client.major}.${client.minor}`);
    // It will send another INIT in our major.
    if (client.major > FUSE_KERNEL_VERSION) return initBytes(unique, majorOnlyReply());
    const own = this.options.arch;
    this.state = 'initialising';
    let terms;
    let parts;
    try {
      terms = await this.backend.init(client, own);
      parts = this.backend.lendRequestQueue(this.workers.length, this.workers.map((w) => w.wake.fd));
    } catch (error) {
      this.state = 'waiting-for-init';
      throw new EngineFailure('EIO', `backend INIT failed: ${(error as Error).message}`);
    }
    const decision = decideArch(this.options.answer, client, own, terms.init.minor);
    this.translation = translationFor(decision, own, this.log);
    this.backend.useTranslation(this.translation);
    this.negotiated = decision.outcome;
    this.log(`INIT: FUSE 7.${terms.init.minor}; ${decision.reason}`);
    for (const [m, w] of this.workers.entries()) w.ready({ kind: 'ready', clientArch: this.translation.client.name, backend: parts[m]! });
    this.state = 'ready';
    return initBytes(unique, initReply(client, terms, decision, own));
  }

  /** The request's header, checked against the chain: len must be exactly the readable bytes. */
  private frontendRequest(queue: RunningQueue, chain: Chain): FrontendRequest {
    if (chain.readableBytes < fuse_in_header.size) throw new BadRequest(`${chain.readableBytes} readable bytes, fuse_in_header needs ${fuse_in_header.size}`);
    const head = new Uint8Array(fuse_in_header.size);
    queue.read(chain, 0, head);
    const h = fuse_in_header.decode(new DataView(head.buffer));
    if (h.len !== chain.readableBytes) {
      throw new BadRequest(`${opcodeName(h.opcode)} unique ${h.unique} says len ${h.len}, the chain has ${chain.readableBytes} readable bytes`, h.unique);
    }
    return {
      opcode: h.opcode,
      unique: h.unique,
      len: h.len,
      replyRoom: chain.writableBytes,
      read: (from, into) => queue.read(chain, from, into),
    };
  }
}

/** fuse_out_header + fuse_init_out. */
function initBytes(unique: bigint, out: Parameters<typeof fuse_init_out.encode>[2]): Uint8Array {
  const reply = new Uint8Array(fuse_out_header.size + fuse_init_out.size);
  const view = new DataView(reply.buffer);
  fuse_out_header.encode(view, 0, { len: reply.length, error: 0, unique });
  fuse_init_out.encode(view, fuse_out_header.size, out);
  return reply;
}

/** A request whose bytes are all here (one a request queue's thread handed over). */
function requestOf(bytes: Uint8Array): FrontendRequest {
  const h = fuse_in_header.decode(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  return {
    opcode: h.opcode,
    unique: h.unique,
    len: bytes.length,
    replyRoom: 0,
    read: (from, into) => into.set(bytes.subarray(from, from + into.length)),
  };
}
