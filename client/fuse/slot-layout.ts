/**
 * How a request uses its slot (SLOT_SIZE bytes, page-aligned in device memory).
 * Data gets its own page-aligned buffer, as in the kernel's virtio_fs driver:
 * the device may hand it straight to O_DIRECT I/O, which needs alignment.
 */
import { fuse_in_header, fuse_write_in } from '../protocol/abi.ts';

export const REQUEST_AT = 0;
/**
 * What a request read from /dev/fuse puts at REQUEST_AT before the rest goes to DATA_AT:
 * fuse_in_header + fuse_write_in, so a WRITE's data lands page-aligned in the data area.
 */
export const WRITE_HEAD = fuse_in_header.size + fuse_write_in.size;
/** fuse_in_header, the argument struct and up to two names (a PATH_MAX symlink target fits). */
export const REQUEST_ROOM = 8192;
export const REPLY_AT = 8192;
/** fuse_out_header and the largest fixed reply struct (fuse_statx_out, 288 bytes). */
export const REPLY_ROOM = 4096;
/** Data follows the headers; its size is the device's `dataRoom`. */
export const DATA_AT = 12288;

