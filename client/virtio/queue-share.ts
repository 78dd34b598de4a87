/**
 * One virtqueue driven by several threads of this process, each with a Virtqueue object of its own
 * in share mode (VirtqueueShare): the reference device's per-queue workers all send to their
 * backend's one request queue this way (examples/reference-device/queue-worker.ts).
 *
 * Who owns what:
 *   - descriptors: member m owns the range [m * size / members, +size / members) and its indirect
 *     tables; its Virtqueue object links, fills and frees them alone, without a lock.
 *   - the avail ring: publish() writes the entry and moves avail idx under AVAIL_LOCK, and decides
 *     about the kick for that one entry (EVENT_IDX: avail_event in [idx, idx + 1)).
 *   - the used ring: harvest() takes every published entry under USED_LOCK, advances the shared
 *     LAST_USED, republishes used_event and checks again (the enableCallbacks() handshake, so no
 *     notification is lost between members). An entry of its own goes to the caller; another
 *     member's goes into that member's inbox, and the member is woken through its eventfd only when
 *     it sleeps (SLEEPING, set before its epoll_wait: a seq-cst store then load on each side, so
 *     either the harvester sees it asleep or the member sees the entry).
 *   - the used entry's checks (id in flight, len within the chain) stay with the owner's
 *     Virtqueue.completeUsed(); the harvester checks only what routing needs (the used idx, the id
 *     range) and marks the share BROKEN otherwise.
 *
 * The locks are futex-style (0 free, 1 held, 2 held with waiters): taken with one compareExchange
 * when free, which is nearly always (they are held for a few loads and stores).
 */
import { signalEventFd } from '../../ffi/libc.ts';
import { needsEvent } from './event-idx.ts';
import {
  AVAIL_RING_WORD,
  FLAGS_WORD,
  IDX_WORD,
  VIRTQ_USED_F_NO_NOTIFY,
  availEventWord,
  usedElemIdWord,
  usedEventWord,
} from './ring-layout.ts';

const AVAIL_LOCK = 0;
const USED_LOCK = 1;
/** The used idx every entry below which has been harvested (free-running u16). */
const LAST_USED = 2;
/** Non-zero: the queue (or the device) is broken; every member fails what it has in flight. */
const BROKEN = 3;
const HEADER_WORDS = 8;
/** Per member: inbox head (consumer) and tail (producers, under USED_LOCK), SLEEPING. */
const INBOX_HEAD = 0;
const INBOX_TAIL = 1;
const SLEEPING = 2;
const MEMBER_WORDS = 4;
const U16 = 0xffff;
const SPINS = 200;

export interface QueueShareLayout {
  /** From QueueShare.create. */
  buffer: SharedArrayBuffer;
  members: number;
  size: number;
}

/** Descriptors [first, first + count) of member `m`. */
export function memberRange(m: number, members: number, size: number): { first: number; count: number } {
  const per = Math.floor(size / members);
  return { first: m * per, count: per };
}

export class QueueShare {
  /** The shared state for `members` threads on a queue of `size` whose used idx is now `usedIdx`. */
  static create(members: number, size: number, usedIdx: number): QueueShareLayout {
    if (members < 1 || Math.floor(size / members) < 1) throw new RangeError(`a queue of ${size} cannot be shared by ${members}`);
    const per = Math.floor(size / members);
    // Each inbox holds (id, len) pairs, as many as the member has descriptors: it cannot overflow.
    const buffer = new SharedArrayBuffer(4 * (HEADER_WORDS + members * MEMBER_WORDS + members * 2 * per));
    const words = new Int32Array(buffer);
    words[LAST_USED] = usedIdx & U16;
    return { buffer, members, size };
  }

  readonly first: number;
  readonly count: number;
  private readonly words: Int32Array;
  private readonly inboxes: Int32Array;
  private readonly per: number;
  private readonly mask: number;
  private readonly me: number;
  private readonly myWords: number;
  private readonly availEvent: number;
  private readonly usedEvent: number;
  /** Members to wake after a harvest (1 each), reused. */
  private readonly toWake: Uint8Array;
  /** This member's entries of one harvest, handled after the lock is let go. */
  private readonly stashPosition: Uint16Array;
  private readonly stashId: Uint32Array;
  private readonly stashLen: Uint32Array;

  /**
   * Member `member`'s view. `avail`/`used16`/`used32` are the queue's rings as this thread sees
   * them; `wakeFds` every member's wake eventfd.
   */
  constructor(
    layout: QueueShareLayout,
    member: number,
    private readonly avail: Uint16Array,
    private readonly used16: Uint16Array,
    private readonly used32: Uint32Array,
    private readonly eventIdx: boolean,
    private readonly wakeFds: readonly number[],
  ) {
    const { members, size } = layout;
    this.per = Math.floor(size / members);
    this.mask = size - 1;
    this.me = member;
    ({ first: this.first, count: this.count } = memberRange(member, members, size));
    this.words = new Int32Array(layout.buffer, 0, HEADER_WORDS + members * MEMBER_WORDS);
    this.inboxes = new Int32Array(layout.buffer, 4 * (HEADER_WORDS + members * MEMBER_WORDS));
    this.myWords = HEADER_WORDS + member * MEMBER_WORDS;
    this.availEvent = availEventWord(size);
    this.usedEvent = usedEventWord(size);
    this.toWake = new Uint8Array(members);
    this.stashPosition = new Uint16Array(size);
    this.stashId = new Uint32Array(size);
    this.stashLen = new Uint32Array(size);
  }

  get broken(): boolean {
    return Atomics.load(this.words, BROKEN) !== 0;
  }

  /** Marks the queue broken (any thread, the main one included) and wakes every member. */
  static breakShare(layout: QueueShareLayout, wakeFds: readonly number[]): void {
    const words = new Int32Array(layout.buffer, 0, HEADER_WORDS);
    if (Atomics.compareExchange(words, BROKEN, 0, 1) !== 0) return;
    for (const fd of wakeFds) signalEventFd(fd);
  }

  markBroken(): void {
    if (Atomics.compareExchange(this.words, BROKEN, 0, 1) !== 0) return;
    for (let m = 0; m < this.wakeFds.length; m++) if (m !== this.me) signalEventFd(this.wakeFds[m]!);
  }

  /** VirtqueueShare.publish: puts `head` on the avail ring; true when the device wants a kick. */
  publish(head: number): boolean {
    lock(this.words, AVAIL_LOCK);
    const old = Atomics.load(this.avail, IDX_WORD);
    this.avail[AVAIL_RING_WORD + (old & this.mask)] = head;
    const idx = (old + 1) & U16;
    Atomics.store(this.avail, IDX_WORD, idx); // release: the entry and the chain's descriptors first
    // seq-cst store then load: either the device sees the entry or we see its avail_event.
    const kick = this.eventIdx
      ? needsEvent(Atomics.load(this.used16, this.availEvent), idx, old)
      : (Atomics.load(this.used16, FLAGS_WORD) & VIRTQ_USED_F_NO_NOTIFY) === 0;
    unlock(this.words, AVAIL_LOCK);
    return kick;
  }

  /** Whether the device has published used entries nobody has harvested (a cheap look, no lock). */
  hasUsed(): boolean {
    return Atomics.load(this.used16, IDX_WORD) !== Atomics.load(this.words, LAST_USED);
  }

  /**
   * Takes every used entry: this member's through `own(position, id, len)` (after the lock is let
   * go), the others' into their inboxes. Returns false when the ring is broken (a used idx too far
   * ahead, an id outside the table): the share is marked BROKEN.
   */
  harvest(own: (position: number, id: number, len: number) => void): boolean {
    if (!this.hasUsed()) return !this.broken;
    const words = this.words;
    const size = this.mask + 1;
    let ok = true;
    let mineCount = 0;
    lock(words, USED_LOCK);
    try {
      for (;;) {
        const last = Atomics.load(words, LAST_USED);
        const usedIdx = Atomics.load(this.used16, IDX_WORD); // acquire: the entries below it are written
        const published = (usedIdx - last) & U16;
        if (published === 0) break;
        if (published > size) {
          ok = false;
          break;
        }
        for (let n = 0; n < published; n++) {
          const position = (last + n) & U16;
          const element = usedElemIdWord(position & this.mask);
          const id = this.used32[element]!;
          const len = this.used32[element + 1]!;
          if (id >= size) {
            ok = false;
            break;
          }
          const owner = Math.min(Math.floor(id / this.per), this.toWake.length - 1);
          if (owner === this.me) {
            // Ours are handled once the lock is let go.
            this.stashPosition[mineCount] = position;
            this.stashId[mineCount] = id;
            this.stashLen[mineCount] = len;
            mineCount++;
          } else {
            this.push(owner, id, len);
          }
        }
        if (!ok) break;
        Atomics.store(words, LAST_USED, usedIdx);
        if (this.eventIdx) Atomics.store(this.avail, this.usedEvent, usedIdx);
        // seq-cst store then load: either the device sees used_event or we see its next entry.
      }
    } finally {
      unlock(words, USED_LOCK);
    }
    for (let m = 0; m < this.toWake.length; m++) {
      if (this.toWake[m] === 0) continue;
      this.toWake[m] = 0;
      if (Atomics.load(words, HEADER_WORDS + m * MEMBER_WORDS + SLEEPING) !== 0) signalEventFd(this.wakeFds[m]!);
    }
    for (let i = 0; i < mineCount; i++) own(this.stashPosition[i]!, this.stashId[i]!, this.stashLen[i]!);
    if (!ok) this.markBroken();
    return ok;
  }

  /** Entries other members harvested for this one: `take(position, id, len)` for each. */
  takeInbox(take: (position: number, id: number, len: number) => void): void {
    const head = Atomics.load(this.words, this.myWords + INBOX_HEAD);
    const tail = Atomics.load(this.words, this.myWords + INBOX_TAIL);
    if (head === tail) return;
    const base = this.me * 2 * this.per;
    for (let at = head; at !== tail; at = (at + 1) | 0) {
      const k = base + 2 * (((at % this.per) + this.per) % this.per);
      take(-1, this.inboxes[k]!, this.inboxes[k + 1]!);
    }
    Atomics.store(this.words, this.myWords + INBOX_HEAD, tail);
  }

  hasInbox(): boolean {
    return Atomics.load(this.words, this.myWords + INBOX_HEAD) !== Atomics.load(this.words, this.myWords + INBOX_TAIL);
  }

  /**
   * Before sleeping: says so, then looks once more. Returns false (and is awake again) when
   * something came meanwhile: do not sleep then.
   */
  goingToSleep(): boolean {
    Atomics.store(this.words, this.myWords + SLEEPING, 1);
    if (this.hasInbox() || this.hasUsed() || this.broken) {
      Atomics.store(this.words, this.myWords + SLEEPING, 0);
      return false;
    }
    return true;
  }

  awake(): void {
    Atomics.store(this.words, this.myWords + SLEEPING, 0);
  }

  /** Under USED_LOCK: one entry into member `m`'s inbox. */
  private push(m: number, id: number, len: number): void {
    const at = HEADER_WORDS + m * MEMBER_WORDS;
    const tail = Atomics.load(this.words, at + INBOX_TAIL);
    const k = m * 2 * this.per + 2 * (((tail % this.per) + this.per) % this.per);
    this.inboxes[k] = id;
    this.inboxes[k + 1] = len;
    Atomics.store(this.words, at + INBOX_TAIL, (tail + 1) | 0); // release: the entry first
    this.toWake[m] = 1;
  }
}

function lock(words: Int32Array, at: number): void {
  if (Atomics.compareExchange(words, at, 0, 1) === 0) return;
  for (let i = 0; i < SPINS; i++) if (Atomics.load(words, at) === 0 && Atomics.compareExchange(words, at, 0, 1) === 0) return;
  while (Atomics.exchange(words, at, 2) !== 0) Atomics.wait(words, at, 2, 5);
}

function unlock(words: Int32Array, at: number): void {
  if (Atomics.exchange(words, at, 0) === 2) Atomics.notify(words, at, 1);
}
