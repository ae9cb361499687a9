// Busbar for browsers and Node.js: one WebSocket to a node's gateway
// (docs/websocket.md) carries calls, streams, rooms, wires, SQL and time series.

export { connect, Connection, type ConnectOptions, type ConnectionEvent } from './connection.js';
export { BusbarError, ERROR_CODES, type ErrorCode } from './errors.js';
export { CallStream, type CallOptions } from './calls.js';
export { Room, type RoomEvent } from './rooms.js';
export { Subscription, type PublishSummary } from './wires.js';
export { sqlValue, type SqlParams } from './sql.js';
export { pointsTable, epochMs, PointFlags, type Moment, type TimeRange, type SeriesSpecOptions } from './series.js';
export type { ServiceInfo } from './mesh.js';
export type { Credentials, Identity, GatewayLimits } from './socket.js';
export { PROTOCOL } from './socket.js';
