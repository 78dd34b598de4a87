/**
 * Device-independent virtio feature bits (VIRTIO 1.2 section 6, "Reserved
 * Feature Bits"), as bigint masks over the 64-bit feature word.
 */

const bit = (n: number): bigint => 1n << BigInt(n);

/** Legacy only: notify even when the avail ring is empty. */
export const VIRTIO_F_NOTIFY_ON_EMPTY = bit(24);
/** Legacy only: no assumptions about message framing. */
export const VIRTIO_F_ANY_LAYOUT = bit(27);
/** Descriptors with VIRTQ_DESC_F_INDIRECT (one descriptor pointing at a table). */
export const VIRTIO_RING_F_INDIRECT_DESC = bit(28);
/** used_event / avail_event notification suppression. */
export const VIRTIO_RING_F_EVENT_IDX = bit(29);
/** Non-legacy device: virtio 1.x layout, little-endian rings. */
export const VIRTIO_F_VERSION_1 = bit(32);
/** Device accesses memory through a platform IOMMU / translation. */
export const VIRTIO_F_ACCESS_PLATFORM = bit(33);
/** Packed virtqueue layout (not the split layout implemented here). */
export const VIRTIO_F_RING_PACKED = bit(34);
/** Buffers are used in the order they were made available. */
export const VIRTIO_F_IN_ORDER = bit(35);
/** Ring accesses need platform (not just SMP) memory barriers. */
export const VIRTIO_F_ORDER_PLATFORM = bit(36);
/** Device supports single-root I/O virtualization. */
export const VIRTIO_F_SR_IOV = bit(37);
/** Driver passes extra data with available buffer notifications. */
export const VIRTIO_F_NOTIFICATION_DATA = bit(38);
/** Driver uses the device-provided notification config data. */
export const VIRTIO_F_NOTIF_CONFIG_DATA = bit(39);
/** Individual virtqueues can be reset. */
export const VIRTIO_F_RING_RESET = bit(40);

/** Ring features the split Virtqueue in this directory knows how to use. */
export const SPLIT_VIRTQUEUE_FEATURES = VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;

export function hasFeature(features: bigint, mask: bigint): boolean {
  return (features & mask) === mask;
}
