/**
 * Runs the shared mount cases (test/helpers/mount-cases.ts) inside a QEMU guest, for
 * test/vm/mount-cases.test.ts, which judges what this prints:
 *
 *   node --import tsx test/vm/mount-cases-guest.ts --label uio --mnt /tmp/mnt-uio --host /tmp/hostview
 *
 * --mnt is the mount under test (ours over UIO or VFIO, or the guest kernel's virtio_fs), --host a
 * second view of the same host directory (the guest kernel's virtio_fs on a second device, with
 * virtiofsd cache=none so it sees every change at once). Each case gets its own directory in
 * both (<label>-<n>: runs of one boot share the host directory) and its own scratch directory,
 * and prints one line:
 *
 *   CASE <label> <n> ok <ms>
 *   CASE <label> <n> fail <ms> <the failures, JSON>
 *
 * Time limits of the cases' shell steps are multiplied by --time-factor (TCG is slow).
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isDeepStrictEqual, parseArgs } from 'node:util';
import { MOUNT_CASES, type CaseAssert, type CaseMount } from '../helpers/mount-cases.ts';
import { runScript, startBackground, type Background, type ShOptions } from '../helpers/mount-fixture.ts';

const { values } = parseArgs({
  options: { label: { type: 'string' }, mnt: { type: 'string' }, host: { type: 'string' }, 'time-factor': { type: 'string', default: '4' }, only: { type: 'string' } },
});
if (!values.label || !values.mnt || !values.host) throw new Error('usage: mount-cases-guest.ts --label L --mnt DIR --host DIR [--time-factor N] [--only N,N]');
const factor = Number(values['time-factor']);
const only = values.only ? new Set(values.only.split(',').map(Number)) : undefined;

/** ava's assertions as the cases use them: each failure recorded, the case goes on (as in ava). */
class Asserts {
  readonly failures: string[] = [];
  readonly logs: string[] = [];
  private check(ok: boolean, what: string, message?: string): boolean {
    if (!ok) this.failures.push(`${message ?? 'assertion'}: ${what}`);
    return ok;
  }
  is = (a: unknown, b: unknown, m?: string) => this.check(Object.is(a, b), `${show(a)} is not ${show(b)}`, m);
  not = (a: unknown, b: unknown, m?: string) => this.check(!Object.is(a, b), `${show(a)} is ${show(b)}`, m);
  true = (a: unknown, m?: string) => this.check(a === true, `${show(a)} is not true`, m);
  false = (a: unknown, m?: string) => this.check(a === false, `${show(a)} is not false`, m);
  truthy = (a: unknown, m?: string) => this.check(Boolean(a), `${show(a)} is not truthy`, m);
  regex = (s: string, re: RegExp, m?: string) => this.check(typeof s === 'string' && re.test(s), `${show(s)} does not match ${re}`, m);
  deepEqual = (a: unknown, b: unknown, m?: string) => this.check(isDeepStrictEqual(a, b), `${show(a)} does not equal ${show(b)}`, m);
  like = (a: unknown, selector: unknown, m?: string) => this.check(like(a, selector), `${show(a)} is not like ${show(selector)}`, m);
  log = (...values: unknown[]) => void this.logs.push(values.map(String).join(' '));
}

function like(a: unknown, selector: unknown): boolean {
  if (selector === null || typeof selector !== 'object') return isDeepStrictEqual(a, selector);
  if (a === null || typeof a !== 'object') return false;
  return Object.entries(selector).every(([k, v]) => like((a as Record<string, unknown>)[k], v));
}

const show = (v: unknown) => {
  const s = typeof v === 'string' ? JSON.stringify(v) : (JSON.stringify(v) ?? String(v));
  return s.length > 300 ? `${s.slice(0, 300)}...` : s;
};

for (const [n, c] of MOUNT_CASES.entries()) {
  if (only && !only.has(n)) continue;
  const mnt = join(values.mnt, `${values.label}-${n}`);
  const host = join(values.host, `${values.label}-${n}`);
  const scratch = mkdtempSync(join(tmpdir(), `case-${n}-`));
  const env = { M: mnt, H: host, S: scratch };
  const children: Background[] = [];
  const slower = (o: ShOptions) => ({ cwd: scratch, ...o, env: { ...env, ...o.env }, timeoutMs: (o.timeoutMs ?? 60_000) * factor });
  const m: CaseMount = {
    mnt,
    host,
    scratch,
    run: (script, o = {}) => runScript(script, slower(o)),
    sh(script, o = {}) {
      const r = runScript(script, slower(o));
      if (r.status !== 0) throw new Error(`script failed (status ${r.status}${r.signal ? `, ${r.signal}` : ''}):\n${script.trim()}\n--- stderr:\n${r.stderr.trim().split('\n').slice(-15).join('\n')}`);
      return r.stdout;
    },
    background(script, o = {}) {
      const b = startBackground(script, o.cwd ?? scratch, env);
      children.push(b);
      return b;
    },
  };
  const t = new Asserts();
  const started = performance.now();
  try {
    mkdirSync(mnt);
    await c.run(t as unknown as CaseAssert, m);
  } catch (error) {
    t.failures.push(`threw: ${(error as Error).message}`);
  } finally {
    for (const b of children) if (!b.done()) b.child.kill('SIGKILL');
    rmSync(scratch, { recursive: true, force: true });
  }
  const ms = Math.round(performance.now() - started);
  console.log(`CASE ${values.label} ${n} ${t.failures.length === 0 ? 'ok' : 'fail'} ${ms}${t.failures.length ? ` ${JSON.stringify(t.failures.slice(0, 5))}` : ''}`);
}
