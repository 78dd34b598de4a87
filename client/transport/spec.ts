/** How a transport is spelled on the command line, in mount(8)'s source field and in /proc/mounts. */

export const TRANSPORT_KINDS = ['vhost-user', 'vfio', 'uio'] as const;
export type TransportKind = (typeof TRANSPORT_KINDS)[number];

export const TRANSPORT_SYNTAX = 'vhost-user:<socket>, vfio:<pci address>, uio:<uioN or pci address>';

/** `vhost-user:/run/vfs.sock` -> { kind: 'vhost-user', where: '/run/vfs.sock' }; undefined if not a transport. */
export function parseTransportSpec(spec: string): { kind: TransportKind; where: string } | undefined {
  const colon = spec.indexOf(':');
  if (colon < 0) return undefined;
  const kind = spec.slice(0, colon) as TransportKind;
  const where = spec.slice(colon + 1);
  return TRANSPORT_KINDS.includes(kind) && where ? { kind, where } : undefined;
}
