// The local mount end to end: ordinary tools (cp, tar, git, find, du, mv,
// flock, dd, ...) on a virtio-fs device mounted by `virtiofs-client mount`,
// compared with the host's view of the shared directory, as on a local disk.
// Each test runs once per frontend, with its own virtiofsd, shared directory
// and mountpoint (test/helpers/mount-fixture.ts). The cases that also run in
// a QEMU guest over UIO and VFIO (and on the guest kernel's virtio_fs) are
// defined once, in test/helpers/mount-cases.ts; the ones here need the host:
// a device without a feature, its own timing, or killing virtiofsd.
import test, { type ExecutionContext } from 'ava';
import { readFileSync } from 'node:fs';
import { FRONTENDS, expectLimitation, knownLimitation, waitFor, withMount, processAlive, type MountFixture, type MountFixtureOptions } from '../helpers/mount-fixture.ts';
import { AS_NOBODY, MOUNT_CASES, flockHolder, sleep } from '../helpers/mount-cases.ts';
import { mountsAt } from '../../client/frontend/fuse-mount.ts';

function mountTest(title: string, options: MountFixtureOptions, fn: (t: ExecutionContext, m: MountFixture) => Promise<void> | void): void {
  for (const frontend of FRONTENDS) {
    const run = (t: ExecutionContext) => withMount(t, frontend, options, (m) => fn(t, m));
    const known = knownLimitation(frontend, title);
    if (known) test.serial(`${frontend}: ${title} [known limitation]`, (t) => expectLimitation(t, known, run));
    else test.serial(`${frontend}: ${title}`, run);
  }
}


for (const c of MOUNT_CASES) mountTest(c.title, c.options, (t, m) => c.run(t, m));

// --- host only ---------------------------------------------------------------------------

mountTest('flock without device locks: the kernel excludes, and a blocked flock waits for the holder', { tools: ['flock'] }, async (t, m) => {
  m.sh(': > "$M/lockfile"');
  const holder = m.background(flockHolder('"$M/lockfile"'));
  t.true(await holder.waitFor(/locked/), holder.stderr);
  t.is(m.run('flock -n "$M/lockfile" true').status, 1, 'a second process cannot take the lock');
  const waiter = m.background('flock "$M/lockfile" echo got-it');
  await sleep(700);
  t.false(waiter.done(), 'the blocking flock waits while the lock is held');
  const released = Date.now();
  holder.send('release');
  t.true(await waiter.waitFor(/got-it/, 5000), `waiter: ${waiter.stdout} ${waiter.stderr}`);
  t.is((await waiter.exited).code, 0);
  t.true(Date.now() - released < 3000);
});

mountTest('without --allow-other other users cannot use the mount at all', { tools: ['setpriv'] }, (t, m) => {
  m.sh('echo public > "$H/public" && chmod 644 "$H/public"');
  const r = m.run(`${AS_NOBODY} cat "$M/public"`);
  t.not(r.status, 0);
  t.regex(r.stderr, /Permission denied/);
  t.is(m.sh('cat "$M/public"'), 'public\n');
});

mountTest('a change made on the host is visible through the mount after the attribute timeout (cache=auto)', { virtiofsd: { cache: 'auto' } }, async (t, m) => {
  m.sh('echo first > "$M/f"');
  t.is(m.sh('cat "$M/f"'), 'first\n');
  t.not(m.run('stat "$M/later"').status, 0, 'not there yet (the negative entry may now be cached)');

  m.sh('printf "second, longer version\\n" > "$H/f" && echo hello > "$H/later" && mkdir "$H/newdir" && echo deep > "$H/newdir/inner"');
  const changedAt = Date.now();
  const seen = async (what: string, probe: () => boolean) => {
    const ok = await waitFor(probe, 5000, 100);
    t.true(ok, `${what}: still not visible after 5 s`);
    t.log(`${what}: visible after ${Date.now() - changedAt} ms`);
  };
  await seen('rewritten contents', () => m.run('cat "$M/f"').stdout === 'second, longer version\n');
  await seen('new file', () => m.run('cat "$M/later"').stdout === 'hello\n');
  await seen('new directory', () => m.run('cat "$M/newdir/inner"').stdout === 'deep\n');

  m.sh('rm "$H/f" && mv "$H/later" "$H/newdir/moved" && chmod 700 "$H/newdir/moved"');
  const removedAt = Date.now();
  t.true(await waitFor(() => m.run('stat "$M/f"').status !== 0, 5000, 100), 'a file removed on the host disappears');
  t.true(await waitFor(() => m.run('stat -c %a "$M/newdir/moved"').stdout === '700\n', 5000, 100), 'a rename and chmod on the host show');
  t.true(await waitFor(() => m.run('ls "$M"').stdout === 'newdir\n', 5000, 100), `listing: ${m.run('ls "$M"').stdout}`);
  t.log(`removal, rename, chmod: visible after ${Date.now() - removedAt} ms`);
});

mountTest('processes killed with a file open on the mount: the device keeps serving', {}, (t, m) => {
  // Closing a file in a dying process sends FLUSH with a fatal signal pending,
  // so the kernel follows it with FUSE_INTERRUPT. Linux's virtio_fs never
  // passes interrupts to the device, and QEMU 7.2's virtiofsd crashes on one
  // that arrives after its request finished.
  m.sh('echo content > "$M/f"');
  m.sh('for i in $(seq 1 30); do sleep 100 < "$M/f" & p=$!; sleep 0.02; kill -9 $p; wait $p 2>/dev/null || true; cat "$M/f" > /dev/null; done');
  t.is(m.sh('cat "$M/f"'), 'content\n');
  t.true(processAlive(m.daemon.pid), 'virtiofsd is still running');
  t.true(m.isMounted());
  t.true(m.frontendAlive());
});

// --- the device going away ------------------------------------------------------------------

mountTest('virtiofsd killed under a running read: the reader fails within seconds, the mount goes away, the frontend exits', {}, async (t, m) => {
  // A 4 GiB sparse file read 4 KiB at a time with O_DIRECT: every block is a
  // round trip to the device, so the read is still running when it dies.
  m.sh('truncate -s 4G "$H/slow"');
  const reader = m.background('exec dd if="$M/slow" of=/dev/null bs=4k iflag=direct');
  await sleep(1000);
  t.false(reader.done(), `the reader is still reading: ${reader.stderr}`);
  const killedAt = Date.now();
  m.daemon.kill('SIGKILL');
  const ended = await Promise.race([reader.exited, sleep(10_000).then(() => undefined)]);
  const readerMs = Date.now() - killedAt;
  t.truthy(ended, 'the reader did not finish within 10 s of the device dying');
  t.true(readerMs < 5000, `the reader ended ${readerMs} ms after the kill`);
  t.not(ended?.code, 0, 'with an error');
  t.regex(reader.stderr, /error reading|Transport endpoint is not connected|Software caused connection abort|Input\/output error|No such device/, reader.stderr);
  t.log(`reader: ${reader.stderr.trim().split('\n')[0]} (${readerMs} ms after SIGKILL)`);

  t.true(await waitFor(() => !m.isMounted(), 5000), `still mounted: ${JSON.stringify(mountsAt(m.mnt))}`);
  t.false(readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${m.mnt} `), 'not in /proc/self/mountinfo');
  t.true(await waitFor(() => !processAlive(m.pid), 5000), 'the frontend process exits');
  t.log(`mount gone and frontend exited ${Date.now() - killedAt} ms after SIGKILL`);
  t.regex(m.log(), /device failed|hung up/, 'the frontend logged why');
  t.is(m.sh('ls -A "$M"'), '', 'the mountpoint is an empty directory again');
});
