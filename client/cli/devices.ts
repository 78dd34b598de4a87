/** `virtiofs-client devices` and `bind`: virtio-fs PCI functions for the vfio and uio transports. */
import { parseArgs } from 'node:util';
import { bindDriver, virtioFsFunctions } from '../transport/pci/sysfs.ts';
import type { Command } from './command.ts';
import { UsageError } from './command.ts';

export const devicesCommand: Command = {
  usage: `usage: virtiofs-client devices [--json]

Lists PCI functions 1af4:105a (virtio-fs) with their current driver. To drive
one from userspace, bind it to vfio-pci or uio_pci_generic
(virtiofs-client bind <address> vfio-pci) and mount with --transport vfio:<address>
or uio:<uioN>.`,
  async run(args: string[]): Promise<number> {
    const { values } = parseArgs({ args, options: { json: { type: 'boolean', default: false } } });
    const found = virtioFsFunctions();
    if (values.json) {
      console.log(JSON.stringify(found, null, 2));
      return 0;
    }
    if (found.length === 0) {
      console.log('no virtio-fs PCI functions (vendor 1af4, device 105a) on this machine');
      return 0;
    }
    for (const f of found) {
      const next =
        f.transport !== undefined
          ? `mount with --transport ${f.transport}`
          : `in use by ${f.driver ?? 'no driver'}: virtiofs-client bind ${f.address} vfio-pci (or uio_pci_generic)`;
      console.log(`${f.address}  driver ${f.driver ?? '-'}  iommu group ${f.iommuGroup ?? '-'}  ${next}`);
    }
    return 0;
  },
};

export const bindCommand: Command = {
  usage: `usage: virtiofs-client bind <pci address> <driver>

Unbinds the function from its driver and binds it to <driver> (vfio-pci,
uio_pci_generic, virtio_pci) through driver_override and drivers_probe. The
driver's module must be loaded.`,
  async run(args: string[]): Promise<number> {
    const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
    if (positionals.length !== 2) throw new UsageError('bind takes a PCI address and a driver name');
    bindDriver(positionals[0]!, positionals[1]!);
    console.log(`${positionals[0]} bound to ${positionals[1]}`);
    return 0;
  },
};
