import test from 'ava';
import { ioctlCommandValue, resolveArch } from '../../client/arch/index.ts';
import { WireTranslation } from '../../client/fuse/wire-translation.ts';
import { Opcode, fuse_in_header, fuse_ioctl_in, fuse_ioctl_out } from '../../client/protocol/index.ts';

const x86 = resolveArch('x86_64');
const ppc = resolveArch('ppc64');
const mips = resolveArch('mips64');

function ioctlRequest(cmd: number): DataView {
  const view = new DataView(new ArrayBuffer(fuse_in_header.size + fuse_ioctl_in.size));
  view.setUint32(fuse_in_header.size + fuse_ioctl_in.offsetOf('cmd'), cmd, true);
  return view;
}
const cmdOf = (view: DataView) => view.getUint32(fuse_in_header.size + fuse_ioctl_in.offsetOf('cmd'), true);

test('IOCTL requests: a fileattr command is re-encoded for the wire; any other passes as it is', (t) => {
  const w = new WireTranslation(x86, ppc, () => {});
  for (const name of ['FS_IOC_GETFLAGS', 'FS_IOC_SETFLAGS', 'FS_IOC32_GETFLAGS', 'FS_IOC32_SETFLAGS', 'FS_IOC_FSGETXATTR', 'FS_IOC_FSSETXATTR']) {
    const view = ioctlRequest(ioctlCommandValue(name, x86)!);
    w.request(Opcode.IOCTL, view, fuse_in_header.size);
    t.is(cmdOf(view), ioctlCommandValue(name, ppc)!, name);
  }
  const other = 0x80045430; // TIOCGPTN, _IOR('T', 0x30, unsigned int)
  const view = ioctlRequest(other);
  w.request(Opcode.IOCTL, view, fuse_in_header.size);
  t.is(cmdOf(view), other);
});

test('IOCTL replies: a negative result is an errno in the device encoding and comes back in the client\'s; a positive one is left', (t) => {
  const w = new WireTranslation(x86, mips, () => {});
  const body = new DataView(new ArrayBuffer(fuse_ioctl_out.size));
  body.setInt32(0, -mips.errno.numbers.ENOTEMPTY!, true);
  w.reply(Opcode.IOCTL, body, 0);
  t.is(body.getInt32(0, true), -x86.errno.numbers.ENOTEMPTY!);
  body.setInt32(0, 7, true);
  w.reply(Opcode.IOCTL, body, 0);
  t.is(body.getInt32(0, true), 7);
});
