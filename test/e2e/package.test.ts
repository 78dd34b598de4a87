// The published package as a user gets it: `npm pack` of a copy of this checkout (prepack builds
// dist/), `npm install -g` into an empty prefix, then the installed command and library: --help,
// arch translate, the demo, a mount through mount(8) over a real virtiofsd, and a consumer project
// that imports the library and is type-checked against the shipped declarations.
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Virtiofsd } from '../../client/backends/virtiofsd.ts';
import { controlSocketPath, logPath } from '../../client/frontend/control.ts';
import { runWithMountHelper } from '../helpers/mount8.ts';
import { requireRoot } from '../helpers/virtiofsd.ts';

const REPO = resolve('.');
/** What `npm pack` needs of the checkout (files outside these are not in the package anyway). */
const PACKED_SOURCES = ['package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'README.md', 'client', 'ffi', 'docs'];
/** Native dependencies whose install scripts build them (npm 11 runs none unless allowed). */
const ALLOW_SCRIPTS = 'koffi,ioctl-napi,fuse-native';

test('npm pack, npm install -g into an empty prefix; the installed command, demo, mount(8) and library work', async (t) => {
  if (!requireRoot(t)) return;
  t.timeout(240_000);
  const work = mkdtempSync(join(tmpdir(), 'vfs-package-'));
  const timings: string[] = [];
  const timed = <T>(what: string, fn: () => T): T => {
    const started = Date.now();
    try {
      return fn();
    } finally {
      timings.push(`${what} ${Date.now() - started} ms`);
    }
  };
  try {
    // Pack a copy, so the build (rm -rf dist, tsc) never races tests that use this checkout.
    const source = join(work, 'source');
    for (const p of PACKED_SOURCES) cpSync(join(REPO, p), join(source, p), { recursive: true });
    symlinkSync(join(REPO, 'node_modules'), join(source, 'node_modules'));
    const packOut = timed('npm pack', () => execFileSync('npm', ['pack', '--json', '--pack-destination', work], { cwd: source, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }));
    const packed = JSON.parse(packOut) as { filename: string; files: { path: string }[] }[];
    const files = packed[0]!.files.map((f) => f.path);
    t.true(files.includes('dist/client/index.js') && files.includes('dist/client/index.d.ts') && files.includes('dist/client/cli/main.js'));
    t.deepEqual(files.filter((f) => f.startsWith('test/') || f.startsWith('bench/') || f.startsWith('examples/') || f.startsWith('scripts/')), []);
    t.deepEqual(files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts')), [], 'no TypeScript sources: the package runs compiled JavaScript');
    t.log(`tarball: ${files.length} files`);

    const prefix = join(work, 'prefix');
    mkdirSync(prefix);
    timed('npm install -g', () =>
      execFileSync('npm', ['install', '-g', '--prefix', prefix, `--allow-scripts=${ALLOW_SCRIPTS}`, '--prefer-offline', '--no-audit', '--no-fund', join(work, packed[0]!.filename)], {
        cwd: work,
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
    );
    const bin = join(prefix, 'bin', 'virtiofs-client');
    const installed = join(prefix, 'lib', 'node_modules', 'virtiofs-client');
    // Run from elsewhere, with no tsx anywhere near: only the installed copy.
    const run = (...args: string[]) => spawnSync(bin, args, { cwd: work, encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });

    const help = timed('--help', () => run('--help'));
    t.is(help.status, 0, help.stderr);
    t.regex(help.stdout, /^commands:\n {2}mount {3}/m);
    const translate = run('arch', 'translate', '0o40000', '--from', 'x86_64', '--to', 'arm64');
    t.is(translate.status, 0, translate.stderr);
    t.regex(translate.stdout, /^result: 040000 \(x86_64\) -> 0200000 \(arm64\)$/m);
    const demo = timed('demo', () => run('demo'));
    t.is(demo.status, 0, demo.stderr);
    t.regex(demo.stdout, /== done: unmounted, virtiofsd stopped, temporary files removed/);

    // mount(8) -> mount.fuse3 -> the installed virtiofs-client, over a real virtiofsd.
    const shared = join(work, 'shared');
    const mnt = join(work, 'mnt');
    mkdirSync(shared);
    mkdirSync(mnt);
    writeFileSync(join(shared, 'hello'), 'from the host\n');
    const d = await Virtiofsd.start({ sharedDir: shared });
    try {
      const r = await runWithMountHelper(
        bin,
        `
        mount -t fuse.virtiofs-client vhost-user:${d.socketPath} ${mnt} -o arch_mode=auto && echo MOUNTED=yes
        echo "READ=$(cat ${mnt}/hello)"
        echo installed > ${mnt}/written && echo WRITE=ok
        echo "STATUS_TRANSPORT=$(virtiofs-client status ${mnt} | sed -n 's/^ *transport *//p')"
        umount ${mnt} && echo UMOUNT=ok
        `,
      );
      t.is(r.values.get('MOUNTED'), 'yes', r.output);
      t.is(r.values.get('READ'), 'from the host');
      t.is(r.values.get('WRITE'), 'ok');
      t.is(r.values.get('STATUS_TRANSPORT'), `vhost-user:${d.socketPath}`);
      t.is(r.values.get('UMOUNT'), 'ok');
      t.is(readFileSync(join(shared, 'written'), 'utf8'), 'installed\n');
    } finally {
      await d.stop();
      rmSync(logPath(mnt), { force: true });
      rmSync(controlSocketPath(mnt), { force: true });
    }

    // A consumer project: imports resolve through `exports` at run time, and type-check against
    // the shipped declarations (skipLibCheck off, so the declarations themselves are checked too).
    const consumer = join(work, 'consumer');
    mkdirSync(join(consumer, 'node_modules', '@types'), { recursive: true });
    symlinkSync(installed, join(consumer, 'node_modules', 'virtiofs-client'));
    symlinkSync(join(REPO, 'node_modules', '@types', 'node'), join(consumer, 'node_modules', '@types', 'node'));
    writeFileSync(join(consumer, 'package.json'), JSON.stringify({ type: 'module', private: true }));
    writeFileSync(
      join(consumer, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: false, types: ['node'] }, include: ['*.ts'] }),
    );
    const program = `import { ROOT, VirtioFsClient, arch, type Entry } from 'virtiofs-client';
export async function size(transport: string, name: string): Promise<bigint> {
  const client = await VirtioFsClient.connect({ transport, archMode: { kind: 'auto' } });
  const entry: Entry = await client.lookup(ROOT, name);
  await client.close();
  return entry.attr.size;
}
console.log(arch.resolveArch('arm64').name, typeof VirtioFsClient.connect);
`;
    writeFileSync(join(consumer, 'main.ts'), program);
    const tsc = join(REPO, 'node_modules', '.bin', 'tsc');
    const typecheck = timed('consumer tsc', () => spawnSync(tsc, ['-p', consumer], { encoding: 'utf8' }));
    t.is(typecheck.status, 0, typecheck.stdout + typecheck.stderr);
    // The check has teeth: a wrong type is caught through the declarations.
    writeFileSync(join(consumer, 'main.ts'), program.replace('Promise<bigint>', 'Promise<string>'));
    const wrong = spawnSync(tsc, ['-p', consumer], { encoding: 'utf8' });
    t.is(wrong.status, 2);
    t.regex(wrong.stdout, /main\.ts.*error TS2322: Type 'bigint' is not assignable to type 'string'/);
    writeFileSync(join(consumer, 'main.js'), `import { arch, VirtioFsClient } from 'virtiofs-client';\nconsole.log(arch.resolveArch('arm64').name, typeof VirtioFsClient.connect);\n`);
    const ran = spawnSync(process.execPath, ['main.js'], { cwd: consumer, encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
    t.is(ran.stdout, 'arm64 function\n', ran.stderr);
    t.log(timings.join(', '));
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
