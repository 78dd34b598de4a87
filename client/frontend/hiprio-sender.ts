/**
 * The hiprio queue driven by a mount's only request thread, as the kernel's virtio_fs sends a
 * FORGET from the context that has it (virtio_fs_send_forget): no mailbox, no second thread, no
 * wake-up of another CPU per FORGET. With several request threads FORGETs still go through the
 * ForgetMailbox to a hiprio thread of their own.
 *
 * Nobody waits on a FORGET, so the queue runs without used-buffer notifications: its used
 * entries are taken back when the next FORGET wants a slot, on the thread's turns, and before the
 * thread stops. Nothing is allocated per FORGET.
 */
import { performance } from 'node:perf_hooks';
import type { RegionMirror } from '../../ffi/dma.ts';
import { QueueDoorbell, adoptLoan, type QueueLoan } from '../virtio/virtio-fs-device.ts';
import type { UsedRingProblem, Virtqueue } from '../virtio/virtqueue.ts';

/** How long a FORGET waits for the device to return a hiprio slot before it is dropped (as the mailbox waits). */
export const HIPRIO_WAIT_MS = 2000;

export class HiprioSender {
  readonly name: string;
  private readonly queue: Virtqueue<number>;
  private readonly doorbell: QueueDoorbell;
  /** The whole region: the request thread's slots and these are in it, so a record moves by copyWithin. */
  private readonly bytes: Uint8Array;
  private readonly slotBase: number[] = [];
  private readonly slotSize: number;
  private readonly free: Int32Array;
  private freeCount: number;
  private inFlight = 0;
  private readonly segments = [0, 0];
  private readonly none: readonly number[] = [];

  constructor(loan: QueueLoan, region: RegionMirror) {
    this.name = loan.name;
    this.queue = adoptLoan(loan, region);
    this.queue.disableCallbacks();
    this.doorbell = new QueueDoorbell(loan.signals);
    this.bytes = region.bytes;
    this.slotSize = loan.slotSize;
    const count = loan.slotOffsets.length;
    this.free = new Int32Array(count);
    for (let s = 0; s < count; s++) {
      this.slotBase.push(loan.slotOffsets[s]!);
      this.free[s] = s;
    }
    this.freeCount = count;
  }

  get requestsInFlight(): number {
    return this.inFlight;
  }

  /** Why the device broke the queue, if it did. */
  get broken(): string | undefined {
    return this.queue.brokenReason === undefined ? undefined : `${this.queue.name}: ${this.queue.brokenReason}`;
  }

  /**
   * Puts one FORGET/BATCH_FORGET record (`firstLength` bytes at region offset `firstAt`, then
   * `secondLength` at `secondAt`) on the queue and rings. Waits up to waitMs for a slot the device
   * still holds; returns false when none came back (the record is dropped) or the queue is broken.
   */
  send(firstAt: number, firstLength: number, secondAt: number, secondLength: number, waitMs = HIPRIO_WAIT_MS): boolean {
    const length = firstLength + secondLength;
    if (length > this.slotSize) return false;
    this.reclaim();
    if (this.freeCount === 0) {
      const end = performance.now() + waitMs;
      do this.reclaim();
      while (this.freeCount === 0 && this.queue.brokenReason === undefined && performance.now() < end);
      if (this.freeCount === 0) return false;
    }
    const s = this.free[--this.freeCount]!;
    const base = this.slotBase[s]!;
    this.bytes.copyWithin(base, firstAt, firstAt + firstLength);
    if (secondLength > 0) this.bytes.copyWithin(base + firstLength, secondAt, secondAt + secondLength);
    this.segments[0] = base;
    this.segments[1] = length;
    try {
      if (!this.queue.add(this.segments, this.none, s)) {
        this.free[this.freeCount++] = s;
        return false;
      }
    } catch {
      // A broken queue: the thread learns why from `broken` and fails the device.
      this.free[this.freeCount++] = s;
      return false;
    }
    this.inFlight++;
    if (this.queue.kickNeeded()) this.doorbell.ring();
    return true;
  }

  /** Takes back every slot the device has returned. Cheap when it has returned none (one load). */
  reclaim(): void {
    if (this.inFlight > 0 && this.queue.hasUsed()) this.queue.drainUsed(this.onUsed, this.onProblem);
  }

  /**
   * The thread is stopping: waits up to `waitMs` for the device to return what it holds. Returns
   * how many it still holds.
   */
  finish(waitMs: number): number {
    const end = performance.now() + waitMs;
    this.reclaim();
    while (this.inFlight > 0 && this.queue.brokenReason === undefined && performance.now() < end) this.reclaim();
    return this.inFlight;
  }

  /** The device is gone: nothing it holds will come back. */
  abort(): void {
    this.queue.failAll('device failed', (s) => this.released(s));
  }

  private released(s: number): void {
    this.inFlight--;
    this.free[this.freeCount++] = s;
  }

  private readonly onUsed = (s: number): void => this.released(s);

  // A used len beyond the chain (a FORGET has nothing writable): the slot is back all the same.
  private readonly onProblem = (problem: UsedRingProblem<number>): void => {
    if (problem.token !== undefined) this.released(problem.token);
  };
}
