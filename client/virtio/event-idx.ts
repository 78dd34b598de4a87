/**
 * The VIRTIO_RING_F_EVENT_IDX notification rule (the spec's vring_need_event).
 *
 * A side that just moved its free-running 16-bit ring index from `oldIdx` to
 * `newIdx` must notify the other side iff the other side asked to be told
 * when entry `eventIdx` is written, and eventIdx lies in [oldIdx, newIdx)
 * modulo 2^16.
 */
export function needsEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}
