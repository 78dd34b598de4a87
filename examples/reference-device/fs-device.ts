/**
 * The virtio-fs device model (virtio spec 5.11): what a device does with the
 * chains its queues deliver. Queue 0 (hiprio) carries FORGET, BATCH_FORGET
 * and INTERRUPT, which get no reply; the request queues carry everything
 * else, each chain one FUSE request (device-readable: fuse_in_header and
 * arguments) and room for its reply (device-writable: fuse_out_header and
 * body).
 *
 * FUSE_INIT is answered here (negotiation.ts decides the architecture
 * answer); every other request goes to the backend through the relay, with
 * the translation INIT settled.
 */
import type { Architecture } from '../../client/arch/index.ts';
import type { WireTranslation } from '../../client/fuse/wire-translation.ts';
import { FUSE_KERNEL_VERSION, Opcode, ProtocolError, fuse_in_header, fuse_init_out, fuse_out_header, opcodeName } from '../../client/protocol/index.ts';
import { EngineFailure } from '../../client/fuse/engine.ts';
import { BackendRelay, type FrontendRequest } from './backend-relay.ts';
import { FileattrServer } from './fileattr.ts';
import type { Chain } from './device-ring.ts';
import { decideArch, initReply, majorOnlyReply, readClientInit, translationFor, type ArchAnswer } from './negotiation.ts';
import type { DeviceModel, RunningQueue } from './vhost-user-backend.ts';

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
}

/** A chain that does not hold a well-formed request; `unique` when the header could be read. */
class BadRequest extends Error {
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
  private readonly fileattr: FileattrServer | undefined;

  constructor(
    private readonly backend: BackendRelay,
    private readonly options: FsDeviceOptions,
  ) {
    this.queueCount = 1 + options.requestQueues;
    this.log = options.log;
    if (options.fileattrDir !== undefined) this.fileattr = new FileattrServer(options.fileattrDir, options.arch, backend, options.log, options.trace);
  }

  queueStarted(queue: RunningQueue): void {
    this.options.trace?.(`${queue.name} started`);
  }

  queueStopped(queue: RunningQueue): void {
    if (queue.inFlight > 0) this.log(`${queue.name} stopped with ${queue.inFlight} request(s) in flight: their replies are dropped`);
  }

  /** Takes every available chain; each request then proceeds on its own. */
  queueKicked(queue: RunningQueue): void {
    do {
      for (let popped = queue.pop(); popped; popped = queue.pop()) {
        if (!popped.ok) {
          // Nowhere trustworthy to write an error to: return the chain empty (the frontend sees no reply: EIO).
          this.log(`${queue.name}: ${popped.reason}; returned with nothing written`);
          queue.complete(popped.head, 0);
        } else if (queue.index === HIPRIO_QUEUE) {
          void this.hiprio(queue, popped.chain);
        } else {
          void this.request(queue, popped.chain);
        }
      }
    } while (queue.armKick());
  }

  /** Ends the backend session (the frontend is gone). */
  close(): Promise<void> {
    this.state = 'destroyed';
    return this.backend.close();
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

  // --- request queues ------------------------------------------------------------

  private async request(queue: RunningQueue, chain: Chain): Promise<void> {
    let request: FrontendRequest;
    try {
      request = this.frontendRequest(queue, chain);
      if (chain.writableBytes < fuse_out_header.size) throw new BadRequest(`${chain.writableBytes} writable bytes, no room for a reply`);
    } catch (error) {
      this.log(`${queue.name}: chain ${chain.head}: ${(error as Error).message}`);
      const unique = error instanceof BadRequest ? error.unique : undefined;
      if (unique !== undefined && chain.writableBytes >= fuse_out_header.size) this.fail(queue, chain, unique, 'EIO');
      else queue.complete(chain.head, 0);
      return;
    }
    const { opcode, unique } = request;
    const respond = (parts: readonly Uint8Array[]): void => this.respond(queue, chain, parts);
    try {
      if (opcode === Opcode.INIT) return await this.init(queue, chain, request);
      if (this.state !== 'ready') throw new EngineFailure('EIO', `${opcodeName(opcode)} unique ${unique} before FUSE_INIT completed`);
      if (opcode === Opcode.FORGET || opcode === Opcode.BATCH_FORGET) {
        // Belongs on hiprio; forwarded all the same, and returned without a reply.
        await this.backend.forwardNoReply(request);
        queue.complete(chain.head, 0);
        return;
      }
      if (opcode === Opcode.IOCTL && this.fileattr && (await this.fileattr.serve(request, this.translation!, respond))) return;
      await this.backend.forward(request, respond);
    } catch (error) {
      if (!(error instanceof EngineFailure || error instanceof ProtocolError)) {
        this.log(`${opcodeName(opcode)} unique ${unique}: ${(error as Error).stack ?? error}`);
      } else if (!(error instanceof EngineFailure && error.logged)) {
        this.log(`${opcodeName(opcode)} unique ${unique}: ${error.message}`);
      }
      this.fail(queue, chain, unique, error instanceof EngineFailure ? error.errnoName : 'EIO');
    }
  }

  private async init(queue: RunningQueue, chain: Chain, request: FrontendRequest): Promise<void> {
    const { unique, len } = request;
    if (this.state !== 'waiting-for-init') throw new EngineFailure('EIO', `INIT while ${this.state}`);
    const bytes = new Uint8Array(len);
    request.read(0, bytes);
    const client = readClientInit(new DataView(bytes.buffer), fuse_in_header.size, len - fuse_in_header.size);
    const replyBytes = fuse_out_header.size + fuse_init_out.size;
    if (chain.writableBytes < replyBytes) throw new EngineFailure('EIO', `INIT: ${chain.writableBytes} writable bytes, fuse_init_out needs ${replyBytes}`);
    if (client.major < FUSE_KERNEL_VERSION) throw new EngineFailure('EIO', `INIT: client speaks FUSE ${client.major}.${client.minor}`);
    if (client.major > FUSE_KERNEL_VERSION) {
      // It will send another INIT in our major.
      this.writeInit(queue, chain, unique, majorOnlyReply());
      return;
    }
    const own = this.options.arch;
    this.state = 'initialising';
    let terms;
    try {
      terms = await this.backend.init(client, own);
    } catch (error) {
      this.state = 'waiting-for-init';
      throw new EngineFailure('EIO', `backend INIT failed: ${(error as Error).message}`);
    }
    const decision = decideArch(this.options.answer, client, own, terms.init.minor);
    this.translation = translationFor(decision, own, this.log);
    this.backend.useTranslation(this.translation);
    this.negotiated = decision.outcome;
    this.log(`INIT: FUSE 7.${terms.init.minor}; ${decision.reason}`);
    this.writeInit(queue, chain, unique, initReply(client, terms, decision, own));
    this.state = 'ready';
  }

  private writeInit(queue: RunningQueue, chain: Chain, unique: bigint, out: Parameters<typeof fuse_init_out.encode>[2]): void {
    const reply = new Uint8Array(fuse_out_header.size + fuse_init_out.size);
    const view = new DataView(reply.buffer);
    fuse_out_header.encode(view, 0, { len: reply.length, error: 0, unique });
    fuse_init_out.encode(view, fuse_out_header.size, out);
    this.respond(queue, chain, [reply]);
  }

  // --- replies ---------------------------------------------------------------------

  /** Scatters the reply over the chain's writable buffers and returns the chain with its length. */
  private respond(queue: RunningQueue, chain: Chain, parts: readonly Uint8Array[]): void {
    const total = parts.reduce((n, p) => n + p.length, 0);
    if (total > chain.writableBytes) throw new EngineFailure('EIO', `reply of ${total} bytes, ${chain.writableBytes} writable`);
    let at = 0;
    for (const part of parts) {
      queue.write(chain, at, part);
      at += part.length;
    }
    queue.complete(chain.head, total);
  }

  /**
   * Answers with an errno the device itself produced. It is named in no
   * encoding until now: the device's own number, carried to the client's
   * encoding like any backend errno (before INIT, the device's own).
   */
  private fail(queue: RunningQueue, chain: Chain, unique: bigint, name: EngineFailure['errnoName']): void {
    const own = this.options.arch.errno.numbers[name]!;
    const errno = this.translation ? this.translation.errno(own) : own;
    const reply = new Uint8Array(fuse_out_header.size);
    fuse_out_header.encode(new DataView(reply.buffer), 0, { len: reply.length, error: -errno, unique });
    try {
      this.respond(queue, chain, [reply]);
    } catch (error) {
      // The queue stopped, or the frontend's memory went away: nothing to answer into.
      this.log(`${queue.name}: cannot answer unique ${unique}: ${(error as Error).message}`);
    }
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
