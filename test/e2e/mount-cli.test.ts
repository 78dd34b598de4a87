// The mount command as a user meets it: clear one-line errors for bad
// mountpoints, a stale mount detected and cleared, status of a live mount.
import test from 'ava';
import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { Virtiofsd } from '../../client/backends/virtiofsd.ts';
import { controlSocketPath, logPath } from '../../client/frontend/control.ts';
import { mountsAt } from '../../client/frontend/fuse-mount.ts';
import { requireRoot } from '../helpers/virtiofsd.ts';

const run = promisify(execFile);
const cli = (...args: string[]) => spawnSync(process.execPath, ['bin/virtiofs-client.js', ...args], { encoding: 'utf8' });

/** What a user needs to mount: the device socket, a mountpoint of their own (nobody's). */
function openToNobody(d: Virtiofsd, work: string): void {
  chmodSync(work, 0o755);
  chmodSync(dirname(d.socketPath), 0o755);
  chmodSync(d.socketPath, 0o777);
  chownSync(join(work, 'mnt'), 65534, 65534);
}

const AS_NOBODY = ['--reuid', 'nobody', '--regid', 'nogroup', '--clear-groups'];

/** The CLI as user nobody (no runtime directory: a user's run directory falls back to /tmp), with `env` added. */
function asNobodyWith(env: Record<string, string>, ...args: string[]) {
  return spawnSync('setpriv', [...AS_NOBODY, process.execPath, 'bin/virtiofs-client.js', ...args], {
    encoding: 'utf8',
    env: { ...process.env, HOME: '/tmp', XDG_RUNTIME_DIR: '', ...env },
  });
}

const asNobody = (...args: string[]) => asNobodyWith({}, ...args);

async function withDaemon(fn: (d: Virtiofsd, work: string) => Promise<void>): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'vfs-cli-'));
  mkdirSync(join(work, 'shared'));
  mkdirSync(join(work, 'mnt'));
  writeFileSync(join(work, 'shared', 'hello'), 'hello\n');
  const d = await Virtiofsd.start({ sharedDir: join(work, 'shared') });
  try {
    await fn(d, work);
  } finally {
    cli('unmount', join(work, 'mnt'));
    await d.stop();
    rmSync(work, { recursive: true, force: true });
    rmSync(logPath(join(work, 'mnt')), { force: true });
    rmSync(controlSocketPath(join(work, 'mnt')), { force: true });
  }
}

test('bad mountpoints give one clear line and a failing status, before the device is touched', async (t) => {
  if (!requireRoot(t)) return;
  await withDaemon(async (d, work) => {
    const missing = cli('mount', '--transport', `vhost-user:${d.socketPath}`, '--foreground', join(work, 'nope'));
    t.is(missing.status, 1);
    t.regex(missing.stderr, /^virtiofs-client: mountpoint .*nope does not exist: create it first/);
    t.is(missing.stderr.trim().split('\n').length, 1, missing.stderr);
    const file = join(work, 'file');
    writeFileSync(file, '');
    const notDir = cli('mount', '--transport', `vhost-user:${d.socketPath}`, '--foreground', file);
    t.regex(notDir.stderr, /is not a directory/);
    const noTransport = cli('mount', join(work, 'mnt'));
    t.is(noTransport.status, 2);
    t.regex(noTransport.stderr, /--transport is required/);
    // The device is still unused: a real mount now works.
    const ok = cli('mount', '--transport', `vhost-user:${d.socketPath}`, join(work, 'mnt'));
    t.is(ok.status, 0, ok.stderr);
    t.regex(ok.stdout, /^mounted vhost-user:.* on .*mnt \(pid \d+\)/);
    t.is((await run('cat', [join(work, 'mnt', 'hello')])).stdout, 'hello\n');
    const again = cli('mount', '--transport', `vhost-user:${d.socketPath}`, join(work, 'mnt'));
    t.is(again.status, 1);
    t.regex(again.stderr, /is already a mountpoint \(fuse.virtiofs-client/);
  });
});

test('status reports the negotiation and per-opcode counts of a running mount', async (t) => {
  if (!requireRoot(t)) return;
  await withDaemon(async (d, work) => {
    const mnt = join(work, 'mnt');
    t.is(cli('mount', '--transport', `vhost-user:${d.socketPath}`, mnt).status, 0);
    await run('cat', [join(mnt, 'hello')]);
    const text = cli('status', mnt);
    t.is(text.status, 0);
    t.regex(text.stdout, /FUSE 7\.\d+ \(device 7\.36\)/);
    t.regex(text.stdout, /arch mode auto; device answer legacy/);
    t.regex(text.stdout, /READ\s+\d+\s+0\s+[\d.]+/);
    const json = JSON.parse(cli('status', mnt, '--json').stdout) as { archOutcome: string; operations: { opcode: string; count: number }[] }[];
    t.is(json[0]!.archOutcome, 'legacy');
    t.true(json[0]!.operations.some((o) => o.opcode === 'LOOKUP' || o.opcode === 'READ'));
    t.is(cli('unmount', mnt).status, 0);
    t.is(mountsAt(mnt).length, 0);
  });
});

test('a stale mount left by a killed relay is detected, explained, and cleared by unmount', async (t) => {
  if (!requireRoot(t)) return;
  await withDaemon(async (d, work) => {
    const mnt = join(work, 'mnt');
    const mounted = cli('mount', '--transport', `vhost-user:${d.socketPath}`, mnt);
    const pid = Number(/pid (\d+)/.exec(mounted.stdout)?.[1]);
    t.true(pid > 0, mounted.stdout + mounted.stderr);
    process.kill(pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));
    t.is(mountsAt(mnt).length, 1, 'the kernel keeps the mount of a killed daemon');
    const second = cli('mount', '--transport', 'vhost-user:/nonexistent.sock', mnt);
    t.is(second.status, 1);
    t.regex(second.stderr, /stale fuse.virtiofs-client mount whose daemon is gone .*run 'virtiofs-client unmount/);
    t.is(cli('unmount', mnt).status, 0);
    t.is(mountsAt(mnt).length, 0);
    t.regex(readFileSync(join(work, 'shared', 'hello'), 'utf8'), /hello/);
  });
});

test.serial('a transport string with a comma, spaces and = cannot inject mount options: an unprivileged mount takes it whole as its source', async (t) => {
  if (!requireRoot(t)) return;
  await withDaemon(async (d, work) => {
    const mnt = join(work, 'mnt');
    openToNobody(d, work);
    // A path a user may well have, and that reads as a second option if passed on unescaped.
    const link = join(work, 'dev x=y,ro');
    symlinkSync(d.socketPath, link);
    const fuseMode = statSync('/dev/fuse').mode & 0o777;
    chmodSync('/dev/fuse', 0o666);
    t.teardown(() => chmodSync('/dev/fuse', fuseMode));
    const mounted = asNobody('mount', '--transport', `vhost-user:${link}`, mnt);
    t.is(mounted.status, 0, mounted.stderr);
    t.is(mountsAt(mnt)[0]?.source, `vhost-user:${link}`, 'the whole string is the source');
    const line = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === mnt)!;
    t.deepEqual(line.split(' ')[5]!.split(',').filter((o) => o === 'ro'), [], `not read-only: ${line}`);
    t.is(asNobody('unmount', mnt).status, 0);
  });
});

test.serial('another user cannot read, stop or unmount root\'s mount, nor plant the run directory of a user\'s', async (t) => {
  if (!requireRoot(t)) return;
  await withDaemon(async (d, work) => {
    const mnt = join(work, 'mnt');
    chmodSync(work, 0o755);
    const mounted = cli('mount', '--transport', `vhost-user:${d.socketPath}`, mnt);
    t.is(mounted.status, 0, mounted.stderr);
    // Pointed at root's run directory, nobody cannot connect to the control socket (0755: connecting needs write).
    const socket = controlSocketPath(mnt);
    t.is(statSync(socket).mode & 0o002, 0, 'the control socket is not writable by others');
    const status = asNobodyWith({ VIRTIOFS_CLIENT_RUN_DIR: dirname(socket) }, 'status', mnt);
    t.notRegex(status.stdout, /device answer/, `status as nobody: ${status.stdout}${status.stderr}`);
    const unmount = asNobody('unmount', mnt);
    t.not(unmount.status, 0, 'nobody cannot unmount root\'s mount');
    t.is(mountsAt(mnt).length, 1);
    const log = logPath(mnt);
    t.is(statSync(log).mode & 0o022, 0, 'the log is writable by its owner only');
    t.is(cli('unmount', mnt).status, 0);

    // A user's run directory falls back to /tmp: one made by someone else first is refused, in one line.
    const planted = join(tmpdir(), 'virtiofs-client-65534');
    rmSync(planted, { recursive: true, force: true });
    mkdirSync(planted, { mode: 0o777 });
    chmodSync(planted, 0o777);
    t.teardown(() => rmSync(planted, { recursive: true, force: true }));
    chownSync(mnt, 65534, 65534);
    const refused = asNobody('mount', '--transport', `vhost-user:${d.socketPath}`, mnt);
    t.is(refused.status, 1);
    t.regex(refused.stderr, /^virtiofs-client: \/tmp\/virtiofs-client-65534 is owned by uid 0, not 65534: its control socket and log would not be safe/);
    t.is(refused.stderr.trim().split('\n').length, 1, refused.stderr);
    t.is(mountsAt(mnt).length, 0);
  });
});

test.serial('an unprivileged user mounts through fusermount3, uses the mount, and unmounts', async (t) => {
  if (!requireRoot(t)) return;
  await withDaemon(async (d, work) => {
    const mnt = join(work, 'mnt');
    openToNobody(d, work);
    // Without udev (as here) /dev/fuse is root-only; Debian's udev makes it 0666. Say so first.
    const fuseMode = statSync('/dev/fuse').mode & 0o777;
    if (fuseMode !== 0o666) {
      const refused = asNobody('mount', '--transport', `vhost-user:${d.socketPath}`, mnt);
      t.is(refused.status, 1);
      t.regex(refused.stderr, /users need \/dev\/fuse mode 0666, as udev sets it on Debian/);
      chmodSync('/dev/fuse', 0o666);
    }
    t.teardown(() => chmodSync('/dev/fuse', fuseMode));
    const mounted = asNobody('mount', '--transport', `vhost-user:${d.socketPath}`, mnt);
    t.is(mounted.status, 0, mounted.stderr);
    t.is(mountsAt(mnt)[0]?.fstype, 'fuse.virtiofs-client');
    const ls = spawnSync('setpriv', [...AS_NOBODY, 'cat', join(mnt, 'hello')], { encoding: 'utf8' });
    t.is(ls.stdout, 'hello\n', ls.stderr);
    const status = asNobody('status', mnt);
    t.regex(status.stdout, /device answer legacy/);
    const unmounted = asNobody('unmount', mnt);
    t.is(unmounted.status, 0, unmounted.stderr);
    t.is(mountsAt(mnt).length, 0);
  });
});

test('a transport that is not there names the likely cause in one line, and nothing stays mounted', async (t) => {
  if (!requireRoot(t)) return;
  const work = mkdtempSync(join(tmpdir(), 'vfs-cli-'));
  const mnt = join(work, 'mnt');
  mkdirSync(mnt);
  try {
    const missing = join(work, 'nope.sock');
    const r1 = cli('mount', '--transport', `vhost-user:${missing}`, mnt);
    t.is(r1.status, 1);
    t.is(r1.stderr, `virtiofs-client: no vhost-user backend at ${missing} (no such file): is the backend running, started with --socket-path=${missing}?\n`);
    const plain = join(work, 'plain');
    writeFileSync(plain, '');
    const r2 = cli('mount', '--transport', `vhost-user:${plain}`, mnt);
    t.is(r2.stderr, `virtiofs-client: ${plain} is not a unix socket: give the backend's --socket-path\n`);
    // A socket file nobody listens on: what a backend that exited leaves behind.
    const dead = join(work, 'dead.sock');
    spawnSync('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(dead)})`]);
    t.true(statSync(dead).isSocket());
    const r3 = cli('mount', '--transport', `vhost-user:${dead}`, mnt);
    t.regex(r3.stderr, /^virtiofs-client: nothing listens on .*dead\.sock: the backend has exited .* start it again\)\n$/);
    const r4 = cli('mount', '--transport', 'vhost-user', mnt);
    t.regex(r4.stderr, /^virtiofs-client: transport 'vhost-user' not understood: expected vhost-user:<socket>, vfio:<pci address>, uio:<uioN or pci address>\n$/);
    t.is(mountsAt(mnt).length, 0);
  } finally {
    rmSync(work, { recursive: true, force: true });
    rmSync(logPath(mnt), { force: true });
  }
});
