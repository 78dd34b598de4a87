// examples/systemd: systemd-analyze verify accepts both units, and what the mount unit says (What=,
// Type=, Options=) mounts through mount(8) over the virtiofsd its service unit starts (the
// ExecStart= command line, run here with a temporary socket and directory). No systemd runs as
// PID 1 here, so the units themselves are not started.
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { controlSocketPath, logPath } from '../../client/frontend/control.ts';
import { runWithMountHelper } from '../helpers/mount8.ts';
import { requireRoot } from '../helpers/virtiofsd.ts';

const UNITS = resolve('examples/systemd');
const MOUNT_UNIT = join(UNITS, 'mnt-share.mount');
const SERVICE_UNIT = join(UNITS, 'virtiofsd-share.service');

function setting(unit: string, key: string): string {
  const m = new RegExp(`^${key}=(.*)$`, 'm').exec(readFileSync(unit, 'utf8'));
  if (!m) throw new Error(`${unit} has no ${key}=`);
  return m[1]!;
}

test('systemd-analyze verify accepts the example units', (t) => {
  const r = spawnSync('systemd-analyze', ['verify', MOUNT_UNIT, SERVICE_UNIT], { encoding: 'utf8' });
  if (r.error) {
    t.fail(`systemd-analyze cannot run (${r.error.message}): install systemd (bash scripts/setup.sh --for-tests)`);
    return;
  }
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout + r.stderr, '', 'no warnings either (an ordering cycle is only a warning)');
});

test("the mount unit's What=, Type= and Options= mount over the service unit's virtiofsd command", async (t) => {
  if (!requireRoot(t)) return;
  const socketInUnit = '/run/virtiofsd-share.sock';
  const work = mkdtempSync(join(tmpdir(), 'vfs-units-'));
  const shared = join(work, 'share');
  const mnt = join(work, 'mnt');
  const socket = join(work, 'vfs.sock');
  mkdirSync(shared);
  mkdirSync(mnt);
  writeFileSync(join(shared, 'hello'), 'served as the unit says\n');
  const exec = setting(SERVICE_UNIT, 'ExecStart').replace(socketInUnit, socket).replace('/srv/share', shared).split(' ');
  const daemon = spawn(exec[0]!, exec.slice(1), { stdio: 'ignore' });
  try {
    for (let i = 0; i < 50 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 100));
    const what = setting(MOUNT_UNIT, 'What');
    t.is(what, `vhost-user:${socketInUnit}`);
    const r = await runWithMountHelper(
      resolve('bin/virtiofs-client.js'),
      `
      mount -t ${setting(MOUNT_UNIT, 'Type')} ${what.replace(socketInUnit, socket)} ${mnt} -o ${setting(MOUNT_UNIT, 'Options')} && echo MOUNTED=yes
      echo "READ=$(cat ${mnt}/hello)"
      umount ${mnt} && echo UMOUNT=ok
      `,
    );
    t.is(r.values.get('MOUNTED'), 'yes', r.output);
    t.is(r.values.get('READ'), 'served as the unit says');
    t.is(r.values.get('UMOUNT'), 'ok');
  } finally {
    daemon.kill();
    rmSync(logPath(mnt), { force: true });
    rmSync(controlSocketPath(mnt), { force: true });
    rmSync(work, { recursive: true, force: true });
  }
});
