// Running mount(8) the way a user does, without touching this machine's /etc/fstab or PATH.
//
// mount(8) runs its helpers with PATH removed, so mount.fuse3 finds `virtiofs-client` only in the
// shell's default path (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin). A script
// given here runs as root in a private mount namespace (unshare -m) in which /usr/local/sbin is a
// directory holding just a `virtiofs-client` link to the command under test; mounts made inside
// stay inside and vanish with the namespace.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Mount8Run {
  status: number | null;
  output: string;
  /** KEY=VALUE lines the script printed (a key printed twice keeps the last value). */
  values: Map<string, string>;
}

/** Runs `script` (bash) with `virtiofsClientBin` as the `virtiofs-client` mount.fuse3 will find. */
export async function runWithMountHelper(virtiofsClientBin: string, script: string, timeoutMs = 60_000): Promise<Mount8Run> {
  const dir = mkdtempSync(join(tmpdir(), 'vfs-mount8-'));
  symlinkSync(virtiofsClientBin, join(dir, 'virtiofs-client'));
  try {
    const child = spawn('unshare', ['--mount', '--propagation', 'private', 'bash', '-c', `set -u\nmount --bind ${dir} /usr/local/sbin || exit 99\n${script}`], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    const status = await new Promise<number | null>((done) => child.once('close', (code) => done(code)));
    clearTimeout(timer);
    const values = new Map<string, string>();
    for (const line of output.split('\n')) {
      const m = /^([A-Z_]+)=(.*)$/.exec(line);
      if (m) values.set(m[1]!, m[2]!);
    }
    return { status, output, values };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
