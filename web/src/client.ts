// The TypeScript client (clients/typescript), bundled from source, and the
// parts of its API the console uses. The console holds its connection in
// memory only: no credential or token is ever written to storage.

import { connect as connectClient, type Connection, type Credentials } from '../../clients/typescript/src/index';

export type { Connection, Credentials, Room, RoomEvent, Subscription } from '../../clients/typescript/src/index';

/** The gateway of the node that served this page: same origin, path /ws. */
export function gatewayUrl(location: Location = window.location): string {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

/** Logs in to the node that served the page. */
export function connect(credential: Credentials): Promise<Connection> {
  return connectClient(gatewayUrl(), credential, { reconnect: true, timeoutMs: 30_000 });
}
