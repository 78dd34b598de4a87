/**
 * Each running mount answers `virtiofs-client status` on a unix socket under
 * /run/virtiofs-client, named after its mountpoint. One request, one JSON reply.
 */
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { MountError } from './fuse-mount.ts';
import type { RelayStatus } from './relay.ts';

/** Root's mounts under /run; a user's under their runtime directory (or /tmp). */
export const RUN_DIR =
  process.env.VIRTIOFS_CLIENT_RUN_DIR ??
  (process.getuid?.() === 0 ? '/run/virtiofs-client' : join(process.env.XDG_RUNTIME_DIR || tmpdir(), `virtiofs-client-${process.getuid?.()}`));

export function controlSocketPath(mountpoint: string): string {
  const id = createHash('sha256').update(resolve(mountpoint)).digest('hex').slice(0, 16);
  return join(RUN_DIR, `${id}.sock`);
}

/** Where a background mount writes its log. */
export function logPath(mountpoint: string): string {
  return controlSocketPath(mountpoint).replace(/\.sock$/, '.log');
}

/**
 * Creates RUN_DIR (0755) if missing and checks it: a directory, not a symlink, owned by this user,
 * writable by no one else. A user's falls back to /tmp, where another user could have made it
 * first; then the control socket and the log could be replaced under the mount's owner.
 */
export function ensureRunDir(): string {
  mkdirSync(RUN_DIR, { recursive: true, mode: 0o755 });
  const st = lstatSync(RUN_DIR);
  const uid = process.getuid?.() ?? 0;
  if (!st.isDirectory()) throw new MountError(`${RUN_DIR} is not a directory (a symlink?): remove it, or set XDG_RUNTIME_DIR`, 'EPERM');
  if (st.uid !== uid || (st.mode & 0o022) !== 0) {
    throw new MountError(
      `${RUN_DIR} is ${st.uid !== uid ? `owned by uid ${st.uid}, not ${uid}` : `writable by others (mode ${(st.mode & 0o777).toString(8)})`}: ` +
        'its control socket and log would not be safe; remove it, or set XDG_RUNTIME_DIR',
      'EPERM',
    );
  }
  return RUN_DIR;
}

/** Serves `status()` as JSON on the mount's control socket until closed. */
export function serveStatus(mountpoint: string, status: () => RelayStatus): Promise<Server> {
  ensureRunDir();
  const path = controlSocketPath(mountpoint);
  rmSync(path, { force: true });
  const server = createServer((socket) => socket.end(JSON.stringify(status(), (_k, v) => (typeof v === 'bigint' ? v.toString() : v))));
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(path, () => {
      server.unref();
      ok(server);
    });
  });
}

export function stopServing(server: Server, mountpoint: string): void {
  server.close();
  rmSync(controlSocketPath(mountpoint), { force: true });
}

/** The status of the mount whose control socket is `path`, or undefined if nobody answers. */
export function queryStatus(path: string, timeoutMs = 2000): Promise<RelayStatus | undefined> {
  return new Promise((resolveStatus) => {
    const chunks: Buffer[] = [];
    const socket = createConnection(path);
    const timer = setTimeout(() => socket.destroy(), timeoutMs);
    socket.on('data', (c) => chunks.push(c));
    socket.on('error', () => resolveStatus(undefined));
    socket.on('close', () => {
      clearTimeout(timer);
      try {
        resolveStatus(JSON.parse(Buffer.concat(chunks).toString()) as RelayStatus);
      } catch {
        resolveStatus(undefined);
      }
    });
  });
}

/** Control sockets of every mount this machine may be running. */
export function controlSockets(): string[] {
  try {
    return readdirSync(RUN_DIR)
      .filter((f) => f.endsWith('.sock'))
      .map((f) => join(RUN_DIR, f));
  } catch {
    return [];
  }
}
