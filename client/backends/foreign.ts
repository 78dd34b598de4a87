/**
 * Real foreign-architecture virtio-fs devices on this machine: Debian
 * bookworm's C virtiofsd for arm64, ppc64el or mips64el, run under qemu-user
 * through the target's own dynamic loader. Built on first use from Debian
 * packages by scripts/foreign/build.sh into node_modules/.cache/virtiofs-foreign/
 * (about 35 s for all three the first time, once dpkg knows the architectures;
 * some 50 ms after that).
 *
 *   const { launcher, binary } = await foreignVirtiofsd('mips64el');
 *   const daemon = await Virtiofsd.start({ sharedDir, launcher, binary, sandbox: FOREIGN_SANDBOX });
 *
 * The daemon speaks its architecture's encoding of open flags and errno
 * (see docs/arch-negotiation.md): connect with archMode device-arch and
 * deviceArch resolveArch(foreignArchName[arch]) to talk to it correctly.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Debian's names of the architectures we can run a foreign virtiofsd for. */
export type ForeignArch = 'arm64' | 'ppc64el' | 'mips64el';

export const foreignArches: readonly ForeignArch[] = ['arm64', 'ppc64el', 'mips64el'];

/** Debian architecture -> this project's architecture name (client/arch, resolveArch). */
export const foreignArchName: Readonly<Record<ForeignArch, 'arm64' | 'ppc64' | 'mips64'>> = {
  arm64: 'arm64',
  ppc64el: 'ppc64',
  mips64el: 'mips64',
};

/**
 * The sandbox to start them with: chroot. namespace serves requests too
 * (through the loader line; with qemu-user's -L it fails outright), but its
 * inner process is PID 1 of a new PID namespace, and when a fatal signal
 * reaches it (SIGTERM from Virtiofsd.stop() racing the end of a session, via
 * PR_SET_PDEATHSIG) qemu-user emulates the death by re-raising the signal at
 * itself with the default action, which the kernel ignores for a namespace's
 * init: it then sleeps in sigsuspend forever, holding the spawner's stdout and
 * stderr pipes open (in most close-then-stop runs here; never with the
 * host's own virtiofsd). Only SIGKILL ends it.
 */
export const FOREIGN_SANDBOX = 'chroot' as const;

export interface ForeignVirtiofsd {
  /** [qemu-<arch>-static, <sysroot>/lib/<triplet>/<loader>, '--library-path', <sysroot lib dirs>] */
  launcher: string[];
  /** <sysroot>/usr/lib/qemu/virtiofsd, the foreign binary itself. */
  binary: string;
}

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const FOREIGN_BUILD_SCRIPT = join(repo, 'scripts', 'foreign', 'build.sh');

const pending = new Map<ForeignArch, Promise<ForeignVirtiofsd>>();

/**
 * The launcher line and binary of `arch`'s virtiofsd, for Virtiofsd.start.
 * Builds it first if needed (needs the packages of `bash scripts/setup.sh
 * --for-foreign`, and root the first time, to add the architecture to dpkg).
 * Rejects with the build script's own explanation when that fails.
 */
export function foreignVirtiofsd(arch: ForeignArch): Promise<ForeignVirtiofsd> {
  if (!Object.hasOwn(foreignArchName, arch)) {
    return Promise.reject(new RangeError(`no foreign virtiofsd for '${arch}': one of ${foreignArches.join(', ')}`));
  }
  let found = pending.get(arch);
  if (!found) {
    found = build(arch);
    pending.set(arch, found);
    found.catch(() => pending.delete(arch)); // a later call tries again
  }
  return found;
}

function build(arch: ForeignArch): Promise<ForeignVirtiofsd> {
  return new Promise((resolve, reject) => {
    execFile('bash', [FOREIGN_BUILD_SCRIPT, arch], { maxBuffer: 16 * 1024 * 1024, timeout: 15 * 60_000 }, (error, stdout, stderr) => {
      if (error) {
        const tail = stderr.trim().split('\n').slice(-15).join('\n');
        reject(Object.assign(new Error(`building the ${arch} virtiofsd failed (bash ${FOREIGN_BUILD_SCRIPT} ${arch}):\n${tail}`), { cause: error }));
        return;
      }
      try {
        const manifest = stdout.trim().split('\n').pop()!;
        const parsed = JSON.parse(readFileSync(manifest, 'utf8')) as { arch?: unknown; launcher?: unknown; binary?: unknown };
        const { launcher, binary } = parsed;
        if (parsed.arch !== arch || !Array.isArray(launcher) || !launcher.every((s) => typeof s === 'string') || typeof binary !== 'string') {
          throw new Error(`${manifest} is not a launch manifest for ${arch}`);
        }
        resolve({ launcher: [...launcher], binary });
      } catch (e) {
        reject(e);
      }
    });
  });
}

/**
 * A big-endian virtio-fs device: Debian trixie's Rust virtiofsd for s390x
 * under qemu-s390x-static, built by scripts/foreign/build-s390x.sh into
 * node_modules/.cache/virtiofs-foreign/s390x/ (about 6 s the first time, a
 * few ms after that). Its launcher is a small script that runs the binary
 * through the sysroot's loader with --seccomp=none. Not one of foreignArches:
 * this client cannot talk to it (vhost-user is in the host's byte order, and
 * virtiofsd reads FUSE headers in its own), so it serves experiments only.
 *
 *   const daemon = await Virtiofsd.start({ sharedDir, ...(await s390xVirtiofsd()), sandbox: FOREIGN_SANDBOX });
 */
export const S390X_BUILD_SCRIPT = join(repo, 'scripts', 'foreign', 'build-s390x.sh');

let s390x: Promise<ForeignVirtiofsd & { flavor: 'rust' }> | undefined;

export function s390xVirtiofsd(): Promise<ForeignVirtiofsd & { flavor: 'rust' }> {
  s390x ??= new Promise((resolve, reject) => {
    execFile('bash', [S390X_BUILD_SCRIPT], { maxBuffer: 16 * 1024 * 1024, timeout: 15 * 60_000 }, (error, stdout, stderr) => {
      if (error) {
        const tail = stderr.trim().split('\n').slice(-15).join('\n');
        reject(Object.assign(new Error(`building the s390x virtiofsd failed (bash ${S390X_BUILD_SCRIPT}):\n${tail}`), { cause: error }));
        return;
      }
      try {
        const manifest = stdout.trim().split('\n').pop()!;
        const parsed = JSON.parse(readFileSync(manifest, 'utf8')) as { arch?: unknown; flavor?: unknown; launcher?: unknown; binary?: unknown };
        const { launcher, binary } = parsed;
        if (parsed.arch !== 's390x' || parsed.flavor !== 'rust' || !Array.isArray(launcher) || !launcher.every((s) => typeof s === 'string') || typeof binary !== 'string') {
          throw new Error(`${manifest} is not a launch manifest for the s390x Rust virtiofsd`);
        }
        resolve({ flavor: 'rust', launcher: [...launcher], binary });
      } catch (e) {
        reject(e);
      }
    });
  });
  s390x.catch(() => (s390x = undefined));
  return s390x;
}
