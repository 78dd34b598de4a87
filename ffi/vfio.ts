/**
 * VFIO ioctls and argument structs (include/uapi/linux/vfio.h), declared once
 * with the protocol struct codec.
 */
import { struct } from './struct.ts';
import { _IO } from './ioctl.ts';

const VFIO_TYPE = ';';
const VFIO_BASE = 100;
const vfio = (n: number) => _IO(VFIO_TYPE, VFIO_BASE + n);

export const VFIO_API_VERSION = 0;
export const VFIO_TYPE1_IOMMU = 1;
export const VFIO_TYPE1v2_IOMMU = 3;
export const VFIO_NOIOMMU_IOMMU = 8;

export const VFIO_GET_API_VERSION = vfio(0);
export const VFIO_CHECK_EXTENSION = vfio(1);
export const VFIO_SET_IOMMU = vfio(2);
export const VFIO_GROUP_GET_STATUS = vfio(3);
export const VFIO_GROUP_SET_CONTAINER = vfio(4);
export const VFIO_GROUP_GET_DEVICE_FD = vfio(6);
export const VFIO_DEVICE_GET_INFO = vfio(7);
export const VFIO_DEVICE_GET_REGION_INFO = vfio(8);
export const VFIO_DEVICE_GET_IRQ_INFO = vfio(9);
export const VFIO_DEVICE_SET_IRQS = vfio(10);
export const VFIO_DEVICE_RESET = vfio(11);
export const VFIO_IOMMU_MAP_DMA = vfio(13);
export const VFIO_IOMMU_UNMAP_DMA = vfio(14);

export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
export const VFIO_DMA_MAP_FLAG_READ = 1 << 0;
export const VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;
export const VFIO_IRQ_SET_DATA_NONE = 1 << 0;
export const VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2;
export const VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4;
export const VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5;

export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
export const VFIO_PCI_INTX_IRQ_INDEX = 0;
export const VFIO_PCI_MSIX_IRQ_INDEX = 2;

export const vfio_group_status = struct('vfio_group_status', { argsz: 'u32', flags: 'u32' }, 8);
export const vfio_device_info = struct(
  'vfio_device_info',
  { argsz: 'u32', flags: 'u32', num_regions: 'u32', num_irqs: 'u32', cap_offset: 'u32', pad: 'u32' },
  24,
);
export const vfio_region_info = struct(
  'vfio_region_info',
  { argsz: 'u32', flags: 'u32', index: 'u32', cap_offset: 'u32', size: 'u64', offset: 'u64' },
  32,
);
export const vfio_irq_info = struct('vfio_irq_info', { argsz: 'u32', flags: 'u32', index: 'u32', count: 'u32' }, 16);
/** Followed by `count` int32 eventfds (DATA_EVENTFD) or nothing (DATA_NONE). */
export const vfio_irq_set = struct('vfio_irq_set', { argsz: 'u32', flags: 'u32', index: 'u32', start: 'u32', count: 'u32' }, 20);
export const vfio_iommu_type1_dma_map = struct(
  'vfio_iommu_type1_dma_map',
  { argsz: 'u32', flags: 'u32', vaddr: 'u64', iova: 'u64', size: 'u64' },
  32,
);
export const vfio_iommu_type1_dma_unmap = struct(
  'vfio_iommu_type1_dma_unmap',
  { argsz: 'u32', flags: 'u32', iova: 'u64', size: 'u64' },
  24,
);
