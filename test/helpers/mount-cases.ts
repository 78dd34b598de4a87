/**
 * The mount cases that run wherever a mount and a second view of the same files exist: on the host
 * (test/e2e/mount.test.ts: our mount over vhost-user, $H the shared directory itself) and inside a
 * QEMU guest (test/vm/mount-cases.test.ts: our mount over UIO or VFIO, or the guest kernel's own
 * virtio_fs as the reference, $H a second virtio-fs device on the same host directory mounted by
 * the guest kernel). One definition, two harnesses: they cannot drift.
 *
 * A case gets `t` (the assertions it uses, ava's or the guest runner's) and `m`: the mount ($M,
 * m.mnt), the second view ($H, m.host), a scratch directory off the mount ($S, m.scratch), and
 * bash runners with those three in the environment.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import type { MountFixture, MountFixtureOptions } from './mount-fixture.ts';

/** The assertions the cases use. */
export type CaseAssert = Pick<ExecutionContext, 'is' | 'not' | 'true' | 'false' | 'truthy' | 'regex' | 'deepEqual' | 'like' | 'log'>;
/** What a case may use of a mount. */
export type CaseMount = Pick<MountFixture, 'host' | 'mnt' | 'scratch' | 'sh' | 'run' | 'background'>;

export interface MountCase {
  title: string;
  /** What the device and mount need (on the host: this case's own virtiofsd and mount). */
  options: MountFixtureOptions;
  run(t: CaseAssert, m: CaseMount): Promise<void> | void;
}

export const MOUNT_CASES: MountCase[] = [];

function mountCase(title: string, options: MountFixtureOptions, run: MountCase['run']): void {
  MOUNT_CASES.push({ title, options, run });
}

/** `find` listing of a tree, one sorted line per entry: path, type, mode, links, size (not of directories), mtime (ns), link target. */
const LISTING = `find . -mindepth 1 \\( -type d -printf '%P %y %m %n - %T@ %l\\n' \\) -o \\( ! -type d -printf '%P %y %m %n %s %T@ %l\\n' \\) | LC_ALL=C sort`;

export function listing(m: CaseMount, dir: string): string {
  return m.sh(`cd ${JSON.stringify(dir)} && ${LISTING}`);
}

/** Debian's own python3 (what scripts/setup.sh installs), which starts faster than a pyenv shim on PATH. */
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

/** Runs a python3 program (given on stdin) with arguments; returns its stdout parsed as JSON. */
function python<T>(m: CaseMount, program: string, ...args: string[]): T {
  const out = m.sh(`${PYTHON} - ${args.map((a) => JSON.stringify(a)).join(' ')}`, { input: program });
  return JSON.parse(out) as T;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// --- copying, archiving, version control ---------------------------------------------

mountCase('cp -a of a tree with symlinks and hard links into the mount and back out: diff -r clean, links kept', {}, (t, m) => {
  m.sh(`
    mkdir -p src/sub/deeper src/empty
    printf 'hello\\n' > src/hello.txt
    : > src/zero
    head -c 4096 /dev/urandom > src/sub/page.bin
    head -c 300001 /dev/urandom > src/sub/deeper/odd.bin
    head -c 2500000 /dev/urandom > src/sub/large.bin
    printf 'secret\\n' > src/sub/private && chmod 600 src/sub/private
    printf '#!/bin/sh\\necho hi\\n' > src/run.sh && chmod 755 src/run.sh
    ln src/hello.txt src/sub/hard-hello
    ln src/sub/page.bin src/sub/deeper/hard-page
    ln -s hello.txt src/rel-link
    ln -s ../hello.txt src/sub/up-link
    ln -s /etc/hostname src/abs-link
    ln -s does-not-exist src/dangling
    ln -s sub src/dir-link
    mkfifo src/fifo
    touch -d '2001-02-03 04:05:06.123456789' src/hello.txt src/sub/deeper/odd.bin
    touch -h -d '2002-03-04 05:06:07.5' src/rel-link
    touch -d '2003-04-05 06:07:08' src/sub/deeper src/empty
  `);
  m.sh('cp -a src "$M/tree"');
  // FIFOs are compared by the listings (diff would open them).
  m.sh('diff -r --no-dereference -x fifo src "$M/tree"');
  m.sh('diff -r --no-dereference -x fifo src "$H/tree"');
  const original = listing(m, join(m.scratch, 'src'));
  t.is(listing(m, join(m.mnt, 'tree')), original, 'types, modes, link counts, sizes, mtimes and link targets through the mount');
  t.is(listing(m, join(m.host, 'tree')), original, 'the same on the host');

  const inodes = (root: string) => {
    const [hello, hardHello, page, hardPage] = m.sh(`cd ${root} && stat -c %i hello.txt sub/hard-hello sub/page.bin sub/deeper/hard-page`).trim().split('\n');
    return { hello, hardHello, page, hardPage };
  };
  const inMount = inodes('"$M/tree"');
  t.is(inMount.hello, inMount.hardHello, 'hard links share an inode inside the mount');
  t.is(inMount.page, inMount.hardPage);
  t.not(inMount.hello, inMount.page);
  t.deepEqual(inMount, inodes('"$H/tree"'), 'inode numbers are the host\'s');
  t.is(m.sh('readlink "$M/tree/rel-link" "$M/tree/sub/up-link" "$M/tree/abs-link" "$M/tree/dangling"'), 'hello.txt\n../hello.txt\n/etc/hostname\ndoes-not-exist\n');
  t.is(m.sh('cat "$M/tree/dir-link/up-link"'), 'hello\n', 'symlinks resolve through the mount');

  m.sh('cp -a "$M/tree" back');
  m.sh('diff -r --no-dereference -x fifo src back');
  t.is(listing(m, join(m.scratch, 'back')), original, 'copied back out: identical');
  const back = inodes('back');
  t.is(back.hello, back.hardHello, 'cp -a out of the mount sees the hard links');
  t.is(back.page, back.hardPage);
});

mountCase('tar round trip preserves mtimes (out of the mount and into it)', {}, (t, m) => {
  m.sh(`
    mkdir -p "$M/t/sub/deep" "$M/t/empty"
    printf 'alpha\\n' > "$M/t/a"
    head -c 1000000 /dev/urandom > "$M/t/sub/b.bin"
    printf 'gamma\\n' > "$M/t/sub/deep/c"
    ln -s ../a "$M/t/sub/link-to-a"
    ln "$M/t/a" "$M/t/sub/hard-a"
    touch -d '@1000000000.25' "$M/t/a"
    touch -d '2010-06-15 12:34:56.987654321' "$M/t/sub/b.bin"
    touch -h -d '@1200000000' "$M/t/sub/link-to-a"
    touch -d '@1300000000.5' "$M/t/sub/deep" "$M/t/empty"
  `);
  const throughMount = listing(m, join(m.mnt, 't'));
  t.is(listing(m, join(m.host, 't')), throughMount, 'times set through the mount reached the host (utimensat, nanoseconds)');
  t.regex(m.sh('stat -c %y "$H/t/sub/b.bin"'), /^2010-06-15 12:34:56\.987654321/);

  m.sh('tar --format=posix -C "$M" -cf t.tar t && mkdir out && tar -C out -xf t.tar');
  t.is(listing(m, join(m.scratch, 'out', 't')), throughMount, 'extracted elsewhere: same mtimes, modes, links');
  t.is(m.sh('stat -c %Y out/t/a out/t/sub/b.bin out/t/sub/deep'), '1000000000\n1276605296\n1300000000\n');
  m.sh('diff -r --no-dereference "$M/t" out/t');

  m.sh('mkdir "$M/in" && tar -C "$M/in" -xf t.tar');
  t.is(listing(m, join(m.mnt, 'in', 't')), throughMount, 'extracted into the mount: same mtimes');
  t.is(listing(m, join(m.host, 'in', 't')), throughMount, 'and the host agrees');
});

mountCase('git init, add, commit, log and fsck inside the mount', { tools: ['git'] }, (t, m) => {
  const git = 'git -c user.name=Test -c user.email=test@example.com -c init.defaultBranch=main';
  m.sh(`
    mkdir "$M/repo" && cd "$M/repo"
    ${git} init -q
    for i in $(seq 1 40); do printf 'file %s\\n' "$i" > "f$i.txt"; done
    mkdir -p src/lib && printf 'int main(void) { return 0; }\\n' > src/main.c && head -c 200000 /dev/urandom > src/lib/blob.bin
    ${git} add -A
    ${git} commit -q -m first
    echo changed >> f1.txt
    ${git} mv f2.txt renamed.txt
    ${git} rm -q f3.txt
    ${git} commit -q -a -m second
    ${git} gc -q
  `);
  const log = m.sh(`cd "$M/repo" && git log --format=%s`);
  t.is(log, 'second\nfirst\n');
  m.sh('cd "$M/repo" && git fsck --full --strict');
  t.is(m.sh('cd "$M/repo" && git status --porcelain'), '', 'work tree clean');
  const head = m.sh('cd "$M/repo" && git rev-parse HEAD');
  t.is(m.sh('git -C "$H/repo" rev-parse HEAD'), head, 'the host sees the same repository');
  m.sh('git -C "$H/repo" fsck --full --strict');
  m.sh('git clone -q "$M/repo" clone');
  t.is(m.sh('git -C clone rev-parse HEAD'), head);
  m.sh('diff -r -x .git clone "$M/repo"');
});

mountCase('find and du give the same answers through the mount as on the host', {}, (t, m) => {
  m.sh(`
    cd "$H"
    # 12 directories of 15 files, a note and a symlink each: one process (a QEMU guest starts few a second)
    ${PYTHON} - <<'PY'
import os
for d in range(1, 13):
    os.makedirs(f'dir{d}/sub')
    for f in range(1, 16):
        with open(f'dir{d}/file{f}.dat', 'wb') as out:
            out.write(os.urandom(d * f * 97))
    with open(f'dir{d}/sub/note.txt', 'w') as out:
        out.write('x' * d)
    os.symlink('../dir1/file1.dat', f'dir{d}/sub/link')
PY
    ln dir1/file1.dat dir2/hard
    truncate -s 50M sparse.img && printf 'data' | dd of=sparse.img bs=1 seek=20M conv=notrunc status=none
    fallocate -l 3M preallocated
    touch -d '2005-01-01' dir3/file3.dat
    chmod 700 dir4 && chmod 640 dir5/file5.dat
  `);
  const queries = [
    `find . -printf '%P|%y|%m|%n|%u|%g|%s|%b|%i|%l|%T@\\n' | LC_ALL=C sort`,
    `find . -type f -size +10k | LC_ALL=C sort`,
    `find . -name 'file1*' -newermt 2006-01-01 | LC_ALL=C sort`,
    `find . -links 2 -type f | LC_ALL=C sort`,
    `find . -perm 640`,
    `find . -type l -xtype f | wc -l`,
    `du -a . | LC_ALL=C sort -k2`,
    `du -s --apparent-size -b .`,
    `du -sh . dir1 sparse.img preallocated`,
    `du --inodes -s .`,
  ];
  for (const q of queries) {
    const onHost = m.sh(`cd "$H" && ${q}`);
    t.true(onHost.length > 0, q);
    t.is(m.sh(`cd "$M" && ${q}`), onHost, q);
  }
});

mountCase('mv across directories: files, directories, replacing a file; errors as on a local disk', {}, (t, m) => {
  m.sh(`
    mkdir -p "$M/a/inner/deeper" "$M/b" "$M/full/x" "$M/emptydir"
    echo one > "$M/a/f"
    echo two > "$M/a/inner/deeper/g"
    echo old > "$M/b/target"
    echo new > "$M/a/replacement"
  `);
  const ino = (p: string) => m.sh(`stat -c %i ${p}`).trim();
  const fIno = ino('"$M/a/f"');
  const innerIno = ino('"$M/a/inner"');
  const replacementIno = ino('"$M/a/replacement"');
  m.sh('mv "$M/a/f" "$M/b/"');
  m.sh('mv "$M/a/inner" "$M/b/"');
  m.sh('mv -f "$M/a/replacement" "$M/b/target"');
  t.is(m.sh('ls -A "$M/a"'), '');
  t.is(m.sh('ls -A "$H/a"'), '', 'the host sees a/ empty');
  t.is(readFileSync(join(m.host, 'b/f'), 'utf8'), 'one\n');
  t.is(readFileSync(join(m.host, 'b/inner/deeper/g'), 'utf8'), 'two\n');
  t.is(readFileSync(join(m.host, 'b/target'), 'utf8'), 'new\n', 'the replaced file has the new contents');
  t.is(ino('"$M/b/f"'), fIno, 'a rename keeps the inode');
  t.is(ino('"$M/b/inner"'), innerIno);
  t.is(ino('"$M/b/target"'), replacementIno);
  t.is(ino('"$H/b/f"'), fIno);
  t.is(m.sh('cat "$M/b/inner/deeper/g"'), 'two\n', 'the moved directory\'s contents resolve at the new path');

  m.sh('mv -T "$M/b/inner" "$M/emptydir"');
  t.is(m.sh('cat "$M/emptydir/deeper/g"'), 'two\n', 'a directory replaces an empty one');
  const notEmpty = m.run('mv -T "$M/emptydir" "$M/full"');
  t.not(notEmpty.status, 0);
  t.regex(notEmpty.stderr, /Directory not empty/, 'ENOTEMPTY comes back as such');
  const intoItself = m.run('mv "$M/b" "$M/b/inner2"');
  t.not(intoItself.status, 0);
  t.regex(intoItself.stderr, /cannot move .* to a subdirectory of itself|Invalid argument/);

  m.sh('mv "$M/b/f" "$S/moved-out" && mv "$S/moved-out" "$M/a/back-in"');
  t.false(existsSync(join(m.host, 'b/f')), 'moved out of the mount: gone from the host');
  t.is(readFileSync(join(m.host, 'a/back-in'), 'utf8'), 'one\n', 'and moved back in');
});

// --- locks ---------------------------------------------------------------------------

// QEMU 7.2's C virtiofsd answers blocking lock requests (FUSE_SETLKW: flock
// without -n, F_SETLKW) with EOPNOTSUPP, so the device-side lock tests take
// locks without waiting. Without -o flock the kernel keeps flock locks itself.

/** A script holding an exclusive flock on `path` (a shell word) until a line arrives on stdin. */
export const flockHolder = (path: string) => `exec 9<>${path}; if flock -n 9; then echo locked; else echo busy; exit 3; fi; read -r _; echo releasing`;

mountCase('flock with virtiofsd -o flock: exclusion between processes, and with the host', { virtiofsd: { flock: true }, tools: ['flock'] }, async (t, m) => {
  m.sh('echo data > "$M/lockfile"');
  const holder = m.background(flockHolder('"$M/lockfile"'));
  t.true(await holder.waitFor(/locked/), `holder: ${holder.stdout} ${holder.stderr}`);
  t.is(m.run('flock -n "$M/lockfile" true').status, 1, 'a second process cannot take the lock');
  t.is(m.run('flock -n -s "$M/lockfile" true').status, 1, 'nor a shared one');
  t.is(m.run('flock -n "$H/lockfile" true').status, 1, 'the lock is held on the device: the host sees it too');
  holder.send('release');
  await holder.exited;
  t.is(m.run('flock -n "$M/lockfile" true').status, 0, 'free again once the holder closed its file');
  t.is(m.run('flock -n "$H/lockfile" true').status, 0);

  // The other way round: a host process holds it, the mount's users are excluded.
  const hostHolder = m.background(flockHolder('"$H/lockfile"'));
  t.true(await hostHolder.waitFor(/locked/));
  t.is(m.run('flock -n "$M/lockfile" true').status, 1, 'a lock taken on the host excludes the mount');
  hostHolder.send('release');
  await hostHolder.exited;
  t.is(m.run('flock -n "$M/lockfile" true').status, 0);
  t.is(m.sh('cat "$M/lockfile"'), 'data\n', 'locking left the contents alone');
});


// Python's fcntl.lockf() waits (F_SETLKW) for LOCK_UN, which virtiofsd refuses:
// these scripts use F_SETLK / F_GETLK with a struct flock, as C programs do.
// struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
const PY_LOCKS = `
import errno, fcntl, json, os, struct, sys
FMT = 'hhqqi4x'
TYPES = {'ex': fcntl.F_WRLCK, 'sh': fcntl.F_RDLCK, 'un': fcntl.F_UNLCK}
NAMES = {fcntl.F_RDLCK: 'F_RDLCK', fcntl.F_WRLCK: 'F_WRLCK', fcntl.F_UNLCK: 'F_UNLCK'}
def setlk(fd, kind, start, length):
    try:
        fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack(FMT, TYPES[kind], os.SEEK_SET, start, length, 0))
        return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
def getlk(fd, start, length):
    try:
        got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(FMT, fcntl.F_WRLCK, os.SEEK_SET, start, length, 0))
    except OSError as e:
        return errno.errorcode[e.errno]
    l_type, _, l_start, l_len, _ = struct.unpack(FMT, got)
    return [NAMES.get(l_type, l_type), l_start, l_len]
`;

/** Each line of stdin is a lock command for argv[1] ("ex 0 100", "un 0 100", "sh 0 0"); it answers one line each. */
const LOCK_HOLDER = `${PY_LOCKS}
fd = os.open(sys.argv[1], os.O_RDWR)
for line in sys.stdin:
    kind, start, length = line.split()
    print(setlk(fd, kind, int(start), int(length)), kind, start, length, flush=True)
`;

/** From a second process: tries each lock of argv[2] on argv[1] (and unlocks it); prints errno names or "ok", and F_GETLK's answer. */
const LOCK_PROBE = `${PY_LOCKS}
fd = os.open(sys.argv[1], os.O_RDWR)
out = {}
for kind, start, length in json.loads(sys.argv[2]):
    out[f'{kind} {start}+{length}'] = r = setlk(fd, kind, start, length)
    if r == 'ok':
        assert setlk(fd, 'un', start, length) == 'ok'
out['getlk'] = getlk(fd, 0, 0)
print(json.dumps(out))
`;

mountCase('fcntl (POSIX) locks with virtiofsd -o posix_lock: ranges, EAGAIN, F_GETLK, seen by the host', { virtiofsd: { posixLock: true }, tools: ['python3'] }, async (t, m) => {
  m.sh('head -c 4096 /dev/zero > "$M/locked.db"');
  writeFileSync(join(m.scratch, 'holder.py'), LOCK_HOLDER);
  const holder = m.background(`exec ${PYTHON} holder.py "$M/locked.db"`);
  holder.send('ex 0 100');
  t.true(await holder.waitFor(/ok ex 0 100/), `holder: ${holder.stdout} ${holder.stderr}`);

  const probes = [['ex', 0, 100], ['ex', 50, 100], ['sh', 0, 10], ['ex', 100, 100], ['sh', 200, 1000]];
  const probe = (path: string) => python<Record<string, unknown>>(m, LOCK_PROBE, path, JSON.stringify(probes));
  const viaMount = probe(join(m.mnt, 'locked.db'));
  t.deepEqual(
    { ...viaMount, getlk: undefined },
    { 'ex 0+100': 'EAGAIN', 'ex 50+100': 'EAGAIN', 'sh 0+10': 'EAGAIN', 'ex 100+100': 'ok', 'sh 200+1000': 'ok', getlk: undefined },
    'a second process through the mount: the held range conflicts, the rest is free',
  );
  t.deepEqual(viaMount.getlk, ['F_WRLCK', 0, 100], 'F_GETLK reports the holder\'s write lock on 0..99');
  const viaHost = probe(join(m.host, 'locked.db'));
  t.is(viaHost['ex 0+100'], 'EAGAIN', 'the lock is held on the device: the host conflicts too');
  t.is(viaHost['ex 100+100'], 'ok');

  holder.send('un 0 100');
  t.true(await holder.waitFor(/ok un 0 100/));
  const free = probe(join(m.mnt, 'locked.db'));
  t.is(free['ex 0+100'], 'ok', 'unlocked: free for others');
  t.deepEqual(free.getlk, ['F_UNLCK', 0, 0]);

  holder.send('sh 0 0');
  t.true(await holder.waitFor(/ok sh 0 0/));
  const shared = probe(join(m.mnt, 'locked.db'));
  t.is(shared['sh 0+10'], 'ok', 'shared locks coexist');
  t.is(shared['ex 100+100'], 'EAGAIN', 'a whole-file shared lock excludes writers');
  holder.child.stdin!.end();
  await holder.exited;
  t.is(probe(join(m.mnt, 'locked.db'))['ex 0+100'], 'ok', 'the holder\'s exit released its locks');
});

// --- attributes and space ------------------------------------------------------------------

mountCase('extended attributes with virtiofsd -o xattr: set, get, list, remove, both ways', { virtiofsd: { xattr: true }, tools: ['python3'] }, (t, m) => {
  m.sh('echo content > "$M/f" && mkdir "$M/d"');
  const result = python<Record<string, unknown>>(
    m,
    `
import errno, json, os, sys
mnt, host = sys.argv[1], sys.argv[2]
big = bytes(range(256)) * 8
def err(f):
    try:
        f(); return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
out = {}
os.setxattr(f'{mnt}/f', 'user.color', b'blue')
os.setxattr(f'{mnt}/f', 'user.big', big)
os.setxattr(f'{mnt}/f', 'user.empty', b'')
os.setxattr(f'{mnt}/d', 'user.on-dir', b'dir value')
out['host color'] = os.getxattr(f'{host}/f', 'user.color').decode()
out['host big'] = os.getxattr(f'{host}/f', 'user.big') == big
out['host dir'] = os.getxattr(f'{host}/d', 'user.on-dir').decode()
out['mnt big'] = os.getxattr(f'{mnt}/f', 'user.big') == big
out['mnt empty'] = os.getxattr(f'{mnt}/f', 'user.empty').decode()
out['mnt list'] = sorted(os.listxattr(f'{mnt}/f'))
out['host list'] = sorted(os.listxattr(f'{host}/f'))
os.setxattr(f'{host}/f', 'user.from-host', b'hi from the host')
out['mnt from host'] = os.getxattr(f'{mnt}/f', 'user.from-host').decode()
out['create existing'] = err(lambda: os.setxattr(f'{mnt}/f', 'user.color', b'red', os.XATTR_CREATE))
out['replace missing'] = err(lambda: os.setxattr(f'{mnt}/f', 'user.nope', b'x', os.XATTR_REPLACE))
out['get missing'] = err(lambda: os.getxattr(f'{mnt}/f', 'user.nope'))
os.setxattr(f'{mnt}/f', 'user.color', b'green', os.XATTR_REPLACE)
out['replaced'] = os.getxattr(f'{host}/f', 'user.color').decode()
os.removexattr(f'{mnt}/f', 'user.color')
out['removed'] = err(lambda: os.getxattr(f'{mnt}/f', 'user.color'))
out['removed on host'] = err(lambda: os.getxattr(f'{host}/f', 'user.color'))
out['remove missing'] = err(lambda: os.removexattr(f'{mnt}/f', 'user.color'))
print(json.dumps(out))
`,
    m.mnt,
    m.host,
  );
  t.deepEqual(result, {
    'host color': 'blue',
    'host big': true,
    'host dir': 'dir value',
    'mnt big': true,
    'mnt empty': '',
    'mnt list': result['host list'],
    'host list': result['host list'],
    'mnt from host': 'hi from the host',
    'create existing': 'EEXIST',
    'replace missing': 'ENODATA',
    'get missing': 'ENODATA',
    replaced: 'green',
    removed: 'ENODATA',
    'removed on host': 'ENODATA',
    'remove missing': 'ENODATA',
  });
  t.deepEqual((result['host list'] as string[]).filter((n) => n.startsWith('user.')), ['user.big', 'user.color', 'user.empty']);
});

mountCase('fallocate reserves blocks; a sparse file keeps its hole (SEEK_DATA / SEEK_HOLE)', { tools: ['fallocate', 'python3'] }, (t, m) => {
  m.sh('fallocate -l 10M "$M/reserved"');
  const [size, blocks, blockUnit] = m.sh('stat -c "%s %b %B" "$M/reserved"').trim().split(' ').map(Number) as [number, number, number];
  t.is(size, 10 * 1024 * 1024);
  t.true(blocks * blockUnit >= size, `${blocks} blocks of ${blockUnit}: the space is allocated`);
  t.is(m.sh('stat -c "%s %b" "$H/reserved"'), `${size} ${blocks}\n`, 'the host agrees');
  m.sh('fallocate -n -o 10M -l 2M "$M/reserved"');
  t.is(Number(m.sh('stat -c %s "$M/reserved"')), size, 'KEEP_SIZE: the size stays');
  t.true(Number(m.sh('stat -c %b "$M/reserved"')) >= blocks + 4096, 'but 2 MiB more are allocated');
  m.sh('fallocate -p -o 1M -l 1M "$M/reserved"');
  t.is(Number(m.sh('stat -c %b "$H/reserved"')), Number(m.sh('stat -c %b "$M/reserved"')), 'punching a hole: host and mount agree');

  const sparse = python<Record<string, unknown>>(
    m,
    `
import errno, json, os, sys
path = sys.argv[1]
MiB = 1 << 20
fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
os.pwrite(fd, b'A' * 4096, 0)
os.pwrite(fd, b'B' * 4096, 100 * MiB)
os.fsync(fd)
def seek(off, whence):
    try:
        return os.lseek(fd, off, whence)
    except OSError as e:
        return errno.errorcode[e.errno]
out = {
    'data from 0': seek(0, os.SEEK_DATA),
    'hole from 0': seek(0, os.SEEK_HOLE),
    'data from 4096': seek(4096, os.SEEK_DATA),
    'hole from 100MiB': seek(100 * MiB, os.SEEK_HOLE),
    'data past the end of data': seek(100 * MiB + 4096, os.SEEK_DATA),
    'zeros in the hole': os.pread(fd, 65536, 50 * MiB) == bytes(65536),
    'tail': os.pread(fd, 8192, 100 * MiB - 4096) == bytes(4096) + b'B' * 4096,
    'size': os.fstat(fd).st_size,
    'blocks': os.fstat(fd).st_blocks,
}
os.close(fd)
print(json.dumps(out))
`,
    join(m.mnt, 'sparse'),
  );
  const MiB = 1024 * 1024;
  t.like(sparse, {
    'data from 0': 0,
    'hole from 0': 4096,
    'data from 4096': 100 * MiB,
    'hole from 100MiB': 100 * MiB + 4096,
    'data past the end of data': 'ENXIO',
    'zeros in the hole': true,
    tail: true,
    size: 100 * MiB + 4096,
  });
  t.true((sparse.blocks as number) <= 64, `only the two written pages take space (${String(sparse.blocks)} blocks)`);
  t.is(m.sh('stat -c "%s %b" "$H/sparse"'), `${100 * MiB + 4096} ${String(sparse.blocks)}\n`, 'the host file is as sparse');
});

// --- permissions -------------------------------------------------------------------------

export const AS_NOBODY = 'setpriv --reuid nobody --regid nogroup --clear-groups';

mountCase('permissions are enforced for an unprivileged user (--allow-other)', { allowOther: true, tools: ['setpriv'] }, (t, m) => {
  m.sh(`
    cd "$H"
    echo top-secret > secret && chmod 600 secret
    echo public > public && chmod 644 public
    mkdir locked && chmod 755 locked && echo keep > locked/existing
    mkdir shared && chmod 1777 shared && echo roots > shared/rootfile
  `);
  const secret = m.run(`${AS_NOBODY} cat "$M/secret"`);
  t.not(secret.status, 0);
  t.regex(secret.stderr, /Permission denied/, 'mode 600 root file: nobody cannot read it');
  t.is(m.sh(`${AS_NOBODY} cat "$M/public"`), 'public\n', 'mode 644: readable');
  const write = m.run(`${AS_NOBODY} sh -c 'echo x > "$M/public"'`);
  t.regex(write.stderr, /Permission denied/, 'but not writable');

  for (const [what, script] of [
    ['create a file', `${AS_NOBODY} sh -c 'echo x > "$M/locked/new"'`],
    ['make a directory', `${AS_NOBODY} mkdir "$M/locked/dir"`],
    ['remove a file', `${AS_NOBODY} rm -f "$M/locked/existing"`],
    ['rename into it', `${AS_NOBODY} mv "$M/shared/rootfile" "$M/locked/"`],
  ] as const) {
    const r = m.run(script);
    t.not(r.status, 0, what);
    t.regex(r.stderr, /Permission denied|Operation not permitted/, `${what} in a root-owned 755 directory`);
  }
  t.false(existsSync(join(m.host, 'locked/new')));
  t.true(existsSync(join(m.host, 'locked/existing')));

  m.sh(`${AS_NOBODY} sh -c 'echo mine > "$M/shared/mine"'`);
  t.is(m.sh('stat -c %U:%G "$H/shared/mine"'), 'nobody:nogroup\n', 'a file nobody creates is nobody\'s on the host');
  const sticky = m.run(`${AS_NOBODY} rm -f "$M/shared/rootfile"`);
  t.regex(sticky.stderr, /Operation not permitted/, 'sticky directory: nobody cannot remove root\'s file');
  t.is(m.sh('cat "$M/secret"'), 'top-secret\n', 'root still reads everything');
  m.sh('chmod 644 "$M/secret"');
  t.is(m.sh(`${AS_NOBODY} cat "$M/secret"`), 'top-secret\n', 'after chmod 644 through the mount nobody can read it');
});

// --- data ----------------------------------------------------------------------------------

mountCase('dd oflag=direct with virtiofsd -o allow_direct_io: byte-exact on the host', { virtiofsd: { allowDirectIo: true } }, (t, m) => {
  m.sh('dd if=/dev/urandom of="$M/f" bs=1M count=8 iflag=fullblock oflag=direct status=none');
  t.is(Number(m.sh('stat -c %s "$H/f"')), 8 * 1024 * 1024);
  m.sh('cmp "$M/f" "$H/f"');
  m.sh('dd if="$M/f" bs=1M iflag=direct status=none | cmp - "$H/f"');

  m.sh('head -c 8388608 /dev/urandom > src && dd if=src of="$M/g" bs=1M oflag=direct status=none && cmp src "$H/g"');
  m.sh('dd if="$M/g" bs=64k iflag=direct status=none | cmp - src');
  // Direct writes in the middle of an existing file, at an odd (but aligned) offset.
  m.sh('dd if=/dev/zero of="$M/g" bs=4096 seek=777 count=3 conv=notrunc oflag=direct status=none && dd if=/dev/zero of=src bs=4096 seek=777 count=3 conv=notrunc status=none');
  t.is(m.run('cmp src "$H/g" && cmp src "$M/g"').status, 0, 'a direct write in the middle: byte-exact through the mount and on the host');
});

mountCase('a 300 MiB file: written through the mount, and written on the host, sha256 agrees', {}, (t, m) => {
  const size = 300 * 1024 * 1024;
  // 1 MiB writes (head -c would write 4 KiB at a time: one device round trip each).
  m.sh('dd if=/dev/urandom of="$M/big" bs=1M count=300 iflag=fullblock status=none', { timeoutMs: 90_000 });
  t.is(Number(m.sh('stat -c %s "$M/big"')), size);
  const sum = (p: string) => m.sh(`sha256sum < ${p}`, { timeoutMs: 90_000 }).split(' ')[0];
  const onHost = sum('"$H/big"');
  // Drop the mount's cached pages first, so the reads go to the device.
  m.sh('dd if="$M/big" iflag=nocache count=0 status=none');
  t.is(sum('"$M/big"'), onHost, 'written through the mount: the host has the same bytes');

  m.sh('dd if=/dev/urandom of="$H/big2" bs=1M count=300 iflag=fullblock status=none', { timeoutMs: 90_000 });
  t.is(sum('"$M/big2"'), sum('"$H/big2"'), 'written on the host: read through the mount, the same bytes');
});
