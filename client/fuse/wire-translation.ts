/**
 * Rewrites the architecture-dependent fields of FUSE messages in place
 * (docs/arch-negotiation.md section 5) between the client's encoding and the
 * wire encoding. Both the API session and the /dev/fuse relay use it, so the
 * list of translated fields exists once, here.
 */
import { translator, type Architecture, type Dropped, type Translator } from '../arch/index.ts';
import * as abi from '../protocol/abi.ts';
import { Opcode } from '../protocol/opcodes.ts';

type Kind = 'open' | 'lock' | 'ioctl';

/** A u32 field to translate: its place from the start of the opcode's argument struct, and its name. */
const field = (kind: Kind, offset: number, name: string) => ({ kind, offset, name });
const openFlags = (s: { offsetOf(f: 'flags'): number; name: string }) => field('open', s.offsetOf('flags'), `${s.name}.flags`);
const lockType = field('lock', abi.fuse_lk_in.offsetOf('lk') + abi.fuse_file_lock.offsetOf('type'), 'fuse_file_lock.type');

const requestFields: ReadonlyMap<number, readonly { kind: Kind; offset: number; name: string }[]> = new Map([
  [Opcode.OPEN, [openFlags(abi.fuse_open_in)]],
  [Opcode.OPENDIR, [openFlags(abi.fuse_open_in)]],
  [Opcode.CREATE, [openFlags(abi.fuse_create_in)]],
  [Opcode.TMPFILE, [openFlags(abi.fuse_create_in)]],
  [Opcode.READ, [openFlags(abi.fuse_read_in)]],
  [Opcode.READDIR, [openFlags(abi.fuse_read_in)]],
  [Opcode.READDIRPLUS, [openFlags(abi.fuse_read_in)]],
  [Opcode.WRITE, [openFlags(abi.fuse_write_in)]],
  [Opcode.RELEASE, [openFlags(abi.fuse_release_in)]],
  [Opcode.RELEASEDIR, [openFlags(abi.fuse_release_in)]],
  [Opcode.GETLK, [lockType]],
  [Opcode.SETLK, [lockType]],
  [Opcode.SETLKW, [lockType]],
  // The fileattr commands the kernel sends itself (lsattr, chattr); other commands pass as they are.
  [Opcode.IOCTL, [field('ioctl', abi.fuse_ioctl_in.offsetOf('cmd'), 'fuse_ioctl_in.cmd')]],
]);

/**
 * Every field this module rewrites, as `struct.field` (field-verdicts.ts gives each of them an
 * architecture-dependent verdict, and a test holds the two to the same list).
 */
export const TRANSLATED_FIELDS: readonly string[] = [
  ...new Set([
    ...[...requestFields.values()].flat().map((f) => f.name),
    'fuse_file_lock.type',
    'fuse_out_header.error',
    'fuse_ioctl_out.result',
  ]),
];

const replyLockType = abi.fuse_lk_out.offsetOf('lk') + abi.fuse_file_lock.offsetOf('type');
const replyIoctlResult = abi.fuse_ioctl_out.offsetOf('result');

export class WireTranslation {
  /** Nothing to do: client and wire share every encoding. */
  readonly identity: boolean;
  /** Client -> wire, by the kind of request field. */
  private readonly out: Readonly<Record<Kind, Translator>>;
  private readonly lockIn: Translator;
  private readonly errnoIn: Translator;
  private readonly onDrop: (d: Dropped) => void;

  constructor(
    readonly client: Architecture,
    readonly wire: Architecture,
    log: (line: string) => void,
  ) {
    this.out = { open: translator('open', client, wire), lock: translator('lock', client, wire), ioctl: translator('ioctl', client, wire) };
    this.lockIn = translator('lock', wire, client);
    this.errnoIn = translator('errno', wire, client);
    this.identity = this.out.open.identity && this.out.lock.identity && this.out.ioctl.identity && this.errnoIn.identity;
    this.onDrop = (d) => log(`arch ${client.name}->${wire.name}: ${d.kind} ${d.name} (${d.value}) not carried: ${d.reason}`);
  }

  /** Whether `opcode` has request fields to translate. */
  static translatesRequest(opcode: number): boolean {
    return requestFields.has(opcode);
  }

  /**
   * Translates the request fields of `opcode` whose argument struct starts at
   * `argAt`. Throws ArchTranslationError for a value that cannot be carried
   * (the request must then fail with EINVAL and not be sent).
   */
  request(opcode: number, view: DataView, argAt: number): void {
    if (this.identity) return;
    const list = requestFields.get(opcode);
    if (!list) return;
    for (const f of list) {
      const at = argAt + f.offset;
      view.setUint32(at, this.out[f.kind].translate(view.getUint32(at, true), this.onDrop), true);
    }
  }

  /** A device errno (positive) in the client's encoding; one without counterpart becomes EIO. */
  errno(deviceErrno: number): number {
    return this.errnoIn.translate(deviceErrno, this.onDrop);
  }

  /**
   * Translates reply body fields of a successful reply in place: GETLK's lock type, and IOCTL's
   * result when it is a negative errno (ENOTTY and the like, in the device's encoding).
   */
  reply(opcode: number, view: DataView, bodyAt: number): void {
    if (this.identity) return;
    if (opcode === Opcode.GETLK) {
      const at = bodyAt + replyLockType;
      view.setUint32(at, this.lockIn.translate(view.getUint32(at, true)), true);
    } else if (opcode === Opcode.IOCTL) {
      const at = bodyAt + replyIoctlResult;
      const result = view.getInt32(at, true);
      if (result < 0) view.setInt32(at, -this.errno(-result), true);
    }
  }
}
