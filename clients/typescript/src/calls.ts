// Calls by full method name: unary ones as Promises, streaming ones as
// CallStreams (async iterators that may also send). JSON in and out, with
// the proto field names (docs/websocket.md).

import { BusbarError } from './errors.js';
import { BoundedQueue, DEFAULT_QUEUE_LIMIT } from './queue.js';
import type { CallSink, GatewaySocket } from './socket.js';

export interface CallOptions {
  /** Deadline in milliseconds; the call fails TIMEOUT after it. */
  timeout?: number;
  /** Aborting it cancels the call: it fails CANCELLED. */
  signal?: AbortSignal;
  /** `x-` keys passed to mesh providers. */
  metadata?: Record<string, string>;
  /** Finds the call in the node's logs. */
  traceId?: string;
}

/** What a call runs on: the live socket of a connection, once there is one. */
export interface CallHost {
  live(): Promise<GatewaySocket>;
}

/** Grace past a call's own deadline before this side gives up on hearing the
 * node's TIMEOUT (a node that went silent). */
const DEADLINE_GRACE_MS = 2000;

/** Bytes a socket may hold unsent before `send` waits: the gateway reads at
 * most 16 request messages ahead per call, so past that the socket's buffer
 * (unbounded in browsers) would grow without this. */
const SEND_BUFFER_BYTES = 4 << 20;

function callFrame(method: string, request: object | undefined, options: CallOptions): Record<string, unknown> {
  if (typeof method !== 'string' || !method.includes('/')) {
    throw new BusbarError('INVALID_ARGUMENT', `bad method ${JSON.stringify(method)}: use a full name such as "busbar.v1.Node/Status"`);
  }
  const frame: Record<string, unknown> = { method };
  if (request !== undefined) frame.message = request;
  if (options.timeout !== undefined) {
    if (!(options.timeout > 0)) throw new BusbarError('INVALID_ARGUMENT', `bad timeout ${options.timeout}: use a positive number of milliseconds`);
    frame.timeout_ms = Math.ceil(options.timeout);
  }
  if (options.metadata) frame.metadata = options.metadata;
  if (options.traceId) frame.trace_id = options.traceId;
  return frame;
}

function cancelled(): BusbarError {
  return new BusbarError('CANCELLED', 'cancelled by the caller');
}

/** The host's socket, waiting no longer than the call's deadline and its
 * abort signal allow (while a connection reconnects, calls wait for it). */
function liveWithin(host: CallHost, options: CallOptions): Promise<GatewaySocket> {
  const live = host.live();
  if (options.timeout === undefined && !options.signal) return live;
  return new Promise((resolve, reject) => {
    const timer =
      options.timeout !== undefined
        ? setTimeout(() => reject(new BusbarError('TIMEOUT', `not connected within the call's ${options.timeout} ms deadline`)), options.timeout)
        : undefined;
    const onAbort = () => reject(cancelled());
    options.signal?.addEventListener('abort', onAbort, { once: true });
    live.then(resolve, reject).finally(() => {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
    });
  });
}

/**
 * Runs a call to its end and hands every part to `sink`, handling the
 * deadline and the abort signal on this side too: an abort ends the call at
 * once (CANCELLED) and tells the node; a node that stays silent past the
 * deadline ends it TIMEOUT. Returns the started call's id and socket.
 */
export async function startCall(
  host: CallHost,
  method: string,
  request: object | undefined,
  options: CallOptions,
  sink: CallSink,
): Promise<{ socket: GatewaySocket; id: string }> {
  const frame = callFrame(method, request, options);
  if (options.signal?.aborted) throw cancelled();
  const socket = await liveWithin(host, options);
  if (options.signal?.aborted) throw cancelled();
  let settled = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const onAbort = () => finish(cancelled(), true);
  const finish = (error: BusbarError | null, tellNode: boolean) => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    options.signal?.removeEventListener('abort', onAbort);
    if (tellNode) {
      socket.follow('cancel', id);
      socket.forget(id);
    }
    if (error) sink.fail(error);
    else sink.end();
  };
  const id = socket.startCall(frame, {
    started: () => !settled && sink.started?.(),
    message: (m) => !settled && sink.message(m),
    binary: (b) => !settled && sink.binary(b),
    end: () => finish(null, false),
    fail: (e) => finish(e, false),
  });
  options.signal?.addEventListener('abort', onAbort, { once: true });
  if (options.timeout !== undefined) {
    timer = setTimeout(
      () => finish(new BusbarError('TIMEOUT', `no answer within the call's ${options.timeout} ms deadline`), true),
      options.timeout + DEADLINE_GRACE_MS,
    );
  }
  return { socket, id };
}

/** A unary call: resolves with the response message. */
export function unary<T>(host: CallHost, method: string, request: object | undefined, options: CallOptions): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let response: any;
    let seen = false;
    startCall(host, method, request ?? {}, options, {
      message: (m) => {
        // A method that streams answers through call(): the first is the answer.
        if (!seen) response = m;
        seen = true;
      },
      binary: (bytes) => {
        if (!seen) response = { arrow_ipc: bytes };
        seen = true;
      },
      end: () => resolve(response as T),
      fail: reject,
    }).catch(reject);
  });
}

/** Every message and every binary piece of a call, once it ended well. */
export interface Collected {
  messages: any[];
  /** Binary pieces with the index of the message they came after (-1: before any). */
  pieces: Array<{ after: number; bytes: Uint8Array }>;
}

export function collect(host: CallHost, method: string, request: object, options: CallOptions): Promise<Collected> {
  return new Promise((resolve, reject) => {
    const got: Collected = { messages: [], pieces: [] };
    startCall(host, method, request, options, {
      message: (m) => got.messages.push(m),
      binary: (bytes) => got.pieces.push({ after: got.messages.length - 1, bytes }),
      end: () => resolve(got),
      fail: reject,
    }).catch(reject);
  });
}

/**
 * A streaming call: `for await` its response messages (binary Arrow pieces
 * come as `{arrow_ipc: Uint8Array}`), `send` more requests, `end()` the
 * sending side, `cancel()` the whole call. Holds at most 1024 responses not
 * yet read; past that the call is cancelled and the iterator throws
 * SLOW_CONSUMER (the socket cannot be paused, so a reader must keep up).
 */
export class CallStream<T = any> implements AsyncIterable<T> {
  private readonly queue: BoundedQueue<T>;
  private readonly started: Promise<{ socket: GatewaySocket; id: string } | null>;

  constructor(host: CallHost, method: string, request: object | undefined, options: CallOptions, limit = DEFAULT_QUEUE_LIMIT) {
    this.queue = new BoundedQueue<T>(limit);
    const put = (item: T) => {
      if (!this.queue.push(item)) void this.cancel();
    };
    this.started = startCall(host, method, request, options, {
      message: (m) => put(m as T),
      binary: (bytes) => put({ arrow_ipc: bytes } as T),
      end: () => this.queue.finish(),
      fail: (e) => this.queue.finish(e),
    }).catch((error: BusbarError) => {
      this.queue.finish(error);
      return null;
    });
  }

  /** One more request message (client-streaming and bidirectional methods);
   * waits while the socket holds over 4 MiB unsent. */
  async send(message: object): Promise<void> {
    const call = await this.started;
    if (!call) return;
    while (call.socket.isOpen && call.socket.bufferedAmount > SEND_BUFFER_BYTES) {
      await new Promise((r) => setTimeout(r, 10));
    }
    call.socket.follow('send', call.id, message);
  }

  /** No more request messages (half-close). */
  async end(): Promise<void> {
    const call = await this.started;
    if (call) call.socket.follow('end', call.id);
  }

  /** Cancels the call; the iterator then throws CANCELLED. */
  async cancel(): Promise<void> {
    const call = await this.started;
    if (call) {
      call.socket.follow('cancel', call.id);
    }
  }

  /** The responses left, as an array, once the call ended well. */
  async all(): Promise<T[]> {
    const all: T[] = [];
    for await (const item of this) all.push(item);
    return all;
  }

  /** Every iterator reads the same responses: each is taken once. */
  [Symbol.asyncIterator](): AsyncIterator<T> {
    const queue = this.queue;
    return {
      next: () => queue.next(),
      // `break` out of the loop: the call is not wanted any more.
      return: async () => {
        if (!queue.isEnded) await this.cancel();
        return queue.return();
      },
    };
  }
}
