/** Opens a transport from its command-line spelling: `vhost-user:<socket path>`. */
import { TransportError, type VirtioTransport } from './transport.ts';
import { VhostUserTransport } from './vhost-user/frontend.ts';

export const TRANSPORT_SYNTAX = 'vhost-user:<socket>';

export function openTransport(spec: string): VirtioTransport {
  const colon = spec.indexOf(':');
  const kind = colon < 0 ? spec : spec.slice(0, colon);
  const where = colon < 0 ? '' : spec.slice(colon + 1);
  if (kind === 'vhost-user' && where) return VhostUserTransport.connect(where);
  throw new TransportError(`transport '${spec}' not understood: expected ${TRANSPORT_SYNTAX}`, 'EINVAL');
}
