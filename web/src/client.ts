// The TypeScript client (clients/typescript), bundled from source, and the
// parts of its API the console uses. The console holds its connection in
// memory only: no credential or token is ever written to storage.

import { connect as connectClient } from '../../clients/typescript/src/index';
import type { ArrowTableLike } from './table';

export type Credential = { user: string; password: string } | { token: string };

export interface RoomEventLike {
  /** `emit`, or `rejoined` after a reconnect. */
  kind?: string;
  event?: string;
  args?: unknown[];
  sender?: string;
  [key: string]: unknown;
}

export interface RoomLike extends AsyncIterable<RoomEventLike> {
  emit(event: string, ...args: unknown[]): Promise<unknown>;
  leave(): Promise<void> | void;
}

export interface SubscriptionLike extends AsyncIterable<Uint8Array> {
  cancel?(): void;
  close?(): void;
}

export interface ConnectionLike {
  identity: { name?: string; admin?: boolean; home?: string; [key: string]: unknown };
  call(method: string, request?: unknown, options?: { timeout?: number; signal?: AbortSignal }): Promise<any>;
  status(): Promise<any>;
  join(room: string): RoomLike | Promise<RoomLike>;
  subscribe(wire: string): SubscriptionLike | Promise<SubscriptionLike>;
  publish(wire: string, data: Uint8Array | string): Promise<{ chunks?: number; bytes?: number }>;
  sql(database: string, sql: string, params?: unknown[]): Promise<ArrowTableLike>;
  readSeries(series: string, range: { start?: number | Date; end?: number | Date }): Promise<ArrowTableLike>;
  on(event: 'connected' | 'disconnected' | 'reconnected', handler: (...args: unknown[]) => void): unknown;
  close(): Promise<void> | void;
}

/** The gateway of the node that served this page: same origin, path /ws. */
export function gatewayUrl(location: Location = window.location): string {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

/** Logs in to the node that served the page. */
export async function connect(credential: Credential): Promise<ConnectionLike> {
  const connection = await connectClient(gatewayUrl(), credential, { reconnect: true, timeoutMs: 30_000 });
  return connection as unknown as ConnectionLike;
}
