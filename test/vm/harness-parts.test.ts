// The parts of the QEMU guest harness that need no guest: the step clock and its deadlines (on a
// fake clock), the cross-process guest lock, and the KVM probe.
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { acquireGuestLock, lockHolder } from '../helpers/guest-lock.ts';
import { StepClock, formatSteps, parseStepMarker, type StepPolicy } from '../helpers/guest-steps.ts';
import { guestAccelerator } from '../helpers/kvm.ts';

const policy: StepPolicy = { bootStepMs: 60_000, stepFloorMs: 20_000, defaultBudget: 10, poweroffMs: 30_000, capMs: 600_000 };

function fakeClock() {
  let now = 1_000_000;
  return { now: () => now, advance: (ms: number) => (now += ms) };
}

test('step markers: token, budget or -, name; other runs and malformed lines are not markers', (t) => {
  t.deepEqual(parseStepMarker('@@VIRTIOFS-VM-STEP abc 12 vfio-api', 'abc'), { name: 'vfio-api', budget: 12 });
  t.deepEqual(parseStepMarker('@@VIRTIOFS-VM-STEP abc - init-9p', 'abc'), { name: 'init-9p', budget: undefined });
  t.deepEqual(parseStepMarker('[  3.1] vfio: taint@@VIRTIOFS-VM-STEP abc 4 io', 'abc'), { name: 'io', budget: 4 }, 'after a kernel message on the same line');
  t.is(parseStepMarker('@@VIRTIOFS-VM-STEP other 4 io', 'abc'), undefined);
  t.is(parseStepMarker('@@VIRTIOFS-VM-STEP abc 4', 'abc'), undefined);
  t.is(parseStepMarker('echo @@VIRTIOFS-VM-STEP', 'abc'), undefined);
});

test('steps: durations from marker arrival; deadlines fixed until the calibration, then budget x calibration with a floor', (t) => {
  const c = fakeClock();
  const clock = new StepClock(policy, c.now);
  c.advance(800);
  clock.begin('kernel');
  c.advance(3000);
  clock.begin('calibrate');
  c.advance(2500);
  clock.begin('script');
  t.is(clock.calibrationMs, 2500);
  c.advance(100);
  clock.begin('api', 12);
  c.advance(20_000);
  clock.begin('io', 4);
  c.advance(50);
  const steps = clock.finish();
  t.deepEqual(
    steps.map((s) => [s.name, s.atMs, s.ms, s.limitMs, s.limitFrom]),
    [
      ['qemu', 0, 800, 60_000, 'boot'],
      ['kernel', 800, 3000, 60_000, 'boot'],
      ['calibrate', 3800, 2500, 60_000, 'boot'],
      ['script', 6300, 100, 25_000, '10 x calibration'],
      ['api', 6400, 20_000, 30_000, '12 x calibration'],
      ['io', 26_400, 50, 20_000, 'floor (4 x calibration = 10000 ms)'],
    ],
  );
  t.regex(formatSteps(steps), /^step\s+ms\s+limit\s+cpu\nqemu\s+800\s+60000\s+-\n/);
});

test('a step past its deadline while the console keeps printing is slow', (t) => {
  const c = fakeClock();
  const clock = new StepClock(policy, c.now);
  clock.begin('calibrate');
  c.advance(2000);
  clock.begin('api', 12);
  for (let i = 0; i < 20; i++) {
    c.advance(1000);
    clock.output();
    t.is(clock.expiry(), undefined, 'not before 20 s (the floor; 12 x 2000 = 24 s)');
  }
  c.advance(4000);
  const e = clock.expiry();
  t.is(e?.kind, 'step');
  t.is(e?.verdict, 'slow');
  t.is(e?.step.name, 'api');
  t.is(e?.step.ms, 24_000);
  t.regex(e?.message ?? '', /^step 'api' ran past its deadline: 24000 ms, deadline 24000 ms \(12 x calibration\); the guest looked SLOW: the console was still producing output \(last 4000 ms ago\)/);
  t.regex(e?.message ?? '', /\ncalibration: 2000 ms/);
  t.regex(e?.message ?? '', /\nsteps before it \(ms\): qemu 0, calibrate 2000$/);
});

test('a silent step is slow while QEMU computes and stuck while it idles', (t) => {
  for (const [cpuPerSecond, verdict] of [[900, 'slow'], [20, 'stuck']] as const) {
    const c = fakeClock();
    const clock = new StepClock(policy, c.now);
    clock.begin('calibrate');
    c.advance(1000);
    clock.begin('unmount', 5);
    let cpu = 0;
    for (let i = 0; i < 40; i++) {
      c.advance(500);
      cpu += cpuPerSecond / 2;
      clock.cpu(cpu);
    }
    const e = clock.expiry();
    t.is(e?.verdict, verdict);
    t.regex(e?.message ?? '', verdict === 'slow' ? /silent for 21000 ms, but the guest kept computing \(QEMU used 0\.9 CPU-s\/s over the last 10 s\)/ : /silent for 21000 ms and the guest was idle \(QEMU used 0\.02 CPU-s\/s/);
    t.is(clock.finish('killed').at(-1)?.cpu, cpuPerSecond / 1000);
  }
});

test("the run's cap ends any step", (t) => {
  const c = fakeClock();
  const clock = new StepClock({ ...policy, capMs: 2000 }, c.now);
  c.advance(1500);
  clock.output();
  clock.begin('kernel');
  t.is(clock.expiry(), undefined);
  c.advance(500);
  const e = clock.expiry();
  t.is(e?.kind, 'cap');
  t.is(e?.verdict, 'slow', 'a step too young to judge: the whole run is the evidence, and it printed 500 ms ago');
  t.regex(e?.message ?? '', /^the run's cap of 2000 ms \(QEMU start to exit\) was reached in step 'kernel', after 500 ms in it; the guest looked SLOW: the console was still producing output \(last 500 ms ago\)/);
  t.regex(e?.message ?? '', /calibration: not measured yet/);
});

test('the guest lock: one holder at a time, across processes; a waiter names the holder when it gives up', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vm-lock-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'guest.lock');
  const first = await acquireGuestLock(path, 'first test', 1000);
  t.true(first.waitedMs < 1000);
  t.regex(lockHolder(path), new RegExp(`^pid ${process.pid}, since .*: first test$`));
  await t.throwsAsync(acquireGuestLock(path, 'second test', 500), { message: /waited \d+ ms for the guest lock .*, held by: pid \d+, since .*: first test/ });
  const second = acquireGuestLock(path, 'second test', 10_000);
  setTimeout(() => first.release(), 400);
  const got = await second;
  t.true(got.waitedMs >= 300, `waited ${got.waitedMs} ms`);
  t.regex(lockHolder(path), /: second test$/);
  got.release();

  // Another process (util-linux flock) holding it: we wait until it exits.
  const other = spawn('flock', ['--exclusive', path, 'sleep', '1'], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 300));
  const third = await acquireGuestLock(path, 'third', 10_000);
  t.true(third.waitedMs >= 400, `waited ${third.waitedMs} ms for the other process`);
  t.not(other.exitCode, null, 'only after the other process had finished');
  third.release();
});

test('the KVM probe gives an accelerator and why; no KVM without vmx/svm; once per process', (t) => {
  const a = guestAccelerator();
  t.log(a.why);
  t.true((a.accel === 'kvm' && a.cpu === 'host') || (a.accel === 'tcg' && a.cpu === 'max'));
  t.regex(a.why, a.accel === 'kvm' ? /^KVM: / : /^TCG: /);
  const flags = /^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.split(/\s+/) ?? [];
  if (!process.env.VIRTIOFS_VM_ACCEL && !flags.includes('vmx') && !flags.includes('svm')) {
    t.is(a.accel, 'tcg', 'no hardware virtualization: TCG');
    if (existsSync('/dev/kvm')) t.regex(a.why, /TCG: (cannot open \/dev\/kvm|KVM_GET_API_VERSION|KVM_CREATE_VM)/, 'says what it tried');
  }
  t.is(guestAccelerator(), a, 'cached');
});
