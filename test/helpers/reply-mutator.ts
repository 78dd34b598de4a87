/**
 * Seeded mutations of good FUSE replies, for the fuzzer (reply-fuzzer.ts): what a hostile or broken
 * device may write back. Each mutation says whether the client must catch it (a malformed reply:
 * EIO for that request and one log line naming the opcode and the field) or may take it as a
 * well-formed reply (a wrong but possible value, a short read), or whether the device must be
 * treated as broken (a used ring that names a chain the driver never gave it).
 */
import { Opcode, fuse_attr, fuse_attr_out, fuse_direntplus, fuse_dirent, fuse_entry_out, fuse_out_header, opcodeName } from '../../client/protocol/index.ts';
import type { FakeReply, FakeRequest } from './fake-virtio-fs.ts';

/** mulberry32: small, fast, and the same sequence for a seed on every machine. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** [0, 1) */
  next(): number {
    let z = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
}

/** must: the client must reject it; may: it may pass as a well-formed reply; fatal: the device is broken. */
export type Expect = 'must' | 'may' | 'fatal';

export interface Mutation {
  readonly kind: string;
  readonly expect: Expect;
  readonly opcode: number;
  readonly unique: bigint;
  /** The reply's first bytes as the device wrote them (after the mutation), its length, the used len posted. */
  readonly head: Uint8Array;
  readonly length: number;
  readonly usedLen: number | undefined;
  readonly usedId: number | undefined;
  /** The device never answers (the fault hook holds the request). */
  readonly hold: boolean;
  /** The device goes away on this request (the fault hook kills it: a backend hanging up). */
  readonly die: boolean;
  /** A PCI device event instead of (needs-reset) or beside (config-change) this reply. */
  readonly event: DeviceEvent | undefined;
}

/** What only a PCI function can do: set DEVICE_NEEDS_RESET, change its configuration. */
export type DeviceEvent = 'needs-reset' | 'config-change';

const HEADER = fuse_out_header.size;
const LEN_AT = fuse_out_header.offsetOf('len');
const ERROR_AT = fuse_out_header.offsetOf('error');
const UNIQUE_AT = fuse_out_header.offsetOf('unique');
/** Where a record's fuse_dirent starts: READDIRPLUS records lead with fuse_entry_out. */
const direntAt = (opcode: number) => (opcode === Opcode.READDIRPLUS ? fuse_direntplus.offsetOf('dirent') : 0);
const recordSize = (opcode: number) => (opcode === Opcode.READDIRPLUS ? fuse_direntplus.size : fuse_dirent.size);
const NAMELEN = fuse_dirent.offsetOf('namelen');
const OFF = fuse_dirent.offsetOf('off');
const ENTRY_VALID_AT = fuse_entry_out.offsetOf('entry_valid');
const ENTRY_ATTR_VALID_AT = fuse_entry_out.offsetOf('attr_valid');
const ATTR_VALID_AT = fuse_attr_out.offsetOf('attr_valid');
/** Errno numbers a device may legitimately answer (x86's; the fake device is x86). */
const ERRNOS = [1, 2, 5, 9, 12, 13, 17, 20, 21, 22, 28, 36, 38, 39, 61, 95];

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/**
 * Zeroes the entry and attribute validity of a good LOOKUP/GETATTR/READDIRPLUS reply, so the
 * kernel caches nothing and asks the device again: more requests reach the fuzzer per call.
 */
export function uncacheable(opcode: number, bytes: Uint8Array): void {
  if (bytes.length <= HEADER || view(bytes).getInt32(ERROR_AT, true) !== 0) return;
  const v = view(bytes);
  if (opcode === Opcode.LOOKUP && bytes.length >= HEADER + fuse_entry_out.size) {
    v.setBigUint64(HEADER + ENTRY_VALID_AT, 0n, true);
    v.setBigUint64(HEADER + ENTRY_ATTR_VALID_AT, 0n, true);
  } else if (opcode === Opcode.GETATTR && bytes.length >= HEADER + fuse_attr_out.size) {
    v.setBigUint64(HEADER + ATTR_VALID_AT, 0n, true);
  } else if (opcode === Opcode.READDIRPLUS) {
    for (const at of direntRecords(opcode, bytes)) {
      v.setBigUint64(at + ENTRY_VALID_AT, 0n, true);
      v.setBigUint64(at + ENTRY_ATTR_VALID_AT, 0n, true);
    }
  }
}

/** Where each record of a well-formed READDIR or READDIRPLUS reply starts. */
function direntRecords(opcode: number, bytes: Uint8Array): number[] {
  const v = view(bytes);
  const starts: number[] = [];
  const size = recordSize(opcode);
  for (let at = HEADER; at + size <= bytes.length; ) {
    starts.push(at);
    const namelen = v.getUint32(at + direntAt(opcode) + NAMELEN, true);
    at += (size + namelen + 7) & ~7;
  }
  return starts;
}

const isDirents = (opcode: number) => opcode === Opcode.READDIR || opcode === Opcode.READDIRPLUS;

type Mutate = (ctx: Context) => Expect | undefined;

interface Context {
  rng: Rng;
  request: FakeRequest;
  reply: FakeReply;
  /** The reply's bytes, mutable (replace reply.bytes to resize). */
  bytes: Uint8Array;
  bodyLen: number;
  ok: boolean;
  hold: boolean;
  die: boolean;
  event: DeviceEvent | undefined;
}

const setLen = (c: Context, len: number) => view(c.reply.bytes).setUint32(LEN_AT, len >>> 0, true);
const resize = (c: Context, length: number) => {
  const next = new Uint8Array(length);
  next.set(c.reply.bytes.subarray(0, Math.min(length, c.reply.bytes.length)));
  for (let i = c.reply.bytes.length; i < length; i++) next[i] = c.rng.int(0, 255);
  c.reply.bytes = next;
  setLen(c, length);
};

/** Every kind: how it mutates, and what the client owes it. */
const KINDS: Readonly<Record<string, Mutate>> = {
  'len below the header': (c) => (setLen(c, c.rng.int(0, HEADER - 1)), 'must'),
  'len beyond what arrived': (c) => (setLen(c, c.reply.bytes.length + c.rng.int(1, 1 << 16)), 'must'),
  'len inside the body': (c) => (c.bodyLen > 0 ? (setLen(c, HEADER + c.rng.int(0, c.bodyLen - 1)), 'may') : undefined),
  'unique bit flipped': (c) => {
    const v = view(c.reply.bytes);
    v.setBigUint64(UNIQUE_AT, v.getBigUint64(UNIQUE_AT, true) ^ (1n << BigInt(c.rng.int(0, 63))), true);
    return 'must';
  },
  'error positive': (c) => (resize(c, HEADER), view(c.reply.bytes).setInt32(ERROR_AT, c.rng.int(1, 4095), true), 'must'),
  'error below -4095': (c) => (resize(c, HEADER), view(c.reply.bytes).setInt32(ERROR_AT, -c.rng.int(4096, 0x7fffffff), true), 'must'),
  'error with a body': (c) => {
    if (c.bodyLen === 0) return undefined;
    view(c.reply.bytes).setInt32(ERROR_AT, -5, true);
    return 'must';
  },
  'a valid errno instead': (c) => (resize(c, HEADER), view(c.reply.bytes).setInt32(ERROR_AT, -c.rng.pick(ERRNOS), true), 'may'),
  'body bytes flipped': (c) => {
    if (c.bodyLen === 0) return undefined;
    for (let n = c.rng.int(1, 4); n > 0; n--) c.reply.bytes[HEADER + c.rng.int(0, c.bodyLen - 1)]! ^= c.rng.int(1, 255);
    return 'may';
  },
  'body truncated': (c) => (c.bodyLen > 0 ? (resize(c, HEADER + c.rng.int(0, c.bodyLen - 1)), 'may') : undefined),
  'body extended': (c) => (resize(c, c.reply.bytes.length + c.rng.int(1, 64)), 'may'),
  'dirent namelen': (c) => {
    const op = c.request.opcode;
    const records = isDirents(op) && c.ok ? direntRecords(op, c.reply.bytes) : [];
    if (records.length === 0) return undefined;
    const at = c.rng.pick(records) + direntAt(op) + NAMELEN;
    view(c.reply.bytes).setUint32(at, c.rng.pick([0, 256, 1025, 0xffff, 0xffffffff, c.rng.int(1, 300)]), true);
    return 'may';
  },
  'dirent off': (c) => {
    const op = c.request.opcode;
    const records = isDirents(op) && c.ok ? direntRecords(op, c.reply.bytes) : [];
    if (records.length === 0) return undefined;
    view(c.reply.bytes).setBigUint64(c.rng.pick(records) + direntAt(op) + OFF, BigInt(c.rng.int(0, 0x7fffffff)), true);
    return 'may';
  },
  'attr mode': (c) => {
    if (c.request.opcode !== Opcode.GETATTR || !c.ok) return undefined;
    view(c.reply.bytes).setUint32(HEADER + fuse_attr_out.offsetOf('attr') + fuse_attr.offsetOf('mode'), c.rng.int(0, 0xffffffff), true);
    return 'may';
  },
  'used len short': (c) => ((c.reply.usedLen = c.rng.int(0, c.reply.bytes.length - 1)), 'must'),
  'used len beyond the chain': (c) => ((c.reply.usedLen = c.request.writableBytes + c.rng.int(1, 1 << 20)), 'must'),
  'used id never issued': (c) => ((c.reply.usedId = c.rng.pick([c.rng.int(1 << 16, 0x7fffffff), 0xffffffff])), 'fatal'),
  'never answered': (c) => ((c.hold = true), 'must'),
  'device gone mid-stream': (c) => ((c.die = true), 'fatal'),
  // PCI only (mutate's `pci`): the request is never answered; DEVICE_NEEDS_RESET fails it and the rest.
  'device needs reset': (c) => ((c.hold = true), (c.event = 'needs-reset'), 'fatal'),
  // PCI only: the reply goes out as it was; the configuration changes beside it.
  'config change': (c) => ((c.event = 'config-change'), 'may'),
};

export const MUTATION_KINDS = Object.keys(KINDS);
const PCI_KINDS = ['device needs reset', 'config change'];

/** The kinds that make the device broken: the fuzzer runs them rarely (each costs a remount). */
const FATAL_SHARE = 0.002;
/** Requests never answered: each holds a slot for good (the client answers EIO on timeout), so rarely. */
const HOLD_SHARE = 0.005;
/** Configuration changes (PCI only): each is said in a line, so not too many. */
const CONFIG_SHARE = 0.01;
const DIRENT_KINDS = ['dirent namelen', 'dirent off'];
const RARE_KINDS = ['used id never issued', 'never answered', 'device gone mid-stream', 'device needs reset'];
const ORDINARY_KINDS = MUTATION_KINDS.filter((k) => !RARE_KINDS.includes(k) && !PCI_KINDS.includes(k));

/**
 * Mutates `reply` (to `request`) in place with a kind drawn from `rng`, or returns undefined when
 * the drawn kind does not apply to this reply (the caller may draw again).
 */
export function mutate(rng: Rng, request: FakeRequest, reply: FakeReply, pci = false): Mutation | undefined {
  const bytes = reply.bytes;
  const ok = bytes.length >= HEADER && view(bytes).getInt32(ERROR_AT, true) === 0;
  // Directory streams are a small share of the replies: a third of them get a record mutated.
  const stream = isDirents(request.opcode) && ok && bytes.length > HEADER && rng.next() < 1 / 3;
  const draw = rng.next();
  const kinds = stream
    ? DIRENT_KINDS
    : draw < FATAL_SHARE
      ? ['used id never issued', 'device gone mid-stream', ...(pci ? ['device needs reset'] : [])]
      : draw < FATAL_SHARE + HOLD_SHARE
        ? ['never answered']
        : pci && draw < FATAL_SHARE + HOLD_SHARE + CONFIG_SHARE
          ? ['config change']
          : ORDINARY_KINDS;
  const kind = rng.pick(kinds);
  const c: Context = { rng, request, reply, bytes, bodyLen: Math.max(0, bytes.length - HEADER), ok, hold: false, die: false, event: undefined };
  const expect = KINDS[kind]!(c);
  if (expect === undefined) return undefined;
  return {
    kind,
    expect,
    opcode: request.opcode,
    unique: request.unique,
    head: reply.bytes.slice(0, SHOWN),
    length: reply.bytes.length,
    usedLen: reply.usedLen,
    usedId: reply.usedId,
    hold: c.hold,
    die: c.die,
    event: c.event,
  };
}

/** Bytes of a mutated reply kept to show it: the header and the start of the body. */
const SHOWN = 96;

/** A mutation in one line: to reproduce it, the seed and these bytes. */
export function describeMutation(m: Mutation): string {
  const hex = Buffer.from(m.head).toString('hex');
  if (m.hold || m.die || m.event) return `${opcodeName(m.opcode)} unique ${m.unique}: ${m.kind}`;
  return `${opcodeName(m.opcode)} unique ${m.unique}: ${m.kind} (${m.expect}); used len ${m.usedLen ?? 'as written'}${m.usedId !== undefined ? `, used id ${m.usedId}` : ''}; reply ${m.length} bytes: ${hex}${m.length > SHOWN ? '...' : ''}`;
}
