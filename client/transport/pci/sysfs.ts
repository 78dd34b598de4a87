/** Finding virtio-fs PCI functions and (re)binding them to a driver through sysfs, as udev would. */
import { existsSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { TransportError } from '../transport.ts';
import { VIRTIO_FS_DEVICE_ID, VIRTIO_VENDOR_ID } from './pci-function.ts';

const DEVICES = '/sys/bus/pci/devices';

export interface PciFsFunction {
  address: string;
  /** Bound driver: virtio_pci, vfio-pci, uio_pci_generic, or undefined. */
  driver: string | undefined;
  iommuGroup: string | undefined;
  /** What to pass to --transport once bound. */
  transport: string | undefined;
}

const hex = (path: string) => parseInt(readFileSync(path, 'utf8').trim(), 16);

export function virtioFsFunctions(): PciFsFunction[] {
  if (!existsSync(DEVICES)) return [];
  return readdirSync(DEVICES)
    .filter((a) => hex(`${DEVICES}/${a}/vendor`) === VIRTIO_VENDOR_ID && hex(`${DEVICES}/${a}/device`) === VIRTIO_FS_DEVICE_ID)
    .map((address) => {
      const link = (name: string) => (existsSync(`${DEVICES}/${address}/${name}`) ? basename(readlinkSync(`${DEVICES}/${address}/${name}`)) : undefined);
      const driver = link('driver');
      const uio = existsSync(`${DEVICES}/${address}/uio`) ? readdirSync(`${DEVICES}/${address}/uio`)[0] : undefined;
      const transport = driver === 'vfio-pci' ? `vfio:${address}` : driver === 'uio_pci_generic' ? `uio:${uio ?? address}` : undefined;
      return { address, driver, iommuGroup: link('iommu_group'), transport };
    });
}

/** Unbinds `address` from its driver and binds it to `driver` (the module must be loaded). */
export function bindDriver(address: string, driver: string): void {
  const dir = `${DEVICES}/${address}`;
  if (!existsSync(dir)) throw new TransportError(`no PCI function ${address}`, 'ENOENT');
  if (!existsSync(`/sys/bus/pci/drivers/${driver}`)) {
    throw new TransportError(`driver ${driver} is not loaded (modprobe ${driver}${driver === 'vfio-pci' ? '; without an IOMMU: modprobe vfio enable_unsafe_noiommu_mode=1' : ''})`, 'ENOENT');
  }
  if (existsSync(`${dir}/driver`)) writeFileSync(`${dir}/driver/unbind`, address);
  writeFileSync(`${dir}/driver_override`, driver);
  writeFileSync('/sys/bus/pci/drivers_probe', address);
  const now = existsSync(`${dir}/driver`) ? basename(readlinkSync(`${dir}/driver`)) : undefined;
  if (now !== driver) throw new TransportError(`${address}: ${driver} did not take it (bound to ${now ?? 'nothing'}; see dmesg)`, 'EIO');
}
