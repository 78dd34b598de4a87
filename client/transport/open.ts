/** Opens a transport from its command-line spelling: `vhost-user:<socket path>`. */
import { TransportError, type VirtioTransport } from './transport.ts';
import { UioFunction } from './pci/uio.ts';
import { VfioFunction } from './pci/vfio.ts';
import { VirtioPciTransport } from './pci/virtio-pci.ts';
import { VhostUserTransport } from './vhost-user/frontend.ts';

export const TRANSPORT_SYNTAX = 'vhost-user:<socket>, vfio:<pci address>, uio:<uioN or pci address>';

export function openTransport(spec: string): VirtioTransport {
  const colon = spec.indexOf(':');
  const kind = colon < 0 ? spec : spec.slice(0, colon);
  const where = colon < 0 ? '' : spec.slice(colon + 1);
  if (kind === 'vhost-user' && where) return VhostUserTransport.connect(where);
  if ((kind === 'vfio' || kind === 'uio') && where) {
    const fn = kind === 'vfio' ? new VfioFunction(where) : new UioFunction(where);
    try {
      return new VirtioPciTransport(fn);
    } catch (e) {
      fn.close();
      throw e;
    }
  }
  throw new TransportError(`transport '${spec}' not understood: expected ${TRANSPORT_SYNTAX}`, 'EINVAL');
}
