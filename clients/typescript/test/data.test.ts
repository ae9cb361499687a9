// Rooms, wires, SQL and time series through the gateway of a real node.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, pointsTable, type Connection, type RoomEvent } from '../src/index.js';
import { TestNode, eventually } from './node.js';

describe('rooms, wires, SQL, series', () => {
  let node: TestNode;
  let alice: Connection;
  let bob: Connection;

  before(async () => {
    node = await TestNode.start();
    const login = { user: 'admin', password: node.password };
    alice = await connect(node.websocket, login, { ca: node.ca });
    bob = await connect(node.websocket, login, { ca: node.ca });
  });

  after(async () => {
    await alice?.close();
    await bob?.close();
    await node?.stop();
  });

  test('two members: on, iterate, emit, emitPeers, leave', async () => {
    await alice.create('/home/admin/chat', 'room', { existOk: true });
    const a = await alice.join('/home/admin/chat');
    const b = await bob.join('/home/admin/chat');
    assert.ok(a.memberId && b.memberId && a.memberId !== b.memberId);
    const heardByA: unknown[] = [];
    a.on('say', (text) => heardByA.push(text));
    const bEvents = b[Symbol.asyncIterator]();

    assert.equal(await a.emit('say', 'hello'), 2); // both members, the emitter too
    const first = (await bEvents.next()).value as RoomEvent;
    assert.equal(first.kind, 'emit');
    assert.equal(first.event, 'say');
    assert.deepEqual(first.args, ['hello']);
    assert.equal(first.data, 'hello');
    assert.equal(first.sender, 'admin');

    // emitPeers skips the emitter.
    assert.equal(await a.emitPeers('say', { n: 2 }, [3]), 1);
    const second = (await bEvents.next()).value as RoomEvent;
    assert.deepEqual(second.args, [{ n: 2 }, [3]]);
    await eventually('a heard its own emit only', async () => assert.deepEqual(heardByA, ['hello']));

    // Leaving ends the member's iterators; the other member stays.
    const ending = b.wait();
    await b.leave();
    await ending;
    assert.equal((await bEvents.next()).done, true);
    assert.equal(b.left, true);
    assert.equal(await a.emit('say', 'alone'), 1);
    await a.leave();
  });

  test('a room deleted while joined ends its membership', async () => {
    await alice.create('/home/admin/short-lived', 'room', { existOk: true });
    const room = await bob.join('/home/admin/short-lived');
    const events = room[Symbol.asyncIterator]();
    await alice.call('busbar.v1.Resources/Delete', { path: '/home/admin/short-lived' });
    await room.wait();
    assert.equal(room.left, true);
    assert.equal((await events.next()).done, true);
    await assert.rejects(room.emit('late'), { code: 'FAILED_PRECONDITION' });
  });

  test('joining a room that does not exist fails NOT_FOUND', async () => {
    await assert.rejects(alice.join('/home/admin/no-such-room'), { code: 'NOT_FOUND' });
  });

  test('wires: subscribe, publish, close', async () => {
    await alice.create('/home/admin/feed', 'wire', { existOk: true });
    const subscription = await bob.subscribe('/home/admin/feed');
    const chunks = subscription[Symbol.asyncIterator]();
    // The gateway does not confirm a subscription: publish until it is heard.
    let summary;
    const deadline = Date.now() + 5000;
    do {
      summary = await alice.publish('/home/admin/feed', 'ping');
    } while (summary.unheard_chunks > 0 && Date.now() < deadline);
    assert.equal(summary.chunks, 1);
    let chunk = (await chunks.next()).value as Uint8Array;
    // Chunks published before the subscription took hold were unheard; skip to ours.
    assert.equal(new TextDecoder().decode(chunk), 'ping');
    const sent = await alice.publish('/home/admin/feed', [new Uint8Array([1, 2, 3]), 'four']);
    assert.deepEqual(sent, { chunks: 2, bytes: 7, unheard_chunks: 0 });
    chunk = (await chunks.next()).value as Uint8Array;
    assert.deepEqual([...chunk], [1, 2, 3]);
    chunk = (await chunks.next()).value as Uint8Array;
    assert.equal(new TextDecoder().decode(chunk), 'four');
    subscription.close();
    assert.equal((await chunks.next()).done, true);
    await assert.rejects(bob.subscribe('/home/admin/no-such-wire'), { code: 'NOT_FOUND' });
  });

  test('SQL: create, insert with params, select into an Arrow Table', async () => {
    const db = '/home/admin/shop';
    await alice.create(db, 'database', { existOk: true });
    await alice.sql(db, 'CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, added INTEGER, raw BLOB)');
    const inserted = await alice.sql(db, 'INSERT INTO items (name, price, added, raw) VALUES (?, ?, ?, ?)', [
      'tea',
      2.5,
      new Date('2026-01-02T03:04:05Z'),
      new Uint8Array([9, 8]),
    ]);
    assert.equal(inserted.schema.metadata.get('busbar.rows_affected'), '1');
    await alice.sql(db, 'INSERT INTO items (name, price) VALUES (:name, :price)', { name: 'coffee', price: 3 });
    await alice.sql(db, 'INSERT INTO items (name, price) VALUES (?, ?)', ['water', null]);
    const table = await alice.sql(db, 'SELECT id, name, price FROM items WHERE id >= ? ORDER BY id', [1]);
    assert.equal(table.numRows, 3);
    assert.deepEqual(table.schema.fields.map((f) => f.name), ['id', 'name', 'price']);
    assert.deepEqual(table.getChild('name')!.toArray(), ['tea', 'coffee', 'water']);
    assert.deepEqual([...table.getChild('price')!].map((v) => v), [2.5, 3, null]);
    assert.deepEqual(table.toArray().map((row) => Number(row.id)), [1, 2, 3]);
    await assert.rejects(alice.sql(db, 'SELEC nonsense'), { code: 'INVALID_ARGUMENT' });
  });

  test('time series: create, write a Table, read it back', async () => {
    const path = '/home/admin/load';
    await alice.createSeries(path, { resolution: 'HOUR', unit: 'MW', existOk: true });
    const times = ['2026-03-01T00:00:00Z', '2026-03-01T01:00:00Z', '2026-03-01T02:00:00Z'];
    const written = await alice.writeSeries(path, pointsTable({ times, values: [1.5, 2.5, 3.5], flags: [0, 2, 0] }));
    assert.equal(written.points_written, 3);
    const table = await alice.readSeries(path, { start: '2026-03-01T00:00:00', end: new Date('2026-03-01T02:00:00Z') });
    assert.deepEqual(table.schema.fields.map((f) => f.name), ['utc_time', 'flags', 'value']);
    assert.equal(table.numRows, 2);
    assert.deepEqual([...table.getChild('value')!], [1.5, 2.5]);
    assert.deepEqual([...table.getChild('flags')!], [0, 2]);
    assert.deepEqual([...table.getChild('utc_time')!].map((t) => Number(t)), [Date.parse(times[0]!), Date.parse(times[1]!)]);
    const whole = await alice.readSeries(path);
    assert.equal(whole.numRows, 3);
    const empty = await alice.readSeries(path, { start: '2030-01-01', end: '2030-01-02' });
    assert.equal(empty.numRows, 0);
  });
});
