/**
 * vhost-user message layouts (QEMU docs/interop/vhost-user.rst): a 12-byte
 * header then a payload; file descriptors travel beside it as SCM_RIGHTS.
 * Only the messages a virtio-fs frontend sends are declared.
 */
import { struct } from '../../../ffi/struct.ts';

export const Request = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  SET_MEM_TABLE: 5,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  GET_CONFIG: 24,
  // Not sent by our frontend; named so a backend (examples/reference-device) can log and refuse them.
  RESET_OWNER: 4,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  SET_CONFIG: 25,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

export type RequestName = keyof typeof Request;

export function requestName(n: number): string {
  return Object.entries(Request).find(([, v]) => v === n)?.[0] ?? `REQUEST_${n}`;
}

/** Header flags: protocol version 1 in the low bits, plus reply markers. */
export const HeaderFlag = {
  VERSION: 0x1,
  REPLY: 0x4,
  NEED_REPLY: 0x8,
} as const;

/** The version bits of the header flags (HeaderFlag.VERSION is the only version). */
export const HEADER_VERSION_MASK = 0x3;

export const ProtocolFeature = {
  MQ: 1n << 0n,
  LOG_SHMFD: 1n << 1n,
  REPLY_ACK: 1n << 3n,
  BACKEND_REQ: 1n << 5n,
  CONFIG: 1n << 9n,
  CONFIGURE_MEM_SLOTS: 1n << 15n,
} as const;

/** Virtio feature bit 30 in GET_FEATURES: the backend speaks protocol features. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 1n << 30n;
/** SET_VRING_KICK/CALL/ERR payload bit: no fd accompanies the message. */
export const VRING_NOFD_MASK = 0x100n;
/** SET_VRING_KICK/CALL/ERR payload: the queue index is in the low byte. */
export const VRING_IDX_MASK = 0xffn;
/** A backend's table holds at most this many regions without CONFIGURE_MEM_SLOTS. */
export const MAX_MEM_REGIONS = 8;

export const header = struct('vhost_user_header', { request: 'u32', flags: 'u32', size: 'u32' }, 12);

export const u64Payload = struct('vhost_user_u64', { value: 'u64' }, 8);

export const vringState = struct('vhost_vring_state', { index: 'u32', num: 'u32' }, 8);

export const vringAddr = struct(
  'vhost_vring_addr',
  { index: 'u32', flags: 'u32', descriptor: 'u64', used: 'u64', available: 'u64', log: 'u64' },
  40,
);

export const memoryRegion = struct(
  'vhost_user_memory_region',
  { guest_phys_addr: 'u64', memory_size: 'u64', userspace_addr: 'u64', mmap_offset: 'u64' },
  32,
);

/** SET_MEM_TABLE payload: this header, then `nregions` memoryRegion entries (one fd each). */
export const memoryTableHeader = struct('vhost_user_memory', { nregions: 'u32', padding: 'u32' }, 8);

/** GET_CONFIG payload header; `size` bytes of device config follow. */
export const configHeader = struct('vhost_user_config', { offset: 'u32', size: 'u32', flags: 'u32' }, 12);

/** The largest payload we accept from a backend: more is a protocol violation. */
export const MAX_PAYLOAD = 4096;
