/**
 * FUSE wire structs, protocol 7.45 (include/uapi/linux/fuse.h). Only layouts
 * live here; what each opcode carries is in messages.ts. Sizes are sizeof()
 * from the header and are verified when the module loads.
 */
import { array, struct } from '../../ffi/struct.ts';

export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 45;
export const FUSE_ROOT_ID = 1n;

export const fuse_in_header = struct(
  'fuse_in_header',
  {
    len: 'u32',
    opcode: 'u32',
    unique: 'u64',
    nodeid: 'u64',
    uid: 'u32',
    gid: 'u32',
    pid: 'u32',
    total_extlen: 'u16', // extension length in 8-byte units
    padding: 'u16',
  },
  40,
);

export const fuse_out_header = struct('fuse_out_header', { len: 'u32', error: 'i32', unique: 'u64' }, 16);

export const fuse_attr = struct(
  'fuse_attr',
  {
    ino: 'u64',
    size: 'u64',
    blocks: 'u64',
    atime: 'u64',
    mtime: 'u64',
    ctime: 'u64',
    atimensec: 'u32',
    mtimensec: 'u32',
    ctimensec: 'u32',
    mode: 'u32',
    nlink: 'u32',
    uid: 'u32',
    gid: 'u32',
    rdev: 'u32',
    blksize: 'u32',
    flags: 'u32',
  },
  88,
);

export const fuse_sx_time = struct('fuse_sx_time', { tv_sec: 'i64', tv_nsec: 'u32', reserved: 'i32' }, 16);

export const fuse_statx = struct(
  'fuse_statx',
  {
    mask: 'u32',
    blksize: 'u32',
    attributes: 'u64',
    nlink: 'u32',
    uid: 'u32',
    gid: 'u32',
    mode: 'u16',
    spare0: 'u16',
    ino: 'u64',
    size: 'u64',
    blocks: 'u64',
    attributes_mask: 'u64',
    atime: fuse_sx_time,
    btime: fuse_sx_time,
    ctime: fuse_sx_time,
    mtime: fuse_sx_time,
    rdev_major: 'u32',
    rdev_minor: 'u32',
    dev_major: 'u32',
    dev_minor: 'u32',
    spare2: array('u64', 14),
  },
  256,
);

export const fuse_kstatfs = struct(
  'fuse_kstatfs',
  {
    blocks: 'u64',
    bfree: 'u64',
    bavail: 'u64',
    files: 'u64',
    ffree: 'u64',
    bsize: 'u32',
    namelen: 'u32',
    frsize: 'u32',
    padding: 'u32',
    spare: array('u32', 6),
  },
  80,
);

export const fuse_file_lock = struct(
  'fuse_file_lock',
  { start: 'u64', end: 'u64', type: 'u32', pid: 'u32' },
  24,
);

export const fuse_entry_out = struct(
  'fuse_entry_out',
  {
    nodeid: 'u64',
    generation: 'u64',
    entry_valid: 'u64',
    attr_valid: 'u64',
    entry_valid_nsec: 'u32',
    attr_valid_nsec: 'u32',
    attr: fuse_attr,
  },
  128,
);

export const fuse_forget_in = struct('fuse_forget_in', { nlookup: 'u64' }, 8);
export const fuse_forget_one = struct('fuse_forget_one', { nodeid: 'u64', nlookup: 'u64' }, 16);
export const fuse_batch_forget_in = struct('fuse_batch_forget_in', { count: 'u32', dummy: 'u32' }, 8);

export const fuse_getattr_in = struct('fuse_getattr_in', { getattr_flags: 'u32', dummy: 'u32', fh: 'u64' }, 16);

export const fuse_attr_out = struct(
  'fuse_attr_out',
  { attr_valid: 'u64', attr_valid_nsec: 'u32', dummy: 'u32', attr: fuse_attr },
  104,
);

export const fuse_statx_in = struct(
  'fuse_statx_in',
  { getattr_flags: 'u32', reserved: 'u32', fh: 'u64', sx_flags: 'u32', sx_mask: 'u32' },
  24,
);

export const fuse_statx_out = struct(
  'fuse_statx_out',
  { attr_valid: 'u64', attr_valid_nsec: 'u32', flags: 'u32', spare: array('u64', 2), stat: fuse_statx },
  288,
);

export const fuse_mknod_in = struct('fuse_mknod_in', { mode: 'u32', rdev: 'u32', umask: 'u32', padding: 'u32' }, 16);
export const fuse_mkdir_in = struct('fuse_mkdir_in', { mode: 'u32', umask: 'u32' }, 8);
export const fuse_rename_in = struct('fuse_rename_in', { newdir: 'u64' }, 8);
export const fuse_rename2_in = struct('fuse_rename2_in', { newdir: 'u64', flags: 'u32', padding: 'u32' }, 16);
export const fuse_link_in = struct('fuse_link_in', { oldnodeid: 'u64' }, 8);

export const fuse_setattr_in = struct(
  'fuse_setattr_in',
  {
    valid: 'u32',
    padding: 'u32',
    fh: 'u64',
    size: 'u64',
    lock_owner: 'u64',
    atime: 'u64',
    mtime: 'u64',
    ctime: 'u64',
    atimensec: 'u32',
    mtimensec: 'u32',
    ctimensec: 'u32',
    mode: 'u32',
    unused4: 'u32',
    uid: 'u32',
    gid: 'u32',
    unused5: 'u32',
  },
  88,
);

/** `flags` holds open(2) flags in the sender's architecture encoding: translated. */
export const fuse_open_in = struct('fuse_open_in', { flags: 'u32', open_flags: 'u32' }, 8);
/** `flags` holds open(2) flags: translated. */
export const fuse_create_in = struct(
  'fuse_create_in',
  { flags: 'u32', mode: 'u32', umask: 'u32', open_flags: 'u32' },
  16,
);
export const fuse_open_out = struct('fuse_open_out', { fh: 'u64', open_flags: 'u32', backing_id: 'i32' }, 16);

/** `flags` holds the open file's open(2) flags: translated. */
export const fuse_release_in = struct(
  'fuse_release_in',
  { fh: 'u64', flags: 'u32', release_flags: 'u32', lock_owner: 'u64' },
  24,
);
export const fuse_flush_in = struct(
  'fuse_flush_in',
  { fh: 'u64', unused: 'u32', padding: 'u32', lock_owner: 'u64' },
  24,
);

/** `flags` holds the open file's open(2) flags: translated. */
export const fuse_read_in = struct(
  'fuse_read_in',
  { fh: 'u64', offset: 'u64', size: 'u32', read_flags: 'u32', lock_owner: 'u64', flags: 'u32', padding: 'u32' },
  40,
);
/** `flags` holds the open file's open(2) flags: translated. */
export const fuse_write_in = struct(
  'fuse_write_in',
  { fh: 'u64', offset: 'u64', size: 'u32', write_flags: 'u32', lock_owner: 'u64', flags: 'u32', padding: 'u32' },
  40,
);
export const fuse_write_out = struct('fuse_write_out', { size: 'u32', padding: 'u32' }, 8);

export const fuse_statfs_out = struct('fuse_statfs_out', { st: fuse_kstatfs }, 80);
export const fuse_fsync_in = struct('fuse_fsync_in', { fh: 'u64', fsync_flags: 'u32', padding: 'u32' }, 16);

/** The 16-byte form is sent only when FUSE_SETXATTR_EXT was negotiated; otherwise the first 8 bytes. */
export const fuse_setxattr_in = struct(
  'fuse_setxattr_in',
  { size: 'u32', flags: 'u32', setxattr_flags: 'u32', padding: 'u32' },
  16,
);
export const FUSE_COMPAT_SETXATTR_IN_SIZE = 8;
export const fuse_getxattr_in = struct('fuse_getxattr_in', { size: 'u32', padding: 'u32' }, 8);
export const fuse_getxattr_out = struct('fuse_getxattr_out', { size: 'u32', padding: 'u32' }, 8);

/** `lk.type` is F_RDLCK/F_WRLCK/F_UNLCK in the sender's encoding: translated. */
export const fuse_lk_in = struct(
  'fuse_lk_in',
  { fh: 'u64', owner: 'u64', lk: fuse_file_lock, lk_flags: 'u32', padding: 'u32' },
  48,
);
/** `lk.type` comes back in the device's encoding: translated. */
export const fuse_lk_out = struct('fuse_lk_out', { lk: fuse_file_lock }, 24);

export const fuse_access_in = struct('fuse_access_in', { mask: 'u32', padding: 'u32' }, 8);

/**
 * FUSE_INIT request. `arch_indicator` is the architecture negotiation
 * extension of docs/arch-negotiation.md: upstream this word is unused[0].
 * Senders before 7.36 send only the first 16 bytes.
 */
export const fuse_init_in = struct(
  'fuse_init_in',
  {
    major: 'u32',
    minor: 'u32',
    max_readahead: 'u32',
    flags: 'u32',
    flags2: 'u32',
    arch_indicator: 'u32',
    unused: array('u32', 10),
  },
  64,
);
export const FUSE_COMPAT_INIT_IN_SIZE = 16;

/**
 * FUSE_INIT reply. `arch_indicator` (our extension, upstream unused[1..2]) is
 * the device's own architecture, informational. Devices before 7.23 send 24 bytes.
 */
export const fuse_init_out = struct(
  'fuse_init_out',
  {
    major: 'u32',
    minor: 'u32',
    max_readahead: 'u32',
    flags: 'u32',
    max_background: 'u16',
    congestion_threshold: 'u16',
    max_write: 'u32',
    time_gran: 'u32',
    max_pages: 'u16',
    map_alignment: 'u16',
    flags2: 'u32',
    max_stack_depth: 'u32',
    request_timeout: 'u16',
    unused0: 'u16',
    arch_indicator: 'u32',
    unused: array('u16', 8),
  },
  64,
);
export const FUSE_COMPAT_22_INIT_OUT_SIZE = 24;

export const fuse_interrupt_in = struct('fuse_interrupt_in', { unique: 'u64' }, 8);

export const fuse_fallocate_in = struct(
  'fuse_fallocate_in',
  { fh: 'u64', offset: 'u64', length: 'u64', mode: 'u32', padding: 'u32' },
  32,
);

export const fuse_lseek_in = struct('fuse_lseek_in', { fh: 'u64', offset: 'u64', whence: 'u32', padding: 'u32' }, 24);
export const fuse_lseek_out = struct('fuse_lseek_out', { offset: 'u64' }, 8);

export const fuse_copy_file_range_in = struct(
  'fuse_copy_file_range_in',
  { fh_in: 'u64', off_in: 'u64', nodeid_out: 'u64', fh_out: 'u64', off_out: 'u64', len: 'u64', flags: 'u64' },
  56,
);
export const fuse_copy_file_range_out = struct('fuse_copy_file_range_out', { bytes_copied: 'u64' }, 8);

export const fuse_syncfs_in = struct('fuse_syncfs_in', { padding: 'u64' }, 8);

/** Directory stream records; `name` (namelen bytes) follows, padded to 8. */
export const fuse_dirent = struct('fuse_dirent', { ino: 'u64', off: 'u64', namelen: 'u32', type: 'u32' }, 24);
export const fuse_direntplus = struct('fuse_direntplus', { entry_out: fuse_entry_out, dirent: fuse_dirent }, 152);

// Structs of opcodes this client does not send (IOCTL, POLL, BMAP, DAX mappings), of the request
// extensions, and of the notifications a server sends; declared so every wire field has a
// verdict on its architecture dependence (field-verdicts.ts) and a layout check.
export const fuse_ioctl_in = struct(
  'fuse_ioctl_in',
  { fh: 'u64', flags: 'u32', cmd: 'u32', arg: 'u64', in_size: 'u32', out_size: 'u32' },
  32,
);
export const fuse_ioctl_iovec = struct('fuse_ioctl_iovec', { base: 'u64', len: 'u64' }, 16);
export const fuse_ioctl_out = struct('fuse_ioctl_out', { result: 'i32', flags: 'u32', in_iovs: 'u32', out_iovs: 'u32' }, 16);
export const fuse_poll_in = struct('fuse_poll_in', { fh: 'u64', kh: 'u64', flags: 'u32', events: 'u32' }, 24);
export const fuse_poll_out = struct('fuse_poll_out', { revents: 'u32', padding: 'u32' }, 8);
export const fuse_notify_poll_wakeup_out = struct('fuse_notify_poll_wakeup_out', { kh: 'u64' }, 8);
export const fuse_bmap_in = struct('fuse_bmap_in', { block: 'u64', blocksize: 'u32', padding: 'u32' }, 16);
export const fuse_bmap_out = struct('fuse_bmap_out', { block: 'u64' }, 8);
export const fuse_setupmapping_in = struct(
  'fuse_setupmapping_in',
  { fh: 'u64', foffset: 'u64', len: 'u64', flags: 'u64', moffset: 'u64' },
  40,
);
export const fuse_removemapping_in = struct('fuse_removemapping_in', { count: 'u32' }, 4);
export const fuse_removemapping_one = struct('fuse_removemapping_one', { moffset: 'u64', len: 'u64' }, 16);
/** Request extensions (FUSE_INIT_EXT): a header, then the security context or supplementary groups. */
export const fuse_ext_header = struct('fuse_ext_header', { size: 'u32', type: 'u32' }, 8);
export const fuse_secctx_header = struct('fuse_secctx_header', { size: 'u32', nr_secctx: 'u32' }, 8);
export const fuse_secctx = struct('fuse_secctx', { size: 'u32', padding: 'u32' }, 8);
/** `groups` (nr_groups u32s) follows. */
export const fuse_supp_groups = struct('fuse_supp_groups', { nr_groups: 'u32' }, 4);
export const fuse_notify_inval_inode_out = struct('fuse_notify_inval_inode_out', { ino: 'u64', off: 'i64', len: 'i64' }, 24);
export const fuse_notify_inval_entry_out = struct('fuse_notify_inval_entry_out', { parent: 'u64', namelen: 'u32', flags: 'u32' }, 16);
export const fuse_notify_delete_out = struct('fuse_notify_delete_out', { parent: 'u64', child: 'u64', namelen: 'u32', padding: 'u32' }, 24);
export const fuse_notify_store_out = struct('fuse_notify_store_out', { nodeid: 'u64', offset: 'u64', size: 'u32', padding: 'u32' }, 24);
export const fuse_notify_retrieve_out = struct(
  'fuse_notify_retrieve_out',
  { notify_unique: 'u64', nodeid: 'u64', offset: 'u64', size: 'u32', padding: 'u32' },
  32,
);
export const fuse_notify_retrieve_in = struct(
  'fuse_notify_retrieve_in',
  { dummy1: 'u64', offset: 'u64', size: 'u32', dummy2: 'u32', dummy3: 'u64', dummy4: 'u64' },
  40,
);
