import test from 'ava';
import { findVirtioCaps, CapType } from '../../client/transport/pci/virtio-caps.ts';
import type { PciFunction } from '../../client/transport/pci/pci-function.ts';

/** A config space with the given vendor capabilities chained from 0x40. */
function fn(caps: { type: number; bar: number; offset: number; length: number; extra?: number }[], opts: { loop?: boolean } = {}): PciFunction {
  const config = new DataView(new ArrayBuffer(256));
  config.setUint16(0x06, 0x10, true); // capability list present
  config.setUint8(0x34, caps.length ? 0x40 : 0);
  caps.forEach((c, i) => {
    const at = 0x40 + i * 0x14;
    const next = i + 1 < caps.length ? at + 0x14 : opts.loop ? 0x40 : 0;
    config.setUint8(at, 0x09);
    config.setUint8(at + 1, next);
    config.setUint8(at + 2, c.type === CapType.NOTIFY ? 20 : 16);
    config.setUint8(at + 3, c.type);
    config.setUint8(at + 4, c.bar);
    config.setUint32(at + 8, c.offset, true);
    config.setUint32(at + 12, c.length, true);
    if (c.extra !== undefined) config.setUint32(at + 16, c.extra, true);
  });
  const read = (o: number, w: number) => (w === 1 ? config.getUint8(o) : w === 2 ? config.getUint16(o, true) : config.getUint32(o, true));
  return { address: '0000:00:04.0', configRead: read, configWrite: () => undefined } as unknown as PciFunction;
}

const qemuLike = [
  { type: CapType.COMMON, bar: 4, offset: 0x0, length: 0x1000 },
  { type: CapType.ISR, bar: 4, offset: 0x1000, length: 0x1000 },
  { type: CapType.DEVICE, bar: 4, offset: 0x2000, length: 0x1000 },
  { type: CapType.NOTIFY, bar: 4, offset: 0x3000, length: 0x1000, extra: 4 },
  { type: CapType.PCI_CFG, bar: 0, offset: 0, length: 4 },
];
const bars = (i: number) => (i === 4 ? 0x4000 : 0);

test('finds common, notify (with multiplier), ISR and device config; skips PCI_CFG naming a missing BAR0', (t) => {
  const caps = findVirtioCaps(fn(qemuLike), bars);
  t.deepEqual(caps.common, { bar: 4, offset: 0, length: 0x1000 });
  t.deepEqual(caps.notify, { bar: 4, offset: 0x3000, length: 0x1000, multiplier: 4 });
  t.deepEqual(caps.isr, { bar: 4, offset: 0x1000, length: 0x1000 });
  t.deepEqual(caps.device, { bar: 4, offset: 0x2000, length: 0x1000 });
});

test('a capability that overruns its BAR, or names a missing one, is refused with the numbers', (t) => {
  const over = qemuLike.map((c) => (c.type === CapType.DEVICE ? { ...c, length: 0x3000 } : c));
  t.throws(() => findVirtioCaps(fn(over), bars), { message: /capability type 4: \[0x2000, \+0x3000\) overruns BAR4 \(0x4000 bytes\)/ });
  const missing = qemuLike.map((c) => (c.type === CapType.ISR ? { ...c, bar: 2 } : c));
  t.throws(() => findVirtioCaps(fn(missing), bars), { message: /names BAR2, which is not implemented/ });
});

test('a looping capability list or a missing structure is an error, not a hang', (t) => {
  t.throws(() => findVirtioCaps(fn(qemuLike, { loop: true }), bars), { message: /capability list is broken at 0x40/ });
  t.throws(() => findVirtioCaps(fn(qemuLike.filter((c) => c.type !== CapType.NOTIFY)), bars), { message: /no virtio notify capability/ });
  t.throws(() => findVirtioCaps(fn([]), bars), { message: /no virtio common config capability/ });
});
