import test from 'ava';
import {
  FUSE_KERNEL_MINOR_VERSION,
  InitFlag,
  ProtocolError,
  decodeInitReply,
  decodeInitRequest,
  fuse_init_in,
  fuse_init_out,
  initRequest,
  type InitRequestOptions,
} from '../../client/protocol/index.ts';
import { resolveArch } from '../../client/arch/index.ts';
import { archOffer, wireEncoding } from '../../client/fuse/arch-mode.ts';

const ARM64 = 2;
const X86 = 1;
const asked: InitRequestOptions = {
  maxReadahead: 131072,
  flags: InitFlag.ASYNC_READ | InitFlag.MAX_PAGES | InitFlag.DO_READDIRPLUS | InitFlag.POSIX_LOCKS,
  arch: { indicator: ARM64, offerCanonical: true },
};

function deviceReply(minor: number, flags: bigint, extra: Partial<Record<string, number>> = {}): [DataView, number] {
  const bytes = fuse_init_out.toBytes({
    major: 7,
    minor,
    max_readahead: 65536,
    flags: Number(flags & 0xffffffffn),
    flags2: Number(flags >> 32n),
    max_write: 131072,
    time_gran: 1,
    max_pages: 64,
    ...extra,
  });
  return [new DataView(bytes.buffer), bytes.length];
}

test('our request: INIT_EXT always, arch indicator and canonical offer in flags2', (t) => {
  const req = initRequest(asked);
  t.is(req.minor, FUSE_KERNEL_MINOR_VERSION);
  t.is(req.arch_indicator, ARM64);
  t.true((BigInt(req.flags) & InitFlag.INIT_EXT) !== 0n);
  t.is(req.flags2 >>> 31, 1, 'FUSE_ARCH_INDICATOR is flags2 bit 31');
  t.is((req.flags2 >>> 30) & 1, 1, 'FUSE_ARCH_CANONICAL is flags2 bit 30');
  const native = initRequest({ ...asked, arch: undefined });
  t.is(native.arch_indicator, 0);
  t.is(native.flags2, 0);
});

test('(a) the device translates from the client encoding', (t) => {
  const [view, len] = deviceReply(45, InitFlag.INIT_EXT | InitFlag.ASYNC_READ | InitFlag.ARCH_INDICATOR, { arch_indicator: X86 });
  const r = decodeInitReply(view, 0, len, asked);
  t.deepEqual(r.arch, { outcome: 'device-translates', deviceIndicator: X86 });
});

test('(b) the device asks for canonical encoding', (t) => {
  const [view, len] = deviceReply(45, InitFlag.INIT_EXT | InitFlag.ARCH_CANONICAL, { arch_indicator: 7 });
  t.deepEqual(decodeInitReply(view, 0, len, asked).arch, { outcome: 'canonical', deviceIndicator: 7 });
});

test('(c) a device that says nothing is legacy', (t) => {
  const [view, len] = deviceReply(36, InitFlag.INIT_EXT | InitFlag.ASYNC_READ);
  t.deepEqual(decodeInitReply(view, 0, len, asked).arch, { outcome: 'legacy', deviceIndicator: 0 });
});

test('a pre-7.36 device: flags2 and the arch word are not read, even if set', (t) => {
  // A 7.35 device does not know flags2; garbage there must not be taken as an answer.
  const [view, len] = deviceReply(35, InitFlag.INIT_EXT | InitFlag.ARCH_INDICATOR, { arch_indicator: 9 });
  const r = decodeInitReply(view, 0, len, asked);
  t.deepEqual(r.arch, { outcome: 'legacy', deviceIndicator: 0 });
  t.is(r.flags & InitFlag.INIT_EXT, 0n, 'bit 30 from a 7.35 device is not INIT_EXT');
});

test('a device without INIT_EXT in its reply: flags2 ignored', (t) => {
  const [view, len] = deviceReply(45, InitFlag.ARCH_INDICATOR | InitFlag.ASYNC_READ);
  t.is(decodeInitReply(view, 0, len, asked).arch.outcome, 'legacy');
});

test('arch bits the client did not ask about are ignored', (t) => {
  const [view, len] = deviceReply(45, InitFlag.INIT_EXT | InitFlag.ARCH_INDICATOR);
  t.is(decodeInitReply(view, 0, len, { ...asked, arch: undefined }).arch.outcome, 'legacy');
});

test('contradictory or unrequested answers are protocol errors', (t) => {
  const [both, len] = deviceReply(45, InitFlag.INIT_EXT | InitFlag.ARCH_INDICATOR | InitFlag.ARCH_CANONICAL);
  t.throws(() => decodeInitReply(both, 0, len, asked), { instanceOf: ProtocolError, message: /fuse_init_out.flags2: device set FUSE_ARCH_INDICATOR and FUSE_ARCH_CANONICAL/ });
  const [canon] = deviceReply(45, InitFlag.INIT_EXT | InitFlag.ARCH_CANONICAL);
  t.throws(() => decodeInitReply(canon, 0, len, { ...asked, arch: { indicator: ARM64, offerCanonical: false } }), {
    message: /did not offer/,
  });
});

test('minor negotiates down, flags are the intersection, limits recorded', (t) => {
  const granted = InitFlag.INIT_EXT | InitFlag.ASYNC_READ | InitFlag.MAX_PAGES | InitFlag.WRITEBACK_CACHE;
  const [view, len] = deviceReply(36, granted, { max_pages: 64, time_gran: 1000, max_write: 1 << 20 });
  const r = decodeInitReply(view, 0, len, asked);
  t.is(r.minor, 36);
  t.is(r.deviceMinor, 36);
  t.is(r.flags, InitFlag.INIT_EXT | InitFlag.ASYNC_READ | InitFlag.MAX_PAGES, 'WRITEBACK_CACHE was not asked for');
  t.is(r.maxPages, 64);
  t.is(r.maxWrite, 1 << 20);
  t.is(r.timeGran, 1000);
  const [newer] = deviceReply(99, InitFlag.INIT_EXT);
  t.is(decodeInitReply(newer, 0, len, asked).minor, FUSE_KERNEL_MINOR_VERSION);
});

test('max_pages without FUSE_MAX_PAGES is the default; out-of-range values are clamped', (t) => {
  const [view, len] = deviceReply(45, InitFlag.INIT_EXT, { max_pages: 200 });
  t.is(decodeInitReply(view, 0, len, asked).maxPages, 32);
  const [big] = deviceReply(45, InitFlag.INIT_EXT | InitFlag.MAX_PAGES, { max_pages: 4000, max_write: 0, time_gran: 0 });
  const r = decodeInitReply(big, 0, len, asked);
  t.is(r.maxPages, 256);
  t.is(r.maxWrite, 4096);
  t.is(r.timeGran, 1);
});

test('a device of another major, too old, or with a short reply is refused with the field named', (t) => {
  const major8 = new DataView(new Uint8Array([8, 0, 0, 0, 1, 0, 0, 0]).buffer);
  t.throws(() => decodeInitReply(major8, 0, 8, asked), { message: /INIT: fuse_init_out.major: device speaks FUSE 8.1/ });
  const [old, len] = deviceReply(30, 0n);
  t.throws(() => decodeInitReply(old, 0, len, asked), { message: /fuse_init_out.minor: device speaks FUSE 7.30; virtio-fs needs 7.31/ });
  const [short] = deviceReply(45, 0n);
  t.throws(() => decodeInitReply(short, 0, 24, asked), { message: /reply body is 24 bytes/ });
  t.throws(() => decodeInitReply(short, 0, 4, asked), { message: /too short for major\/minor/ });
});

test('the legacy 16-byte fuse_init_in and the 64-byte one are both read', (t) => {
  const full = fuse_init_in.toBytes(initRequest(asked));
  const r64 = decodeInitRequest(new DataView(full.buffer), 0, 64);
  t.is(r64.allFlags & InitFlag.ARCH_INDICATOR, InitFlag.ARCH_INDICATOR);
  t.is(r64.arch_indicator, ARM64);
  const legacy = full.slice(0, 16);
  new DataView(legacy.buffer).setUint32(4, 26, true);
  const r16 = decodeInitRequest(new DataView(legacy.buffer), 0, 16);
  t.is(r16.minor, 26);
  t.is(r16.flags2, 0);
  t.is(r16.arch_indicator, 0);
  t.is(r16.allFlags >> 32n, 0n, 'flags2 does not exist in the 16-byte form');
  t.throws(() => decodeInitRequest(new DataView(full.buffer), 0, 40), { message: /40 bytes; expected 16 or 64/ });
});

test('(d) the device names its encoding and the client translates to it', (t) => {
  const offering = { ...asked, arch: { indicator: X86, offerCanonical: true, offerDevice: true } };
  t.is((initRequest(offering).flags2 >>> 29) & 1, 1, 'FUSE_ARCH_DEVICE is flags2 bit 29');
  t.is((initRequest(asked).flags2 >>> 29) & 1, 0, 'and is set only when offered');
  const [view, len] = deviceReply(45, InitFlag.INIT_EXT | InitFlag.ARCH_DEVICE, { arch_indicator: ARM64 });
  t.deepEqual(decodeInitReply(view, 0, len, offering).arch, { outcome: 'device-encoding', deviceIndicator: ARM64 });
  const [none] = deviceReply(45, InitFlag.INIT_EXT | InitFlag.ARCH_DEVICE, { arch_indicator: 0 });
  t.throws(() => decodeInitReply(none, 0, len, offering), { instanceOf: ProtocolError, message: /fuse_init_out.arch_indicator: device set FUSE_ARCH_DEVICE but names no architecture/ });
  t.throws(() => decodeInitReply(view, 0, len, asked), { instanceOf: ProtocolError, message: /FUSE_ARCH_DEVICE\), which the client did not offer/ });
});

test('every combination of the three answer bits against every offer: one outcome, or one error naming flags2', (t) => {
  const bits = [InitFlag.ARCH_INDICATOR, InitFlag.ARCH_CANONICAL, InitFlag.ARCH_DEVICE];
  const rows: string[] = [];
  for (const offerCanonical of [false, true]) {
    for (const offerDevice of [false, true]) {
      const sent = { ...asked, arch: { indicator: X86, offerCanonical, offerDevice } };
      for (let mask = 0; mask < 8; mask++) {
        const answer = bits.reduce((f, bit, i) => (mask & (1 << i) ? f | bit : f), InitFlag.INIT_EXT);
        const [view, len] = deviceReply(45, answer, { arch_indicator: ARM64 });
        let got: string;
        try {
          got = decodeInitReply(view, 0, len, sent).arch.outcome;
        } catch (e) {
          t.true(e instanceof ProtocolError && /^INIT: fuse_init_out.flags2: /.test(e.message), (e as Error).message);
          got = 'error';
        }
        const set = [1, 2, 4].filter((b) => mask & b).length;
        const expected =
          set > 1 ? 'error'
          : mask === 0 ? 'legacy'
          : mask === 1 ? 'device-translates'
          : mask === 2 ? (offerCanonical ? 'canonical' : 'error')
          : offerDevice ? 'device-encoding' : 'error';
        rows.push(`${offerCanonical ? 'C' : '-'}${offerDevice ? 'D' : '-'} answer ${mask}: ${got}`);
        t.is(got, expected, `offer canonical ${offerCanonical}, device ${offerDevice}, answer bits ${mask}`);
      }
    }
  }
  t.is(rows.length, 32);
});

test('(d) on the client: auto mode offers it and translates to the named encoding; an indicator without tables fails INIT in one line', (t) => {
  const x86 = resolveArch('x86_64');
  t.like(archOffer({ kind: 'auto' }, x86), { indicator: X86, offerCanonical: true, offerDevice: true });
  t.like(archOffer({ kind: 'canonical' }, x86), { offerDevice: false }, 'canonical mode uses x86 whatever the device says');
  const named = wireEncoding({ kind: 'auto' }, x86, 'device-encoding', ARM64);
  t.is(named.wire.name, 'arm64');
  t.regex(named.reason, /\(d\)/);
  const error = t.throws(() => wireEncoding({ kind: 'auto' }, x86, 'device-encoding', 99), { instanceOf: ProtocolError })!;
  t.is(error.message, 'INIT: fuse_init_out.arch_indicator: the device asks for the encoding of architecture indicator 99 (FUSE_ARCH_DEVICE), which this client has no tables for');
});
