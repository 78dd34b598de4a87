/** `virtiofs-client arch ...` run as a child process, as a user would. */
import test from 'ava';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../../bin/virtiofs-client.js', import.meta.url));

interface Run {
  status: number;
  stdout: string;
  stderr: string;
}

function cli(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, 'arch', ...args], (err, stdout, stderr) => {
      const status = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
      resolve({ status, stdout, stderr });
    });
  });
}

const lines = (text: string) => text.split('\n').filter((l) => l !== '');

test('translate x86 O_DIRECT to arm64: O_DIRECT -> O_DIRECT = 0200000', async (t) => {
  const run = await cli('translate', '0o40000', '--from', 'x86_64', '--to', 'arm64');
  t.is(run.status, 0);
  t.is(run.stderr, '');
  t.regex(run.stdout, /^ +040000 {2}O_DIRECT -> O_DIRECT = 0200000$/m);
  t.regex(run.stdout, /^result: 040000 \(x86_64\) -> 0200000 \(arm64\)$/m);
});

test('every input syntax names the same value', async (t) => {
  for (const value of ['040000', '0o40000', '0x4000', '16384', 'O_DIRECT', 'O_RDONLY|O_DIRECT']) {
    const run = await cli('translate', value, '--from', 'x86', '--to', 'aarch64');
    t.is(run.status, 0, value);
    t.regex(run.stdout, /O_DIRECT -> O_DIRECT = 0200000/, value);
  }
});

test('translate x86 O_DIRECTORY to arm64, and O_WRONLY|O_APPEND to mips', async (t) => {
  const arm = await cli('translate', '0200000', '--from', 'x86_64', '--to', 'arm64');
  t.regex(arm.stdout, /O_DIRECTORY -> O_DIRECTORY = 040000$/m);
  const mips = await cli('translate', 'O_WRONLY|O_APPEND', '--from', 'x86_64', '--to', 'mips64');
  t.regex(mips.stdout, /^ +01 {2}O_WRONLY -> O_WRONLY = 01$/m);
  t.regex(mips.stdout, /^ +02000 {2}O_APPEND -> O_APPEND = 010$/m);
  t.regex(mips.stdout, /^result: 02001 \(x86_64\) -> 011 \(mips64\)$/m);
});

test('translate a mips errno by name, and a lock type', async (t) => {
  const errno = await cli('translate', 'ENOTEMPTY', '--from', 'mips64', '--to', 'x86_64');
  t.is(errno.status, 0);
  t.regex(errno.stdout, /^ +93 {2}ENOTEMPTY -> ENOTEMPTY = 39$/m);
  const lock = await cli('translate', '3', '--kind', 'lock', '--from', 'sparc64', '--to', 'alpha');
  t.is(lock.status, 0);
  t.regex(lock.stdout, /F_UNLCK -> F_UNLCK = 8$/m);
});

test('drops are shown with their reason; the translation still succeeds', async (t) => {
  const errno = await cli('translate', 'EINIT', '--from', 'mips64', '--to', 'x86_64');
  t.is(errno.status, 0);
  t.regex(errno.stdout, /EINIT -> EIO = 5 \(EINIT \(141 on mips64\) has no counterpart on x86_64; replaced by EIO\)/);
  const open = await cli('translate', '0x4004', '--from', 'sparc64', '--to', 'x86_64');
  t.is(open.status, 0);
  t.regex(open.stdout, /O_NDELAY -> dropped: sparc's own O_NDELAY bit/);
  t.regex(open.stdout, /^result: 040004 \(sparc64\) -> 04000 \(x86_64\)$/m);
});

test('a refused value: the rows say why, one line on stderr, exit status 1', async (t) => {
  const run = await cli('translate', '04', '--from', 'x86_64', '--to', 'arm64');
  t.is(run.status, 1);
  t.regex(run.stdout, /^ +04 {2}04 -> refused: not an open flag on x86_64 \(ERR_ARCH_UNDEFINED_VALUE\)$/m);
  t.notRegex(run.stdout, /^result:/m);
  t.is(lines(run.stderr).length, 1);
  t.regex(run.stderr, /ERR_ARCH_UNDEFINED_VALUE/);
});

test('--json gives the rows, the result and the drops', async (t) => {
  const run = await cli('translate', 'O_RDWR|O_DIRECT|__FMODE_NONOTIFY', '--from', 'x86_64', '--to', 'arm64', '--json');
  t.is(run.status, 0);
  const out = JSON.parse(run.stdout);
  t.like(out, { kind: 'open', from: 'x86_64', to: 'arm64', identity: false, result: 0o200002, error: null });
  t.like(out.rows[1], { from: { name: 'O_DIRECT', value: 0o40000 }, to: { name: 'O_DIRECT', value: 0o200000 } });
  t.like(out.dropped, [{ name: '__FMODE_NONOTIFY' }]);
});

test('a bad architecture name: exit status 2, one line on stderr', async (t) => {
  const run = await cli('translate', '0o40000', '--from', 'x86_64', '--to', 'vax');
  t.is(run.status, 2);
  t.is(run.stdout, '');
  t.is(lines(run.stderr).length, 1);
  t.regex(run.stderr, /--to: unknown architecture 'vax'/);
});

test('usage errors exit 2 with one line', async (t) => {
  for (const args of [
    ['translate', '1', '--from', 'x86_64'],
    ['translate', '--from', 'x86_64', '--to', 'arm64'],
    ['translate', 'O_BOGUS', '--from', 'x86_64', '--to', 'arm64'],
    ['translate', '1', '--from', 'x86_64', '--to', 'arm64', '--kind', 'poll'],
    ['show', '--arch', 'vax'],
    ['frobnicate'],
    ['show', '--bogus'],
  ]) {
    const run = await cli(...args);
    t.is(run.status, 2, args.join(' '));
    t.is(lines(run.stderr).length, 1, args.join(' '));
  }
});

test('show: one architecture, one kind, as text', async (t) => {
  const run = await cli('show', '--arch', 'sparc', '--kind', 'open');
  t.is(run.status, 0);
  t.regex(run.stdout, /^sparc64 {2}\(arch indicator 8; also sparc\)$/m);
  t.regex(run.stdout, /^ +O_NDELAY +04 +dropped where absent: /m);
  t.regex(run.stdout, /^ +O_DIRECT +04000000$/m);
  t.regex(run.stdout, /^ +O_SYNC +040020000 += __O_SYNC\|O_DSYNC$/m);
  t.notRegex(run.stdout, /errno/);
});

test('show --json: every architecture with its tables', async (t) => {
  const run = await cli('show', '--json');
  t.is(run.status, 0);
  const { architectures } = JSON.parse(run.stdout);
  t.is(architectures.length, 12);
  const mips = architectures.find((a: { name: string }) => a.name === 'mips64');
  t.is(mips.indicator, 7);
  t.is(mips.errno.numbers.ENOTEMPTY, 93);
  t.is(mips.open.bits.O_APPEND, 8);
  t.is(mips.lock.types.F_RDLCK, 0);
});

test('translate: a fileattr ioctl command by name, re-encoded in the target layout; another command passes', async (t) => {
  const run = await cli('translate', 'FS_IOC_GETFLAGS', '--from', 'x86_64', '--to', 'ppc64');
  t.is(run.status, 0, run.stderr);
  t.regex(run.stdout, /0x80086601 \(x86_64\) -> 0x40086601 \(ppc64\)/);
  const other = await cli('translate', '0x80045430', '--kind', 'ioctl', '--from', 'x86_64', '--to', 'mips64', '--json');
  t.is(other.status, 0, other.stderr);
  t.is(JSON.parse(other.stdout).result, 0x80045430);
});
