/**
 * A PCI function bound to uio_pci_generic: config space through sysfs, BARs
 * by mmap of sysfs `resourceN` (UIO itself maps none for this driver), DMA
 * from hugepages by physical address, and the legacy interrupt through
 * /dev/uioN (unmasked in PCI_COMMAND after each one).
 */
import { closeSync, existsSync, openSync, readSync, readdirSync, readlinkSync, statSync, writeSync } from 'node:fs';
import { basename } from 'node:path';
import type { DmaRegion } from '../../../ffi/dma.ts';
import { HugepageMemory, HUGEPAGE_BYTES } from '../../../ffi/hugepage-memory.ts';
import { mmap, munmap, viewMemory } from '../../../ffi/libc.ts';
import { Mmio } from '../../../ffi/mmio.ts';
import { sharedPoller } from '../../../ffi/poller.ts';
import { TransportError } from '../transport.ts';
import { bindAdvice, requireVirtioFsFunction } from './sysfs.ts';
import { readConfig, writeConfig } from './config-file.ts';
import { PCI_COMMAND, PCI_COMMAND_INTX_DISABLE, type InterruptMode, type PciFunction } from './pci-function.ts';

const PROT_READ_WRITE = 0x3;
const MAP_SHARED = 0x01;
const BDF = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;

/** 'uio0' or a BDF -> the BDF and its uio device name. */
function resolveUio(name: string): { address: string; uio: string } {
  if (BDF.test(name)) {
    requireVirtioFsFunction(name);
    const dir = `/sys/bus/pci/devices/${name}/uio`;
    const uio = existsSync(dir) ? readdirSync(dir)[0] : undefined;
    if (!uio) throw new TransportError(bindAdvice(name, 'uio_pci_generic'), 'ENODEV');
    return { address: name, uio };
  }
  if (!existsSync(`/sys/class/uio/${name}`)) throw new TransportError(`no UIO device ${name} (see virtiofs-client devices)`, 'ENOENT');
  return { address: basename(readlinkSync(`/sys/class/uio/${name}/device`)), uio: name };
}

export class UioFunction implements PciFunction {
  readonly description = 'uio';
  readonly address: string;
  readonly dmaChunkBytes = HUGEPAGE_BYTES;
  private readonly config: number;
  private readonly uio: number;
  private readonly mapped: { address: bigint; size: number }[] = [];
  private memory: HugepageMemory | undefined;
  private watching = false;

  constructor(name: string) {
    const { address, uio } = resolveUio(name);
    this.address = address;
    this.config = openSync(`/sys/bus/pci/devices/${address}/config`, 'r+');
    this.uio = openSync(`/dev/${uio}`, 'r+');
  }

  configRead(offset: number, width: 1 | 2 | 4): number {
    return readConfig(this.config, offset, width);
  }

  configWrite(offset: number, width: 1 | 2 | 4, value: number): void {
    writeConfig(this.config, offset, width, value);
  }

  bar(index: number): Mmio {
    const path = `/sys/bus/pci/devices/${this.address}/resource${index}`;
    if (!existsSync(path)) throw new TransportError(`${this.address}: BAR${index} not implemented`, 'EINVAL');
    const size = statSync(path).size;
    const fd = openSync(path, 'r+');
    try {
      const address = mmap(size, PROT_READ_WRITE, MAP_SHARED, fd);
      this.mapped.push({ address, size });
      return new Mmio(viewMemory(address, size), size, `BAR${index} of ${this.address}`, address);
    } finally {
      closeSync(fd);
    }
  }

  allocateDma(bytes: number): DmaRegion {
    this.memory = new HugepageMemory(bytes);
    return this.memory;
  }

  enableInterrupts(_vectors: number, onInterrupt: (vector: number) => void): InterruptMode {
    const count = Buffer.alloc(4);
    this.watching = true;
    sharedPoller().watch(this.uio, 'readable', () => {
      readSync(this.uio, count, 0, 4, null);
      onInterrupt(-1);
      // uio_pci_generic masks INTx (PCI_COMMAND's INTx-disable bit) when it fires and has no
      // irqcontrol to undo that: once the ISR read above lowered the line, unmask it ourselves.
      this.configWrite(PCI_COMMAND, 2, this.configRead(PCI_COMMAND, 2) & ~PCI_COMMAND_INTX_DISABLE);
    });
    return 'intx';
  }

  reset(): void {
    const path = `/sys/bus/pci/devices/${this.address}/reset`;
    if (!existsSync(path)) return;
    const fd = openSync(path, 'w');
    try {
      writeSync(fd, '1');
    } finally {
      closeSync(fd);
    }
  }

  close(): void {
    if (this.watching) sharedPoller().unwatch(this.uio);
    this.watching = false;
    for (const m of this.mapped.splice(0)) munmap(m.address, m.size);
    this.memory?.close();
    this.memory = undefined;
    for (const fd of [this.uio, this.config]) {
      try {
        closeSync(fd);
      } catch {
        // already closed
      }
    }
  }
}
