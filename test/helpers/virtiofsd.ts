// Real devices for tests: QEMU's virtiofsd on a fresh temporary directory.
import type { ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Virtiofsd, type VirtiofsdOptions } from '../../client/backends/virtiofsd.ts';
import { VirtioFsClient, type ConnectOptions } from '../../client/client.ts';

export interface DeviceFixture {
  dir: string;
  daemon: Virtiofsd;
  client: VirtioFsClient;
  logs: string[];
}

/** Fails the test loudly (never skips) where a real virtiofsd cannot run. */
export function requireRoot(t: ExecutionContext): boolean {
  if (process.getuid?.() === 0) return true;
  t.fail('this test starts virtiofsd, which needs root: run the suite as root (CI does)');
  return false;
}

/** Starts virtiofsd on a new directory, connects a client, runs `fn`, and cleans everything up. */
export async function withDevice(
  t: ExecutionContext,
  options: Partial<VirtiofsdOptions> & { client?: Partial<ConnectOptions> },
  fn: (f: DeviceFixture) => Promise<void>,
): Promise<void> {
  if (!requireRoot(t)) return;
  const dir = mkdtempSync(join(tmpdir(), 'vfs-e2e-'));
  const logs: string[] = [];
  const daemon = await Virtiofsd.start({ sharedDir: dir, ...options });
  let client: VirtioFsClient | undefined;
  try {
    client = await VirtioFsClient.connect({
      transport: `vhost-user:${daemon.socketPath}`,
      log: (line) => logs.push(line),
      ...options.client,
    });
    await fn({ dir, daemon, client, logs });
  } finally {
    await client?.close();
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
