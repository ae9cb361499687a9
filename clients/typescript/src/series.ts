// Time series: reads come as Arrow IPC pieces after a `series` header;
// writes go as one client-streaming `busbar.v1.TimeSeries/Write` call whose
// first message is the header and the rest the pieces of an IPC stream.

import {
  Float64,
  Table,
  TimestampMillisecond,
  Uint32,
  makeData,
  makeVector,
  tableToIPC,
  type Vector,
} from 'apache-arrow';
import { BusbarError } from './errors.js';
import { toBase64 } from './bytes.js';
import { CallStream, type CallOptions } from './calls.js';
import { tableOf } from './sql.js';
import type { Connection } from './connection.js';

/** A moment: a Date, epoch milliseconds, or ISO 8601 text (no offset means UTC). */
export type Moment = Date | number | string;

export interface TimeRange {
  /** Inclusive; absent: from the first point. */
  start?: Moment;
  /** Exclusive; absent: through the last point. */
  end?: Moment;
}

/** Flag bits of the `flags` column (0 is OK). */
export const PointFlags = { OK: 0, MISSING: 1, SUSPECT: 2, NOT_OK: 4 } as const;

export interface SeriesSpecOptions {
  /** BREAKPOINT, MIN1, MIN5, MIN10, MIN15, MIN30, HOUR, DAY, WEEK, MONTH or YEAR. */
  resolution: string;
  unit?: string;
  /** STAIRCASE (default) or PIECEWISE_LINEAR. */
  curve?: string;
  /** IANA name for the series' calendar; UTC when absent. */
  timeZone?: string;
  parents?: boolean;
  existOk?: boolean;
}

/** Pieces a write sends its IPC stream in: well under the node's 16 MiB message limit once in base64. */
const WRITE_PIECE_BYTES = 1 << 20;

/** Epoch milliseconds UTC of a moment. */
export function epochMs(moment: Moment, what = 'time'): number {
  if (typeof moment === 'number' && Number.isFinite(moment)) return Math.trunc(moment);
  if (moment instanceof Date && !Number.isNaN(moment.getTime())) return moment.getTime();
  if (typeof moment === 'string') {
    // JavaScript reads a date-time without an offset as local time; Busbar means UTC.
    const text = /T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(moment.trim()) ? `${moment.trim()}Z` : moment;
    const ms = Date.parse(text);
    if (!Number.isNaN(ms)) return ms;
  }
  throw new BusbarError('INVALID_ARGUMENT', `bad ${what} ${JSON.stringify(moment)}: use a Date, epoch milliseconds or ISO 8601 text`);
}

/** A Table of points: utc_time (timestamp[ms, UTC]), flags (uint32; OK when absent), value (float64). */
export function pointsTable(points: { times: readonly Moment[]; values: readonly number[]; flags?: readonly number[] }): Table {
  const rows = points.times.length;
  if (points.values.length !== rows || (points.flags && points.flags.length !== rows)) {
    throw new BusbarError('INVALID_ARGUMENT', 'times, values and flags must have one entry per point');
  }
  const times = new BigInt64Array(rows);
  points.times.forEach((t, i) => (times[i] = BigInt(epochMs(t))));
  const flags = Uint32Array.from(points.flags ?? new Array<number>(rows).fill(PointFlags.OK));
  const values = Float64Array.from(points.values);
  const column = (type: any, data: ArrayLike<unknown>): Vector => makeVector(makeData({ type, length: rows, data: data as any }));
  return new Table({
    utc_time: column(new TimestampMillisecond('UTC'), times),
    flags: column(new Uint32(), flags),
    value: column(new Float64(), values),
  });
}

export async function readSeries(connection: Connection, path: string, range: TimeRange, options: CallOptions): Promise<Table> {
  const request: Record<string, unknown> = { paths: [path] };
  if (range.start !== undefined) request.start_ms = epochMs(range.start, 'start');
  if (range.end !== undefined) request.end_ms = epochMs(range.end, 'end');
  const got = await connection.collect('busbar.v1.TimeSeries/Read', request, options);
  // One series was asked for: every piece after its header is its stream.
  return tableOf(got.pieces.filter((piece) => piece.after >= 0).map((piece) => piece.bytes));
}

export async function writeSeries(connection: Connection, path: string, points: Table, range: TimeRange, options: CallOptions): Promise<any> {
  const header: Record<string, unknown> = { path };
  if (range.start !== undefined) header.start_ms = epochMs(range.start, 'start');
  if (range.end !== undefined) header.end_ms = epochMs(range.end, 'end');
  const ipc = tableToIPC(points, 'stream');
  const call = new CallStream<any>(connection, 'busbar.v1.TimeSeries/Write', { header }, options);
  for (let at = 0; at < ipc.length; at += WRITE_PIECE_BYTES) {
    await call.send({ arrow_ipc: toBase64(ipc.subarray(at, at + WRITE_PIECE_BYTES)) });
  }
  await call.end();
  const [summary] = await call.all();
  return summary;
}

export function createSeries(connection: Connection, path: string, spec: SeriesSpecOptions, options: CallOptions): Promise<any> {
  const series: Record<string, unknown> = { resolution: spec.resolution.toUpperCase() };
  if (spec.unit) series.unit = spec.unit;
  if (spec.curve) series.curve = spec.curve.toUpperCase();
  if (spec.timeZone) series.time_zone = spec.timeZone;
  return connection.call(
    'busbar.v1.Resources/Create',
    { path, kind: 'TIMESERIES', parents: !!spec.parents, exist_ok: !!spec.existOk, series },
    options,
  );
}
