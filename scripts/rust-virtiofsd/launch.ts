// Debian trixie's Rust virtiofsd, the second real x86 backend of the tests and benchmarks: built
// once into the cache by build.sh beside this file (a private apt sysroot run through its own
// loader) and started through client/backends/virtiofsd.ts with flavor 'rust'.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { VirtiofsdOptions } from '../../client/backends/virtiofsd.ts';

const BUILD = fileURLToPath(new URL('./build.sh', import.meta.url));
const CACHE = process.env.VIRTIOFS_RUST_CACHE ?? fileURLToPath(new URL('../../node_modules/.cache/virtiofs-rust', import.meta.url));

let building: Promise<Pick<VirtiofsdOptions, 'flavor' | 'binary' | 'launcher'>> | undefined;

/** What Virtiofsd.start needs to run the Rust virtiofsd (builds it the first time, ~5 s). */
export function rustVirtiofsd(): Promise<Pick<VirtiofsdOptions, 'flavor' | 'binary' | 'launcher'>> {
  building ??= new Promise((done, fail) => {
    execFile('bash', [BUILD], { maxBuffer: 16 << 20 }, (error, _stdout, stderr) => {
      if (error) {
        fail(new Error(`${BUILD} failed (${error.message.split('\n')[0]}):\n${stderr.slice(-3000)}`));
        return;
      }
      const launch = JSON.parse(readFileSync(resolve(CACHE, 'launch.json'), 'utf8')) as { binary: string; launcher: string[] };
      done({ flavor: 'rust', binary: launch.binary, launcher: launch.launcher });
    });
  });
  building.catch(() => (building = undefined));
  return building;
}
