/**
 * FORGET and BATCH_FORGET travel on the hiprio queue, which one thread runs, but the kernel hands
 * them to whichever request thread reads /dev/fuse. This mailbox carries them across: a byte ring
 * in a SharedArrayBuffer that many threads put records into (under a spin lock held for one copy)
 * and the hiprio thread takes them from, woken by an eventfd. Nothing is allocated per record.
 *
 * A record is a u32 length then that many bytes, wrapping at the end of the ring. A producer that
 * finds no room waits (Atomics.wait) for the consumer to take something, up to a limit: a stuck
 * hiprio thread (a dead device) must not stall request threads forever.
 */
import { signalEventFd } from '../../ffi/libc.ts';

const LOCK = 0;
/** Byte positions, free-running (mod 2^31 is never reached in practice: they are reduced mod capacity). */
const HEAD = 1;
const TAIL = 2;
/** Bumped by the consumer whenever it frees room; producers wait on it. */
const ROOM_SEQ = 3;
const HEADER_BYTES = 16;

export class ForgetMailbox {
  readonly buffer: SharedArrayBuffer;
  private readonly words: Int32Array;
  private readonly bytes: Uint8Array;
  private readonly capacity: number;
  private readonly lengthBytes = new Uint8Array(4);
  private readonly lengthView = new DataView(this.lengthBytes.buffer);

  /** `buffer`: another thread's mailbox (ForgetMailbox.create gives a new one). */
  constructor(
    buffer: SharedArrayBuffer,
    /** Signalled after each put: the consumer's epoll watches it. */
    readonly doorbellFd: number,
  ) {
    this.buffer = buffer;
    this.words = new Int32Array(buffer, 0, 4);
    this.bytes = new Uint8Array(buffer, HEADER_BYTES);
    this.capacity = this.bytes.length;
  }

  /** A ring that holds at least two records of `largestRecord` bytes. */
  static create(largestRecord: number): SharedArrayBuffer {
    return new SharedArrayBuffer(HEADER_BYTES + 2 * (largestRecord + 4) + 4096);
  }

  /**
   * Puts the record first[0, firstLength) ++ second[0, secondLength). Returns false when no room
   * came within `waitMs` (the record is dropped; the caller logs it).
   */
  put(first: Uint8Array, firstLength: number, second: Uint8Array, secondLength: number, waitMs = 2000): boolean {
    const need = 4 + firstLength + secondLength;
    if (need > this.capacity) return false;
    const deadline = Date.now() + waitMs;
    for (;;) {
      this.lock();
      const head = Atomics.load(this.words, HEAD);
      const tail = Atomics.load(this.words, TAIL);
      if (this.capacity - (tail - head) >= need) {
        this.lengthView.setUint32(0, firstLength + secondLength, true);
        let at = this.copyIn(tail, this.lengthBytes, 4);
        at = this.copyIn(at, first, firstLength);
        at = this.copyIn(at, second, secondLength);
        Atomics.store(this.words, TAIL, at);
        this.unlock();
        signalEventFd(this.doorbellFd);
        return true;
      }
      const seq = Atomics.load(this.words, ROOM_SEQ);
      this.unlock();
      const left = deadline - Date.now();
      if (left <= 0) return false;
      Atomics.wait(this.words, ROOM_SEQ, seq, Math.min(left, 100));
    }
  }

  /** Takes the oldest record into `into` (at 0); returns its length, or -1 when the mailbox is empty. */
  take(into: Uint8Array): number {
    const head = Atomics.load(this.words, HEAD);
    const tail = Atomics.load(this.words, TAIL);
    if (head === tail) return -1;
    let at = this.copyOut(head, this.lengthBytes, 4);
    const length = this.lengthView.getUint32(0, true);
    if (length > into.length || length > tail - at) throw new RangeError(`mailbox record of ${length} bytes: corrupt or larger than a slot`);
    at = this.copyOut(at, into, length);
    // Positions stay below 2^31: rebase both when the ring is empty again.
    this.lock();
    if (Atomics.load(this.words, TAIL) === at && at > 1 << 30) {
      Atomics.store(this.words, TAIL, 0);
      Atomics.store(this.words, HEAD, 0);
    } else {
      Atomics.store(this.words, HEAD, at);
    }
    this.unlock();
    Atomics.add(this.words, ROOM_SEQ, 1);
    Atomics.notify(this.words, ROOM_SEQ);
    return length;
  }

  private copyIn(position: number, from: Uint8Array, length: number): number {
    const at = position % this.capacity;
    const first = Math.min(length, this.capacity - at);
    this.bytes.set(from.subarray(0, first), at);
    if (first < length) this.bytes.set(from.subarray(first, length), 0);
    return position + length;
  }

  private copyOut(position: number, into: Uint8Array, length: number): number {
    const at = position % this.capacity;
    const first = Math.min(length, this.capacity - at);
    into.set(this.bytes.subarray(at, at + first), 0);
    if (first < length) into.set(this.bytes.subarray(0, length - first), first);
    return position + length;
  }

  private lock(): void {
    while (Atomics.compareExchange(this.words, LOCK, 0, 1) !== 0) {
      // Held for one copy by another thread: spin.
    }
  }

  private unlock(): void {
    Atomics.store(this.words, LOCK, 0);
  }
}
