// Calls, streams and errors through the gateway of a real node.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { BusbarError, connect, type Connection } from '../src/index.js';
import { TestNode } from './node.js';

describe('calls', () => {
  let node: TestNode;
  let conn: Connection;

  before(async () => {
    node = await TestNode.start();
    conn = await connect(node.websocket, { user: 'admin', password: node.password }, { ca: node.ca });
  });

  after(async () => {
    await conn?.close();
    await node?.stop();
  });

  test('connect logs in and a unary call answers JSON with proto field names', async () => {
    assert.equal(conn.identity.name, 'admin');
    assert.equal(conn.identity.admin, true);
    const status = await conn.status();
    assert.equal(typeof status.node_id, 'string');
    const me = await conn.call('busbar.v1.Auth/WhoAmI');
    assert.equal(me.name, 'admin');
  });

  test('errors are BusbarErrors with the node code and message', async () => {
    await assert.rejects(conn.call('busbar.v1.Resources/Get', { path: '/nowhere' }), (error: unknown) => {
      assert.ok(error instanceof BusbarError);
      assert.equal(error.code, 'NOT_FOUND');
      assert.match(error.message, /nowhere/);
      return true;
    });
    await assert.rejects(conn.call('busbar.v1.Node/Nope'), { code: 'UNIMPLEMENTED' });
    await assert.rejects(conn.call('busbar.v1.Resources/Get', { path: 5 }), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(conn.call('no-slash'), { code: 'INVALID_ARGUMENT' });
  });

  test('a timeout ends a call TIMEOUT', async () => {
    await conn.create('/home/admin/t-room', 'room', { existOk: true });
    // Join never ends on its own: only the deadline stops it.
    const started = Date.now();
    const stream = conn.stream('busbar.v1.Rooms/Join', { path: '/home/admin/t-room' }, { timeout: 300 });
    await assert.rejects(stream.all(), { code: 'TIMEOUT' });
    // The same through call(): its Promise rejects at the deadline.
    await assert.rejects(conn.call('busbar.v1.Rooms/Join', { path: '/home/admin/t-room' }, { timeout: 300 }), (error: unknown) => {
      assert.ok(error instanceof BusbarError);
      assert.equal(error.code, 'TIMEOUT');
      return true;
    });
    assert.ok(Date.now() - started < 5000);
  });

  test('an AbortSignal cancels a call: CANCELLED at once', async () => {
    await conn.create('/home/admin/a-room', 'room', { existOk: true });
    const abort = new AbortController();
    const stream = conn.stream('busbar.v1.Rooms/Join', { path: '/home/admin/a-room' }, { signal: abort.signal });
    const first = await stream[Symbol.asyncIterator]().next();
    assert.equal(first.value.kind, 'JOINED');
    setTimeout(() => abort.abort(), 50);
    await assert.rejects(stream.all(), { code: 'CANCELLED' });
    // A call() in flight rejects at the abort.
    const inFlight = new AbortController();
    const joining = conn.call('busbar.v1.Rooms/Join', { path: '/home/admin/a-room' }, { signal: inFlight.signal });
    setTimeout(() => inFlight.abort(), 100);
    await assert.rejects(joining, { code: 'CANCELLED' });
    // Already aborted: refused before anything is sent.
    await assert.rejects(conn.call('busbar.v1.Node/Status', {}, { signal: abort.signal }), { code: 'CANCELLED' });
  });

  test('a server stream iterates its messages and ends', async () => {
    await conn.create('/home/admin/streamed', 'folder', { existOk: true });
    for (const name of ['a', 'b', 'c']) await conn.create(`/home/admin/streamed/${name}`, 'room', { existOk: true });
    // SQL in JSON rows: a server stream of messages, then the summary.
    await conn.create('/home/admin/s-db', 'database', { existOk: true });
    const messages = await conn
      .stream('busbar.v1.Sql/Execute', { database: '/home/admin/s-db', sql: 'SELECT 1 AS one', format: 'RESULT_FORMAT_JSON' })
      .all();
    assert.deepEqual(JSON.parse(messages[0].json_rows), [{ one: 1 }]);
    assert.equal(messages.at(-1).summary.rows, 1);
    const listed = await conn.call('busbar.v1.Resources/List', { path: '/home/admin/streamed' });
    assert.deepEqual(listed.resources.map((r: any) => r.name).sort(), ['a', 'b', 'c']);
  });

  test('a client stream sends messages and gets its summary (Rooms/EmitStream)', async () => {
    await conn.create('/home/admin/es-room', 'room', { existOk: true });
    const room = await conn.join('/home/admin/es-room');
    const got: unknown[] = [];
    room.on('tick', (n) => got.push(n));
    const stream = conn.stream('busbar.v1.Rooms/EmitStream');
    for (const n of [1, 2, 3]) await stream.send({ path: '/home/admin/es-room', event: 'tick', args: [n] });
    await stream.end();
    const [summary] = await stream.all();
    assert.equal(summary.events, 3);
    await eventuallyEqual(() => got, [1, 2, 3]);
    await room.leave();
  });

  test('breaking out of a stream cancels its call', async () => {
    await conn.create('/home/admin/b-room', 'room', { existOk: true });
    const stream = conn.stream('busbar.v1.Rooms/Join', { path: '/home/admin/b-room' });
    for await (const event of stream) {
      assert.equal(event.kind, 'JOINED');
      break;
    }
    // The connection goes on serving.
    assert.equal(typeof (await conn.status()).node_id, 'string');
  });
});

describe('connecting', () => {
  let node: TestNode;
  before(async () => (node = await TestNode.start()));
  after(async () => node?.stop());

  test('a wrong password fails UNAUTHENTICATED', async () => {
    await assert.rejects(
      connect(node.websocket, { user: 'admin', password: 'nope' }, { ca: node.ca, reconnect: false }),
      (error: unknown) => error instanceof BusbarError && error.code === 'UNAUTHENTICATED',
    );
  });

  test('an Origin not allowed is refused with a clear error', async () => {
    await assert.rejects(
      connect(node.websocket, { user: 'admin', password: node.password }, { ca: node.ca, origin: 'https://evil.example' }),
      (error: unknown) => {
        assert.ok(error instanceof BusbarError);
        assert.equal(error.code, 'PERMISSION_DENIED');
        assert.match(error.message, /Origin|origin/);
        return true;
      },
    );
    // The node's own origin is allowed.
    const port = new URL(node.websocket.replace('wss:', 'https:')).port;
    const conn = await connect(node.websocket, { user: 'admin', password: node.password }, { ca: node.ca, origin: `https://localhost:${port}` });
    await conn.close();
  });

  test('a certificate not trusted fails UNAVAILABLE naming the cause', async () => {
    await assert.rejects(
      connect(node.websocket, { user: 'admin', password: node.password }, { timeoutMs: 5000 }),
      (error: unknown) => error instanceof BusbarError && error.code === 'UNAVAILABLE' && /certificate/i.test(error.message),
    );
  });

  test('a user without the right is refused PERMISSION_DENIED', async () => {
    const admin = await connect(node.websocket, { user: 'admin', password: node.password }, { ca: node.ca });
    await admin.call('busbar.v1.Auth/CreateUser', { name: 'eve', password: 'eve-password-1' });
    await admin.create('/home/admin/secret', 'database', { existOk: true });
    await admin.close();
    const eve = await connect(node.websocket, { user: 'eve', password: 'eve-password-1' }, { ca: node.ca });
    assert.equal(eve.identity.name, 'eve');
    assert.equal(eve.identity.admin, false);
    await assert.rejects(eve.sql('/home/admin/secret', 'SELECT 1'), { code: 'PERMISSION_DENIED' });
    await eve.close();
  });

  test('an API token logs in', async () => {
    const admin = await connect(node.websocket, { user: 'admin', password: node.password }, { ca: node.ca });
    const created = await admin.call('busbar.v1.Auth/CreateToken', { name: 'ts-test' });
    await admin.close();
    const conn = await connect(node.websocket, { token: created.token }, { ca: node.ca });
    assert.equal(conn.identity.name, 'admin');
    await conn.close();
  });
});

async function eventuallyEqual(actual: () => unknown, expected: unknown, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try {
      assert.deepEqual(actual(), expected);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  assert.deepEqual(actual(), expected);
}
