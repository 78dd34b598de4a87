/**
 * The fileattr ioctls (lsattr, chattr, xfs_io's lsattr/chattr), served by the device itself on its
 * backend's directory (--fileattr-dir). Neither real virtiofsd here implements FUSE_IOCTL: QEMU
 * 7.2's C virtiofsd and Debian trixie's Rust virtiofsd 1.13 both answer ENOSYS (measured), which
 * the kernel turns into EOPNOTSUPP for lsattr.
 *
 * The point is how the device reads the command: in its own encoding (--arch). An x86 client's
 * FS_IOC_GETFLAGS (0x80086601) is, to a powerpc or mips device, _IOW('f', 1, 8): not a command it
 * serves. Translated (this device translating in mode (a), or the client in (b)/(d)), it is the
 * device's own FS_IOC_GETFLAGS (0x40086601) and is served.
 *
 * The node's file: the backend's inode number of the request's nodeid (a GETATTR the queue worker
 * sends the backend on the request's slot), looked up in the directory (walked once, then cached
 * and re-checked). The ioctl runs on
 * that file with the host's own command number. The VFS has already checked the caller: ownership
 * for any change, CAP_LINUX_IMMUTABLE for the immutable and append-only flags.
 */
import { closeSync, constants, lstatSync, openSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { errnoName, hostArch, ioctlCommandName, ioctlCommandValue, type Architecture } from '../../client/arch/index.ts';
import type { WireTranslation } from '../../client/fuse/wire-translation.ts';
import { Opcode, fuse_in_header, fuse_ioctl_in, fuse_ioctl_out, fuse_out_header } from '../../client/protocol/index.ts';
import { ErrnoError, errnoNumber } from '../../ffi/errno.ts';
import { ioctl } from '../../ffi/ioctl.ts';

const ARG_AT = fuse_in_header.size;
const CMD_AT = ARG_AT + fuse_ioctl_in.offsetOf('cmd');
const IN_SIZE_AT = ARG_AT + fuse_ioctl_in.offsetOf('in_size');
const OUT_SIZE_AT = ARG_AT + fuse_ioctl_in.offsetOf('out_size');
const NODEID_AT = fuse_in_header.offsetOf('nodeid');
const DATA_AT = ARG_AT + fuse_ioctl_in.size;
/** The most any fileattr command moves (struct fsxattr). */
const PAYLOAD_MAX = 28;

/** A fileattr ioctl, read and translated: what answer() needs once the node's inode number is known. */
export interface FileattrCommand {
  readonly name: string;
  readonly unique: bigint;
  readonly nodeid: bigint;
  readonly reading: boolean;
  readonly inSize: number;
  readonly outSize: number;
  /** The request's bytes (the command translated in place). */
  readonly bytes: Uint8Array;
  /** Refused before the file is looked at (sizes that do not fit the command): answered with this error. */
  readonly invalid?: ErrnoError;
}

export class FileattrServer {
  private readonly paths = new Map<bigint, string>();
  private readonly host = hostArch();

  constructor(
    private readonly dir: string,
    private readonly own: Architecture,
    private readonly log: (line: string) => void,
    private readonly trace?: (line: string) => void,
  ) {}

  /**
   * Reads an IOCTL (`bytes`: the whole request, which is translated in place): the fileattr command
   * it is in the device's own encoding after `translation`, or undefined for any other command
   * (the caller forwards the request as it came).
   */
  parse(bytes: Uint8Array, translation: WireTranslation): FileattrCommand | undefined {
    if (bytes.length < DATA_AT) return undefined;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const wireCmd = view.getUint32(CMD_AT, true);
    translation.request(Opcode.IOCTL, view, ARG_AT);
    const cmd = view.getUint32(CMD_AT, true);
    const name = ioctlCommandName(cmd, this.own);
    this.trace?.(`IOCTL cmd 0x${wireCmd.toString(16)} (wire) = 0x${cmd.toString(16)} on ${this.own.name}: ${name ?? 'not a fileattr command: forwarded'}`);
    if (name === undefined) return undefined;
    const inSize = view.getUint32(IN_SIZE_AT, true);
    const outSize = view.getUint32(OUT_SIZE_AT, true);
    const reading = name.includes('GET');
    const size = reading ? outSize : inSize;
    const invalid = size > PAYLOAD_MAX || bytes.length !== DATA_AT + inSize ? new ErrnoError('ioctl', errnoNumber('EINVAL'), `${name}: in_size ${inSize}, out_size ${outSize}`) : undefined;
    return {
      name,
      unique: view.getBigUint64(fuse_in_header.offsetOf('unique'), true),
      nodeid: view.getBigUint64(NODEID_AT, true),
      reading,
      inSize,
      outSize,
      bytes,
      invalid,
    };
  }

  /**
   * Serves the command on the file whose (backend) inode number is `ino` (a GETATTR of the
   * device's own found it; undefined when the command was refused already) and returns the whole
   * reply, fuse_out_header first, errno in the client's encoding.
   */
  answer(command: FileattrCommand, ino: bigint | undefined, translation: WireTranslation): Uint8Array {
    const { name, reading, inSize, outSize, bytes, unique } = command;
    let payload: Uint8Array;
    let errno = 0;
    try {
      if (command.invalid) throw command.invalid;
      if (ino === undefined) throw new ErrnoError('ioctl', errnoNumber('EIO'), `${name}: no inode number`);
      const path = this.pathOf(ino);
      // The host's own number; the flags commands always move an unsigned int, whatever `long` is.
      const hostCmd = ioctlCommandValue(name.replace('FS_IOC32_', 'FS_IOC_'), this.host)!;
      const buffer = new Uint8Array(8 + PAYLOAD_MAX);
      if (!reading) buffer.set(bytes.subarray(DATA_AT, DATA_AT + inSize));
      const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
      try {
        ioctl(fd, hostCmd, buffer);
      } finally {
        closeSync(fd);
      }
      payload = reading ? buffer.subarray(0, outSize) : new Uint8Array(0);
    } catch (error) {
      if (!(error instanceof ErrnoError)) throw error;
      // The host's errno, named, then numbered in the device's own encoding and carried to the client's.
      const own = this.own.errno.numbers[errnoName(error.errno, this.host) ?? 'EIO'] ?? this.own.errno.numbers.EIO!;
      errno = translation.errno(own);
      this.trace?.(`IOCTL ${name}: ${error.message}`);
      payload = new Uint8Array(0);
    }
    const reply = new Uint8Array(fuse_out_header.size + (errno === 0 ? fuse_ioctl_out.size + payload.length : 0));
    const out = new DataView(reply.buffer);
    fuse_out_header.encode(out, 0, { len: reply.length, error: -errno, unique });
    if (errno === 0) {
      fuse_ioctl_out.encode(out, fuse_out_header.size, { result: 0, flags: 0, in_iovs: 0, out_iovs: 0 });
      reply.set(payload, fuse_out_header.size + fuse_ioctl_out.size);
    }
    return reply;
  }

  /** The file of backend inode `ino` in the directory. */
  private pathOf(ino: bigint): string {
    const cached = this.paths.get(ino);
    if (cached !== undefined && this.inodeAt(cached) === ino) return cached;
    this.paths.clear();
    this.walk(this.dir);
    const found = this.paths.get(ino);
    if (found === undefined) throw new ErrnoError('ioctl', errnoNumber('ENOENT'), `inode ${ino} not found under ${this.dir}`);
    return found;
  }

  private inodeAt(path: string): bigint | undefined {
    try {
      return lstatSync(path, { bigint: true }).ino;
    } catch {
      return undefined;
    }
  }

  private walk(dir: string): void {
    const ino = this.inodeAt(dir);
    if (ino !== undefined) this.paths.set(ino, dir);
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch (error) {
      this.log(`fileattr: cannot read ${dir}: ${(error as Error).message}`);
      return;
    }
    for (const entry of entries) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) this.walk(path);
      else {
        const i = this.inodeAt(path);
        if (i !== undefined) this.paths.set(i, path);
      }
    }
  }
}
