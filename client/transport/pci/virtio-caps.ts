/**
 * The virtio vendor capabilities of a modern virtio-pci function (virtio 1.2
 * 4.1.4): where in which BAR the common, notify, ISR and device config
 * structures live. Every capability is checked against its BAR's size.
 */
import { struct } from '../../../ffi/struct.ts';
import {
  PCI_CAPABILITY_LIST,
  PCI_CAP_ID_VNDR,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
  type PciFunction,
} from './pci-function.ts';
import { TransportError } from '../transport.ts';

export const CapType = { COMMON: 1, NOTIFY: 2, ISR: 3, DEVICE: 4, PCI_CFG: 5 } as const;

/** struct virtio_pci_cap; the notify capability adds notify_off_multiplier after it. */
export const virtio_pci_cap = struct(
  'virtio_pci_cap',
  { cap_vndr: 'u8', cap_next: 'u8', cap_len: 'u8', cfg_type: 'u8', bar: 'u8', id: 'u8', padding: 'u16', offset: 'u32', length: 'u32' },
  16,
);

export interface CapLocation {
  bar: number;
  offset: number;
  length: number;
}

export interface VirtioCaps {
  common: CapLocation;
  notify: CapLocation & { multiplier: number };
  isr: CapLocation;
  device: CapLocation;
}

/** Walks the capability list; `barSize(i)` tells how big BAR i is (0: not implemented). */
export function findVirtioCaps(fn: PciFunction, barSize: (index: number) => number): VirtioCaps {
  const fail = (why: string) => new TransportError(`${fn.address}: ${why}`, 'EPROTO');
  if (!(fn.configRead(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST)) throw fail('no PCI capability list: not a modern virtio device');
  const found: Partial<Record<number, CapLocation & { multiplier?: number }>> = {};
  const seen = new Set<number>();
  let at = fn.configRead(PCI_CAPABILITY_LIST, 1) & ~3;
  while (at !== 0) {
    if (at < 0x40 || at > 0xfc || seen.has(at)) throw fail(`capability list is broken at 0x${at.toString(16)}`);
    seen.add(at);
    const id = fn.configRead(at, 1);
    const next = fn.configRead(at + 1, 1) & ~3;
    if (id === PCI_CAP_ID_VNDR) {
      const read = (field: 'cap_len' | 'cfg_type' | 'bar' | 'offset' | 'length') => {
        const f = virtio_pci_cap.field(field);
        return fn.configRead(at + f.offset, f.size as 1 | 4);
      };
      const type = read('cfg_type');
      // PCI_CFG is an access window through config space; the others are used
      // through BARs. Several of one type may exist: the first usable one wins.
      if (type !== CapType.PCI_CFG && type <= CapType.DEVICE && found[type] === undefined) {
        const bar = read('bar');
        const offset = read('offset');
        const length = read('length');
        const size = bar <= 5 ? barSize(bar) : 0;
        if (size === 0) throw fail(`virtio capability type ${type} names BAR${bar}, which is not implemented`);
        if (offset + length > size) {
          throw fail(`virtio capability type ${type}: [0x${offset.toString(16)}, +0x${length.toString(16)}) overruns BAR${bar} (0x${size.toString(16)} bytes)`);
        }
        const location: CapLocation & { multiplier?: number } = { bar, offset, length };
        if (type === CapType.NOTIFY) {
          if (read('cap_len') < virtio_pci_cap.size + 4) throw fail('notify capability too short for notify_off_multiplier');
          location.multiplier = fn.configRead(at + virtio_pci_cap.size, 4);
        }
        found[type] = location;
      }
    }
    at = next;
  }
  const need = (type: number, name: string) => found[type] ?? (() => { throw fail(`no virtio ${name} capability`); })();
  const common = need(CapType.COMMON, 'common config');
  const notify = need(CapType.NOTIFY, 'notify');
  return {
    common,
    notify: { ...notify, multiplier: notify.multiplier ?? 0 },
    isr: need(CapType.ISR, 'ISR'),
    device: need(CapType.DEVICE, 'device config'),
  };
}
