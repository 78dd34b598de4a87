/**
 * A whole virtio-fs device in process, for fault injection: a VirtioTransport
 * whose "device" reads the driver's split rings (through FakeSplitRingDevice,
 * so every ring obligation is checked), decodes each FUSE request, answers it
 * from a tiny in-memory filesystem, posts the used entry and signals the
 * queue the way a device would (respecting EVENT_IDX / NO_INTERRUPT).
 *
 * Faults: a hook sees every request with the reply the device is about to
 * give and may rewrite the reply bytes or the used len, hold the request
 * (never answer it, until answerHeld()), or kill the device (the registered
 * onFailure callbacks hear a TransportError, as from a backend that hung up).
 *
 * The filesystem: the root (nodeid 1) holding `hello.txt` (nodeid 2,
 * FILE_SIZE bytes of fileData()) and the empty directory `sub` (nodeid 3).
 */
import { VirtioFsClient, type ConnectOptions } from '../../client/client.ts';
import { FailureLatch } from '../../client/transport/failure-latch.ts';
import { TransportError, type QueueAddresses, type QueueSignals, type VirtioFsConfig, type VirtioTransport } from '../../client/transport/transport.ts';
import { EventFd } from '../../ffi/event-fd.ts';
import { sharedPoller } from '../../ffi/poller.ts';
import { SharedMemory } from '../../ffi/shared-memory.ts';
import {
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
  hasFeature,
} from '../../client/virtio/features.ts';
import {
  FUSE_ROOT_ID,
  InitFlag,
  Opcode,
  decodeInitRequest,
  fuse_attr,
  fuse_attr_out,
  fuse_dirent,
  fuse_direntplus,
  fuse_entry_out,
  fuse_in_header,
  fuse_init_out,
  fuse_open_out,
  fuse_out_header,
  fuse_statfs_out,
  messages,
  opcodeName,
  type SupportedOpcode,
} from '../../client/protocol/index.ts';
import type { Fill, Struct } from '../../ffi/struct.ts';
import { errnoNumber } from '../../ffi/errno.ts';
import { FakeDma } from './fake-dma.ts';
import { FakeSplitRingDevice, type DeviceChain, type DeviceSegment } from './fake-split-ring-device.ts';

export const HELLO = 2n;
export const SUB = 3n;
export const FILE_SIZE = 300 * 1024 + 123;
const MAX_WRITE = 128 * 1024;
const MAX_PAGES = 32;
/** What the device grants of what INIT asks for (no architecture negotiation: a legacy device). */
const SUPPORTED_INIT_FLAGS =
  InitFlag.ASYNC_READ |
  InitFlag.BIG_WRITES |
  InitFlag.DO_READDIRPLUS |
  InitFlag.PARALLEL_DIROPS |
  InitFlag.MAX_PAGES |
  InitFlag.INIT_EXT;

/** The bytes of hello.txt: a pattern that differs at every offset of a page. */
export function fileData(): Uint8Array {
  const data = new Uint8Array(FILE_SIZE);
  for (let i = 0; i < FILE_SIZE; i++) data[i] = (i * 31 + (i >>> 12)) & 0xff;
  return data;
}

export interface FakeVirtioFsOptions {
  /** hiprio + request queues; default 2 (one request queue). */
  maxQueues?: number;
  /** Largest queue size; default 256. */
  maxQueueSize?: number;
  /** Offer VIRTIO_RING_F_EVENT_IDX; default true. */
  eventIdx?: boolean;
  /** Offer VIRTIO_RING_F_INDIRECT_DESC; default true. */
  indirect?: boolean;
  /** Whether readConfig() answers (num_request_queues = maxQueues - 1); default true. */
  config?: boolean;
  dmaChunkBytes?: number;
  /** Delay before a request is answered: ms, or per request; default 0 (setImmediate). */
  delayMs?: number | ((request: FakeRequest) => number);
  /** Persistent fault hook (see FaultHook); one-shot hooks go through faultNext(). */
  fault?: FaultHook;
  /** Told of every reply once it is on the used ring (the driver may see it from then on). */
  onComplete?: (request: FakeRequest, reply: FakeReply) => void;
}

/** One request as the device received it. */
export interface FakeRequest {
  /** Arrival order over all queues, from 0. */
  readonly seq: number;
  /** performance.now() when the device took it off the ring. */
  readonly at: number;
  /** The queue it arrived on: 0 is hiprio. */
  readonly queue: number;
  readonly opcode: number;
  readonly name: string;
  /** 1 for the first request with this opcode the device saw, 2 for the next... */
  readonly count: number;
  readonly unique: bigint;
  readonly nodeid: bigint;
  /** The argument struct, decoded (undefined for opcodes without one). */
  readonly arg: Record<string, any> | undefined;
  readonly names: string[];
  /** Bytes after the argument and names (WRITE data). */
  readonly data: Uint8Array;
  /** Device-writable bytes of the chain. */
  readonly writableBytes: number;
  /** Where the chain's buffers are (region offsets). */
  readonly readable: readonly DeviceSegment[];
  readonly writable: readonly DeviceSegment[];
}

/** What the device is about to write back: a hook may replace or change it. */
export interface FakeReply {
  /** fuse_out_header + body; empty for requests without reply (FORGET, INTERRUPT). */
  bytes: Uint8Array;
  /** The used len to post; default: the bytes that fit the writable buffers. */
  usedLen?: number;
  /** The used id to post instead of the chain's head (a device that lost track of its chains). */
  usedId?: number;
}

/** 'hold': never answer (until answerHeld()); 'die': the device fails now; nothing: answer `reply`. */
export type FaultAction = 'hold' | 'die' | void;
export type FaultHook = (request: FakeRequest, reply: FakeReply) => FaultAction;

interface Held {
  readonly request: FakeRequest;
  readonly reply: FakeReply;
  readonly chain: DeviceChain;
}

interface QueueState {
  readonly ring: FakeSplitRingDevice;
  onUsed: () => void;
  /** Chains popped so far (free-running, for avail_event). */
  popped: number;
  scheduled: boolean;
}

export class FakeVirtioFs implements VirtioTransport {
  readonly description: string;
  readonly deviceFeatures: bigint;
  readonly maxQueues: number;
  readonly dmaChunkBytes: number | undefined;
  /** Every request, in arrival order. */
  readonly requests: FakeRequest[] = [];
  /** Driver mistakes the device noticed (ring or FUSE framing); tests expect none. */
  readonly violations: string[] = [];
  fault: FaultHook | undefined;
  /** Requests received and not answered yet (held ones included), and the most there ever were. */
  outstanding = 0;
  maxOutstanding = 0;
  negotiated: bigint | undefined;
  memory: FakeDma | undefined;
  closed = false;
  started = false;
  /** What setupQueue programmed, per queue index. */
  readonly queueAddresses = new Map<number, QueueAddresses>();
  private readonly options: FakeVirtioFsOptions;
  private readonly latch = new FailureLatch();
  private readonly queues = new Map<number, QueueState>();
  private readonly notifiedBeforeStart = new Set<number>();
  private readonly oneShot: { opcode: number; hook: FaultHook }[] = [];
  private readonly counts = new Map<number, number>();
  private readonly timers = new Set<NodeJS.Timeout | NodeJS.Immediate>();
  private readonly heldRequests: Held[] = [];
  private readonly lent = new Map<number, { kick: EventFd; call: EventFd; onUsed: () => void }>();
  private mapping: SharedMemory | undefined;
  /**
   * A real transport's connection keeps the event loop alive (the poller
   * watches its socket) while the device sits on a request; the session's
   * timeout timer is unref'd and counts on that. Held requests do the same here.
   */
  private keepAlive: NodeJS.Timeout | undefined;
  private static instances = 0;

  constructor(options: FakeVirtioFsOptions = {}) {
    this.options = options;
    this.description = `fake-virtio-fs#${++FakeVirtioFs.instances}`;
    this.maxQueues = options.maxQueues ?? 2;
    this.dmaChunkBytes = options.dmaChunkBytes;
    this.fault = options.fault;
    let features = VIRTIO_F_VERSION_1;
    if (options.eventIdx ?? true) features |= VIRTIO_RING_F_EVENT_IDX;
    if (options.indirect ?? true) features |= VIRTIO_RING_F_INDIRECT_DESC;
    this.deviceFeatures = features;
  }

  // --- VirtioTransport ---------------------------------------------------------

  setFeatures(features: bigint): void {
    if ((features & ~this.deviceFeatures) !== 0n) {
      throw new TransportError(`${this.description}: features 0x${features.toString(16)} not offered`, 'EINVAL');
    }
    this.negotiated = features;
  }

  readConfig(): VirtioFsConfig | undefined {
    if (this.options.config === false) return undefined;
    return { tag: 'fake', numRequestQueues: this.maxQueues - 1 };
  }

  maxQueueSize(_index: number): number {
    return this.options.maxQueueSize ?? 256;
  }

  allocateMemory(bytes: number): FakeDma {
    if (this.memory) throw new TransportError(`${this.description}: memory already allocated`, 'EINVAL');
    // Real shared memory, device addresses = our addresses (as vhost-user): per-queue threads can
    // reach it. Large fake pages keep FakeDma's address lookups short; the region is contiguous anyway.
    this.mapping = new SharedMemory(bytes, 'fake-virtio-fs');
    const mapped = { buffer: this.mapping.bytes.buffer as ArrayBuffer, userAddress: this.mapping.userAddress };
    this.memory = new FakeDma(bytes, { pageSize: 1 << 20, base: this.mapping.userAddress, mapped });
    return this.memory;
  }

  setupQueue(index: number, addresses: QueueAddresses, onUsed: () => void): void {
    if (index >= this.maxQueues) throw new TransportError(`${this.description}: no queue ${index}`, 'EINVAL');
    if (!this.memory || this.negotiated === undefined) throw new Error('setupQueue before setFeatures/allocateMemory');
    this.queueAddresses.set(index, addresses);
    const ring = new FakeSplitRingDevice(this.memory, {
      size: addresses.size,
      descTableAddress: addresses.desc,
      availRingAddress: addresses.avail,
      usedRingAddress: addresses.used,
      indirect: hasFeature(this.negotiated, VIRTIO_RING_F_INDIRECT_DESC),
      eventIdx: hasFeature(this.negotiated, VIRTIO_RING_F_EVENT_IDX),
    });
    this.queues.set(index, { ring, onUsed, popped: 0, scheduled: false });
  }

  notify(index: number): void {
    if (this.closed || this.latch.failure) return;
    if (!this.started) {
      this.notifiedBeforeStart.add(index);
      return;
    }
    const q = this.queues.get(index);
    if (!q) {
      this.violations.push(`notify(${index}): queue not set up`);
      return;
    }
    if (q.scheduled) return;
    q.scheduled = true;
    this.later(0, () => {
      q.scheduled = false;
      this.process(index);
    });
  }

  start(): void {
    this.started = true;
    for (const index of this.notifiedBeforeStart) this.notify(index);
    this.notifiedBeforeStart.clear();
  }

  /** Like vhost-user: a kick eventfd this device watches, a call eventfd it signals. */
  lendQueue(index: number): QueueSignals {
    const q = this.queues.get(index);
    if (!q) throw new TransportError(`${this.description}: queue ${index} is not set up`, 'EINVAL');
    const kick = new EventFd();
    const call = new EventFd();
    this.lent.set(index, { kick, call, onUsed: q.onUsed });
    q.onUsed = () => call.signal();
    sharedPoller().watch(kick.fd, 'readable', () => {
      kick.drain();
      this.notify(index);
    });
    return { kickFd: kick.fd, callFd: call.fd };
  }

  reclaimQueue(index: number): void {
    const lent = this.lent.get(index);
    const q = this.queues.get(index);
    if (!lent || !q) return;
    this.lent.delete(index);
    sharedPoller().unwatch(lent.kick.fd);
    lent.kick.close();
    lent.call.close();
    q.onUsed = lent.onUsed;
  }

  onFailure(callback: (error: Error) => void): void {
    this.latch.onFailure(callback);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.cancelTimers();
    this.heldRequests.length = 0;
    for (const index of [...this.lent.keys()]) this.reclaimQueue(index);
    this.mapping?.close();
  }

  // --- test controls -------------------------------------------------------------

  /** The transport's failure, once the device died. */
  get failure(): Error | undefined {
    return this.latch.failure;
  }

  /** Applies `hook` to the next request with `opcode` only. */
  faultNext(opcode: SupportedOpcode, hook: FaultHook): void {
    this.oneShot.push({ opcode: Opcode[opcode], hook });
  }

  /** Requests held by a fault ('hold'), not answered yet. */
  get held(): readonly FakeRequest[] {
    return this.heldRequests.map((h) => h.request);
  }

  /** Answers every held request now, with the reply it would have had (or `rewrite`'s). */
  answerHeld(rewrite?: (request: FakeRequest, reply: FakeReply) => void): number {
    const held = this.heldRequests.splice(0);
    this.dropKeepAlive();
    for (const h of held) {
      rewrite?.(h.request, h.reply);
      this.complete(h.request, h.chain, h.reply);
    }
    return held.length;
  }

  /** The device goes away: every onFailure callback hears `error` (default: ENOTCONN, hung up). */
  die(error: Error = new TransportError(`${this.description}: backend hung up`, 'ENOTCONN')): void {
    if (this.closed || !this.latch.fail(error)) return;
    this.cancelTimers();
    this.heldRequests.length = 0;
  }

  /** Requests seen on `queue`. */
  requestsOn(queue: number): FakeRequest[] {
    return this.requests.filter((r) => r.queue === queue);
  }

  // --- the device ----------------------------------------------------------------

  private later(ms: number, fn: () => void): void {
    if (ms <= 0) {
      const handle = setImmediate(() => {
        this.timers.delete(handle);
        fn();
      });
      this.timers.add(handle);
    } else {
      const handle = setTimeout(() => {
        this.timers.delete(handle);
        fn();
      }, ms);
      this.timers.add(handle);
    }
  }

  private dropKeepAlive(): void {
    clearInterval(this.keepAlive);
    this.keepAlive = undefined;
  }

  private cancelTimers(): void {
    this.dropKeepAlive();
    for (const t of this.timers) {
      clearTimeout(t as NodeJS.Timeout);
      clearImmediate(t as NodeJS.Immediate);
    }
    this.timers.clear();
  }

  private alive(): boolean {
    return !this.closed && !this.latch.failure;
  }

  /** Pops everything available on the queue, as a device woken by a kick does. */
  private process(index: number): void {
    const q = this.queues.get(index)!;
    while (this.alive()) {
      let chain: DeviceChain | undefined;
      try {
        chain = q.ring.pop();
      } catch (e) {
        const message = `queue ${index}: ${(e as Error).message}`;
        this.violations.push(message);
        this.die(new TransportError(`${this.description}: device error: ${message}`, 'EPROTO'));
        return;
      }
      if (!chain) {
        // Ask for a kick at the next entry, then look again (the driver may have raced us).
        q.ring.setAvailEvent(q.popped);
        if (q.ring.pendingAvailable() === 0) return;
        continue;
      }
      q.popped = (q.popped + 1) & 0xffff;
      this.receive(index, chain);
    }
  }

  private receive(index: number, chain: DeviceChain): void {
    const request = this.decodeRequest(index, chain);
    this.outstanding++;
    this.maxOutstanding = Math.max(this.maxOutstanding, this.outstanding);
    const reply: FakeReply = { bytes: this.answer(request) };
    let action: FaultAction;
    const shot = this.oneShot.findIndex((s) => s.opcode === request.opcode);
    if (shot >= 0) action = this.oneShot.splice(shot, 1)[0]!.hook(request, reply);
    else action = this.fault?.(request, reply);
    if (action === 'die') return this.die();
    if (action === 'hold') {
      this.heldRequests.push({ request, reply, chain });
      this.keepAlive ??= setInterval(() => {}, 1000);
      return;
    }
    const delay = this.options.delayMs;
    const ms = typeof delay === 'function' ? delay(request) : (delay ?? 0);
    this.later(ms, () => this.complete(request, chain, reply));
  }

  private complete(request: FakeRequest, chain: DeviceChain, reply: FakeReply): void {
    if (!this.alive()) return;
    this.outstanding--;
    const q = this.queues.get(request.queue)!;
    const room = chain.writable.reduce((n, s) => n + s.length, 0);
    const written = q.ring.write(chain, reply.bytes.subarray(0, Math.min(room, reply.bytes.length)));
    const before = q.ring.notifications;
    q.ring.complete([reply.usedId ?? chain.head, reply.usedLen ?? written]);
    this.options.onComplete?.(request, reply);
    if (q.ring.notifications !== before) q.onUsed();
  }

  private decodeRequest(index: number, chain: DeviceChain): FakeRequest {
    const bytes = this.ringFor(index).read(chain);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const writableBytes = chain.writable.reduce((n, s) => n + s.length, 0);
    if (bytes.length < fuse_in_header.size) {
      this.violations.push(`queue ${index}: request of ${bytes.length} bytes, shorter than fuse_in_header`);
    }
    const header = bytes.length >= fuse_in_header.size ? fuse_in_header.decode(view, 0) : fuse_in_header.decode(new DataView(new ArrayBuffer(40)), 0);
    if (header.len !== bytes.length) {
      this.violations.push(`queue ${index}: ${opcodeName(header.opcode)}: fuse_in_header.len ${header.len}, ${bytes.length} readable bytes`);
    }
    const name = opcodeName(header.opcode);
    const shape = (messages as Record<string, { arg?: Struct<any>; names?: number }>)[name];
    let pos = fuse_in_header.size;
    let arg: Record<string, any> | undefined;
    if (header.opcode === Opcode.INIT) {
      arg = decodeInitRequest(view, pos, bytes.length - pos);
      pos = bytes.length;
    } else if (shape?.arg && pos + shape.arg.size <= bytes.length) {
      arg = shape.arg.decode(view, pos);
      pos += shape.arg.size;
    }
    const names: string[] = [];
    for (let n = 0; n < (shape?.names ?? 0); n++) {
      const end = bytes.indexOf(0, pos);
      if (end < 0) {
        this.violations.push(`queue ${index}: ${name}: name ${n} is not NUL-terminated`);
        break;
      }
      names.push(new TextDecoder().decode(bytes.subarray(pos, end)));
      pos = end + 1;
    }
    const count = (this.counts.get(header.opcode) ?? 0) + 1;
    this.counts.set(header.opcode, count);
    const request: FakeRequest = {
      seq: this.requests.length,
      at: performance.now(),
      queue: index,
      opcode: header.opcode,
      name,
      count,
      unique: header.unique,
      nodeid: header.nodeid,
      arg,
      names,
      data: bytes.slice(pos),
      writableBytes,
      readable: chain.readable,
      writable: chain.writable,
    };
    this.requests.push(request);
    const hiprioOp = header.opcode === Opcode.FORGET || header.opcode === Opcode.BATCH_FORGET || header.opcode === Opcode.INTERRUPT;
    if (hiprioOp !== (index === 0)) this.violations.push(`${name} arrived on queue ${index}`);
    return request;
  }

  private ringFor(index: number): FakeSplitRingDevice {
    return this.queues.get(index)!.ring;
  }

  // --- the filesystem ------------------------------------------------------------

  private answer(r: FakeRequest): Uint8Array {
    const ok = <V>(s: Struct<V>, value: Fill<V>) => replyBytes(r.unique, 0, s.toBytes(value));
    const fail = (code: string) => replyBytes(r.unique, errnoNumber(code));
    const node = NODES.get(r.nodeid);
    switch (r.opcode) {
      case Opcode.FORGET:
      case Opcode.BATCH_FORGET:
      case Opcode.INTERRUPT:
        return new Uint8Array(0);
      case Opcode.INIT: {
        const want = (r.arg as { allFlags?: bigint } | undefined)?.allFlags ?? 0n;
        const flags = want & SUPPORTED_INIT_FLAGS;
        return ok(fuse_init_out, {
          major: 7,
          minor: 45,
          max_readahead: (r.arg?.max_readahead as number | undefined) ?? 0,
          flags: Number(flags & 0xffff_ffffn),
          flags2: Number(flags >> 32n),
          max_background: 64,
          congestion_threshold: 48,
          max_write: MAX_WRITE,
          time_gran: 1,
          max_pages: MAX_PAGES,
        });
      }
      case Opcode.DESTROY:
        return replyBytes(r.unique, 0);
      case Opcode.LOOKUP: {
        const child = node?.children?.get(r.names[0] ?? '');
        return child ? ok(fuse_entry_out, entryOf(child)) : fail('ENOENT');
      }
      case Opcode.GETATTR:
        return node ? ok(fuse_attr_out, { attr_valid: 1n, attr: attrOf(node) }) : fail('ENOENT');
      case Opcode.OPEN:
      case Opcode.OPENDIR:
        if (!node) return fail('ENOENT');
        if ((r.opcode === Opcode.OPENDIR) !== Boolean(node.children)) return fail(node.children ? 'EISDIR' : 'ENOTDIR');
        return ok(fuse_open_out, { fh: 100n + node.nodeid });
      case Opcode.READ: {
        if (node?.nodeid !== HELLO) return fail('EBADF');
        const offset = Number(r.arg!.offset as bigint);
        const size = r.arg!.size as number;
        return replyBytes(r.unique, 0, FILE.subarray(Math.min(offset, FILE_SIZE), Math.min(offset + size, FILE_SIZE)));
      }
      case Opcode.READDIR:
      case Opcode.READDIRPLUS: {
        if (!node?.children) return fail('ENOTDIR');
        const plus = r.opcode === Opcode.READDIRPLUS;
        const all: [string, Node][] = [['.', node], ['..', ROOT_NODE], ...node.children];
        const size = r.arg!.size as number;
        const records: Uint8Array[] = [];
        let total = 0;
        for (let i = Number(r.arg!.offset as bigint); i < all.length; i++) {
          const [name, child] = all[i]!;
          const record = plus ? direntPlusRecord(name, child, BigInt(i + 1)) : direntRecord(name, child, BigInt(i + 1));
          if (total + record.length > size) break;
          records.push(record);
          total += record.length;
        }
        return replyBytes(r.unique, 0, concat(records));
      }
      case Opcode.RELEASE:
      case Opcode.RELEASEDIR:
      case Opcode.FLUSH:
      case Opcode.ACCESS:
        return node ? replyBytes(r.unique, 0) : fail('ENOENT');
      case Opcode.STATFS:
        return ok(fuse_statfs_out, { st: { blocks: 1000n, bfree: 500n, bavail: 500n, files: 10n, ffree: 7n, bsize: 4096, namelen: 255, frsize: 4096 } });
      default:
        return fail('ENOSYS');
    }
  }
}

export interface FakeClient {
  fake: FakeVirtioFs;
  client: VirtioFsClient;
  /** Every line the client logged (session and device). */
  logs: string[];
}

/** A FakeVirtioFs and a VirtioFsClient connected to it, logging into `logs`. */
export async function connectFake(
  fakeOptions: FakeVirtioFsOptions = {},
  clientOptions: Partial<ConnectOptions> = {},
): Promise<FakeClient> {
  const fake = new FakeVirtioFs(fakeOptions);
  const logs: string[] = [];
  const client = await VirtioFsClient.connect({ transport: fake, log: (line) => logs.push(line), ...clientOptions });
  return { fake, client, logs };
}

/** Resolves once `condition` holds (checked every few ms); rejects after `ms`. */
export async function until(condition: () => boolean, ms = 2000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

interface Node {
  readonly nodeid: bigint;
  readonly mode: number;
  readonly size: number;
  readonly children?: Map<string, Node>;
}

const FILE = fileData();
const HELLO_NODE: Node = { nodeid: HELLO, mode: 0o100644, size: FILE_SIZE };
const SUB_NODE: Node = { nodeid: SUB, mode: 0o40755, size: 4096, children: new Map() };
const ROOT_NODE: Node = {
  nodeid: FUSE_ROOT_ID,
  mode: 0o40755,
  size: 4096,
  children: new Map([
    ['hello.txt', HELLO_NODE],
    ['sub', SUB_NODE],
  ]),
};
const NODES = new Map<bigint, Node>([ROOT_NODE, HELLO_NODE, SUB_NODE].map((n) => [n.nodeid, n]));

type AttrValue = typeof fuse_attr extends Struct<infer V> ? V : never;

function attrOf(node: Node): Fill<AttrValue> {
  return {
    ino: node.nodeid,
    size: BigInt(node.size),
    blocks: BigInt(Math.ceil(node.size / 512)),
    mtime: 1_700_000_000n,
    mode: node.mode,
    nlink: node.children ? 2 : 1,
    uid: 1000,
    gid: 1000,
    blksize: 4096,
  };
}

function entryOf(node: Node) {
  return { nodeid: node.nodeid, generation: 1n, entry_valid: 1n, attr_valid: 1n, attr: attrOf(node) };
}

const DT_DIR = 4;
const DT_REG = 8;
const utf8 = new TextEncoder();

/** One READDIR record (fuse_dirent + name, padded to 8); `namelen` overrides the name's length (faults). */
export function direntRecord(name: string, node: { nodeid: bigint; mode: number }, off: bigint, namelen?: number): Uint8Array {
  return record(fuse_dirent.size, name, (view) =>
    fuse_dirent.encode(view, 0, direntOf(name, node, off, namelen)),
  );
}

/** One READDIRPLUS record (fuse_direntplus + name, padded to 8); `namelen` overrides the name's length. */
export function direntPlusRecord(name: string, node: { nodeid: bigint; mode: number }, off: bigint, namelen?: number): Uint8Array {
  const full = NODES.get(node.nodeid) ?? { ...node, size: 0 };
  return record(fuse_direntplus.size, name, (view) =>
    fuse_direntplus.encode(view, 0, { entry_out: entryOf(full), dirent: direntOf(name, node, off, namelen) }),
  );
}

function direntOf(name: string, node: { nodeid: bigint; mode: number }, off: bigint, namelen?: number) {
  const type = (node.mode & 0o170000) === 0o40000 ? DT_DIR : DT_REG;
  return { ino: node.nodeid, off, namelen: namelen ?? utf8.encode(name).length, type };
}

function record(fixed: number, name: string, encode: (view: DataView) => void): Uint8Array {
  const nameBytes = utf8.encode(name);
  const out = new Uint8Array((fixed + nameBytes.length + 7) & ~7);
  encode(new DataView(out.buffer));
  out.set(nameBytes, fixed);
  return out;
}

/** fuse_out_header (len covering `body`, error = -errno, unique) followed by `body`. */
export function replyBytes(unique: bigint, errno: number, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(fuse_out_header.size + body.length);
  fuse_out_header.encode(new DataView(out.buffer), 0, { len: out.length, error: -errno, unique });
  out.set(body, fuse_out_header.size);
  return out;
}

/** Rewrites fields of the fuse_out_header at the start of `bytes`, in place. */
export function patchOutHeader(bytes: Uint8Array, patch: { len?: number; error?: number; unique?: bigint }): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (patch.len !== undefined) fuse_out_header.set(view, 0, 'len', patch.len);
  if (patch.error !== undefined) fuse_out_header.set(view, 0, 'error', patch.error);
  if (patch.unique !== undefined) fuse_out_header.set(view, 0, 'unique', patch.unique);
  return bytes;
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
