// Real devices of other architectures (Debian's arm64, ppc64el and mips64el
// virtiofsd under qemu-user): `check` and a real mount show the breakage in
// native mode and its cure with device-arch, as a user would see them.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FOREIGN_SANDBOX, foreignArchName, foreignVirtiofsd, s390xVirtiofsd, type ForeignArch } from '../../client/backends/foreign.ts';
import { Virtiofsd } from '../../client/backends/virtiofsd.ts';
import { controlSocketPath, logPath } from '../../client/frontend/control.ts';
import { requireRoot } from '../helpers/virtiofsd.ts';

interface Report {
  ok: boolean;
  wireArch: string;
  results: { check: string; got: string; verdict: string }[];
}

const cli = (...args: string[]) => spawnSync(process.execPath, ['bin/virtiofs-client.js', ...args], { encoding: 'utf8', timeout: 120_000 });

async function withForeign(arch: ForeignArch, fn: (socket: string, dir: string) => Promise<void> | void): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), `vfs-${arch}-`));
  const { launcher, binary } = await foreignVirtiofsd(arch);
  const d = await Virtiofsd.start({ sharedDir: dir, launcher, binary, sandbox: FOREIGN_SANDBOX, posixLock: true, allowDirectIo: true });
  try {
    await fn(d.socketPath, dir);
  } finally {
    await d.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

function check(socket: string, mode: string): { status: number | null; report: Report } {
  const r = cli('check', `vhost-user:${socket}`, '--arch-mode', mode, '--json');
  return { status: r.status, report: JSON.parse(r.stdout) as Report };
}

const got = (r: Report, prefix: string) => r.results.find((x) => x.check.startsWith(prefix));

for (const arch of ['arm64', 'ppc64el'] as const) {
  test(`${arch} device: native check reads x86 O_DIRECTORY as O_DIRECT; device-arch=${foreignArchName[arch]} is all green`, async (t) => {
    if (!requireRoot(t)) return;
    t.timeout(180_000);
    await withForeign(arch, (socket) => {
      const broken = check(socket, 'native');
      t.is(broken.status, 1);
      t.is(got(broken.report, 'open(O_DIRECTORY)')?.got, 'ok', 'the device opened a regular file "as a directory": it saw O_DIRECT');
      t.is(got(broken.report, 'open(O_DIRECTORY)')?.verdict, 'fail');
    });
    await withForeign(arch, (socket) => {
      const fixed = check(socket, `device-arch=${foreignArchName[arch]}`);
      t.is(fixed.report.wireArch, foreignArchName[arch]);
      t.deepEqual(fixed.report.results.filter((r) => r.verdict === 'fail'), []);
      t.is(fixed.status, 0);
    });
  });
}

test('mips64el device: native check shows wrong errno names and O_APPEND read as O_EXCL; device-arch=mips64 is all green', async (t) => {
  if (!requireRoot(t)) return;
  t.timeout(180_000);
  await withForeign('mips64el', (socket) => {
    const broken = check(socket, 'native').report;
    t.false(broken.ok);
    t.is(got(broken, 'rmdir of a non-empty')?.got, 'EPROTONOSUPPORT', 'mips ENOTEMPTY (93) read with x86 names');
    t.not(got(broken, 'lookup of a 300')?.got, 'ENAMETOOLONG');
    t.not(got(broken, 'write at offset 0 with O_APPEND')?.got, 'abcX', 'x86 O_APPEND is mips O_EXCL: no append');
  });
  await withForeign('mips64el', (socket) => {
    const fixed = check(socket, 'device-arch=mips64');
    t.deepEqual(fixed.report.results.filter((r) => r.verdict === 'fail'), []);
    t.is(got(fixed.report, 'rmdir of a non-empty')?.got, 'ENOTEMPTY');
    t.is(fixed.status, 0);
  });
});

test('arm64 device mounted: dd oflag=direct fails natively and works byte-exact with --arch-mode device-arch=arm64', async (t) => {
  if (!requireRoot(t)) return;
  t.timeout(240_000);
  for (const mode of ['native', 'device-arch=arm64']) {
    await withForeign('arm64', (socket, dir) => {
      const mnt = mkdtempSync(join(tmpdir(), 'vfs-arm64-mnt-'));
      try {
        const m = cli('mount', '--transport', `vhost-user:${socket}`, '--arch-mode', mode, mnt);
        t.is(m.status, 0, m.stderr);
        const dd = spawnSync('sh', ['-c', `head -c 1048576 /dev/urandom > ${mnt}.src && dd if=${mnt}.src of=${mnt}/direct.bin bs=64k oflag=direct status=none`], { encoding: 'utf8' });
        if (mode === 'native') {
          t.not(dd.status, 0, 'x86 O_DIRECT reaches the arm64 device as O_DIRECTORY');
          t.regex(dd.stderr, /Invalid argument|Not a directory/);
        } else {
          t.is(dd.status, 0, dd.stderr);
          t.true(readFileSync(join(dir, 'direct.bin')).equals(readFileSync(`${mnt}.src`)));
        }
        mkdirSync(join(mnt, 'sub'));
        t.is(cli('unmount', mnt).status, 0);
      } finally {
        cli('unmount', mnt);
        rmSync(`${mnt}.src`, { force: true });
        rmSync(mnt, { recursive: true, force: true });
        rmSync(logPath(mnt), { force: true });
        rmSync(controlSocketPath(mnt), { force: true });
      }
    });
  }
});

test('s390x (big-endian) device: check and mount say in one line that it speaks the other byte order', async (t) => {
  if (!requireRoot(t)) return;
  t.timeout(180_000);
  const dir = mkdtempSync(join(tmpdir(), 'vfs-s390x-'));
  const mnt = mkdtempSync(join(tmpdir(), 'vfs-s390x-mnt-'));
  try {
    const { launcher, binary } = await s390xVirtiofsd();
    for (const command of ['check', 'mount'] as const) {
      // The device serves one connection and exits after the first message: one per command.
      const d = await Virtiofsd.start({ sharedDir: dir, launcher, binary, sandbox: FOREIGN_SANDBOX, startTimeoutMs: 30_000 });
      try {
        const r = command === 'check' ? cli('check', `vhost-user:${d.socketPath}`) : cli('mount', '--transport', `vhost-user:${d.socketPath}`, mnt);
        t.not(r.status, 0);
        const lines = r.stderr.trim().split('\n').filter(Boolean);
        t.log(`${command}: ${lines.join(' | ')}`);
        t.is(lines.length, 1, r.stderr);
        t.regex(lines[0]!, /GET_FEATURES: .*peer closed the connection.*a backend of the other byte order/);
      } finally {
        await d.stop();
      }
    }
  } finally {
    cli('unmount', mnt);
    rmSync(dir, { recursive: true, force: true });
    rmSync(mnt, { recursive: true, force: true });
    rmSync(logPath(mnt), { force: true });
    rmSync(controlSocketPath(mnt), { force: true });
  }
});
