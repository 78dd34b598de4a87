/** Opens a transport from its command-line spelling: `vhost-user:<socket path>`. */
import { TransportError, type VirtioTransport } from './transport.ts';
import { UioFunction } from './pci/uio.ts';
import { VfioFunction } from './pci/vfio.ts';
import { VirtioPciTransport } from './pci/virtio-pci.ts';
import { VhostUserTransport } from './vhost-user/frontend.ts';
import { TRANSPORT_SYNTAX, parseTransportSpec } from './spec.ts';

export { TRANSPORT_SYNTAX } from './spec.ts';

export function openTransport(spec: string): VirtioTransport {
  const parsed = parseTransportSpec(spec);
  if (parsed?.kind === 'vhost-user') return VhostUserTransport.connect(parsed.where);
  if (parsed) {
    const fn = parsed.kind === 'vfio' ? new VfioFunction(parsed.where) : new UioFunction(parsed.where);
    try {
      return new VirtioPciTransport(fn);
    } catch (e) {
      fn.close();
      throw e;
    }
  }
  throw new TransportError(`transport '${spec}' not understood: expected ${TRANSPORT_SYNTAX}`, 'EINVAL');
}
