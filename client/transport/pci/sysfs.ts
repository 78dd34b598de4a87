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

/** Throws a one-line error unless `address` exists and is a virtio-fs function (1af4:105a). */
export function requireVirtioFsFunction(address: string): void {
  const dir = `${DEVICES}/${address}`;
  if (!existsSync(dir)) throw new TransportError(`no PCI function ${address} (see virtiofs-client devices)`, 'ENOENT');
  const vendor = hex(`${dir}/vendor`);
  const device = hex(`${dir}/device`);
  if (vendor !== VIRTIO_VENDOR_ID || device !== VIRTIO_FS_DEVICE_ID) {
    const id = (n: number) => n.toString(16).padStart(4, '0');
    throw new TransportError(`${address} is ${id(vendor)}:${id(device)}, not a virtio-fs function (${id(VIRTIO_VENDOR_ID)}:${id(VIRTIO_FS_DEVICE_ID)}): see virtiofs-client devices`, 'ENODEV');
  }
}

/** The driver bound to `address` (vfio-pci, uio_pci_generic, virtio-pci, ...), or undefined. */
export function boundDriver(address: string): string | undefined {
  const link = `${DEVICES}/${address}/driver`;
  return existsSync(link) ? basename(readlinkSync(link)) : undefined;
}

/** vfio's switch for no-IOMMU mode; present only when the kernel was built with CONFIG_VFIO_NOIOMMU. */
const NOIOMMU_PARAM = '/sys/module/vfio/parameters/enable_unsafe_noiommu_mode';

/**
 * Without an IOMMU, vfio-pci takes a function only in vfio's no-IOMMU mode: the one-line reason it
 * cannot now, and what to do; undefined when nothing stands in the way (an IOMMU, the mode on, or
 * vfio not loaded yet: loadCommand then names the option).
 */
function noIommuBlocker(address: string): string | undefined {
  if (hasIommu() || !existsSync('/sys/module/vfio')) return undefined;
  if (!existsSync(NOIOMMU_PARAM)) {
    return `there is no IOMMU and this kernel's vfio has no no-IOMMU mode (CONFIG_VFIO_NOIOMMU is not set, as in Debian's kernels): use uio_pci_generic ('modprobe uio_pci_generic && virtiofs-client bind ${address} uio_pci_generic'), or boot with the IOMMU on (intel_iommu=on or amd_iommu=on)`;
  }
  if (readFileSync(NOIOMMU_PARAM, 'utf8').trim() !== 'Y') return `there is no IOMMU and vfio's no-IOMMU mode is off: run 'echo Y > ${NOIOMMU_PARAM}'`;
  return undefined;
}

/** How to load `driver`'s module: a command line, or '' when it is loaded. */
function loadCommand(driver: string): string {
  if (existsSync(`/sys/bus/pci/drivers/${driver}`)) return '';
  // Without an IOMMU, vfio must be loaded in no-IOMMU mode before vfio-pci pulls it in.
  const noIommu = driver === 'vfio-pci' && !hasIommu() && !existsSync('/sys/module/vfio') ? 'modprobe vfio enable_unsafe_noiommu_mode=1 && ' : '';
  return `${noIommu}modprobe ${driver}`;
}

function hasIommu(): boolean {
  return existsSync('/sys/class/iommu') && readdirSync('/sys/class/iommu').length > 0;
}

/**
 * What to run so that `address` is driven by `driver`, for an error message: the modprobe its
 * module needs, if any, then the bind, e.g. `0000:00:04.0 is bound to virtio-pci, not vfio-pci:
 * run 'modprobe vfio-pci && virtiofs-client bind 0000:00:04.0 vfio-pci'`.
 */
export function bindAdvice(address: string, driver: 'vfio-pci' | 'uio_pci_generic'): string {
  const load = loadCommand(driver);
  return `${address} is bound to ${boundDriver(address) ?? 'no driver'}, not ${driver}: run '${load ? `${load} && ` : ''}virtiofs-client bind ${address} ${driver}'`;
}

/** Unbinds `address` from its driver and binds it to `driver` (the module must be loaded). */
export function bindDriver(address: string, driver: string): void {
  const dir = `${DEVICES}/${address}`;
  if (!existsSync(dir)) throw new TransportError(`no PCI function ${address} (see virtiofs-client devices)`, 'ENOENT');
  const blocker = driver === 'vfio-pci' ? noIommuBlocker(address) : undefined;
  if (blocker) throw new TransportError(`vfio-pci cannot take ${address}: ${blocker}`, 'ENODEV');
  const load = loadCommand(driver);
  if (load) throw new TransportError(`driver ${driver} is not loaded: run '${load}' first`, 'ENOENT');
  if (existsSync(`${dir}/driver`)) writeFileSync(`${dir}/driver/unbind`, address);
  writeFileSync(`${dir}/driver_override`, driver);
  writeFileSync('/sys/bus/pci/drivers_probe', address);
  const now = boundDriver(address);
  if (now !== driver) {
    // vfio loaded meanwhile (vfio-pci pulled it in) without the mode: say so rather than 'see dmesg'.
    const why = driver === 'vfio-pci' ? noIommuBlocker(address) : undefined;
    throw new TransportError(why ? `vfio-pci cannot take ${address}: ${why}` : `${address}: ${driver} did not take it (bound to ${now ?? 'nothing'}; see dmesg)`, 'EIO');
  }
}
