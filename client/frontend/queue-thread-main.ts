/**
 * Entry point of a per-queue thread (worker_threads): runs one QueueThread until it stops and
 * reports why. Everything it needs comes in workerData (a QueueThreadSetup).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { QueueThread, type QueueThreadMessage, type QueueThreadSetup } from './queue-thread.ts';

const port = parentPort;
if (!port) throw new Error('queue-thread-main runs as a worker thread');
const post = (message: QueueThreadMessage) => port.postMessage(message);
const thread = new QueueThread(workerData as QueueThreadSetup, post);
const reason = thread.run();
post({ kind: 'exit', reason, inFlight: thread.requestsInFlight, broken: thread.broken });
