/**
 * Starting a worker thread from a module of this package, whether it runs compiled (dist/, .js)
 * or from its TypeScript sources under tsx (the repository's bin/ and tests).
 */
import { Worker, type TransferListItem } from 'node:worker_threads';

/**
 * Starts `entry` (a module URL next to the caller: pass new URL('./x.ts', import.meta.url) and the
 * .ts/.js question is settled here) as a worker thread with `workerData` (`transferList`: the
 * MessagePorts and buffers in it that move to the thread).
 */
export function startThread(entry: URL, workerData: unknown, name: string, transferList?: TransferListItem[]): Worker {
  const compiled = !import.meta.url.endsWith('.ts');
  const url = compiled ? new URL(entry.href.replace(/\.ts$/, '.js')) : entry;
  if (compiled) return new Worker(url, { workerData, name, transferList });
  // Node 20 applies no loader to a worker's entry file: the thread registers tsx itself first.
  const api = import.meta.resolve('tsx/esm/api');
  const code = `import(${JSON.stringify(api)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(url.href)}); });`;
  return new Worker(code, { eval: true, workerData, name, transferList });
}
