/**
 * Entry point of a frontend request queue's thread (worker_threads): runs one QueueWorker until the
 * main thread tells it to exit. Everything it needs comes in workerData (a WorkerSetup).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { QueueWorker, type WorkerMessage, type WorkerSetup } from './queue-worker.ts';

const port = parentPort;
if (!port) throw new Error('queue-worker-main runs as a worker thread');
new QueueWorker(workerData as WorkerSetup, (m: WorkerMessage) => port.postMessage(m)).run();
