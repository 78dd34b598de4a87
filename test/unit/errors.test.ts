import test from 'ava';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ArchTranslationError, UnknownArchError } from '../../client/arch/errors.ts';
import { UsageError } from '../../client/cli/command.ts';
import { MountError } from '../../client/frontend/fuse-mount.ts';
import { EngineFailure } from '../../client/fuse/engine.ts';
import { VirtiofsError } from '../../client/index.ts';
import { Opcode } from '../../client/protocol/index.ts';
import { ProtocolError } from '../../client/protocol/errors.ts';
import { TransportError } from '../../client/transport/transport.ts';
import { BufferPoolError } from '../../client/virtio/buffer-pool.ts';
import { VirtqueueError } from '../../client/virtio/virtqueue.ts';
import { ErrnoError } from '../../ffi/errno.ts';
import { ChainAccessError, RingBrokenError } from '../../examples/reference-device/device-ring.ts';

const REPO = fileURLToPath(new URL('../..', import.meta.url));

test('every error class has the one base and a stable code, an errno name where one fits', (t) => {
  const cases: [VirtiofsError, string, string][] = [
    [new ErrnoError('open', 2), 'ErrnoError', 'ENOENT'],
    [new TransportError('backend hung up', 'ENOTCONN'), 'TransportError', 'ENOTCONN'],
    [new MountError('not root', 'EPERM'), 'MountError', 'EPERM'],
    [new EngineFailure('EIO', 'no room'), 'EngineFailure', 'EIO'],
    [new ProtocolError(Opcode.READ, 'len', 'short'), 'ProtocolError', 'EPROTO_FUSE'],
    [new UnknownArchError('vax'), 'UnknownArchError', 'ERR_ARCH_UNKNOWN'],
    [new ArchTranslationError('ERR_ARCH_NO_COUNTERPART', 'open', 0o40000, 'O_DIRECT', 'x86_64', 'arm64', 'refused'), 'ArchTranslationError', 'ERR_ARCH_NO_COUNTERPART'],
    [new VirtqueueError('BAD_SEGMENTS', 'request0', 'odd'), 'VirtqueueError', 'BAD_SEGMENTS'],
    [new BufferPoolError('BAD_SLOT', 'slot 9'), 'BufferPoolError', 'BAD_SLOT'],
    [new UsageError('--queues wants a number'), 'UsageError', 'ERR_USAGE'],
    [new RingBrokenError('avail idx ran ahead'), 'RingBrokenError', 'ERR_RING_BROKEN'],
    [new ChainAccessError('segment moved'), 'ChainAccessError', 'ERR_CHAIN_ACCESS'],
  ];
  for (const [error, name, code] of cases) {
    t.true(error instanceof VirtiofsError, name);
    t.true(error instanceof Error, name);
    t.is(error.name, name);
    t.is(error.code, code, name);
  }
});

test('no error class in the sources extends Error directly: one base (ffi/errors.ts)', (t) => {
  const offenders: string[] = [];
  for (const dir of ['client', 'ffi', 'examples', 'bench', 'scripts']) {
    for (const file of readdirSync(join(REPO, dir), { recursive: true }) as string[]) {
      if (!file.endsWith('.ts')) continue;
      const source = readFileSync(join(REPO, dir, file), 'utf8');
      for (const m of source.matchAll(/class (\w+) extends (?:Error|RangeError|TypeError)\b/g)) {
        if (!(dir === 'ffi' && file === 'errors.ts')) offenders.push(`${dir}/${file}: ${m[1]}`);
      }
    }
  }
  t.deepEqual(offenders, []);
});
