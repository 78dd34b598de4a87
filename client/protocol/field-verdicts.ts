/**
 * Every field of every declared wire struct, and whether its meaning depends on the client's
 * architecture (Stefan Hajnoczi's question on linux-fsdevel, June 2024: "whether there are more
 * commands/fields in FUSE that operate in an arch-specific way"). One table keyed by
 * `struct.field`; test/unit/field-verdicts.test.ts fails when a declared field has none, and
 * docs/arch-negotiation.md's field table is generated from it (npm run docs:fields).
 */
import { Struct } from '../../ffi/struct.ts';
import * as abi from './abi.ts';

/**
 * `open-flags`, `errno`, `lock-type`: architecture-dependent and translated (wire-translation.ts).
 * `ioctl-cmd`: architecture-dependent; the commands the kernel itself interprets (fileattr:
 * lsattr/chattr) are translated, every other command passes untouched (client/arch/ioctl.ts).
 * `ioctl-arg`: architecture-dependent per command and ABI, not translated (no table can know it).
 * `poll-events`: architecture-dependent, not translated (this client does not send POLL). `independent`: the same on every Linux architecture. `struct`: a
 * nested struct, whose own fields carry the verdicts.
 */
export type FieldArch = 'open-flags' | 'errno' | 'lock-type' | 'ioctl-cmd' | 'ioctl-arg' | 'poll-events' | 'independent' | 'struct';

export interface FieldVerdict {
  arch: FieldArch;
  why: string;
}

const v = (arch: FieldArch, why: string): FieldVerdict => ({ arch, why });
const INT = v('independent', 'a plain integer: size, offset, count, block or length');
const TIME = v('independent', 'seconds/nanoseconds as fixed-width integers');
const ID = v('independent', 'an id or handle chosen by one side and echoed by the other');
const PAD = v('independent', 'padding or reserved: zero');
const UGID = v('independent', 'a uid/gid/pid number, not an encoding');
const FUSE_FLAGS = v('independent', 'flags defined by FUSE itself (FUSE_*, FOPEN_*, FATTR_*...): one encoding');
const MODE = v('independent', 'S_IF* and permission bits are the same on every Linux architecture');
const OPEN_FLAGS = v('open-flags', 'O_* values differ (x86 O_DIRECT is arm64 O_DIRECTORY; mips, sparc, alpha, parisc, powerpc differ more): translated');
const LOCK_TYPE = v('lock-type', 'F_RDLCK/F_WRLCK/F_UNLCK differ (alpha, sparc, parisc, mips for F_RDLCK...): translated');
const nested = (name: string) => v('struct', `see ${name}`);

export const FIELD_VERDICTS: Readonly<Record<string, FieldVerdict>> = {
  'fuse_in_header.len': INT,
  'fuse_in_header.opcode': v('independent', 'FUSE opcodes: one numbering'),
  'fuse_in_header.unique': ID,
  'fuse_in_header.nodeid': ID,
  'fuse_in_header.uid': UGID,
  'fuse_in_header.gid': UGID,
  'fuse_in_header.pid': UGID,
  'fuse_in_header.total_extlen': INT,
  'fuse_in_header.padding': PAD,

  'fuse_out_header.len': INT,
  'fuse_out_header.error': v('errno', 'errno numbers differ (mips, sparc, alpha, parisc): translated from the wire encoding to the client\'s'),
  'fuse_out_header.unique': ID,

  'fuse_attr.ino': ID,
  'fuse_attr.size': INT,
  'fuse_attr.blocks': INT,
  'fuse_attr.atime': TIME,
  'fuse_attr.mtime': TIME,
  'fuse_attr.ctime': TIME,
  'fuse_attr.atimensec': TIME,
  'fuse_attr.mtimensec': TIME,
  'fuse_attr.ctimensec': TIME,
  'fuse_attr.mode': MODE,
  'fuse_attr.nlink': INT,
  'fuse_attr.uid': UGID,
  'fuse_attr.gid': UGID,
  'fuse_attr.rdev': v('independent', 'the kernel\'s 32-bit new_encode_dev form, the same everywhere'),
  'fuse_attr.blksize': INT,
  'fuse_attr.flags': FUSE_FLAGS,

  'fuse_attr_out.attr_valid': TIME,
  'fuse_attr_out.attr_valid_nsec': TIME,
  'fuse_attr_out.dummy': PAD,
  'fuse_attr_out.attr': nested('fuse_attr'),

  'fuse_entry_out.nodeid': ID,
  'fuse_entry_out.generation': ID,
  'fuse_entry_out.entry_valid': TIME,
  'fuse_entry_out.attr_valid': TIME,
  'fuse_entry_out.entry_valid_nsec': TIME,
  'fuse_entry_out.attr_valid_nsec': TIME,
  'fuse_entry_out.attr': nested('fuse_attr'),

  'fuse_forget_in.nlookup': INT,
  'fuse_forget_one.nodeid': ID,
  'fuse_forget_one.nlookup': INT,
  'fuse_batch_forget_in.count': INT,
  'fuse_batch_forget_in.dummy': PAD,

  'fuse_getattr_in.getattr_flags': FUSE_FLAGS,
  'fuse_getattr_in.dummy': PAD,
  'fuse_getattr_in.fh': ID,

  'fuse_setattr_in.valid': FUSE_FLAGS,
  'fuse_setattr_in.padding': PAD,
  'fuse_setattr_in.fh': ID,
  'fuse_setattr_in.size': INT,
  'fuse_setattr_in.lock_owner': ID,
  'fuse_setattr_in.atime': TIME,
  'fuse_setattr_in.mtime': TIME,
  'fuse_setattr_in.ctime': TIME,
  'fuse_setattr_in.atimensec': TIME,
  'fuse_setattr_in.mtimensec': TIME,
  'fuse_setattr_in.ctimensec': TIME,
  'fuse_setattr_in.mode': MODE,
  'fuse_setattr_in.unused4': PAD,
  'fuse_setattr_in.uid': UGID,
  'fuse_setattr_in.gid': UGID,
  'fuse_setattr_in.unused5': PAD,

  'fuse_mknod_in.mode': MODE,
  'fuse_mknod_in.rdev': v('independent', 'new_encode_dev form, the same everywhere'),
  'fuse_mknod_in.umask': MODE,
  'fuse_mknod_in.padding': PAD,
  'fuse_mkdir_in.mode': MODE,
  'fuse_mkdir_in.umask': MODE,
  'fuse_rename_in.newdir': ID,
  'fuse_rename2_in.newdir': ID,
  'fuse_rename2_in.flags': v('independent', 'RENAME_* are generic'),
  'fuse_rename2_in.padding': PAD,
  'fuse_link_in.oldnodeid': ID,

  'fuse_open_in.flags': OPEN_FLAGS,
  'fuse_open_in.open_flags': FUSE_FLAGS,
  'fuse_create_in.flags': OPEN_FLAGS,
  'fuse_create_in.mode': MODE,
  'fuse_create_in.umask': MODE,
  'fuse_create_in.open_flags': FUSE_FLAGS,
  'fuse_open_out.fh': ID,
  'fuse_open_out.open_flags': FUSE_FLAGS,
  'fuse_open_out.backing_id': ID,

  'fuse_release_in.fh': ID,
  'fuse_release_in.flags': OPEN_FLAGS,
  'fuse_release_in.release_flags': FUSE_FLAGS,
  'fuse_release_in.lock_owner': ID,
  'fuse_flush_in.fh': ID,
  'fuse_flush_in.unused': PAD,
  'fuse_flush_in.padding': PAD,
  'fuse_flush_in.lock_owner': ID,

  'fuse_read_in.fh': ID,
  'fuse_read_in.offset': INT,
  'fuse_read_in.size': INT,
  'fuse_read_in.read_flags': FUSE_FLAGS,
  'fuse_read_in.lock_owner': ID,
  'fuse_read_in.flags': OPEN_FLAGS,
  'fuse_read_in.padding': PAD,
  'fuse_write_in.fh': ID,
  'fuse_write_in.offset': INT,
  'fuse_write_in.size': INT,
  'fuse_write_in.write_flags': FUSE_FLAGS,
  'fuse_write_in.lock_owner': ID,
  'fuse_write_in.flags': OPEN_FLAGS,
  'fuse_write_in.padding': PAD,
  'fuse_write_out.size': INT,
  'fuse_write_out.padding': PAD,

  'fuse_kstatfs.blocks': INT,
  'fuse_kstatfs.bfree': INT,
  'fuse_kstatfs.bavail': INT,
  'fuse_kstatfs.files': INT,
  'fuse_kstatfs.ffree': INT,
  'fuse_kstatfs.bsize': INT,
  'fuse_kstatfs.namelen': INT,
  'fuse_kstatfs.frsize': INT,
  'fuse_kstatfs.padding': PAD,
  'fuse_kstatfs.spare': PAD,
  'fuse_statfs_out.st': nested('fuse_kstatfs'),

  'fuse_fsync_in.fh': ID,
  'fuse_fsync_in.fsync_flags': FUSE_FLAGS,
  'fuse_fsync_in.padding': PAD,

  'fuse_setxattr_in.size': INT,
  'fuse_setxattr_in.flags': v('independent', 'XATTR_CREATE/XATTR_REPLACE are generic'),
  'fuse_setxattr_in.setxattr_flags': FUSE_FLAGS,
  'fuse_setxattr_in.padding': PAD,
  'fuse_getxattr_in.size': INT,
  'fuse_getxattr_in.padding': PAD,
  'fuse_getxattr_out.size': INT,
  'fuse_getxattr_out.padding': PAD,

  'fuse_file_lock.start': INT,
  'fuse_file_lock.end': INT,
  'fuse_file_lock.type': LOCK_TYPE,
  'fuse_file_lock.pid': UGID,
  'fuse_lk_in.fh': ID,
  'fuse_lk_in.owner': ID,
  'fuse_lk_in.lk': nested('fuse_file_lock'),
  'fuse_lk_in.lk_flags': FUSE_FLAGS,
  'fuse_lk_in.padding': PAD,
  'fuse_lk_out.lk': nested('fuse_file_lock'),

  'fuse_access_in.mask': v('independent', 'R_OK/W_OK/X_OK/F_OK are generic'),
  'fuse_access_in.padding': PAD,

  'fuse_init_in.major': INT,
  'fuse_init_in.minor': INT,
  'fuse_init_in.max_readahead': INT,
  'fuse_init_in.flags': FUSE_FLAGS,
  'fuse_init_in.flags2': FUSE_FLAGS,
  'fuse_init_in.arch_indicator': v('independent', 'the proposal\'s FUSE_ARCH_* enum: one numbering, it names the encodings'),
  'fuse_init_in.unused': PAD,
  'fuse_init_out.major': INT,
  'fuse_init_out.minor': INT,
  'fuse_init_out.max_readahead': INT,
  'fuse_init_out.flags': FUSE_FLAGS,
  'fuse_init_out.max_background': INT,
  'fuse_init_out.congestion_threshold': INT,
  'fuse_init_out.max_write': INT,
  'fuse_init_out.time_gran': INT,
  'fuse_init_out.max_pages': INT,
  'fuse_init_out.map_alignment': INT,
  'fuse_init_out.flags2': FUSE_FLAGS,
  'fuse_init_out.max_stack_depth': INT,
  'fuse_init_out.request_timeout': INT,
  'fuse_init_out.unused0': PAD,
  'fuse_init_out.arch_indicator': v('independent', 'the proposal\'s FUSE_ARCH_* enum: one numbering'),
  'fuse_init_out.unused': PAD,

  'fuse_interrupt_in.unique': ID,
  'fuse_fallocate_in.fh': ID,
  'fuse_fallocate_in.offset': INT,
  'fuse_fallocate_in.length': INT,
  'fuse_fallocate_in.mode': v('independent', 'FALLOC_FL_* are generic'),
  'fuse_fallocate_in.padding': PAD,
  'fuse_lseek_in.fh': ID,
  'fuse_lseek_in.offset': INT,
  'fuse_lseek_in.whence': v('independent', 'SEEK_SET..SEEK_HOLE are generic'),
  'fuse_lseek_in.padding': PAD,
  'fuse_lseek_out.offset': INT,

  'fuse_copy_file_range_in.fh_in': ID,
  'fuse_copy_file_range_in.off_in': INT,
  'fuse_copy_file_range_in.nodeid_out': ID,
  'fuse_copy_file_range_in.fh_out': ID,
  'fuse_copy_file_range_in.off_out': INT,
  'fuse_copy_file_range_in.len': INT,
  'fuse_copy_file_range_in.flags': v('independent', 'copy_file_range(2) flags: must be 0'),
  'fuse_copy_file_range_out.bytes_copied': INT,
  'fuse_syncfs_in.padding': PAD,

  'fuse_dirent.ino': ID,
  'fuse_dirent.off': ID,
  'fuse_dirent.namelen': INT,
  'fuse_dirent.type': v('independent', 'DT_* are generic'),
  'fuse_direntplus.entry_out': nested('fuse_entry_out'),
  'fuse_direntplus.dirent': nested('fuse_dirent'),

  'fuse_sx_time.tv_sec': TIME,
  'fuse_sx_time.tv_nsec': TIME,
  'fuse_sx_time.reserved': PAD,
  'fuse_statx.mask': v('independent', 'STATX_* are generic'),
  'fuse_statx.blksize': INT,
  'fuse_statx.attributes': v('independent', 'STATX_ATTR_* are generic'),
  'fuse_statx.nlink': INT,
  'fuse_statx.uid': UGID,
  'fuse_statx.gid': UGID,
  'fuse_statx.mode': MODE,
  'fuse_statx.spare0': PAD,
  'fuse_statx.ino': ID,
  'fuse_statx.size': INT,
  'fuse_statx.blocks': INT,
  'fuse_statx.attributes_mask': v('independent', 'STATX_ATTR_* are generic'),
  'fuse_statx.atime': nested('fuse_sx_time'),
  'fuse_statx.btime': nested('fuse_sx_time'),
  'fuse_statx.ctime': nested('fuse_sx_time'),
  'fuse_statx.mtime': nested('fuse_sx_time'),
  'fuse_statx.rdev_major': INT,
  'fuse_statx.rdev_minor': INT,
  'fuse_statx.dev_major': INT,
  'fuse_statx.dev_minor': INT,
  'fuse_statx.spare2': PAD,
  'fuse_statx_in.getattr_flags': FUSE_FLAGS,
  'fuse_statx_in.reserved': PAD,
  'fuse_statx_in.fh': ID,
  'fuse_statx_in.sx_flags': v('independent', 'AT_STATX_* / AT_* are generic'),
  'fuse_statx_in.sx_mask': v('independent', 'STATX_* are generic'),
  'fuse_statx_out.attr_valid': TIME,
  'fuse_statx_out.attr_valid_nsec': TIME,
  'fuse_statx_out.flags': FUSE_FLAGS,
  'fuse_statx_out.spare': PAD,
  'fuse_statx_out.stat': nested('fuse_statx'),

  'fuse_ioctl_in.fh': ID,
  'fuse_ioctl_in.flags': FUSE_FLAGS,
  'fuse_ioctl_in.cmd': v(
    'ioctl-cmd',
    'ioctl numbers carry direction and size bits laid out differently on mips, powerpc, sparc, alpha, parisc (and long\'s size on 32-bit ones): the fileattr commands the kernel sends itself (FS_IOC_GETFLAGS/SETFLAGS, their 32-bit forms, FS_IOC_FSGETXATTR/FSSETXATTR) are translated; any other command passes untouched, its meaning is the device\'s'
  ),
  'fuse_ioctl_in.arg': v('ioctl-arg', 'the argument (a value or a pointer) is per command and per ABI'),
  'fuse_ioctl_in.in_size': INT,
  'fuse_ioctl_in.out_size': INT,
  'fuse_ioctl_iovec.base': v('ioctl-arg', 'a pointer in the client\'s address space (unrestricted ioctls, CUSE only)'),
  'fuse_ioctl_iovec.len': INT,
  'fuse_ioctl_out.result': v('errno', 'the ioctl\'s return value, or a negative errno: translated like any errno'),
  'fuse_ioctl_out.flags': FUSE_FLAGS,
  'fuse_ioctl_out.in_iovs': INT,
  'fuse_ioctl_out.out_iovs': INT,

  'fuse_poll_in.fh': ID,
  'fuse_poll_in.kh': ID,
  'fuse_poll_in.flags': FUSE_FLAGS,
  'fuse_poll_in.events': v('poll-events', 'POLLWRNORM/POLLWRBAND/POLLMSG/POLLREMOVE differ on mips, sparc, m68k; not translated: this client does not send POLL'),
  'fuse_poll_out.revents': v('poll-events', 'as fuse_poll_in.events'),
  'fuse_poll_out.padding': PAD,
  'fuse_notify_poll_wakeup_out.kh': ID,

  'fuse_bmap_in.block': INT,
  'fuse_bmap_in.blocksize': INT,
  'fuse_bmap_in.padding': PAD,
  'fuse_bmap_out.block': INT,

  'fuse_setupmapping_in.fh': ID,
  'fuse_setupmapping_in.foffset': INT,
  'fuse_setupmapping_in.len': INT,
  'fuse_setupmapping_in.flags': FUSE_FLAGS,
  'fuse_setupmapping_in.moffset': INT,
  'fuse_removemapping_in.count': INT,
  'fuse_removemapping_one.moffset': INT,
  'fuse_removemapping_one.len': INT,

  'fuse_ext_header.size': INT,
  'fuse_ext_header.type': v('independent', 'FUSE_EXT_* are FUSE\'s own'),
  'fuse_secctx_header.size': INT,
  'fuse_secctx_header.nr_secctx': INT,
  'fuse_secctx.size': INT,
  'fuse_secctx.padding': PAD,
  'fuse_supp_groups.nr_groups': INT,

  'fuse_notify_inval_inode_out.ino': ID,
  'fuse_notify_inval_inode_out.off': INT,
  'fuse_notify_inval_inode_out.len': INT,
  'fuse_notify_inval_entry_out.parent': ID,
  'fuse_notify_inval_entry_out.namelen': INT,
  'fuse_notify_inval_entry_out.flags': FUSE_FLAGS,
  'fuse_notify_delete_out.parent': ID,
  'fuse_notify_delete_out.child': ID,
  'fuse_notify_delete_out.namelen': INT,
  'fuse_notify_delete_out.padding': PAD,
  'fuse_notify_store_out.nodeid': ID,
  'fuse_notify_store_out.offset': INT,
  'fuse_notify_store_out.size': INT,
  'fuse_notify_store_out.padding': PAD,
  'fuse_notify_retrieve_out.notify_unique': ID,
  'fuse_notify_retrieve_out.nodeid': ID,
  'fuse_notify_retrieve_out.offset': INT,
  'fuse_notify_retrieve_out.size': INT,
  'fuse_notify_retrieve_out.padding': PAD,
  'fuse_notify_retrieve_in.dummy1': PAD,
  'fuse_notify_retrieve_in.offset': INT,
  'fuse_notify_retrieve_in.size': INT,
  'fuse_notify_retrieve_in.dummy2': PAD,
  'fuse_notify_retrieve_in.dummy3': PAD,
  'fuse_notify_retrieve_in.dummy4': PAD,
};

/** Every declared wire struct, in declaration order. */
export function declaredStructs(): Struct<any>[] {
  return (Object.values(abi) as unknown[]).filter((s): s is Struct<any> => s instanceof Struct);
}

/** `struct.field` of every declared field, in declaration order. */
export function declaredFields(): string[] {
  return declaredStructs().flatMap((s) => s.fields.map((f) => `${s.name}.${f.name}`));
}

/** docs/arch-negotiation.md's field table: every declared field and its verdict, architecture-dependent ones first. */
export function fieldTableMarkdown(): string {
  const order: FieldArch[] = ['open-flags', 'errno', 'lock-type', 'ioctl-cmd', 'ioctl-arg', 'poll-events', 'independent', 'struct'];
  const label: Record<FieldArch, string> = {
    'open-flags': 'open flags: translated',
    errno: 'errno: translated',
    'lock-type': 'lock type: translated',
    'ioctl-cmd': 'ioctl command: translated where the kernel interprets it',
    'ioctl-arg': 'ioctl argument: not translated',
    'poll-events': 'poll events: not translated',
    independent: 'independent',
    struct: 'nested struct',
  };
  const fields = declaredFields();
  const rows = order.flatMap((arch) => fields.filter((f) => FIELD_VERDICTS[f]?.arch === arch).map((f) => `| \`${f}\` | ${label[arch]} | ${FIELD_VERDICTS[f]!.why} |`));
  return ['| field | verdict | why |', '|---|---|---|', ...rows].join('\n');
}
