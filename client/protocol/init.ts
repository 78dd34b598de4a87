/**
 * FUSE_INIT: building our request, checking the device's reply, and reading
 * the architecture negotiation outcome (docs/arch-negotiation.md).
 */
import { FUSE_COMPAT_INIT_IN_SIZE, FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, fuse_init_in, fuse_init_out } from './abi.ts';
import { ProtocolError } from './errors.ts';
import { FUSE_DEFAULT_MAX_PAGES, FUSE_MAX_MAX_PAGES, InitFlag } from './flags.ts';
import { Opcode } from './opcodes.ts';
import type { Struct } from '../../ffi/struct.ts';

/** virtio-fs was defined with FUSE 7.31: no virtio-fs device speaks less. */
export const MIN_DEVICE_MINOR = 31;
/** FUSE_INIT_EXT (flags2 and the 64-byte fuse_init_in) exists from 7.36. */
const INIT_EXT_MINOR = 36;
const LOW32 = 0xffff_ffffn;

export type InitIn = typeof fuse_init_in extends Struct<infer V> ? V : never;
export type InitOut = typeof fuse_init_out extends Struct<infer V> ? V : never;

export interface ArchOffer {
  /** FUSE_ARCH_* of the encoding the client uses natively. */
  indicator: number;
  /** Whether the client can switch to canonical (x86) encoding if the device asks. */
  offerCanonical: boolean;
  /** Whether the client can translate to the encoding the device names (outcome d). */
  offerDevice?: boolean;
}

export interface InitRequestOptions {
  /** The newest minor we speak; default 45. A relay passes the local kernel's. */
  minor?: number;
  maxReadahead: number;
  /** Capabilities asked for, as one 64-bit set (InitFlag). */
  flags: bigint;
  /** Absent: no architecture negotiation (today's behaviour). */
  arch?: ArchOffer;
}

/** The fuse_init_in we send. FUSE_INIT_EXT is always set so flags2 is read. */
export function initRequest(opts: InitRequestOptions): InitIn {
  let flags = opts.flags | InitFlag.INIT_EXT;
  if (opts.arch) {
    flags |= InitFlag.ARCH_INDICATOR;
    if (opts.arch.offerCanonical) flags |= InitFlag.ARCH_CANONICAL;
    if (opts.arch.offerDevice) flags |= InitFlag.ARCH_DEVICE;
  }
  return {
    major: FUSE_KERNEL_VERSION,
    minor: Math.min(opts.minor ?? FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_MINOR_VERSION),
    max_readahead: opts.maxReadahead,
    flags: Number(flags & LOW32),
    flags2: Number(flags >> 32n),
    arch_indicator: opts.arch?.indicator ?? 0,
    unused: [],
  };
}

/** Reads a fuse_init_in of either form: 16 bytes (before 7.36) or 64. */
export function decodeInitRequest(view: DataView, at: number, length: number): InitIn & { allFlags: bigint } {
  if (length !== FUSE_COMPAT_INIT_IN_SIZE && length !== fuse_init_in.size) {
    throw new ProtocolError(Opcode.INIT, 'fuse_init_in', `${length} bytes; expected 16 or 64`);
  }
  const full = new Uint8Array(fuse_init_in.size);
  full.set(new Uint8Array(view.buffer, view.byteOffset + at, length));
  const v = fuse_init_in.decode(new DataView(full.buffer));
  const ext = length === fuse_init_in.size && (v.flags & Number(InitFlag.INIT_EXT)) !== 0;
  const allFlags = BigInt(v.flags) | (ext ? BigInt(v.flags2) << 32n : 0n);
  return { ...v, allFlags };
}

/** (a), (b) and (c) of the negotiation spec. */
/** (a) device-translates, (b) canonical, (c) legacy, (d) device-encoding: the client translates to the device's named encoding. */
export type ArchOutcome = 'device-translates' | 'canonical' | 'legacy' | 'device-encoding';

export interface InitResult {
  major: number;
  /** The minor both sides use: the lower of ours and the device's. */
  minor: number;
  deviceMinor: number;
  maxReadahead: number;
  /** Capabilities in force: what we asked for and the device granted. */
  flags: bigint;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  /** Timestamp granularity in ns (1 when the device gave none or nonsense). */
  timeGran: number;
  maxPages: number;
  mapAlignment: number;
  maxStackDepth: number;
  requestTimeout: number;
  arch: {
    outcome: ArchOutcome;
    /** FUSE_ARCH_* the device says it is, 0 when it said nothing. */
    deviceIndicator: number;
  };
}

/**
 * Checks the device's fuse_init_out (the body of a successful INIT reply) and
 * works out what both sides agreed. Throws ProtocolError for a reply we cannot
 * use, naming the field.
 */
export function decodeInitReply(view: DataView, at: number, bodyLen: number, sent: InitRequestOptions): InitResult {
  const fail = (field: string, reason: string) => new ProtocolError(Opcode.INIT, `fuse_init_out.${field}`, reason);
  // A device with a newer major answers with major/minor only and expects a
  // new INIT in its major: we speak only 7, so that ends it.
  if (bodyLen < 8) throw fail('major', `reply body is ${bodyLen} bytes, too short for major/minor`);
  const major = view.getUint32(at, true);
  const deviceMinor = view.getUint32(at + 4, true);
  if (major !== FUSE_KERNEL_VERSION) {
    throw fail('major', `device speaks FUSE ${major}.${deviceMinor}, this client speaks ${FUSE_KERNEL_VERSION}.x`);
  }
  if (deviceMinor < MIN_DEVICE_MINOR) {
    throw fail('minor', `device speaks FUSE 7.${deviceMinor}; virtio-fs needs 7.${MIN_DEVICE_MINOR} or later`);
  }
  if (bodyLen !== fuse_init_out.size) {
    throw fail('', `reply body is ${bodyLen} bytes; a 7.${deviceMinor} device sends ${fuse_init_out.size}`);
  }
  const out = fuse_init_out.decode(view, at);

  const ext = deviceMinor >= INIT_EXT_MINOR && (out.flags & Number(InitFlag.INIT_EXT)) !== 0;
  // Before 7.36 bit 30 meant nothing: a device's stray bit there is not INIT_EXT.
  const granted = ext ? BigInt(out.flags) | (BigInt(out.flags2) << 32n) : BigInt(out.flags) & ~InitFlag.INIT_EXT;
  const requested = initRequestFlags(sent);
  const flags = granted & requested;

  let outcome: ArchOutcome = 'legacy';
  if (sent.arch && ext) {
    const translates = (granted & InitFlag.ARCH_INDICATOR) !== 0n;
    const canonical = (granted & InitFlag.ARCH_CANONICAL) !== 0n;
    const named = (granted & InitFlag.ARCH_DEVICE) !== 0n;
    const answers = [translates && 'FUSE_ARCH_INDICATOR', canonical && 'FUSE_ARCH_CANONICAL', named && 'FUSE_ARCH_DEVICE'].filter(Boolean);
    if (answers.length > 1) throw fail('flags2', `device set ${answers.join(' and ')}: one answer at most`);
    if (canonical && !sent.arch.offerCanonical) {
      throw fail('flags2', 'device asked for canonical encoding, which the client did not offer');
    }
    if (named && !sent.arch.offerDevice) {
      throw fail('flags2', 'device asked the client to translate to its encoding (FUSE_ARCH_DEVICE), which the client did not offer');
    }
    if (named && out.arch_indicator === 0) {
      throw fail('arch_indicator', 'device set FUSE_ARCH_DEVICE but names no architecture (FUSE_ARCH_NONE)');
    }
    outcome = translates ? 'device-translates' : canonical ? 'canonical' : named ? 'device-encoding' : 'legacy';
  }

  const maxPages = (flags & InitFlag.MAX_PAGES) !== 0n
    ? Math.min(FUSE_MAX_MAX_PAGES, Math.max(1, out.max_pages))
    : FUSE_DEFAULT_MAX_PAGES;

  return {
    major,
    minor: Math.min(deviceMinor, sent.minor ?? FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_MINOR_VERSION),
    deviceMinor,
    maxReadahead: out.max_readahead,
    flags,
    maxBackground: out.max_background,
    congestionThreshold: out.congestion_threshold,
    // The kernel never goes below 4 KiB either, whatever the device says.
    maxWrite: Math.max(4096, out.max_write),
    timeGran: out.time_gran >= 1 && out.time_gran <= 1_000_000_000 ? out.time_gran : 1,
    maxPages,
    mapAlignment: out.map_alignment,
    maxStackDepth: out.max_stack_depth,
    requestTimeout: out.request_timeout,
    arch: { outcome, deviceIndicator: ext ? out.arch_indicator : 0 },
  };
}

/** The 64-bit flag set our request carries. */
export function initRequestFlags(opts: InitRequestOptions): bigint {
  const v = initRequest(opts);
  return BigInt(v.flags) | (BigInt(v.flags2) << 32n);
}
