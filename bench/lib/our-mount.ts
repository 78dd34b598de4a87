/**
 * Our mount, driven exactly as a user drives it: `virtiofs-client mount
 * --transport vhost-user:<socket> [--frontend relay|fuse-native] <mountpoint>`
 * (returns once mounted; the mount process, relay or fuse-native, continues in
 * the background) and `virtiofs-client unmount`.
 */
import type { PhaseSummary } from '../../client/frontend/op-stats.ts';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { controlSocketPath, logPath, queryStatus } from '../../client/frontend/control.ts';
import { mountsAt, unmount } from '../../client/frontend/fuse-mount.ts';
import { endProcess, run, waitGone, type Cleanup } from './cleanup.ts';

export const CLI = fileURLToPath(new URL('../../bin/virtiofs-client.js', import.meta.url));

export interface OurMount {
  mountpoint: string;
  /** The process serving the mount (the detached `mount --foreground` one, relay or fuse-native); from its `(pid N)` line or `status`. */
  relayPid: number | undefined;
  /** The relay's log file (removed at clean-up). */
  log: string;
  logTail(lines?: number): string;
  /** What FUSE_INIT settled (the relay's `status` negotiation lines). */
  negotiation: string[];
  /** What the mount's `status` counted so far, by name: FUSE opcodes (relay) or libfuse callbacks (fuse-native). */
  counts(): Promise<Map<string, number>>;
  /** The relay's client-side time per request by phase so far (undefined for fuse-native). */
  phases(): Promise<PhaseSummary | undefined>;
  /** Unmounts with `virtiofs-client unmount` and waits for the relay to exit. */
  stop(): Promise<void>;
}

function tail(path: string, lines = 15): string {
  try {
    return readFileSync(path, 'utf8').trim().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

export async function mountOurs(cleanup: Cleanup, socketPath: string, mountpoint: string, extraArgs: string[] = []): Promise<OurMount> {
  const log = logPath(mountpoint);
  let relayPid: number | undefined;
  // Registered before mounting: a mount that half-happened (Ctrl-C mid-way) is cleaned up too.
  const stop = cleanup.add(`our mount on ${mountpoint}`, async () => {
    relayPid ??= (await queryStatus(controlSocketPath(mountpoint), 1000))?.pid;
    if (mountsAt(mountpoint).length > 0) {
      const r = spawnSync(process.execPath, [CLI, 'unmount', mountpoint], { encoding: 'utf8', timeout: 15_000 });
      if (r.status !== 0) console.error(`cleanup: virtiofs-client unmount ${mountpoint}: ${(r.stderr || r.error?.message || '').trim()}`);
      // Whatever the CLI managed, nothing may stay mounted (lazily, if something still holds it).
      if (mountsAt(mountpoint).length > 0) unmount(mountpoint);
    }
    if (relayPid !== undefined && !(await waitGone(relayPid, 5000))) {
      console.error(`cleanup: relay pid ${relayPid} still running 5 s after the unmount: terminating it`);
      await endProcess(relayPid);
    }
    rmSync(controlSocketPath(mountpoint), { force: true });
    rmSync(log, { force: true });
  });

  const r = await run(cleanup, process.execPath, [CLI, 'mount', '--transport', `vhost-user:${socketPath}`, ...extraArgs, mountpoint]);
  relayPid = Number(/\(pid (\d+)\)/.exec(r.stdout + r.stderr)?.[1]) || undefined;
  cleanup.check();
  if (r.code !== 0 || mountsAt(mountpoint).length === 0) {
    const logText = existsSync(log) ? `\nrelay log ${log}:\n${tail(log)}` : '';
    await stop();
    throw new Error(`virtiofs-client mount failed (exit status ${r.code}):\n${(r.stderr + r.stdout).trim()}${logText}`);
  }
  const status = await queryStatus(controlSocketPath(mountpoint));
  relayPid ??= status?.pid;
  return {
    mountpoint,
    relayPid,
    log,
    logTail: (lines?: number) => tail(log, lines),
    negotiation: status?.negotiation ?? [],
    async counts() {
      const s = await queryStatus(controlSocketPath(mountpoint));
      return new Map((s?.operations ?? []).map((o) => [o.opcode, o.count]));
    },
    async phases() {
      return (await queryStatus(controlSocketPath(mountpoint)))?.phases;
    },
    stop,
  };
}
