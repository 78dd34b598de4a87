/** The words the poller and its thread share (poller.ts, poller-thread.ts). */
export const SEQ = 0;
export const ACKED = 1;
export const COUNT = 2;
export const STOP = 3;
/** Set to 1 by the thread once it waits. */
export const READY = 4;
export const BATCH_AT = 32;
export const MAX_BATCH = 64;
export const SHARED_BYTES = BATCH_AT + 8 * MAX_BATCH;

export interface PollerThreadSetup {
  epfd: number;
  shared: SharedArrayBuffer;
}
