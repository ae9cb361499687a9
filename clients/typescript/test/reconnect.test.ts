// Reconnect: the node is killed (no goodbye) and started again on the same
// ports with the same data; the connection comes back by itself, logs in
// again, rejoins its rooms and resubscribes its wires.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { BusbarError, connect, type Connection, type RoomEvent } from '../src/index.js';
import { TestNode, eventually } from './node.js';

function once(conn: Connection, event: 'connected' | 'disconnected' | 'reconnected'): Promise<unknown> {
  return new Promise((resolve) => {
    const handler = (detail?: unknown) => {
      conn.off(event, handler);
      resolve(detail);
    };
    conn.on(event, handler);
  });
}

describe('reconnect', () => {
  let node: TestNode;
  before(async () => (node = await TestNode.start()));
  after(async () => node?.stop());

  test('after a crash and restart the room is rejoined and hears emits again', async () => {
    const login = { user: 'admin', password: node.password };
    const conn = await connect(node.websocket, login, { ca: node.ca });
    try {
      await conn.create('/home/admin/lobby', 'room', { existOk: true });
      await conn.create('/home/admin/ticks', 'wire', { existOk: true });
      const room = await conn.join('/home/admin/lobby');
      const subscription = await conn.subscribe('/home/admin/ticks');
      const events = room[Symbol.asyncIterator]();
      const heard: unknown[] = [];
      room.on('news', (text) => heard.push(text));
      const firstMember = room.memberId;

      const disconnected = once(conn, 'disconnected');
      const reconnected = once(conn, 'reconnected');
      await node.kill();
      const why = await disconnected;
      assert.ok(why instanceof BusbarError && why.code === 'UNAVAILABLE', String(why));
      // A call made while the node is away waits for the reconnect, within its deadline.
      await assert.rejects(conn.status({ timeout: 200 }), { code: 'TIMEOUT' });
      const waitingCall = conn.status();
      await node.run();
      await reconnected;
      assert.equal(typeof (await waitingCall).node_id, 'string');

      assert.notEqual(room.memberId, firstMember);
      assert.equal(room.left, false);
      const rejoined = (await events.next()).value as RoomEvent;
      assert.equal(rejoined.kind, 'rejoined');

      // Another connection emits: the rejoined member hears it.
      const other = await connect(node.websocket, login, { ca: node.ca });
      assert.equal(await other.emit('/home/admin/lobby', 'news', 'after restart'), 1);
      const news = (await events.next()).value as RoomEvent;
      assert.deepEqual([news.kind, news.event, news.data], ['emit', 'news', 'after restart']);
      await eventually('the handler heard it', async () => assert.deepEqual(heard, ['after restart']));

      // The wire subscription came back too.
      assert.equal(subscription.resubscribed, 1);
      const chunks = subscription[Symbol.asyncIterator]();
      await eventually('a chunk is heard', async () => {
        const sent = await other.publish('/home/admin/ticks', 'tick');
        assert.equal(sent.unheard_chunks, 0);
      });
      assert.equal(new TextDecoder().decode((await chunks.next()).value as Uint8Array), 'tick');
      await other.close();
    } finally {
      await conn.close();
    }
  });

  test('without reconnect a lost connection closes: calls fail UNAVAILABLE', async () => {
    const conn = await connect(node.websocket, { user: 'admin', password: node.password }, { ca: node.ca, reconnect: false });
    await conn.create('/home/admin/quiet', 'room', { existOk: true });
    const room = await conn.join('/home/admin/quiet');
    const ended = room.wait().catch((error: unknown) => error);
    await node.kill();
    const error = await ended;
    assert.ok(error instanceof BusbarError && error.code === 'UNAVAILABLE', String(error));
    await assert.rejects(conn.status(), { code: 'UNAVAILABLE' });
    assert.equal(conn.closed, true);
    await node.run();
  });

  test('close() ends rooms and later calls fail', async () => {
    const conn = await connect(node.websocket, { user: 'admin', password: node.password }, { ca: node.ca });
    await conn.create('/home/admin/closing', 'room', { existOk: true });
    const room = await conn.join('/home/admin/closing');
    const events = room[Symbol.asyncIterator]();
    await conn.close();
    await assert.rejects(events.next(), { code: 'FAILED_PRECONDITION' });
    await assert.rejects(conn.status(), { code: 'FAILED_PRECONDITION' });
  });
});
