/**
 * A PCI function bound to vfio-pci: container, group and device fds; config
 * space and BARs through the device fd's regions; DMA memory mapped into the
 * IOMMU (type1) or used by physical address (no-IOMMU); MSI-X vectors wired to
 * eventfds, INTx as the fallback, polling as the last resort.
 */
import { closeSync, existsSync, openSync, readdirSync, readlinkSync } from 'node:fs';
import { basename } from 'node:path';
import type { DmaRegion } from '../../../ffi/dma.ts';
import { ErrnoError, isErrnoError } from '../../../ffi/errno.ts';
import { EventFd } from '../../../ffi/event-fd.ts';
import { HugepageMemory, HUGEPAGE_BYTES } from '../../../ffi/hugepage-memory.ts';
import { ioctl } from '../../../ffi/ioctl.ts';
import { mmap, munmap, viewMemory } from '../../../ffi/libc.ts';
import { Mmio } from '../../../ffi/mmio.ts';
import { sharedPoller } from '../../../ffi/poller.ts';
import type { Struct } from '../../../ffi/struct.ts';
import * as v from '../../../ffi/vfio.ts';
import { TransportError } from '../transport.ts';
import { bindAdvice, boundDriver, requireVirtioFsFunction } from './sysfs.ts';
import { readConfig, writeConfig } from './config-file.ts';
import type { InterruptMode, PciFunction } from './pci-function.ts';

const PROT_READ_WRITE = 0x3;
const MAP_SHARED = 0x01;

/** Sends an ioctl whose argument is one of the declared structs; returns the struct as filled in by the kernel. */
function call<V>(fd: number, request: number, s: Struct<V>, value: Partial<V>, extra = new Uint8Array(0)): V {
  const bytes = new Uint8Array(s.size + extra.length);
  s.encode(new DataView(bytes.buffer), 0, { argsz: bytes.length, ...value } as never);
  bytes.set(extra, s.size);
  ioctl(fd, request, bytes);
  return s.decode(new DataView(bytes.buffer));
}

export class VfioFunction implements PciFunction {
  readonly description: string;
  readonly dmaChunkBytes = HUGEPAGE_BYTES;
  private readonly container: number;
  private readonly group: number;
  private readonly device: number;
  private readonly noIommu: boolean;
  private readonly regions = new Map<number, { size: number; offset: number; flags: number }>();
  private readonly mapped: { address: bigint; size: number }[] = [];
  private readonly dmaMaps: { iova: bigint; size: number }[] = [];
  private memory: HugepageMemory | undefined;
  private eventfds: EventFd[] = [];
  private onVector: (() => void)[] = [];
  private irqMode: InterruptMode = 'polling';
  /** Vectors whose eventfd a per-queue thread waits on (not watched here). */
  private readonly lentVectors = new Set<number>();

  constructor(readonly address: string) {
    const sysfs = `/sys/bus/pci/devices/${address}`;
    requireVirtioFsFunction(address);
    if (boundDriver(address) !== 'vfio-pci') throw new TransportError(bindAdvice(address, 'vfio-pci'), 'ENODEV');
    let groupName: string;
    try {
      groupName = basename(readlinkSync(`${sysfs}/iommu_group`));
    } catch {
      throw new TransportError(
        `${address} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on), or load vfio in no-IOMMU mode ('modprobe vfio enable_unsafe_noiommu_mode=1') before vfio-pci`,
        'ENODEV',
      );
    }
    const noIommuPath = `/dev/vfio/noiommu-${groupName}`;
    this.noIommu = existsSync(noIommuPath);
    const groupPath = this.noIommu ? noIommuPath : `/dev/vfio/${groupName}`;
    if (!existsSync(groupPath)) {
      throw new TransportError(`${groupPath} missing although ${address} is bound to vfio-pci: is udev or devtmpfs creating /dev/vfio nodes?`, 'ENODEV');
    }
    this.description = this.noIommu ? 'vfio (no-IOMMU)' : 'vfio';
    this.container = openSync('/dev/vfio/vfio', 'r+');
    try {
      if (ioctl(this.container, v.VFIO_GET_API_VERSION) !== v.VFIO_API_VERSION) throw new TransportError('unknown VFIO API version', 'EPROTO');
      this.group = openSync(groupPath, 'r+');
      const status = call(this.group, v.VFIO_GROUP_GET_STATUS, v.vfio_group_status, {});
      if (!(status.flags & v.VFIO_GROUP_FLAGS_VIABLE)) throw new TransportError(notViable(groupName, address), 'EBUSY');
      const containerFd = new Uint8Array(4);
      new DataView(containerFd.buffer).setInt32(0, this.container, true);
      ioctl(this.group, v.VFIO_GROUP_SET_CONTAINER, containerFd);
      const type = this.noIommu
        ? v.VFIO_NOIOMMU_IOMMU
        : ioctl(this.container, v.VFIO_CHECK_EXTENSION, v.VFIO_TYPE1v2_IOMMU) === 1
          ? v.VFIO_TYPE1v2_IOMMU
          : v.VFIO_TYPE1_IOMMU;
      ioctl(this.container, v.VFIO_SET_IOMMU, type);
      this.device = ioctl(this.group, v.VFIO_GROUP_GET_DEVICE_FD, Buffer.from(`${address}\0`));
      const info = call(this.device, v.VFIO_DEVICE_GET_INFO, v.vfio_device_info, {});
      for (let index = 0; index < Math.min(info.num_regions, v.VFIO_PCI_CONFIG_REGION_INDEX + 1); index++) {
        const r = call(this.device, v.VFIO_DEVICE_GET_REGION_INFO, v.vfio_region_info, { index });
        this.regions.set(index, { size: Number(r.size), offset: Number(r.offset), flags: r.flags });
      }
    } catch (e) {
      this.close();
      throw e;
    }
  }

  configRead(offset: number, width: 1 | 2 | 4): number {
    return readConfig(this.device, this.configOffset() + offset, width);
  }

  configWrite(offset: number, width: 1 | 2 | 4, value: number): void {
    writeConfig(this.device, this.configOffset() + offset, width, value);
  }

  bar(index: number): Mmio {
    const r = this.regions.get(index);
    if (!r || r.size === 0) throw new TransportError(`${this.address}: BAR${index} not implemented`, 'EINVAL');
    if (!(r.flags & v.VFIO_REGION_INFO_FLAG_MMAP)) throw new TransportError(`${this.address}: BAR${index} cannot be mmapped`, 'EINVAL');
    const address = mmap(r.size, PROT_READ_WRITE, MAP_SHARED, this.device, r.offset);
    this.mapped.push({ address, size: r.size });
    return new Mmio(viewMemory(address, r.size), r.size, `BAR${index} of ${this.address}`, address);
  }

  /**
   * Hugepages, used by physical address. With an IOMMU they are also mapped at
   * IOVA = physical address: QEMU's vhost-user-fs cannot sit behind its
   * emulated IOMMU (no iommu_platform), so its DMA bypasses it; with a real
   * IOMMU any IOVA would do.
   */
  allocateDma(bytes: number): DmaRegion {
    const memory = new HugepageMemory(bytes);
    if (!this.noIommu) {
      for (const page of memory.pages()) {
        call(this.container, v.VFIO_IOMMU_MAP_DMA, v.vfio_iommu_type1_dma_map, {
          flags: v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE,
          vaddr: memory.userAddress + BigInt(page.offset),
          iova: page.physical,
          size: BigInt(HUGEPAGE_BYTES),
        });
        this.dmaMaps.push({ iova: page.physical, size: HUGEPAGE_BYTES });
      }
    }
    this.memory = memory;
    return memory;
  }

  enableInterrupts(vectors: number, onInterrupt: (vector: number) => void): InterruptMode {
    for (const [index, mode] of [
      [v.VFIO_PCI_MSIX_IRQ_INDEX, 'msix'],
      [v.VFIO_PCI_INTX_IRQ_INDEX, 'intx'],
    ] as const) {
      const count = mode === 'msix' ? vectors : 1;
      try {
        const info = call(this.device, v.VFIO_DEVICE_GET_IRQ_INFO, v.vfio_irq_info, { index });
        if (info.count < count) continue;
        const fds = Array.from({ length: count }, () => new EventFd());
        const data = new Uint8Array(4 * count);
        fds.forEach((fd, i) => new DataView(data.buffer).setInt32(4 * i, fd.fd, true));
        call(this.device, v.VFIO_DEVICE_SET_IRQS, v.vfio_irq_set, { flags: v.VFIO_IRQ_SET_DATA_EVENTFD | v.VFIO_IRQ_SET_ACTION_TRIGGER, index, start: 0, count }, data);
        this.eventfds = fds;
        this.irqMode = mode;
        this.onVector = fds.map((fd, vector) => () => {
          fd.drain();
          onInterrupt(mode === 'msix' ? vector : -1);
          // VFIO masks a level-triggered INTx when it fires: unmask once the ISR has been read.
          if (mode === 'intx') call(this.device, v.VFIO_DEVICE_SET_IRQS, v.vfio_irq_set, { flags: v.VFIO_IRQ_SET_DATA_NONE | v.VFIO_IRQ_SET_ACTION_UNMASK, index, start: 0, count: 1 });
        });
        fds.forEach((fd, vector) => sharedPoller().watch(fd.fd, 'readable', this.onVector[vector]!));
        return mode;
      } catch (e) {
        if (!isErrnoError(e)) throw e;
      }
    }
    return 'polling';
  }

  lendVector(vector: number): number | undefined {
    const fd = this.eventfds[vector];
    if (this.irqMode !== 'msix' || !fd || this.lentVectors.has(vector)) return undefined;
    sharedPoller().unwatch(fd.fd);
    this.lentVectors.add(vector);
    return fd.fd;
  }

  reclaimVector(vector: number): void {
    const fd = this.eventfds[vector];
    if (!fd || !this.lentVectors.delete(vector)) return;
    sharedPoller().watch(fd.fd, 'readable', this.onVector[vector]!);
  }

  reset(): void {
    try {
      ioctl(this.device, v.VFIO_DEVICE_RESET);
    } catch (e) {
      if (!isErrnoError(e, 'ENOTTY', 'EINVAL')) throw e;
    }
  }

  close(): void {
    for (const fd of this.eventfds) {
      sharedPoller().unwatch(fd.fd);
      fd.close();
    }
    this.eventfds = [];
    this.lentVectors.clear();
    for (const m of this.mapped.splice(0)) munmap(m.address, m.size);
    for (const d of this.dmaMaps.splice(0)) {
      try {
        call(this.container, v.VFIO_IOMMU_UNMAP_DMA, v.vfio_iommu_type1_dma_unmap, { iova: d.iova, size: BigInt(d.size) });
      } catch (e) {
        if (!(e instanceof ErrnoError)) throw e;
      }
    }
    this.memory?.close();
    this.memory = undefined;
    for (const fd of [this.device, this.group, this.container]) {
      if (fd === undefined) continue;
      try {
        closeSync(fd);
      } catch {
        // never opened
      }
    }
  }

  private configOffset(): number {
    const r = this.regions.get(v.VFIO_PCI_CONFIG_REGION_INDEX);
    if (!r) throw new TransportError(`${this.address}: no config region`, 'EIO');
    return r.offset;
  }
}

/**
 * Why group `group` is not viable, in one line: the other functions in it bound to a host driver
 * (bridges' pcieport is allowed), and how to let go of them.
 */
function notViable(group: string, address: string): string {
  const dir = `/sys/kernel/iommu_groups/${group}/devices`;
  let others: { bdf: string; driver: string }[] = [];
  try {
    others = readdirSync(dir)
      .filter((bdf) => bdf !== address)
      .map((bdf) => ({ bdf, driver: boundDriver(bdf) ?? '' }))
      .filter((o) => o.driver !== '' && o.driver !== 'vfio-pci' && o.driver !== 'pcieport');
  } catch {
    // no sysfs view of the group: the general advice below
  }
  if (others.length === 0) return `IOMMU group ${group} is not viable: every function in it must be bound to vfio-pci or to no driver (ls ${dir})`;
  const unbind = others.map((o) => `echo ${o.bdf} > /sys/bus/pci/devices/${o.bdf}/driver/unbind`).join(' && ');
  return `IOMMU group ${group} is not viable: ${others.map((o) => `${o.bdf} (${o.driver})`).join(', ')} ${others.length > 1 ? 'share' : 'shares'} it with ${address}: unbind ${others.length > 1 ? 'them' : 'it'} ('${unbind}') or bind ${others.length > 1 ? 'them' : 'it'} to vfio-pci too`;
}
