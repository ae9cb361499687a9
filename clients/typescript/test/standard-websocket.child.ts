// Run by standard-websocket.test.ts in a Node.js with a global, standard
// WebSocket (the browser API; the node's CA trusted through
// NODE_EXTRA_CA_CERTS): the path browsers take, without the `ws` package.

import assert from 'node:assert/strict';
import { connect } from '../src/index.js';

const Standard = (globalThis as any).WebSocket;
assert.equal(typeof Standard, 'function', 'no global WebSocket: run with --experimental-websocket');
let opened = 0;
(globalThis as any).WebSocket = class extends Standard {
  constructor(...args: any[]) {
    super(...args);
    opened++;
  }
};

const conn = await connect(process.env.BUSBAR_WS!, { user: 'admin', password: process.env.BUSBAR_PASSWORD! });
assert.equal(opened, 1);
assert.equal(conn.identity.name, 'admin');
// Binary frames arrive as ArrayBuffers here.
await conn.create('/home/admin/std-db', 'database', { existOk: true });
const table = await conn.sql('/home/admin/std-db', 'SELECT 41 + ? AS answer', [1]);
assert.deepEqual(table.toArray().map((row) => Number(row.answer)), [42]);
await conn.create('/home/admin/std-room', 'room', { existOk: true });
const room = await conn.join('/home/admin/std-room');
const heard = new Promise((resolve) => room.on('ping', resolve));
await room.emit('ping', 'pong');
assert.equal(await heard, 'pong');
await room.leave();
await assert.rejects(conn.call('busbar.v1.Resources/Get', { path: '/nowhere' }), { code: 'NOT_FOUND' });
await conn.close();
console.log('standard WebSocket: ok');
