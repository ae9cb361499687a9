// A connection to a node: the socket of the moment, and the reconnect loop
// that replaces it when it is lost (logging in again, rejoining rooms and
// resubscribing wires, as the other Busbar clients do).

import { BusbarError, isConnectionLost } from './errors.js';
import { CallStream, collect, unary, type CallHost, type CallOptions } from './calls.js';
import { GatewaySocket, type Credentials, type Identity } from './socket.js';
import { Room } from './rooms.js';
import { Subscription, publish, type PublishSummary } from './wires.js';
import { executeSql, type SqlParams } from './sql.js';
import { createSeries, readSeries, writeSeries, type SeriesSpecOptions, type TimeRange } from './series.js';
import { remoteService, type ServiceInfo } from './mesh.js';
import type { Table } from 'apache-arrow';

export interface ConnectOptions {
  /** A WebSocket constructor; default `globalThis.WebSocket`, else the `ws` package. */
  WebSocket?: any;
  /** Node.js only: PEM of the node's CA (the `ca_pem` of `admin.json`), for wss:// with the node's own certificate. */
  ca?: string;
  /** Node.js only: the Origin header to send (browsers send their page's). */
  origin?: string;
  /** Default true: reconnect with backoff, log in again, rejoin rooms, resubscribe wires. */
  reconnect?: boolean;
  /** Connect plus login, in milliseconds (default 10000). */
  timeoutMs?: number;
}

export type ConnectionEvent = 'connected' | 'disconnected' | 'reconnected';

/** Something kept across a reconnect (a room membership, a wire subscription). */
export interface Resumable {
  /** Opens it again on the new socket. */
  resume(): Promise<void>;
  /** The connection is closed for good: end with `error`. */
  abandon(error: BusbarError): void;
}

/** Reconnect backoff: from 100 ms, doubling, at most 5 s, each step jittered. */
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 5000;

/** Codes that mean the credential will not work again: reconnecting stops. */
const FATAL_ON_RECONNECT = new Set(['UNAUTHENTICATED', 'PERMISSION_DENIED', 'NOT_FOUND', 'UNIMPLEMENTED']);

export class Connection implements CallHost {
  /** Who this connection is logged in as (from `logged_in`; renewed at each reconnect). */
  identity!: Identity;
  private socket: GatewaySocket | null = null;
  /** Callers waiting for a socket while reconnecting; as many as calls the
   * program starts meanwhile, each bounded by its own deadline. */
  private waiting: Array<{ resolve: (s: GatewaySocket) => void; reject: (e: BusbarError) => void }> = [];
  private closedWith: BusbarError | null = null;
  private readonly resumables = new Set<Resumable>();
  private readonly listeners = new Map<ConnectionEvent, Set<(detail?: unknown) => void>>();
  private readonly options: Required<Pick<ConnectOptions, 'reconnect' | 'timeoutMs'>> & ConnectOptions;

  /** @internal use `connect()` */
  constructor(
    readonly url: string,
    private readonly credentials: Credentials,
    options: ConnectOptions = {},
  ) {
    this.options = { ...options, reconnect: options.reconnect ?? true, timeoutMs: options.timeoutMs ?? 10_000 };
  }

  /** @internal the first connect: a failure is the caller's to see. */
  async open(): Promise<void> {
    this.adopt(await this.dial());
    this.fire('connected');
  }

  private dial(): Promise<{ socket: GatewaySocket; identity: Identity }> {
    return GatewaySocket.open(this.url, this.credentials, {
      WebSocket: this.options.WebSocket,
      ca: this.options.ca,
      origin: this.options.origin,
      timeoutMs: this.options.timeoutMs,
    });
  }

  private adopt({ socket, identity }: { socket: GatewaySocket; identity: Identity }): void {
    this.socket = socket;
    this.identity = identity;
    socket.onClose((error, byUs) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (byUs || this.closedWith) return;
      this.fire('disconnected', error);
      if (this.options.reconnect) void this.reconnect();
      else this.shut(error);
    });
    const waiting = this.waiting;
    this.waiting = [];
    for (const waiter of waiting) waiter.resolve(socket);
  }

  private async reconnect(): Promise<void> {
    let backoff = BACKOFF_FIRST_MS;
    while (!this.closedWith) {
      await new Promise((r) => setTimeout(r, backoff / 2 + (Math.random() * backoff) / 2));
      if (this.closedWith) return;
      try {
        const dialed = await this.dial();
        if (this.closedWith) {
          dialed.socket.close();
          return;
        }
        this.adopt(dialed);
      } catch (error) {
        const failure = error instanceof BusbarError ? error : new BusbarError('UNAVAILABLE', String(error));
        if (FATAL_ON_RECONNECT.has(failure.code)) {
          this.shut(failure);
          return;
        }
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
        continue;
      }
      // Rooms and wires come back before `reconnected` fires, so a handler of
      // it can count on them. One that cannot come back ends on its own.
      await Promise.all([...this.resumables].map((r) => r.resume().catch(() => undefined)));
      this.fire('reconnected');
      return;
    }
  }

  /** Closed for good (by the caller, or a reconnect that cannot succeed). */
  private shut(error: BusbarError): void {
    if (this.closedWith) return;
    this.closedWith = error;
    const waiting = this.waiting;
    this.waiting = [];
    for (const waiter of waiting) waiter.reject(error);
    for (const resumable of [...this.resumables]) resumable.abandon(error);
    this.resumables.clear();
  }

  /** @internal the socket calls run on: now, or after the reconnect under way. */
  live(): Promise<GatewaySocket> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.socket?.isOpen) return Promise.resolve(this.socket);
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  /** @internal */
  keep(resumable: Resumable): void {
    this.resumables.add(resumable);
  }

  /** @internal */
  drop(resumable: Resumable): void {
    this.resumables.delete(resumable);
  }

  /** @internal whether a stream that failed with `error` will be opened again. */
  willResume(error: BusbarError): boolean {
    return this.options.reconnect && !this.closedWith && isConnectionLost(error);
  }

  get closed(): boolean {
    return this.closedWith !== null;
  }

  /** `handler` runs at each such event: `disconnected` gets the error that cut the socket. */
  on(event: ConnectionEvent, handler: (detail?: unknown) => void): void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(handler);
  }

  off(event: ConnectionEvent, handler: (detail?: unknown) => void): void {
    this.listeners.get(event)?.delete(handler);
  }

  private fire(event: ConnectionEvent, detail?: unknown): void {
    for (const handler of this.listeners.get(event) ?? []) {
      try {
        handler(detail);
      } catch (error) {
        console.error(`busbar: a '${event}' handler threw`, error);
      }
    }
  }

  // --- calls ---------------------------------------------------------------

  /** Calls `method` ("pkg.Service/Method") with a JSON request; resolves with the response. */
  call<T = any>(method: string, request?: object, options: CallOptions = {}): Promise<T> {
    return unary<T>(this, method, request, options);
  }

  /** A streaming call: iterate its responses; `send`/`end` for methods that take a stream. */
  stream<T = any>(method: string, request?: object, options: CallOptions = {}): CallStream<T> {
    return new CallStream<T>(this, method, request, options);
  }

  /** @internal every message and Arrow piece of a call. */
  collect(method: string, request: object, options: CallOptions = {}) {
    return collect(this, method, request, options);
  }

  /** The node's status (`busbar.v1.Node/Status`). */
  status(options: CallOptions = {}): Promise<any> {
    return this.call('busbar.v1.Node/Status', {}, options);
  }

  /** Who the node takes this connection for. */
  whoami(options: CallOptions = {}): Promise<Identity> {
    return this.call('busbar.v1.Auth/WhoAmI', {}, options);
  }

  /** Creates a resource: kind is room, wire, database, timeseries or folder. */
  create(path: string, kind: string, opts: { parents?: boolean; existOk?: boolean } & CallOptions = {}): Promise<any> {
    const { parents, existOk, ...options } = opts;
    return this.call('busbar.v1.Resources/Create', { path, kind: kind.toUpperCase(), parents: !!parents, exist_ok: !!existOk }, options);
  }

  // --- rooms, wires ----------------------------------------------------------

  /** Joins the room at `path`; resolves once the node confirmed it. */
  join(room: string, options: CallOptions = {}): Promise<Room> {
    return Room.join(this, room, options);
  }

  /** Emits `event` to every member of `room` without joining it; resolves with how many it reached. */
  async emit(room: string, event: string, ...args: unknown[]): Promise<number> {
    const reply = await this.call('busbar.v1.Rooms/Emit', { path: room, event, args });
    return Number(reply?.delivered ?? 0);
  }

  /** Subscribes to the wire at `wire`: iterate its chunks. */
  subscribe(wire: string): Promise<Subscription> {
    return Subscription.open(this, wire);
  }

  /** Publishes `data` (one chunk, or several) into `wire`. */
  publish(wire: string, data: Uint8Array | string | Array<Uint8Array | string>, options: CallOptions = {}): Promise<PublishSummary> {
    return publish(this, wire, data, options);
  }

  // --- data ------------------------------------------------------------------

  /** Runs one SQL statement with bound parameters; its rows as an Arrow Table. */
  sql(database: string, sql: string, params?: SqlParams, options: CallOptions = {}): Promise<Table> {
    return executeSql(this, database, sql, params, options);
  }

  /** The points of a series in [start, end) as an Arrow Table (utc_time, flags, value). */
  readSeries(series: string, range: TimeRange = {}, options: CallOptions = {}): Promise<Table> {
    return readSeries(this, series, range, options);
  }

  /** Replaces [start, end) of a series (default: the table's extent) with the table's points. */
  writeSeries(series: string, points: Table, range: TimeRange = {}, options: CallOptions = {}): Promise<any> {
    return writeSeries(this, series, points, range, options);
  }

  /** Creates a time series, e.g. `{resolution: 'HOUR', unit: 'MW'}`. */
  createSeries(path: string, spec: SeriesSpecOptions, options: CallOptions = {}): Promise<any> {
    return createSeries(this, path, spec, options);
  }

  // --- mesh ------------------------------------------------------------------

  /** A proxy whose methods call the mesh service: `remote('pkg.Svc').Method(request)`. */
  remote(service: string, options: CallOptions = {}): any {
    return remoteService(this, service, options);
  }

  /** The live mesh services at or below `path` (default /services). */
  async services(path = '', options: CallOptions = {}): Promise<ServiceInfo[]> {
    const reply = await this.call('busbar.v1.Mesh/ListServices', { path }, options);
    return reply?.services ?? [];
  }

  /** Closes the socket; rooms and subscriptions end, calls in flight fail UNAVAILABLE. */
  async close(): Promise<void> {
    this.shut(new BusbarError('FAILED_PRECONDITION', 'the connection was closed'));
    const socket = this.socket;
    this.socket = null;
    socket?.close();
  }
}

/** Opens a connection to the gateway at `url` (`wss://HOST:PORT/ws`) and logs in. */
export async function connect(url: string, credentials: Credentials, options: ConnectOptions = {}): Promise<Connection> {
  const connection = new Connection(url, credentials, options);
  await connection.open();
  return connection;
}
