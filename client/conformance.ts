/**
 * The conformance probe behind `virtiofs-client check`: does the device read
 * each architecture-dependent value the way the client meant it? Each probe
 * does one operation whose outcome differs when an open flag, errno or lock
 * type is misread, in a scratch directory it removes afterwards.
 */
import { constants as fsc } from 'node:fs';
import { isErrnoError } from '../ffi/errno.ts';
import { ROOT, type VirtioFsClient } from './client.ts';

export interface ProbeResult {
  /** What is being checked, e.g. 'O_DIRECTORY on a regular file'. */
  check: string;
  expected: string;
  got: string;
  /** 'pass', 'fail', or 'n/a' when the device lacks the feature (locks, xattrs). */
  verdict: 'pass' | 'fail' | 'n/a';
}

export interface ConformanceReport {
  transport: string;
  negotiation: string[];
  archOutcome: string;
  wireArch: string;
  results: ProbeResult[];
  /** Every probe passed or was not applicable. */
  ok: boolean;
}

/** 'ok' for success, else the error's code. */
async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    if (isErrnoError(e)) return e.code;
    throw e;
  }
}

const bytes = (s: string) => Buffer.from(s);

export async function runConformance(client: VirtioFsClient, transport: string): Promise<ConformanceReport> {
  const results: ProbeResult[] = [];
  const record = (check: string, expected: string[], got: string, notApplicable: string[] = []) =>
    results.push({
      check,
      expected: expected.join(' or '),
      got,
      verdict: expected.includes(got) ? 'pass' : notApplicable.includes(got) ? 'n/a' : 'fail',
    });

  const scratchName = `.virtiofs-check-${process.pid}-${Date.now()}`;
  const dir = await client.mkdir(ROOT, scratchName, 0o755);
  const d = dir.nodeid;
  const cleanup: (() => Promise<unknown>)[] = [];
  try {
    // A regular file with content, a symlink to it, a non-empty directory.
    const file = await client.create(d, 'file', fsc.O_RDWR, 0o644);
    await client.write(file.entry.nodeid, file.fh, 0, bytes('abc'));
    await client.release(file.entry.nodeid, file.fh);
    cleanup.push(() => client.unlink(d, 'file'));
    const link = await client.symlink(d, 'link', 'file');
    cleanup.push(() => client.unlink(d, 'link'));
    const sub = await client.mkdir(d, 'full', 0o755);
    const inner = await client.create(sub.nodeid, 'inner', fsc.O_WRONLY, 0o644);
    await client.release(inner.entry.nodeid, inner.fh);
    cleanup.push(() => client.unlink(sub.nodeid, 'inner'), () => client.rmdir(d, 'full'));
    const f = file.entry.nodeid;

    const openAndClose = async (nodeid: bigint, flags: number) => {
      const o = await client.open(nodeid, flags);
      await client.release(nodeid, o.fh, flags);
    };
    // QEMU's C virtiofsd refuses O_TMPFILE's bits, O_DIRECTORY among them, with EINVAL.
    record('open(O_DIRECTORY) of a regular file', ['ENOTDIR', 'EINVAL'], await outcome(openAndClose(f, fsc.O_RDONLY | fsc.O_DIRECTORY)));
    // virtiofsd refuses every open of a symlink (EBADF), so it cannot show whether it read O_NOFOLLOW.
    record('open(O_NOFOLLOW) of a symlink', ['ELOOP'], await outcome(openAndClose(link.nodeid, fsc.O_RDONLY | fsc.O_NOFOLLOW)), ['EBADF']);
    // O_DIRECT may be refused by the filesystem (EINVAL) but is never a directory open.
    record('open(O_DIRECT) of a regular file', ['ok', 'EINVAL'], await outcome(openAndClose(f, fsc.O_RDWR | fsc.O_DIRECT)));
    record('open(O_NOATIME) by the owner', ['ok', 'EPERM'], await outcome(openAndClose(f, fsc.O_RDONLY | fsc.O_NOATIME)));

    // O_APPEND: Linux pwrite on an O_APPEND file appends whatever the offset.
    const appended = await outcome(
      (async () => {
        const o = await client.open(f, fsc.O_WRONLY | fsc.O_APPEND);
        await client.write(f, o.fh, 0, bytes('X'), fsc.O_WRONLY | fsc.O_APPEND);
        await client.release(f, o.fh, fsc.O_WRONLY | fsc.O_APPEND);
      })(),
    );
    const afterAppend = appended === 'ok' ? await readAll(client, f) : appended;
    record('write at offset 0 with O_APPEND', ['abcX'], afterAppend);

    const truncated = await outcome(openAndClose(f, fsc.O_WRONLY | fsc.O_TRUNC));
    record('open(O_TRUNC) empties the file', ['0'], truncated === 'ok' ? String((await client.getattr(f)).size) : truncated);

    record('create(O_EXCL) of an existing name', ['EEXIST'], await outcome(client.create(d, 'file', fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o644)));

    record('lookup of a missing name', ['ENOENT'], await outcome(client.lookup(d, 'missing')));
    record('rmdir of a non-empty directory', ['ENOTEMPTY', 'EEXIST'], await outcome(client.rmdir(d, 'full')));
    record('lookup of a 300-character name', ['ENAMETOOLONG'], await outcome(client.lookup(d, 'n'.repeat(300))));
    record('mkdir of an existing name', ['EEXIST'], await outcome(client.mkdir(d, 'full', 0o755)));
    record('lookup under a regular file', ['ENOTDIR'], await outcome(client.lookup(f, 'x')));
    record('open(O_WRONLY) of a directory', ['EISDIR'], await outcome(openAndClose(sub.nodeid, fsc.O_WRONLY)));
    record('getxattr on a device without xattrs', ['ENOSYS', 'ENODATA', 'EOPNOTSUPP', 'ENOTSUP'], await outcome(client.getxattr(f, 'user.virtiofs-check')));

    // POSIX locks: a write lock held by one owner conflicts for another.
    const lockResult = await lockProbe(client, f);
    record('POSIX lock types round-trip (F_WRLCK seen, then F_UNLCK)', ['ok'], lockResult, ['ENOSYS', 'EOPNOTSUPP', 'ENOTSUP']);
  } finally {
    for (const step of cleanup.reverse()) await step().catch(() => undefined);
    await client.rmdir(ROOT, scratchName).catch(() => undefined);
  }
  const s = client.session;
  return {
    transport,
    negotiation: s.describe(),
    archOutcome: s.init.arch.outcome,
    wireArch: s.wireArch.name,
    results,
    ok: results.every((r) => r.verdict !== 'fail'),
  };
}

/** 'ok' when a write lock shows up as F_WRLCK to another owner and as F_UNLCK once released. */
async function lockProbe(client: VirtioFsClient, f: bigint): Promise<string> {
  try {
    const o = await client.open(f, fsc.O_RDWR);
    try {
      const range = { start: 0n, end: 99n };
      await client.setlk(f, o.fh, 1n, { type: 'F_WRLCK', pid: 1, ...range });
      // GETLK carries pid 0, as the kernel sends it (virtiofsd's F_OFD_GETLK refuses any other).
      const held = await client.getlk(f, o.fh, 2n, { type: 'F_RDLCK', pid: 0, ...range });
      await client.setlk(f, o.fh, 1n, { type: 'F_UNLCK', pid: 1, ...range });
      const free = await client.getlk(f, o.fh, 2n, { type: 'F_WRLCK', pid: 0, ...range });
      return held.type === 'F_WRLCK' && free.type === 'F_UNLCK' ? 'ok' : `${held.type} then ${free.type}`;
    } finally {
      await client.release(f, o.fh, fsc.O_RDWR);
    }
  } catch (e) {
    if (isErrnoError(e)) return e.code;
    throw e;
  }
}

async function readAll(client: VirtioFsClient, nodeid: bigint): Promise<string> {
  const o = await client.open(nodeid, fsc.O_RDONLY);
  try {
    return (await client.read(nodeid, o.fh, 0, 4096)).toString();
  } finally {
    await client.release(nodeid, o.fh);
  }
}
