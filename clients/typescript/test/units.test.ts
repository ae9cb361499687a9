// The parts that need no node: bounded queues, SQL values, times, points.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BoundedQueue } from '../src/queue.js';
import { sqlParams } from '../src/sql.js';
import { BusbarError, epochMs, pointsTable, sqlValue } from '../src/index.js';
import { fromBase64, toBase64 } from '../src/bytes.js';

test('a full queue ends SLOW_CONSUMER after the items it holds', async () => {
  const queue = new BoundedQueue<number>(2);
  assert.equal(queue.push(1), true);
  assert.equal(queue.push(2), true);
  assert.equal(queue.push(3), false);
  assert.equal(queue.push(4), false);
  assert.deepEqual(await queue.next(), { value: 1, done: false });
  assert.deepEqual(await queue.next(), { value: 2, done: false });
  await assert.rejects(queue.next(), (e: unknown) => e instanceof BusbarError && e.code === 'SLOW_CONSUMER');
  assert.deepEqual(await queue.next(), { value: undefined, done: true });
});

test('a queue nobody reads yet keeps its latest items', async () => {
  const queue = new BoundedQueue<number>(2);
  for (const n of [1, 2, 3]) queue.pushDroppingOldest(n);
  queue.finish();
  const got: number[] = [];
  for await (const n of queue) got.push(n);
  assert.deepEqual(got, [2, 3]);
});

test('a waiting reader gets the next item at once', async () => {
  const queue = new BoundedQueue<string>(1);
  const next = queue.next();
  queue.push('a');
  assert.deepEqual(await next, { value: 'a', done: false });
});

test('SQL values map to busbar.v1.SqlValue JSON', () => {
  assert.deepEqual(sqlValue(null), { null: true });
  assert.deepEqual(sqlValue(undefined), { null: true });
  assert.deepEqual(sqlValue(true), { boolean: true });
  assert.deepEqual(sqlValue(3), { integer: 3 });
  assert.deepEqual(sqlValue(2.5), { real: 2.5 });
  assert.deepEqual(sqlValue(2n ** 60n), { integer: '1152921504606846976' });
  assert.deepEqual(sqlValue('x'), { text: 'x' });
  assert.deepEqual(sqlValue(new Date(5)), { timestamp_ms: 5 });
  assert.deepEqual(sqlValue(new Uint8Array([255, 0])), { blob: '/wA=' });
  assert.throws(() => sqlValue({}), { code: 'INVALID_ARGUMENT' });
  assert.deepEqual(sqlParams([1, 'a']), { params: [{ integer: 1 }, { text: 'a' }] });
  assert.deepEqual(sqlParams({ a: 1 }), { named: { a: { integer: 1 } } });
  assert.deepEqual(sqlParams(undefined), {});
});

test('times: Dates, epoch ms and ISO text, no offset meaning UTC', () => {
  assert.equal(epochMs('2026-03-01T01:00'), Date.UTC(2026, 2, 1, 1));
  assert.equal(epochMs('2026-03-01T01:00:00+01:00'), Date.UTC(2026, 2, 1, 0));
  assert.equal(epochMs('2026-03-01'), Date.UTC(2026, 2, 1));
  assert.equal(epochMs(new Date(7)), 7);
  assert.equal(epochMs(7.9), 7);
  assert.throws(() => epochMs('soon'), { code: 'INVALID_ARGUMENT' });
});

test('pointsTable has the points schema; flags default to OK', () => {
  const table = pointsTable({ times: [0, 3_600_000], values: [1, 2] });
  assert.deepEqual(table.schema.fields.map((f) => `${f.name}:${f.type}`), [
    'utc_time:Timestamp<MILLISECOND, UTC>',
    'flags:Uint32',
    'value:Float64',
  ]);
  assert.deepEqual([...table.getChild('flags')!], [0, 0]);
  assert.throws(() => pointsTable({ times: [0], values: [] }), { code: 'INVALID_ARGUMENT' });
});

test('base64 round-trips bytes of any size', () => {
  const bytes = new Uint8Array(100_000).map((_, i) => i % 256);
  assert.deepEqual(fromBase64(toBase64(bytes)), bytes);
});
