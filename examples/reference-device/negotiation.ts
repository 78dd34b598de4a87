/**
 * The device's half of FUSE architecture negotiation (docs/arch-negotiation.md
 * section 3): read what the client says about its encoding in fuse_init_in,
 * decide what to answer, and build the fuse_init_out that says it.
 *
 * The answer fixes one thing for the rest of the session: the encoding in
 * which the client's open flags, lock types and errno values travel. The
 * device translates between that encoding and its own (the one its backend
 * interprets) with the project's WireTranslation, built with
 *   client = the negotiated wire encoding, wire = the device's own.
 */
import { archByIndicator, canonicalArch, type Architecture } from '../../client/arch/index.ts';
import { WireTranslation } from '../../client/fuse/wire-translation.ts';
import {
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  InitFlag,
  NOT_RELAYABLE,
  decodeInitRequest,
  fuse_init_in,
  type ArchOutcome,
  type InitResult,
  type InitOut,
} from '../../client/protocol/index.ts';
import type { Fill } from '../../ffi/struct.ts';

/** What the device answers to a client that sends FUSE_ARCH_INDICATOR (the --answer option). */
export type ArchAnswer = 'translate' | 'canonical' | 'legacy' | 'device';
export const ARCH_ANSWERS: readonly ArchAnswer[] = ['translate', 'canonical', 'legacy', 'device'];

/** flags2 (FUSE_INIT_EXT) exists from 7.36: below that the answer bits cannot be carried. */
const INIT_EXT_MINOR = 36;
const LOW32 = 0xffff_ffffn;

/** What the device does not pass from the backend to the client: INIT_EXT it answers itself. */
export const NOT_RELAYED = NOT_RELAYABLE | InitFlag.INIT_EXT;

/** The client's fuse_init_in, as the device needs it. */
export interface ClientInit {
  major: number;
  minor: number;
  maxReadahead: number;
  /** All 64 flag bits (flags2 only when the client sent the 64-byte form with FUSE_INIT_EXT). */
  flags: bigint;
  /** The 64-byte form with FUSE_INIT_EXT: flags2 and arch_indicator are valid. */
  ext: boolean;
  archIndicator: number;
}

/** Reads fuse_init_in (16 or 64 bytes; throws ProtocolError for another length). */
export function readClientInit(view: DataView, at: number, length: number): ClientInit {
  const v = decodeInitRequest(view, at, length);
  const ext = (v.allFlags & InitFlag.INIT_EXT) !== 0n && length === fuse_init_in.size;
  return { major: v.major, minor: v.minor, maxReadahead: v.max_readahead, flags: v.allFlags, ext, archIndicator: ext ? v.arch_indicator : 0 };
}

export interface ArchDecision {
  /** As the client will read our reply. */
  outcome: ArchOutcome;
  /** FUSE_ARCH_INDICATOR, FUSE_ARCH_CANONICAL or FUSE_ARCH_DEVICE for the reply's flags2, or 0n. */
  replyFlags: bigint;
  /** The encoding the client's values arrive in, as far as the device is concerned. */
  wire: Architecture;
  /** One line for the log: why. */
  reason: string;
}

/**
 * The answer to one client. `minor` is the protocol minor the session will
 * use (the reply can carry flags2 only from 7.36 on).
 *
 * Outcome (c), legacy, means "values pass through as they come": the device
 * reads them in its own encoding, exactly as a device that predates the
 * extension does. A client that cannot negotiate is treated so, whatever
 * --answer says (the spec requires it: old clients keep today's behaviour).
 */
export function decideArch(answer: ArchAnswer, client: ClientInit, own: Architecture, minor: number): ArchDecision {
  const legacy = (reason: string): ArchDecision => ({ outcome: 'legacy', replyFlags: 0n, wire: own, reason });
  const offered = (client.flags & InitFlag.ARCH_INDICATOR) !== 0n;
  if (!offered) {
    if (client.flags & InitFlag.ARCH_CANONICAL) return legacy('client set FUSE_ARCH_CANONICAL without FUSE_ARCH_INDICATOR (ignored): values pass through');
    return legacy('client did not send FUSE_ARCH_INDICATOR: values pass through (legacy client)');
  }
  if (minor < INIT_EXT_MINOR) return legacy(`session speaks FUSE 7.${minor}, which has no flags2 to answer in: values pass through`);
  const clientArch = archByIndicator(client.archIndicator);
  if (!clientArch) return legacy(`client's arch_indicator ${client.archIndicator} is not one this device knows: answering legacy (c), values pass through`);
  switch (answer) {
    case 'translate':
      return {
        outcome: 'device-translates',
        replyFlags: InitFlag.ARCH_INDICATOR,
        wire: clientArch,
        reason: `client is ${clientArch.name}: device translates (a), ${clientArch.name} -> ${own.name}`,
      };
    case 'canonical':
      // A device that decodes only canonical encoding has nothing to offer a client that cannot switch.
      if (!(client.flags & InitFlag.ARCH_CANONICAL)) {
        return legacy(`client is ${clientArch.name} but did not offer canonical encoding: answering legacy (c), values pass through`);
      }
      return {
        outcome: 'canonical',
        replyFlags: InitFlag.ARCH_CANONICAL,
        wire: canonicalArch,
        reason: `client is ${clientArch.name}: device asks for canonical encoding (b), ${canonicalArch.name} -> ${own.name}`,
      };
    case 'device':
      // The device decodes only its own encoding and says which: the client translates to it.
      if (!(client.flags & InitFlag.ARCH_DEVICE)) {
        return legacy(`client is ${clientArch.name} but did not offer to translate to a named encoding: answering legacy (c), values pass through`);
      }
      return {
        outcome: 'device-encoding',
        replyFlags: InitFlag.ARCH_DEVICE,
        wire: own,
        reason: `client is ${clientArch.name}: device names its own encoding (d), the client translates ${clientArch.name} -> ${own.name}`,
      };
    case 'legacy':
      return legacy(`client is ${clientArch.name}; device configured to answer legacy (c): values pass through`);
  }
}

/** The translation of every later request and reply (client = negotiated wire encoding, wire = own). */
export function translationFor(decision: ArchDecision, own: Architecture, log: (line: string) => void): WireTranslation {
  return new WireTranslation(decision.wire, own, log);
}

/** What the backend settled in its own INIT, as far as the device can carry it. */
export interface BackendTerms {
  init: InitResult;
  /** Largest WRITE/READ payload the device relays (backend max_write capped by its buffers). */
  maxWrite: number;
  maxPages: number;
}

/**
 * fuse_init_out for the client: the lower minor, capabilities both the
 * client and the backend have (less those the device cannot relay), the
 * backend's limits, and the arch answer. `arch_indicator` states the
 * device's own encoding (informational).
 */
export function initReply(client: ClientInit, backend: BackendTerms, decision: ArchDecision, own: Architecture): Fill<InitOut> {
  const init = backend.init;
  const minor = init.minor;
  const ext = client.ext && minor >= INIT_EXT_MINOR;
  let flags = client.flags & init.flags & ~NOT_RELAYED;
  if (ext) flags |= InitFlag.INIT_EXT | decision.replyFlags;
  return {
    major: FUSE_KERNEL_VERSION,
    minor,
    max_readahead: Math.min(client.maxReadahead, init.maxReadahead || client.maxReadahead),
    flags: Number(flags & LOW32),
    flags2: ext ? Number(flags >> 32n) : 0,
    max_background: init.maxBackground,
    congestion_threshold: init.congestionThreshold,
    max_write: backend.maxWrite,
    time_gran: init.timeGran,
    max_pages: backend.maxPages,
    map_alignment: 0,
    max_stack_depth: 0,
    request_timeout: init.requestTimeout,
    arch_indicator: ext ? own.indicator : 0,
  };
}

/** The answer to a client whose major is newer than ours: "speak 7", and wait for its next INIT. */
export function majorOnlyReply(): Fill<InitOut> {
  return { major: FUSE_KERNEL_VERSION, minor: FUSE_KERNEL_MINOR_VERSION };
}
