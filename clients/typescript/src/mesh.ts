// Mesh: a provider's methods are called through the node by full name
// ("pkg.Service/Method"), like any method; `remote` only spells it nicer.

import type { CallOptions } from './calls.js';
import type { Connection } from './connection.js';

export interface ServiceInfo {
  name: string;
  path: string;
  methods: string[];
  providers: Array<{
    id: string;
    identity: string;
    since_unix_ms: number;
    calls_in_flight: number;
    calls_served: number;
    draining: boolean;
  }>;
}

/** `remote('pkg.Service').Method(request, options?)` calls `pkg.Service/Method`. */
export function remoteService(connection: Connection, service: string, defaults: CallOptions): any {
  return new Proxy(
    {},
    {
      get(_target, name) {
        // Not thenable: `await remote(...)` must give the proxy, not call "then".
        if (typeof name !== 'string' || name === 'then') return undefined;
        return (request: object = {}, options: CallOptions = {}) =>
          connection.call(`${service}/${name}`, request, { ...defaults, ...options });
      },
    },
  );
}
