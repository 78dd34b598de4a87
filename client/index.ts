/**
 * The library entry point of the package (`import { VirtioFsClient } from 'virtiofs-client'`):
 * the client API, mounting through /dev/fuse, the architecture tables and translators, and
 * starting QEMU's virtiofsd. Deeper layers (protocol structs, virtqueues, transports) stay
 * importable from their own modules in this repository, but are not the package's promise.
 */
export { ROOT, VirtioFsClient } from './client.ts';
export type { Attr, ConnectOptions, Created, Entry, Lock, OpenFile, SetattrChanges, StatFs } from './client.ts';
export { parseArchMode } from './fuse/arch-mode.ts';
export type { ArchMode } from './fuse/arch-mode.ts';
export { FuseRelay } from './frontend/relay.ts';
export type { RelayOptions, RelayStatus } from './frontend/relay.ts';
export { MountError, unmount } from './frontend/fuse-mount.ts';
export { Virtiofsd } from './backends/virtiofsd.ts';
export type { VirtiofsdOptions } from './backends/virtiofsd.ts';
export { ErrnoError } from '../ffi/errno.ts';
export { VirtiofsError } from '../ffi/errors.ts';
export * as arch from './arch/index.ts';
