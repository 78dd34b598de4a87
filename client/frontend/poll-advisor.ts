/**
 * When polling before sleeping pays, learned from what polling got.
 *
 * A queue thread may spin up to a budget (`pollUs`) for the device's answer
 * instead of sleeping in epoll_wait: on a virtual machine a wake-up costs tens
 * of microseconds, more than a small request's whole service. But a 1 MiB
 * write keeps the device busy for hundreds of microseconds, and spinning then
 * only takes a CPU from the device (on 2 vCPUs: 1 MiB writes went from
 * 1,178-1,250 MiB/s polling to 1,374-1,417 MiB/s not polling, device phase
 * 256-292 us -> 191 us).
 *
 * So, as Linux's block layer buckets its hybrid-polling statistics by request
 * size, requests are grouped by the log2 of the bytes they move, and each
 * group keeps a success rate: the share of its requests the device answered
 * within the budget. A thread polls for a completion only while some request
 * at the device belongs to a group whose rate is at least one half. A request
 * answered within the budget counts as a success whether or not anyone polled
 * for it (sleeping only adds to the time seen); a slower one counts as a
 * failure only if it was polled for, since an unpolled one's time includes the
 * wake-up. So that a group can come back, one request in PROBE_EVERY of a
 * group that is not polled for is polled for anyway.
 *
 * The gap between the last reply and the next request (polling for the
 * kernel's next request while idle) is judged the same way, as one group.
 *
 * Nothing here allocates; all state is typed arrays and numbers.
 */

/** Groups: log2 of a request's bytes, 0 ... 2^32; then one for the idle gap. */
const GAP = 33;
const GROUPS = GAP + 1;
/** Weight of the newest outcome in a group's rate. */
const WEIGHT = 1 / 8;
/** A group at or above this rate is polled for. */
const THRESHOLD = 0.5;
/** One request in this many of a group not polled for is polled for anyway, to re-measure. */
export const PROBE_EVERY = 16;
/** A group's first completions are all worth timing (where the clock is slow and requests are sampled). */
export const LEARN_FIRST = 32;

export class PollAdvisor {
  readonly budgetUs: number;
  private readonly rate = new Float64Array(GROUPS).fill(1);
  private readonly skipped = new Int32Array(GROUPS);
  /** Timed completions each group has learned from. */
  private readonly learned = new Int32Array(GROUPS);
  private readonly slotGroup: Uint8Array;
  private readonly slotPolled: Uint8Array;
  /** Requests at the device that are worth polling for. */
  private pollable = 0;
  private idleSince = -1;
  private idlePolled = false;

  constructor(slots: number, budgetUs: number) {
    this.budgetUs = budgetUs;
    this.slotGroup = new Uint8Array(slots);
    this.slotPolled = new Uint8Array(slots);
  }

  /** The group of a request moving `bytes` (request plus reply room). */
  static group(bytes: number): number {
    return 32 - Math.clz32(bytes);
  }

  /** Whether to poll for the next wait of group `g`: its rate says so, or it is a probe's turn. */
  private decide(g: number): boolean {
    if (this.rate[g]! >= THRESHOLD) return true;
    if (++this.skipped[g]! < PROBE_EVERY) return false;
    this.skipped[g] = 0;
    return true;
  }

  /**
   * A wait of group `g` took `us`: within the budget counts for the group whether or not anyone
   * polled (sleeping only adds); beyond it counts against only if polled for (else the wake-up is in it).
   */
  private learn(g: number, us: number, polled: boolean): void {
    if (us <= this.budgetUs) this.rate[g]! += (1 - this.rate[g]!) * WEIGHT;
    else if (polled) this.rate[g]! -= this.rate[g]! * WEIGHT;
  }

  /** Slot `s` went to the device carrying a request that moves `bytes`. */
  submitted(s: number, bytes: number): void {
    const g = PollAdvisor.group(bytes);
    this.slotGroup[s] = g;
    const polled = this.decide(g);
    this.slotPolled[s] = polled ? 1 : 0;
    if (polled) this.pollable++;
  }

  /** Slot `s` came back after `deviceUs`; `answered` false when it failed without an answer (not counted). */
  completed(s: number, deviceUs: number, answered: boolean): void {
    const polled = this.slotPolled[s] === 1;
    if (polled) this.pollable--;
    this.slotPolled[s] = 0;
    if (!answered) return;
    this.learned[this.slotGroup[s]!]!++;
    this.learn(this.slotGroup[s]!, deviceUs, polled);
  }

  /**
   * Whether slot `s`'s device time is worth a clock read (only asked where the clock is slow and
   * requests are sampled): its group has taught fewer than LEARN_FIRST, or it is a probe of a group
   * not polled for (untimed, a probe would teach nothing).
   */
  wantsTiming(s: number): boolean {
    const g = this.slotGroup[s]!;
    return this.learned[g]! < LEARN_FIRST || (this.slotPolled[s] === 1 && this.rate[g]! < THRESHOLD);
  }

  /** Whether to poll for a completion now. */
  get pollForCompletion(): boolean {
    return this.pollable > 0;
  }

  /** Nothing is at the device any more (at `now`, ms): the wait for the next request starts. */
  idle(now: number): void {
    this.idleSince = now;
    this.idlePolled = this.decide(GAP);
  }

  /** Whether to poll for the kernel's next request now (only meaningful after `idle`). */
  get pollForRequest(): boolean {
    return this.idleSince >= 0 && this.idlePolled;
  }

  /** A request arrived (at `now`, ms); if the thread was idle, that ends the gap. */
  arrived(now: number): void {
    if (this.idleSince < 0) return;
    this.learn(GAP, (now - this.idleSince) * 1000, this.idlePolled);
    this.idleSince = -1;
  }

  /** For status and tests: a group's success rate. */
  rateOf(group: number): number {
    return this.rate[group]!;
  }

  /** For status and tests: the idle gap's success rate. */
  get idleRate(): number {
    return this.rate[GAP]!;
  }
}
