/**
 * What two things cost on this machine, measured once at mount, for the relay's queue threads to
 * size their behaviour by: waking a sleeping thread (how long to poll before sleeping) and reading
 * the clock (how many requests to time).
 *
 * Both differ by an order of magnitude between the machines this runs on. On the project's KVM
 * machine a wake-up costs 30-58 us and a clock read ~0.1 us (the vDSO reads the TSC); in a QEMU
 * guest under TCG a wake-up costs ~200 us and a clock read 3-9 us (the guest marks its TSC
 * unstable, and clock_gettime becomes a system call that reads the emulated HPET).
 */
import { performance } from 'node:perf_hooks';
import { EPOLL_CLOEXEC, EpollEventBuffer, close, epollCreate1, epollWait, setTimerSlackNs } from '../../ffi/libc.ts';
import { DEFAULT_POLL_US } from '../virtio/virtio-fs-device.ts';

/**
 * Bounds of a measured poll budget (us). The floor is the fixed budget the relay had (the device
 * layer's default), the best of those tried on the project's KVM machine: on 4 KiB random reads there
 * (three pairs of runs, 2026-12-05) the measured wake-up alone (30-58 us) gave 14,150 IOPS against
 * 15,454 at 50 us. A machine whose wake-ups cost more polls that long instead.
 */
export const MIN_MEASURED_BUDGET_US = DEFAULT_POLL_US;
export const MAX_MEASURED_BUDGET_US = 1000;

/**
 * What waking a sleeping thread costs this machine (us): the least overshoot of `samples` 1 ms
 * sleeps in epoll_wait with the timer slack at 1 ns, on the calling thread. The overshoot is the
 * path every completion wake-up takes too: the (virtual) CPU leaves its idle state, the interrupt,
 * the scheduler. The least of several is what it costs when nothing competes for the CPU.
 * Takes ~samples ms.
 */
export function measureWakeUpUs(samples = 9): number {
  const epfd = epollCreate1(EPOLL_CLOEXEC);
  const events = new EpollEventBuffer(1);
  const slack = setTimerSlackNs(1);
  try {
    let least = Infinity;
    for (let i = 0; i < samples; i++) {
      const start = performance.now();
      epollWait(epfd, events, 1);
      least = Math.min(least, (performance.now() - start - 1) * 1000);
    }
    return Math.max(0, least);
  } finally {
    setTimerSlackNs(slack);
    close(epfd);
  }
}

/**
 * The poll budget for a machine whose wake-up costs `wakeUpUs`: the wake-up itself (the
 * ski-rental rule: spin at most as long as sleeping would cost, and never pay more than twice
 * the best choice), within [MIN_MEASURED_BUDGET_US, MAX_MEASURED_BUDGET_US]: 50 us on the KVM
 * machine, 190-360 us in its TCG guests.
 */
export function pollBudgetFor(wakeUpUs: number): number {
  return Math.round(Math.min(MAX_MEASURED_BUDGET_US, Math.max(MIN_MEASURED_BUDGET_US, wakeUpUs)));
}

/** What one performance.now() costs (us): the least mean of three runs of 200 reads. */
export function measureClockReadUs(): number {
  let least = Infinity;
  for (let run = 0; run < 3; run++) {
    const start = performance.now();
    let last = start;
    for (let i = 0; i < 200; i++) last = performance.now();
    least = Math.min(least, ((last - start) * 1000) / 200);
  }
  return least;
}

/** A clock read at or above this (us) makes timing every request cost more than it tells. */
export const SLOW_CLOCK_US = 1;
/** With a slow clock, one request in this many is timed. */
export const TIME_ONE_IN = 16;

/**
 * How many requests per timed one, for a clock read costing `clockReadUs`: every request (1)
 * where the clock is cheap; one in TIME_ONE_IN where a request would spend tens of us on its five
 * reads (start, submitted, used, replied, finished).
 */
export function timeEveryFor(clockReadUs: number): number {
  return clockReadUs < SLOW_CLOCK_US ? 1 : TIME_ONE_IN;
}
