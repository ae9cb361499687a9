// SQL: `busbar.v1.Sql/Execute` with bound parameters; the rows come as
// binary frames of one Arrow IPC stream, read into an apache-arrow Table.

import { Table, tableFromIPC } from 'apache-arrow';
import { BusbarError } from './errors.js';
import { concatBytes, toBase64 } from './bytes.js';
import type { CallOptions } from './calls.js';
import type { Connection } from './connection.js';

/** Values for `?` placeholders (an array) or `:name` ones (an object). */
export type SqlParams = readonly unknown[] | Record<string, unknown>;

/** A parameter as a `busbar.v1.SqlValue` in JSON. */
export function sqlValue(value: unknown): Record<string, unknown> {
  if (value === null || value === undefined) return { null: true };
  if (typeof value === 'boolean') return { boolean: value };
  if (typeof value === 'number') {
    if (Number.isInteger(value)) return { integer: value };
    return { real: value };
  }
  // A decimal string keeps every digit of an int64 past 2^53.
  if (typeof value === 'bigint') return { integer: value.toString() };
  if (typeof value === 'string') return { text: value };
  if (value instanceof Date) return { timestamp_ms: value.getTime() };
  if (value instanceof Uint8Array) return { blob: toBase64(value) };
  if (value instanceof ArrayBuffer) return { blob: toBase64(new Uint8Array(value)) };
  throw new BusbarError(
    'INVALID_ARGUMENT',
    `cannot bind a ${Object.prototype.toString.call(value)} as a SQL value: use null, a boolean, number, bigint, string, Date or Uint8Array`,
  );
}

/** The Execute request's `params` or `named` from what the caller gave. */
export function sqlParams(params: SqlParams | undefined): { params?: unknown[]; named?: Record<string, unknown> } {
  if (params === undefined) return {};
  if (Array.isArray(params)) return { params: params.map(sqlValue) };
  const named: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(params)) named[name] = sqlValue(value);
  return { named };
}

/** An Arrow Table from the concatenated pieces of one IPC stream (empty without any). */
export function tableOf(pieces: readonly Uint8Array[]): Table {
  if (pieces.length === 0) return new Table();
  return tableFromIPC(concatBytes(pieces));
}

/**
 * Runs one statement; its rows as a Table whose schema metadata holds
 * `busbar.rows_affected` and `busbar.last_insert_rowid` (as the Python
 * client's does). The whole result is held in memory.
 */
export async function executeSql(
  connection: Connection,
  database: string,
  sql: string,
  params: SqlParams | undefined,
  options: CallOptions,
): Promise<Table> {
  const got = await connection.collect('busbar.v1.Sql/Execute', { database, sql, ...sqlParams(params) }, options);
  const table = tableOf(got.pieces.map((piece) => piece.bytes));
  const summary = got.messages.find((m) => m?.summary)?.summary;
  if (summary) {
    table.schema.metadata.set('busbar.rows_affected', String(summary.rows_affected ?? 0));
    table.schema.metadata.set('busbar.last_insert_rowid', String(summary.last_insert_rowid ?? 0));
  }
  return table;
}
