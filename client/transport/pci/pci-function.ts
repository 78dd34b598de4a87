/**
 * One PCI function driven from userspace: what VFIO and UIO each provide to
 * the virtio-pci transport. Config space, BAR mappings, memory the device can
 * DMA to, and interrupts.
 */
import type { DmaRegion } from '../../../ffi/dma.ts';
import type { Mmio } from '../../../ffi/mmio.ts';

export type InterruptMode =
  /** One eventfd per vector: vector 0 for config changes, vector 1+i for queue i. */
  | 'msix'
  /** The function's single legacy interrupt: read the ISR to learn what happened. */
  | 'intx'
  /** No interrupts: the transport polls the used rings. */
  | 'polling';

export interface PciFunction {
  /** Bus/device/function: '0000:00:03.0'. */
  readonly address: string;
  /** For messages: 'vfio (no-IOMMU)', 'uio'. */
  readonly description: string;
  configRead(offset: number, width: 1 | 2 | 4): number;
  configWrite(offset: number, width: 1 | 2 | 4, value: number): void;
  /** BAR `index` mapped for register access. */
  bar(index: number): Mmio;
  /** allocateDma's memory is device-contiguous only within aligned chunks of this size. */
  readonly dmaChunkBytes: number;
  /** Memory the device can DMA to. */
  allocateDma(bytes: number): DmaRegion;
  /**
   * Wires `vectors` interrupt vectors (MSI-X) to `onInterrupt(vector)`, or the
   * legacy interrupt (vector -1), or nothing; returns which it managed.
   */
  enableInterrupts(vectors: number, onInterrupt: (vector: number) => void): InterruptMode;
  /**
   * With MSI-X: hands vector `vector`'s eventfd to another thread of this process (a per-queue
   * thread waits on it itself) and stops watching it here until reclaimVector. Undefined when the
   * function has no eventfd of that vector's own (INTx, UIO).
   */
  lendVector?(vector: number): number | undefined;
  reclaimVector?(vector: number): void;
  /** Function-level reset where the kernel offers one. */
  reset(): void;
  close(): void;
}

// PCI configuration space (PCI Local Bus spec 3.0, 6.1).
export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;
export const PCI_COMMAND_INTX_DISABLE = 0x400;
export const PCI_STATUS_CAP_LIST = 0x10;
export const PCI_CAP_ID_VNDR = 0x09;
export const PCI_CAP_ID_MSIX = 0x11;

export const VIRTIO_VENDOR_ID = 0x1af4;
/** 0x1040 + virtio device id 26 (virtio-fs). */
export const VIRTIO_FS_DEVICE_ID = 0x105a;
