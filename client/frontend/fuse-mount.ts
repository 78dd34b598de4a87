/**
 * A FUSE mount of this machine's kernel: /dev/fuse opened non-blocking and
 * mounted with mount(2) as root or through fusermount3 otherwise, with the checks a user needs to hear about
 * before anything is mounted: the mountpoint exists, is a directory, is not
 * already mounted, and is not a stale mount left by a crashed run.
 */
import { _IOR, ioctl } from '../../ffi/ioctl.ts';
import { closeSync, constants, openSync, readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { ErrnoError, isErrnoError } from '../../ffi/errno.ts';
import {
  MNT_DETACH,
  MS_DIRSYNC,
  MS_LAZYTIME,
  MS_NOATIME,
  MS_NODEV,
  MS_NODIRATIME,
  MS_NOEXEC,
  MS_NOSUID,
  MS_RDONLY,
  MS_RELATIME,
  MS_STRICTATIME,
  MS_SYNCHRONOUS,
  mount,
  setNonBlocking,
  umount2,
} from '../../ffi/libc.ts';
import { UnixSocket } from '../../ffi/unix-socket.ts';
import { spawnSync } from 'node:child_process';
import { VirtiofsError } from '../../ffi/errors.ts';

/** The filesystem type our mounts show in /proc/mounts: `fuse.virtiofs-client`. */
export const FS_TYPE = 'fuse.virtiofs-client';

export class MountError extends VirtiofsError {
  override name = 'MountError';
  constructor(
    message: string,
    /** ENOENT, ENOTDIR, EBUSY (already mounted), ESTALE (left by a crashed run), EPERM (not root). */
    readonly code: string,
  ) {
    super(message);
  }
}

/**
 * mount(8)'s generic flags, by name: the MS_* bit each sets or clears. fusermount3 and libfuse
 * take the same names, so one list serves mount(2), fusermount3 and fuse-native.
 */
const MOUNT_FLAGS: Readonly<Record<string, readonly [bit: number, set: boolean]>> = {
  ro: [MS_RDONLY, true],
  rw: [MS_RDONLY, false],
  nosuid: [MS_NOSUID, true],
  suid: [MS_NOSUID, false],
  nodev: [MS_NODEV, true],
  dev: [MS_NODEV, false],
  noexec: [MS_NOEXEC, true],
  exec: [MS_NOEXEC, false],
  sync: [MS_SYNCHRONOUS, true],
  async: [MS_SYNCHRONOUS, false],
  dirsync: [MS_DIRSYNC, true],
  noatime: [MS_NOATIME, true],
  atime: [MS_NOATIME, false],
  nodiratime: [MS_NODIRATIME, true],
  diratime: [MS_NODIRATIME, false],
  relatime: [MS_RELATIME, true],
  norelatime: [MS_RELATIME, false],
  strictatime: [MS_STRICTATIME, true],
  lazytime: [MS_LAZYTIME, true],
  nolazytime: [MS_LAZYTIME, false],
};

/** Our mounts are nosuid,nodev unless the flags say otherwise (`-o suid,dev`, as mount.fuse3 passes for root). */
const DEFAULT_FLAGS = MS_NOSUID | MS_NODEV;

export function isMountFlag(name: string): boolean {
  return Object.hasOwn(MOUNT_FLAGS, name);
}

/** The mount(2) flags for these names, applied in order over the defaults. */
export function mountFlagBits(names: readonly string[]): number {
  let bits = DEFAULT_FLAGS;
  for (const name of names) {
    const flag = MOUNT_FLAGS[name];
    if (!flag) throw new MountError(`'${name}' is not a mount flag this mount understands`, 'EINVAL');
    bits = flag[1] ? bits | flag[0] : bits & ~flag[0];
  }
  return bits;
}

export interface MountOptions {
  /** Let users other than root use the mount. */
  allowOther?: boolean;
  /** mount(8)'s generic flags (ro, noexec, noatime, suid, dev, ...), applied over nosuid,nodev. */
  flags?: readonly string[];
  /** Source name shown in /proc/mounts (the transport). */
  source?: string;
}

interface MountInfo {
  mountpoint: string;
  fstype: string;
  source: string;
}

/** Mounts of this machine whose mountpoint is `path` (a path can be mounted over several times). */
export function mountsAt(path: string): MountInfo[] {
  const target = resolve(path);
  const unescape = (s: string) => s.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [left, right] = line.split(' - ') as [string, string];
      const [fstype, source] = right.split(' ');
      return { mountpoint: unescape(left.split(' ')[4]!), fstype: fstype!, source: unescape(source ?? '') };
    })
    .filter((m) => m.mountpoint === target);
}

/** Throws a MountError that tells the user what to do when `path` cannot be mounted on. */
export function checkMountpoint(path: string): void {
  const existing = mountsAt(path);
  if (existing.length > 0) {
    const m = existing[existing.length - 1]!;
    let stale = false;
    try {
      statSync(path);
    } catch (e) {
      stale = isErrnoError(e, 'ENOTCONN') || (e as NodeJS.ErrnoException).code === 'ENOTCONN';
    }
    if (stale) {
      throw new MountError(
        `${path} holds a stale ${m.fstype} mount whose daemon is gone (left by a crashed run?): run 'virtiofs-client unmount ${path}' first`,
        'ESTALE',
      );
    }
    throw new MountError(`${path} is already a mountpoint (${m.fstype} from ${m.source}): unmount it first`, 'EBUSY');
  }
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    throw new MountError(`mountpoint ${path} does not exist: create it first (mkdir -p ${path})`, (e as NodeJS.ErrnoException).code ?? 'ENOENT');
  }
  if (!st.isDirectory()) throw new MountError(`mountpoint ${path} is not a directory`, 'ENOTDIR');
}

/** FUSE_DEV_IOC_CLONE (linux/fuse.h): a new /dev/fuse open joins the connection of the fd passed in. */
export const FUSE_DEV_IOC_CLONE = _IOR(229, 0, 4);

export class FuseMount {
  private mounted = true;
  private readonly clones: number[] = [];

  private constructor(
    /** The /dev/fuse file descriptor (non-blocking) of this mount's connection. */
    readonly fd: number,
    readonly mountpoint: string,
    /** Mounted by fusermount3 (not root): unmounted by it too. */
    private readonly unprivileged: boolean,
  ) {}

  /**
   * Opens /dev/fuse and mounts it on `mountpoint`: with mount(2) as root,
   * otherwise through the setuid fusermount3, which mounts and hands the
   * /dev/fuse descriptor back over a socket. The kernel's FUSE_INIT is then
   * waiting on `fd`.
   */
  static open(mountpoint: string, options: MountOptions = {}): FuseMount {
    const target = resolve(mountpoint);
    checkMountpoint(target);
    const st = statSync(target);
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    const fsOptions = [
      `rootmode=${(st.mode & constants.S_IFMT).toString(8)}`,
      `user_id=${uid}`,
      `group_id=${gid}`,
      // The kernel checks permissions from the attributes, as a local filesystem does.
      'default_permissions',
      ...(options.allowOther ? ['allow_other'] : []),
    ];
    mountFlagBits(options.flags ?? []); // refuses unknown names before anything is mounted
    if (uid !== 0) {
      const fd = mountWithFusermount(target, [...fsOptions, 'nosuid', 'nodev', ...(options.flags ?? [])], options.source ?? 'virtiofs-client');
      return new FuseMount(fd, target, true);
    }
    const fd = openFuseDevice();
    try {
      mount(options.source ?? 'virtiofs-client', target, FS_TYPE, mountFlagBits(options.flags ?? []), [`fd=${fd}`, ...fsOptions].join(','));
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    return new FuseMount(fd, target, false);
  }

  /**
   * Another /dev/fuse descriptor (non-blocking) of this mount's connection, as libfuse's
   * clone_fd: each per-queue thread reads requests from its own and writes their replies to it
   * (the kernel takes a reply only on the descriptor that read its request). Closed by close().
   */
  cloneFd(): number {
    const fd = openFuseDevice();
    try {
      // uint32_t in the host's byte order.
      ioctl(fd, FUSE_DEV_IOC_CLONE, new Uint8Array(Uint32Array.of(this.fd).buffer));
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    this.clones.push(fd);
    return fd;
  }

  /**
   * Unmounts (lazily if busy), leaving the descriptors open: the threads reading them see ENODEV
   * once the kernel lets the connection go (at once unless files are still open).
   */
  unmount(): void {
    if (!this.mounted) return;
    this.mounted = false;
    if (this.unprivileged) fusermountUnmount(this.mountpoint);
    else unmount(this.mountpoint);
  }

  /** Unmounts (lazily if busy) and closes the connection; pending kernel requests then fail with ENOTCONN. */
  close(): void {
    try {
      this.unmount();
    } finally {
      for (const fd of this.clones.splice(0)) {
        try {
          closeSync(fd);
        } catch {
          // already closed
        }
      }
    }
    try {
      closeSync(this.fd);
    } catch {
      // already closed
    }
  }
}

/** /dev/fuse, non-blocking (libuv adds O_CLOEXEC); a missing FUSE module says which modprobe. */
function openFuseDevice(): number {
  try {
    return openSync('/dev/fuse', constants.O_RDWR | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    if (code === 'ENOENT' || code === 'ENODEV' || code === 'ENXIO') {
      throw new MountError(`/dev/fuse is missing (${code}): load the FUSE module with 'modprobe fuse'`, code);
    }
    throw e;
  }
}

/**
 * Mounts through fusermount3 (setuid root): it opens /dev/fuse, mounts, and
 * sends the descriptor back over the socket named by _FUSE_COMMFD.
 */
function mountWithFusermount(target: string, fsOptions: string[], source: string): number {
  const [ours, theirs] = UnixSocket.pair();
  try {
    // fsname is ours to name, but the transport string in it is the user's: a comma in it would
    // start another mount option (`vhost-user:/run/s,ro`). fusermount3 takes backslash escapes in
    // fsname= and subtype= (util/fusermount.c), as libfuse's own mount code writes them.
    const fsname = source.replace(/[\\,]/g, '\\$&');
    const r = spawnSync('fusermount3', ['-o', [...fsOptions, `fsname=${fsname}`, `subtype=${FS_TYPE.slice('fuse.'.length)}`].join(','), '--', target], {
      stdio: ['ignore', 'ignore', 'pipe', theirs.fd],
      env: { ...process.env, _FUSE_COMMFD: '3' },
      encoding: 'utf8',
    });
    if (r.error) throw new MountError(`mounting without root needs fusermount3 (Debian's fuse3): ${r.error.message}`, 'ENOENT');
    if (r.status !== 0) {
      const why = r.stderr.trim() || `exit status ${r.status}`;
      // Debian's udev makes /dev/fuse 0666; machines without udev leave it root-only.
      const hint = /open \/dev\/fuse: Permission denied/.test(why) ? ' (users need /dev/fuse mode 0666, as udev sets it on Debian)' : '';
      throw new MountError(`fusermount3: ${why.replace(/^fusermount3: /, '')}${hint}`, 'EPERM');
    }
    const { fds } = ours.receiveWithFds(1, { timeoutMs: 5000, maxFds: 1 });
    const fd = fds[0];
    if (fd === undefined) throw new MountError('fusermount3 mounted but sent no /dev/fuse descriptor', 'EPROTO');
    setNonBlocking(fd);
    return fd;
  } finally {
    ours.close();
    theirs.close();
  }
}

function fusermountUnmount(path: string): void {
  if (mountsAt(path).length === 0) return;
  const r = spawnSync('fusermount3', ['-u', '-z', '--', path], { encoding: 'utf8' });
  if (r.status !== 0) throw new MountError(`fusermount3 -u: ${r.stderr.trim()}`, 'EBUSY');
}

/** umount2, falling back to a lazy detach while files are still open. No error if nothing is mounted. */
export function unmount(path: string): void {
  if (process.getuid?.() !== 0) return fusermountUnmount(path);
  if (mountsAt(path).length === 0) return;
  try {
    umount2(resolve(path), 0);
  } catch (e) {
    if (!(e instanceof ErrnoError) || e.code !== 'EBUSY') throw e;
    umount2(resolve(path), MNT_DETACH);
  }
}
