// The driver against a real device: QEMU's virtiofsd over vhost-user, through
// the client API only, checking what the host sees in the shared directory.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { constants as fsc, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../../client/client.ts';
import { InitFlag } from '../../client/protocol/index.ts';
import { Virtiofsd } from '../../client/backends/virtiofsd.ts';
import { requireRoot, withDevice } from '../helpers/virtiofsd.ts';

test('INIT: negotiated minor, max_write, flags and the arch outcome of a legacy device', async (t) => {
  await withDevice(t, {}, async ({ client }) => {
    const init = client.session.init;
    t.is(init.major, 7);
    t.true(init.minor >= 31 && init.minor <= 45, `minor ${init.minor}`);
    t.true(init.maxWrite >= 4096);
    t.true((init.flags & InitFlag.MAX_PAGES) !== 0n || init.maxPages === 32);
    t.is(init.arch.outcome, 'legacy', 'virtiofsd does not know the arch extension: outcome (c)');
    const text = client.describe().join('\n');
    t.regex(text, /device answer legacy/);
    t.regex(text, /max_write \d+/);
    t.log(text);
  });
});

test('create, write and read back byte-exact across max_write boundaries', async (t) => {
  await withDevice(t, {}, async ({ client, dir }) => {
    const mw = client.session.maxWrite;
    const sizes = [0, 1, 4095, 4096, mw - 1, mw, mw + 1, 3 * mw + 17, 5 * 1024 * 1024 + 3];
    for (const size of sizes) {
      const name = `f${size}`;
      const data = randomBytes(size);
      const created = await client.create(ROOT, name, fsc.O_RDWR, 0o644);
      t.is(await client.write(created.entry.nodeid, created.fh, 0, data), size);
      const back = await client.read(created.entry.nodeid, created.fh, 0, size + 100);
      t.true(back.equals(data), `read back ${size} bytes`);
      await client.flush(created.entry.nodeid, created.fh);
      await client.release(created.entry.nodeid, created.fh, fsc.O_RDWR);
      t.true(readFileSync(join(dir, name)).equals(data), `host sees ${size} bytes`);
    }
  });
});

test('getattr and setattr (mode, size, times) agree with the host', async (t) => {
  await withDevice(t, {}, async ({ client, dir }) => {
    writeFileSync(join(dir, 'a'), 'hello world');
    const e = await client.lookup(ROOT, 'a');
    const a = await client.getattr(e.nodeid);
    const host = statSync(join(dir, 'a'), { bigint: true });
    t.is(a.size, 11n);
    t.is(a.ino, host.ino);
    t.is(a.mode, Number(host.mode));
    let after = await client.setattr(e.nodeid, { mode: 0o100600 });
    t.is(after.mode & 0o7777, 0o600);
    t.is(statSync(join(dir, 'a')).mode & 0o7777, 0o600);
    after = await client.setattr(e.nodeid, { size: 5 });
    t.is(after.size, 5n);
    t.is(readFileSync(join(dir, 'a'), 'utf8'), 'hello');
    after = await client.setattr(e.nodeid, { atime: { sec: 1_000_000_000, nsec: 5 }, mtime: { sec: 1_234_567_890, nsec: 123_456_789 } });
    const h = statSync(join(dir, 'a'), { bigint: true });
    t.is(h.mtimeNs, 1_234_567_890_123_456_789n);
    t.is(h.atimeNs, 1_000_000_000_000_000_005n);
    t.is(after.mtime, 1_234_567_890n);
    t.is(after.mtimensec, 123_456_789);
  });
});

test('mkdir and readdirplus of a 1,000-entry directory', async (t) => {
  await withDevice(t, {}, async ({ client, dir }) => {
    const d = await client.mkdir(ROOT, 'big', 0o755);
    t.true(statSync(join(dir, 'big')).isDirectory());
    const names = Array.from({ length: 1000 }, (_, i) => `entry-${i}-${'x'.repeat(i % 50)}`);
    for (const n of names) writeFileSync(join(dir, 'big', n), n);
    const listed = await client.list(d.nodeid);
    const got = listed.map((e) => e.name).filter((n) => n !== '.' && n !== '..');
    t.deepEqual(got.sort(), [...names].sort());
    const sample = listed.find((e) => e.name === 'entry-7-xxxxxxx')!;
    t.is(sample.entry.attr.size, BigInt('entry-7-xxxxxxx'.length));
  });
});

test('rename, link, symlink/readlink, unlink and rmdir: the host sees each', async (t) => {
  await withDevice(t, {}, async ({ client, dir }) => {
    const sub = await client.mkdir(ROOT, 'sub', 0o755);
    const f = await client.create(ROOT, 'one', fsc.O_WRONLY, 0o644);
    await client.write(f.entry.nodeid, f.fh, 0, Buffer.from('data'));
    await client.release(f.entry.nodeid, f.fh);

    await client.rename(ROOT, 'one', sub.nodeid, 'two');
    t.false(existsSync(join(dir, 'one')));
    t.is(readFileSync(join(dir, 'sub/two'), 'utf8'), 'data');

    const linked = await client.link(f.entry.nodeid, ROOT, 'hard');
    t.is(linked.attr.nlink, 2);
    t.is(statSync(join(dir, 'hard')).ino, statSync(join(dir, 'sub/two')).ino);

    const s = await client.symlink(ROOT, 'sym', 'sub/two');
    t.is(readlinkSync(join(dir, 'sym')), 'sub/two');
    t.is(await client.readlink(s.nodeid), 'sub/two');
    t.true(lstatSync(join(dir, 'sym')).isSymbolicLink());

    await client.unlink(ROOT, 'hard');
    await client.unlink(sub.nodeid, 'two');
    await client.rmdir(ROOT, 'sub');
    t.false(existsSync(join(dir, 'sub')));
    t.false(existsSync(join(dir, 'hard')));
    const err = await t.throwsAsync(client.lookup(ROOT, 'sub'));
    t.is((err as NodeJS.ErrnoException).code, 'ENOENT');
    t.regex(err!.message, /lookup: ENOENT .*sub/);
  });
});

test('statfs matches the host filesystem; fsync succeeds', async (t) => {
  await withDevice(t, {}, async ({ client, dir }) => {
    const st = await client.statfs();
    const host = statfsSync(dir);
    t.is(Number(st.bsize), host.bsize);
    t.is(st.blocks, BigInt(host.blocks));
    const f = await client.create(ROOT, 's', fsc.O_RDWR, 0o644);
    await client.write(f.entry.nodeid, f.fh, 0, Buffer.from('x'));
    await client.fsync(f.entry.nodeid, f.fh);
    await client.fsync(f.entry.nodeid, f.fh, true);
    await client.release(f.entry.nodeid, f.fh);
  });
});

test('xattrs (virtiofsd -o xattr): set, get, list, remove, seen by the host', async (t) => {
  await withDevice(t, { xattr: true }, async ({ client, dir }) => {
    writeFileSync(join(dir, 'x'), '');
    const e = await client.lookup(ROOT, 'x');
    await client.setxattr(e.nodeid, 'user.colour', Buffer.from('blue'));
    await client.setxattr(e.nodeid, 'user.empty', Buffer.alloc(0));
    t.is((await client.getxattr(e.nodeid, 'user.colour')).toString(), 'blue');
    t.deepEqual((await client.listxattr(e.nodeid)).filter((n) => n.startsWith('user.')).sort(), ['user.colour', 'user.empty']);
    const host = execFileSync('python3', ['-c', `import os; print(os.getxattr(${JSON.stringify(join(dir, 'x'))}, 'user.colour').decode())`], {
      encoding: 'utf8',
    });
    t.is(host.trim(), 'blue');
    await client.removexattr(e.nodeid, 'user.colour');
    const err = await t.throwsAsync(client.getxattr(e.nodeid, 'user.colour'));
    t.is((err as NodeJS.ErrnoException).code, 'ENODATA');
  });
});

test('64 concurrent requests in flight complete correctly', async (t) => {
  await withDevice(t, {}, async ({ client, dir }) => {
    mkdirSync(join(dir, 'c'));
    const files = Array.from({ length: 64 }, (_, i) => {
      const data = randomBytes(1000 + i * 997);
      writeFileSync(join(dir, 'c', `f${i}`), data);
      return data;
    });
    const c = await client.lookup(ROOT, 'c');
    t.log(`device offers ${client.session.device.requestQueueCount} request queue(s)`);
    const results = await Promise.all(
      files.map(async (data, i) => {
        const e = await client.lookup(c.nodeid, `f${i}`);
        const o = await client.open(e.nodeid, fsc.O_RDONLY);
        const got = await client.read(e.nodeid, o.fh, 0, data.length);
        await client.release(e.nodeid, o.fh);
        return got.equals(data);
      }),
    );
    t.deepEqual(results, files.map(() => true));
  });
});

test('killing virtiofsd fails pending and new requests within a bounded time', async (t) => {
  await withDevice(t, {}, async ({ client, daemon, dir }) => {
    writeFileSync(join(dir, 'big'), randomBytes(8 << 20));
    const e = await client.lookup(ROOT, 'big');
    const o = await client.open(e.nodeid, fsc.O_RDONLY);
    const reads = Array.from({ length: 32 }, () => client.read(e.nodeid, o.fh, 0, 8 << 20));
    const started = Date.now();
    daemon.kill('SIGKILL');
    const outcomes = await Promise.allSettled(reads);
    const elapsed = Date.now() - started;
    t.true(elapsed < 5000, `pending requests settled after ${elapsed} ms`);
    t.true(outcomes.some((o) => o.status === 'rejected'), 'some reads were still pending when the device died');
    for (const o of outcomes) if (o.status === 'rejected') t.regex(String((o.reason as Error).message), /hung up|closed|ENOTCONN/);
    const late = await t.throwsAsync(client.getattr(ROOT));
    t.is((late as NodeJS.ErrnoException).code, 'ENOTCONN');
  });
});

test('O_DIRECT I/O works: data travels in page-aligned buffers (virtiofsd -o allow_direct_io)', async (t) => {
  await withDevice(t, { allowDirectIo: true }, async ({ client, dir }) => {
    const flags = fsc.O_RDWR | fsc.O_DIRECT;
    const f = await client.create(ROOT, 'direct', flags, 0o644);
    const block = randomBytes(64 * 1024);
    t.is(await client.write(f.entry.nodeid, f.fh, 0, block, flags), block.length);
    t.true((await client.read(f.entry.nodeid, f.fh, 0, block.length, flags)).equals(block));
    await client.release(f.entry.nodeid, f.fh, flags);
    t.true(readFileSync(join(dir, 'direct')).equals(block));
  });
});

test('busy-poll mode completes requests without notifications', async (t) => {
  await withDevice(t, { client: { busyPoll: true } }, async ({ client, dir }) => {
    writeFileSync(join(dir, 'p'), 'polled');
    const e = await client.lookup(ROOT, 'p');
    const o = await client.open(e.nodeid, fsc.O_RDONLY);
    const reads = await Promise.all(Array.from({ length: 16 }, () => client.read(e.nodeid, o.fh, 0, 6)));
    t.deepEqual(reads.map(String), new Array(16).fill('polled'));
  });
});

test('the scripting example runs against a real device', async (t) => {
  if (!requireRoot(t)) return;
  const dir = mkdtempSync(join(tmpdir(), 'vfs-example-'));
  const daemon = await Virtiofsd.start({ sharedDir: dir });
  try {
    const out = execFileSync(process.execPath, ['--import', 'tsx', 'examples/script-a-device.ts', daemon.socketPath], { encoding: 'utf8' });
    t.regex(out, /hello from userspace virtio-fs/);
    t.regex(out, /missing: ENOENT/);
    t.is(readFileSync(join(dir, 'hello.txt'), 'utf8'), 'hello from userspace virtio-fs\n');
  } finally {
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
