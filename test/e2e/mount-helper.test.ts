// mount(8) and fstab: `mount -t fuse.virtiofs-client <transport> <dir> -o ...` and an fstab line go
// through Debian's mount.fuse3 to `virtiofs-client <transport> <dir> -o ...`; `umount` ends the
// mount and the relay process with it. Each case runs in a private mount namespace (helpers/mount8.ts).
import test from 'ava';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Virtiofsd } from '../../client/backends/virtiofsd.ts';
import { controlSocketPath, logPath } from '../../client/frontend/control.ts';
import { runWithMountHelper } from '../helpers/mount8.ts';
import { requireRoot } from '../helpers/virtiofsd.ts';

const BIN = resolve('bin/virtiofs-client.js');

/** `count` virtiofsd (each serves one connection) on one shared directory, a mountpoint for each. */
async function withDevices(count: number, fn: (sockets: string[], shared: string, mnts: string[], work: string) => Promise<void>): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'vfs-mount8-test-'));
  const shared = join(work, 'shared');
  mkdirSync(shared);
  writeFileSync(join(shared, 'hello'), 'hello from the host\n');
  const mnts = Array.from({ length: count }, (_, i) => join(work, `mnt${i}`));
  for (const m of mnts) mkdirSync(m);
  const daemons: Virtiofsd[] = [];
  try {
    for (let i = 0; i < count; i++) daemons.push(await Virtiofsd.start({ sharedDir: shared }));
    await fn(
      daemons.map((d) => d.socketPath),
      shared,
      mnts,
      work,
    );
  } finally {
    for (const d of daemons) await d.stop();
    for (const m of mnts) {
      rmSync(logPath(m), { force: true });
      rmSync(controlSocketPath(m), { force: true });
    }
    rmSync(work, { recursive: true, force: true });
  }
}

/** Shell lines: the pid of the relay serving `mnt` (from status --json) into $pid. */
const relayPid = (mnt: string) => `pid=$(virtiofs-client status ${mnt} --json | sed -n 's/^ *"pid": \\([0-9]*\\),$/\\1/p'); echo "RELAY_PID=$pid"`;

/** Shell lines: wait (5 s at most) for process $pid to exit; print RELAY_GONE=yes|no. */
const relayGone = `
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && echo RELAY_GONE=no || echo RELAY_GONE=yes`;

test('mount -t fuse.virtiofs-client with -o options, then umount', async (t) => {
  if (!requireRoot(t)) return;
  await withDevices(1, async (sockets, shared, mnts) => {
    const [socket, mnt] = [sockets[0]!, mnts[0]!];
    const r = await runWithMountHelper(
      BIN,
      `
      mount -t fuse.virtiofs-client vhost-user:${socket} ${mnt} -o arch_mode=native,queue_size=64,noexec && echo MOUNTED=yes
      echo "TYPE=$(findmnt -n -o FSTYPE ${mnt})"
      echo "SOURCE=$(findmnt -n -o SOURCE ${mnt})"
      echo "OPTIONS=$(findmnt -n -o VFS-OPTIONS ${mnt})"
      echo "READ=$(cat ${mnt}/hello)"
      echo written > ${mnt}/from-mount8 && echo WRITE=ok
      echo "ARCH_MODE=$(virtiofs-client status ${mnt} --json | grep -o '"arch mode [a-z-]*' | head -n 1)"
      ${relayPid(mnt)}
      umount ${mnt} && echo UMOUNT=ok
      echo "MOUNTS_LEFT=$(findmnt -n ${mnt} | wc -l)"
      ${relayGone}
      `,
    );
    t.log(r.output.trimEnd());
    t.is(r.status, 0, r.output);
    t.is(r.values.get('MOUNTED'), 'yes');
    t.is(r.values.get('TYPE'), 'fuse.virtiofs-client');
    t.is(r.values.get('SOURCE'), `vhost-user:${socket}`);
    t.regex(r.values.get('OPTIONS') ?? '', /(^|,)noexec(,|$)/, 'a generic mount flag from -o reaches mount(2)');
    t.is(r.values.get('READ'), 'hello from the host');
    t.is(r.values.get('WRITE'), 'ok');
    t.is(readFileSync(join(shared, 'from-mount8'), 'utf8'), 'written\n');
    t.is(r.values.get('ARCH_MODE'), '"arch mode native', 'arch_mode= from -o reaches the session');
    t.regex(r.values.get('RELAY_PID') ?? '', /^\d+$/);
    t.is(r.values.get('UMOUNT'), 'ok');
    t.is(r.values.get('MOUNTS_LEFT'), '0');
    t.is(r.values.get('RELAY_GONE'), 'yes', 'the relay process exits once umount(8) has unmounted');
  });
});

test('an fstab line: mount --fstab F -a and mount -T F <dir>; ro is honoured; a bad option is one line', async (t) => {
  if (!requireRoot(t)) return;
  await withDevices(2, async (sockets, _shared, mnts, work) => {
    const [first, second, mnt, mntT] = [sockets[0]!, sockets[1]!, mnts[0]!, mnts[1]!];
    const fstab = join(work, 'fstab');
    writeFileSync(
      fstab,
      [
        "# a test fstab, never the machine's",
        `vhost-user:${first}  ${mnt}  fuse.virtiofs-client  ro,arch_mode=auto,_netdev,nofail,x-systemd.device-timeout=5  0  0`,
        `vhost-user:${second}  ${mntT}  fuse.virtiofs-client  noauto,queue_size=32  0  0`,
        '',
      ].join('\n'),
    );
    const badFstab = join(work, 'fstab.bad');
    writeFileSync(badFstab, `vhost-user:${second}  ${mntT}  fuse.virtiofs-client  arch_mod=auto  0  0\n`);
    const r = await runWithMountHelper(
      BIN,
      `
      mount --fstab ${fstab} -a && echo MOUNT_A=ok
      echo "MOUNTED_BY_A=$(findmnt -n -o TARGET -t fuse.virtiofs-client | grep -c -F ${work})"
      echo "OPTIONS=$(findmnt -n -o VFS-OPTIONS ${mnt})"
      echo "READ=$(cat ${mnt}/hello)"
      echo nope 2>/dev/null > ${mnt}/new-file && echo WRITE=ok || echo WRITE=refused
      ${relayPid(mnt)}
      umount ${mnt} && echo UMOUNT_A=ok
      ${relayGone}
      mount -T ${badFstab} ${mntT} 2>/tmp/mount8-bad.$$; echo "BAD_STATUS=$?"
      echo "BAD_MESSAGE=$(tr '\\n' '|' </tmp/mount8-bad.$$)"; rm -f /tmp/mount8-bad.$$
      echo "MOUNTS_AFTER_BAD=$(findmnt -n ${mntT} | wc -l)"
      mount -T ${fstab} ${mntT} && echo MOUNT_T=ok
      echo "READ_T=$(cat ${mntT}/hello)"
      umount ${mntT} && echo UMOUNT_T=ok
      echo "MOUNTS_LEFT=$(findmnt -n -t fuse.virtiofs-client | grep -c -F ${work})"
      `,
    );
    t.log(r.output.trimEnd());
    t.is(r.values.get('MOUNT_A'), 'ok', r.output);
    t.is(r.values.get('MOUNTED_BY_A'), '1', 'mount -a skips the noauto line');
    t.regex(r.values.get('OPTIONS') ?? '', /^ro(,|$)/);
    t.is(r.values.get('READ'), 'hello from the host');
    t.is(r.values.get('WRITE'), 'refused', 'a read-only mount refuses writes');
    t.is(r.values.get('UMOUNT_A'), 'ok');
    t.is(r.values.get('RELAY_GONE'), 'yes');
    t.not(r.values.get('BAD_STATUS'), '0');
    t.regex(r.values.get('BAD_MESSAGE') ?? '', /^virtiofs-client: -o arch_mod=auto: unknown mount option[^|]*\|$/, 'one line');
    t.is(r.values.get('MOUNTS_AFTER_BAD'), '0', 'a refused mount leaves nothing mounted');
    t.is(r.values.get('MOUNT_T'), 'ok', 'the device is still unused after the refused mount');
    t.is(r.values.get('READ_T'), 'hello from the host');
    t.is(r.values.get('UMOUNT_T'), 'ok');
    t.is(r.values.get('MOUNTS_LEFT'), '0');
  });
});
