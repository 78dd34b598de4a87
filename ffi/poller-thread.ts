/**
 * The poller's thread (see poller.ts): waits in epoll_wait and hands each batch of ready tokens to
 * the main thread through shared memory. Watched fds are EPOLLONESHOT, so a ready fd is reported
 * once and then rests until the main thread has run its callback and re-armed it.
 */
import { workerData } from 'node:worker_threads';
import { EpollEventBuffer, epollWait } from './libc.ts';
import { ACKED, BATCH_AT, COUNT, MAX_BATCH, READY, SEQ, STOP, type PollerThreadSetup } from './poller-shared.ts';

const { epfd, shared } = workerData as PollerThreadSetup;
const words = new Int32Array(shared, 0, BATCH_AT / 4);
const batch = new Uint32Array(shared, BATCH_AT, 2 * MAX_BATCH);
const events = new EpollEventBuffer(MAX_BATCH);

Atomics.store(words, READY, 1);
Atomics.notify(words, READY);
for (;;) {
  const n = epollWait(epfd, events, -1);
  if (Atomics.load(words, STOP) !== 0) break;
  if (n === 0) continue;
  // The main thread has copied the previous batch out before acknowledging it.
  for (;;) {
    const acked = Atomics.load(words, ACKED);
    if (acked === Atomics.load(words, SEQ)) break;
    Atomics.wait(words, ACKED, acked);
  }
  if (Atomics.load(words, STOP) !== 0) break;
  for (let i = 0; i < n; i++) {
    batch[2 * i] = events.tokenAt(i);
    batch[2 * i + 1] = events.eventsAt(i);
  }
  Atomics.store(words, COUNT, n);
  Atomics.add(words, SEQ, 1);
  Atomics.notify(words, SEQ);
}
