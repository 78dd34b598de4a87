/**
 * The client's architecture mode (docs/arch-negotiation.md section 4): what
 * FUSE_INIT offers, and which encoding goes on the wire once the device answered.
 */
import { archByIndicator, canonicalArch, resolveArch, type Architecture } from '../arch/index.ts';
import { Opcode, ProtocolError, type ArchOffer, type ArchOutcome } from '../protocol/index.ts';

export type ArchMode =
  /** Negotiate; on a legacy device use `deviceArch` if configured, else the client's own encoding. */
  | { kind: 'auto'; deviceArch?: Architecture }
  /** Today's behaviour: no negotiation, the client's own encoding. */
  | { kind: 'native' }
  /** Offer, then use x86 encoding whatever the device answers. */
  | { kind: 'canonical' }
  /** No negotiation; always translate to this device's encoding. */
  | { kind: 'device-arch'; deviceArch: Architecture };

/** Parses `auto`, `native`, `canonical` or `device-arch=<arch>` (throws UnknownArchError / RangeError). */
export function parseArchMode(text: string): ArchMode {
  if (text === 'auto' || text === 'native' || text === 'canonical') return { kind: text };
  const m = /^device-arch=(.+)$/.exec(text);
  if (m) return { kind: 'device-arch', deviceArch: resolveArch(m[1]!) };
  throw new RangeError(`arch mode '${text}' is not one of auto, native, canonical, device-arch=<arch>`);
}

export function describeArchMode(mode: ArchMode): string {
  if (mode.kind === 'device-arch') return `device-arch=${mode.deviceArch.name}`;
  if (mode.kind === 'auto' && mode.deviceArch) return `auto (legacy fallback: ${mode.deviceArch.name})`;
  return mode.kind;
}

/** What our FUSE_INIT says about architecture, or undefined for no negotiation. */
export function archOffer(mode: ArchMode, client: Architecture): ArchOffer | undefined {
  if (mode.kind === 'native' || mode.kind === 'device-arch') return undefined;
  // canonical mode uses x86 whatever the device answers: it offers no translation to a named encoding.
  return { indicator: client.indicator, offerCanonical: true, offerDevice: mode.kind === 'auto' };
}

export interface WireEncoding {
  /** The encoding architecture-dependent values travel in. */
  wire: Architecture;
  /** Why, in one phrase, for status and logs. */
  reason: string;
}

/**
 * The wire encoding after INIT, given the mode and the device's answer (`deviceIndicator`: its
 * fuse_init_out.arch_indicator). Outcome (d) names an encoding this client has no tables for:
 * ProtocolError, so INIT fails with one line that says so.
 */
export function wireEncoding(mode: ArchMode, client: Architecture, outcome: ArchOutcome, deviceIndicator = 0): WireEncoding {
  switch (mode.kind) {
    case 'native':
      return { wire: client, reason: 'native mode: no negotiation, client encoding' };
    case 'device-arch':
      return { wire: mode.deviceArch, reason: `configured device architecture ${mode.deviceArch.name}` };
    case 'canonical':
      return { wire: canonicalArch, reason: `canonical mode (device answered ${outcome})` };
    case 'auto':
      if (outcome === 'device-translates') return { wire: client, reason: 'device translates from the client encoding (a)' };
      if (outcome === 'canonical') return { wire: canonicalArch, reason: 'device asked for canonical encoding (b)' };
      if (outcome === 'device-encoding') {
        const named = archByIndicator(deviceIndicator);
        if (!named) {
          throw new ProtocolError(
            Opcode.INIT,
            'fuse_init_out.arch_indicator',
            `the device asks for the encoding of architecture indicator ${deviceIndicator} (FUSE_ARCH_DEVICE), which this client has no tables for`,
          );
        }
        return { wire: named, reason: `device named its encoding, ${named.name}: the client translates to it (d)` };
      }
      return mode.deviceArch
        ? { wire: mode.deviceArch, reason: `legacy device (c), configured as ${mode.deviceArch.name}` }
        : { wire: client, reason: 'legacy device (c), client encoding' };
  }
}
