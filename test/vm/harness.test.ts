// The QEMU guest harness (test/helpers/vm.ts) ends runs that overstay: the run's cap, and a step's own
// deadline (derived from the guest's calibration), both kill QEMU, stop virtiofsd and say where the
// time went. What a guest does when it works is checked in pci-transports.test.ts, whose two boots
// carry the harness's own checks (node, 9p, env, PCI binding, the exit status).
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireRoot } from '../helpers/virtiofsd.ts'; // fails loudly, never skips
import { GUEST_SH, GuestError, runInGuest, runningGuests } from '../helpers/vm.ts';

// Serial: runningGuests() must see only the test's own guest.
test.serial('a timeout kills QEMU and stops virtiofsd', async (t) => {
  if (!requireRoot(t)) return;
  const shared = mkdtempSync(join(tmpdir(), 'vm-harness-'));
  try {
    const error = await t.throwsAsync(
      runInGuest({ sharedDir: shared, script: 'sleep 600', timeoutMs: 2000, label: t.title, onTimeout: (ms, why) => t.timeout(ms, why) }),
      { instanceOf: GuestError, message: /no exit status: the run's cap of 2000 ms \(QEMU start to exit\) was reached in step '[\w-]+'/ },
    );
    t.is(error?.expiry?.kind, 'cap');
    t.regex(error?.message ?? '', /QEMU killed \((KVM|TCG): /, 'names the accelerator');
    t.is(runningGuests(), 0);
  } finally {
    rmSync(shared, { recursive: true, force: true });
  }
});

test.serial("a step past its deadline: the error names it, its time, the calibration and the steps before, calls a silent idle guest stuck and shows its blocked tasks", async (t) => {
  if (!requireRoot(t)) return;
  const shared = mkdtempSync(join(tmpdir(), 'vm-harness-'));
  try {
    const error = await t.throwsAsync(
      runInGuest({
        sharedDir: shared,
        // A FUSE mount nobody serves (its /dev/fuse is held open, never read): stat blocks on it.
        // 1 calibration is a second or two: the floor (3 s) decides.
        script: `
          ${GUEST_SH.modprobe('fuse')}
          mkdir -p /tmp/unserved && exec 3<>/dev/fuse
          mount -i -t fuse -o fd=3,rootmode=40000,user_id=0,group_id=0 unserved /tmp/unserved || exit 1
          echo before
          stat /tmp/unserved/x &
          ${GUEST_SH.step('hang', 1)}
          sleep 600
        `,
        stepFloorMs: 3000,
        label: t.title,
        onTimeout: (ms, why) => t.timeout(ms, why),
      }),
      { instanceOf: GuestError },
    );
    t.log(error?.message.split('\n--- guest console')[0]);
    const m = error?.message ?? '';
    t.regex(m, /step 'hang' ran past its deadline: \d+ ms, deadline 3000 ms \(floor \(1 x calibration = \d+ ms\)\)/);
    t.regex(m, /the guest looked STUCK: the console had been silent for \d+ ms and the guest was idle \(QEMU used [\d.]+ CPU-s\/s/);
    t.regex(m, /calibration: \d+ ms \(first node -e 0 in the guest\)/);
    t.regex(m, /steps before it \(ms\): qemu \d+, firmware \d+, kernel \d+, init-modules \d+, init-9p \d+, init-switch-root \d+, bash \d+, calibrate \d+, script \d+$/m);
    t.is(error?.expiry?.kind, 'step');
    t.is(error?.expiry?.verdict, 'stuck');
    t.is(error?.steps.at(-1)?.name, 'hang');
    t.regex(error?.steps.at(-1)?.note ?? '', /^killed: deadline \(stuck\)/);
    t.regex(m, /\nbefore\n/, 'the last console lines are there');
    t.regex(m, /--- guest kernel: blocked tasks \(SysRq w\) ---\nsysrq: Show Blocked State\ntask:stat +state:D[^\n]*\n( \S+\n)*? fuse_get_req\+/, 'the blocked stat and where it waits');
    t.is(runningGuests(), 0);
  } finally {
    rmSync(shared, { recursive: true, force: true });
  }
});
