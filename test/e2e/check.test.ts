// `virtiofs-client check` against a real virtiofsd: all green when the
// encodings agree, and the mismatches named when they do not.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Virtiofsd } from '../../client/backends/virtiofsd.ts';
import { requireRoot } from '../helpers/virtiofsd.ts';

interface Report {
  ok: boolean;
  archOutcome: string;
  wireArch: string;
  results: { check: string; got: string; verdict: string }[];
}

async function check(args: string[]): Promise<{ status: number | null; report: Report; stdout: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'vfs-check-'));
  const d = await Virtiofsd.start({ sharedDir: dir, posixLock: true });
  try {
    const r = spawnSync(process.execPath, ['bin/virtiofs-client.js', 'check', `vhost-user:${d.socketPath}`, ...args], { encoding: 'utf8' });
    const report = args.includes('--json') ? (JSON.parse(r.stdout) as Report) : ({} as Report);
    return { status: r.status, report, stdout: r.stdout + r.stderr };
  } finally {
    await d.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('an x86 device and an x86 client: every check matches, exit 0, scratch dir removed', async (t) => {
  if (!requireRoot(t)) return;
  const { status, report } = await check(['--json']);
  t.is(status, 0);
  t.true(report.ok);
  t.is(report.archOutcome, 'legacy');
  t.true(report.results.length >= 14);
  t.deepEqual(report.results.filter((r) => r.verdict === 'fail'), []);
  t.is(report.results.find((r) => r.check.startsWith('POSIX lock'))?.verdict, 'pass');
});

test('a wrong device architecture is caught: O_DIRECTORY read as O_DIRECT, exit 1', async (t) => {
  if (!requireRoot(t)) return;
  // Pretend the x86 virtiofsd is arm64: we then send arm64 encodings it misreads.
  const { status, report } = await check(['--json', '--arch-mode', 'device-arch=arm64']);
  t.is(status, 1);
  t.false(report.ok);
  t.is(report.wireArch, 'arm64');
  const dir = report.results.find((r) => r.check.startsWith('open(O_DIRECTORY)'))!;
  t.is(dir.verdict, 'fail');
  t.is(dir.got, 'ok', 'arm64 O_DIRECTORY is x86 O_DIRECT: the open succeeds');
});

test('the human-readable report names each check and says MISMATCH', async (t) => {
  if (!requireRoot(t)) return;
  const { stdout } = await check(['--arch-mode', 'device-arch=mips64']);
  t.regex(stdout, /wire encoding mips64/);
  t.regex(stdout, /MISMATCH/);
  t.regex(stdout, /mismatch\(es\)/);
});
