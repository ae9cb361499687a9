// One WebSocket to a node's gateway speaking `busbar.v1` (docs/websocket.md):
// opening it (browser WebSocket or the `ws` package in Node.js), the hello
// and the login, and routing the node's frames to the calls they belong to.

import { BusbarError, connectionLost, errorFromFrame } from './errors.js';

export const PROTOCOL = 'busbar.v1';

/** How a socket logs in. An API token is the usual credential for a page. */
export type Credentials = { user: string; password: string } | { token: string };

/** The caller's identity (`busbar.v1.Identity` as JSON). */
export interface Identity {
  name: string;
  id?: string;
  admin?: boolean;
  home?: string;
  groups?: string[];
  [field: string]: unknown;
}

/** The limits the node announced in `hello`. */
export interface GatewayLimits {
  max_message_bytes: number;
  max_calls: number;
  queue_bytes: number;
  stall_ms: number;
  login_timeout_ms: number;
  idle_timeout_ms: number;
}

/** What a call hears from the node; exactly one of end/fail comes last. */
export interface CallSink {
  /** The node accepted a streaming call (its `started` frame): a
   * subscription is in place from here on. */
  started?(): void;
  message(message: any): void;
  binary(bytes: Uint8Array): void;
  end(): void;
  fail(error: BusbarError): void;
}

export interface SocketOptions {
  WebSocket?: any;
  ca?: string;
  origin?: string;
  timeoutMs: number;
}

/** The smallest part of the WebSocket API both browsers and `ws` offer. */
interface WebSocketLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  binaryType: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (event: any) => void): void;
  on?(type: string, listener: (...args: any[]) => void): void;
}

const OPEN = 1;

/** The `ws` package, loaded only where no WebSocket is global (Node.js 20):
 * the name is not a literal, so a bundler building for browsers leaves it out. */
async function nodeWebSocket(): Promise<any> {
  const name = 'ws';
  try {
    const loaded: any = await import(/* @vite-ignore */ name);
    return loaded.WebSocket ?? loaded.default;
  } catch {
    throw new BusbarError(
      'FAILED_PRECONDITION',
      'this runtime has no WebSocket: install the `ws` package or pass options.WebSocket',
    );
  }
}

/** Why a handshake was refused, from the HTTP status the node answered. */
function refusal(status: number, body: string): BusbarError {
  const said = body.trim() ? `: ${body.trim()}` : '';
  switch (status) {
    case 403:
      return new BusbarError('PERMISSION_DENIED', `the node refused the WebSocket: this Origin is not in its ws_origins${said}`);
    case 404:
      return new BusbarError('NOT_FOUND', `no gateway at this URL (it answers on /ws)${said}`);
    case 503:
      return new BusbarError('UNAVAILABLE', `the node has too many gateway sockets open (ws_max_sockets)${said}`);
    default:
      return new BusbarError('UNAVAILABLE', `the node refused the WebSocket handshake with HTTP ${status}${said}`);
  }
}

export class GatewaySocket {
  private readonly calls = new Map<string, CallSink>();
  private nextId = 1;
  private lastHeard = Date.now();
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private closedError: BusbarError | null = null;
  private closeListeners: Array<(error: BusbarError, byUs: boolean) => void> = [];
  private pendingLogin: { resolve: (identity: Identity) => void; reject: (e: BusbarError) => void } | null = null;
  limits!: GatewayLimits;

  private constructor(private readonly ws: WebSocketLike) {}

  /** Opens a socket, waits for `hello` and logs in; rejects with a clear error. */
  static async open(url: string, credentials: Credentials, options: SocketOptions): Promise<{ socket: GatewaySocket; identity: Identity }> {
    // `ca` and `origin` are options of the `ws` package: a global WebSocket
    // (browsers, Node.js 22's) would ignore them, so they pick `ws`.
    const wantsNodeOptions = Boolean(options.ca || options.origin);
    const Ctor =
      options.WebSocket ?? (wantsNodeOptions ? undefined : (globalThis as any).WebSocket) ?? (await nodeWebSocket());
    const nodeOnly: Record<string, unknown> = {};
    if (options.ca) nodeOnly.ca = options.ca;
    if (options.origin) nodeOnly.origin = options.origin;
    // Browsers' WebSocket takes two arguments; `ws` reads the third.
    const ws: WebSocketLike = Object.keys(nodeOnly).length ? new Ctor(url, [PROTOCOL], nodeOnly) : new Ctor(url, [PROTOCOL]);
    ws.binaryType = 'arraybuffer';
    const socket = new GatewaySocket(ws);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new BusbarError('TIMEOUT', `no answer from the node within ${options.timeoutMs} ms (connect and login)`)),
        options.timeoutMs,
      );
    });
    try {
      const identity = await Promise.race([socket.handshake(url, credentials), deadline]);
      return { socket, identity };
    } catch (error) {
      socket.close(1000, 'connect failed');
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  private handshake(url: string, credentials: Credentials): Promise<Identity> {
    return new Promise<Identity>((resolve, reject) => {
      let helloSeen = false;
      let refused: BusbarError | null = null;
      // `ws` tells why a handshake was refused; a browser only says it failed.
      this.ws.on?.('unexpected-response', (_request: any, response: any) => {
        let body = '';
        response.on('data', (piece: any) => (body += String(piece)));
        response.on('end', () => {
          refused = refusal(response.statusCode, body);
          reject(refused);
        });
      });
      this.ws.addEventListener('error', (event: any) => {
        if (refused || helloSeen) return;
        const detail = event?.message ?? event?.error?.message;
        reject(
          new BusbarError(
            'UNAVAILABLE',
            `could not open a WebSocket to ${url}${detail ? `: ${detail}` : ''} (is the node up, the certificate trusted and this page's Origin allowed?)`,
          ),
        );
      });
      this.ws.addEventListener('close', (event: any) => this.closed(event.code, event.reason));
      this.ws.addEventListener('message', (event: any) => {
        this.lastHeard = Date.now();
        if (typeof event.data === 'string') {
          let frame: any;
          try {
            frame = JSON.parse(event.data);
          } catch {
            return; // not ours to answer: the node only sends JSON objects
          }
          if (frame?.op === 'hello' && !helloSeen) {
            helloSeen = true;
            if (frame.protocol !== PROTOCOL) {
              reject(new BusbarError('UNIMPLEMENTED', `the node speaks ${frame.protocol}, this client ${PROTOCOL}`));
              return;
            }
            this.limits = frame.limits;
            this.login(credentials).then(resolve, reject);
            this.startHeartbeat();
            return;
          }
          this.frame(frame);
        } else {
          this.binary(new Uint8Array(event.data as ArrayBuffer));
        }
      });
      this.onClose((error) => reject(error));
    });
  }

  /** Logs in (again); resolves with the identity. */
  login(credentials: Credentials): Promise<Identity> {
    const credential =
      'token' in credentials
        ? { kind: 'token', token: credentials.token }
        : { kind: 'password', user: credentials.user, password: credentials.password };
    return new Promise((resolve, reject) => {
      this.pendingLogin = { resolve, reject };
      this.sendFrame({ op: 'login', id: 'login', credential });
    });
  }

  /** The node pings at the WebSocket level, which browsers answer but do not
   * show: so this side pings with frames, and a socket silent for the node's
   * idle timeout is taken for dead (a network that dropped without a close). */
  private startHeartbeat(): void {
    const idle = this.limits?.idle_timeout_ms || 90_000;
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastHeard > idle) {
        this.close(4002, 'nothing heard within the idle timeout');
        this.closed(4002, 'nothing heard within the idle timeout');
        return;
      }
      this.sendFrame({ op: 'ping' });
    }, Math.max(100, Math.floor(idle / 3)));
    // A heartbeat must not keep a Node.js program alive on its own.
    (this.heartbeat as any).unref?.();
  }

  private frame(frame: any): void {
    const id = typeof frame?.id === 'string' ? frame.id : undefined;
    switch (frame?.op) {
      case 'logged_in':
        this.pendingLogin?.resolve(frame.identity as Identity);
        this.pendingLogin = null;
        return;
      case 'started':
        if (id) this.calls.get(id)?.started?.();
        return;
      case 'message':
        if (id) this.calls.get(id)?.message(frame.message);
        return;
      case 'end':
        if (id) {
          const call = this.calls.get(id);
          this.calls.delete(id);
          call?.end();
        }
        return;
      case 'error': {
        const error = errorFromFrame(frame);
        if (id === 'login' && this.pendingLogin) {
          this.pendingLogin.reject(error);
          this.pendingLogin = null;
        } else if (id) {
          const call = this.calls.get(id);
          this.calls.delete(id);
          call?.fail(error);
        }
        // Without an id: a frame of ours was refused and nothing ended. This
        // client sends well-formed frames only, so there is nothing to route.
        return;
      }
      default:
        return; // pong, and ops a later node may add
    }
  }

  /** A binary frame: kind 1 carries the Arrow IPC bytes of a call's response. */
  private binary(frame: Uint8Array): void {
    if (frame.length < 2 || frame[0] !== 1) return;
    const length = frame[1]!;
    const id = new TextDecoder().decode(frame.subarray(2, 2 + length));
    // A copy: the piece outlives the frame's buffer in the caller's hands.
    this.calls.get(id)?.binary(frame.slice(2 + length));
  }

  private closed(code: number, reason: string): void {
    if (this.closedError) return;
    clearInterval(this.heartbeat);
    const why = reason ? `close ${code}: ${reason}` : `close ${code}`;
    this.closedError = connectionLost(why);
    const byUs = code === 1000 && reason === 'closed by the client';
    const calls = [...this.calls.values()];
    this.calls.clear();
    for (const call of calls) call.fail(this.closedError);
    if (this.pendingLogin) this.pendingLogin.reject(this.closedError);
    this.pendingLogin = null;
    for (const listener of this.closeListeners) listener(this.closedError, byUs);
  }

  /** `listener` runs once when the socket closes; at once if it has. */
  onClose(listener: (error: BusbarError, byUs: boolean) => void): void {
    if (this.closedError) listener(this.closedError, false);
    else this.closeListeners.push(listener);
  }

  get isOpen(): boolean {
    return !this.closedError && this.ws.readyState === OPEN;
  }

  get bufferedAmount(): number {
    return this.ws.bufferedAmount;
  }

  /** Starts a call: its frames go to `sink`; returns its id. */
  startCall(frame: Record<string, unknown>, sink: CallSink): string {
    if (this.closedError) throw this.closedError;
    // Ids count up and are never reused, so a late frame of an ended call
    // can never be taken for a new one's.
    const id = String(this.nextId++);
    this.calls.set(id, sink);
    this.sendFrame({ ...frame, op: 'call', id });
    return id;
  }

  /** `send`, `end` or `cancel` for call `id`. */
  follow(op: 'send' | 'end' | 'cancel', id: string, message?: unknown): void {
    if (!this.calls.has(id)) return; // ended already: nothing to follow
    this.sendFrame(message === undefined ? { op, id } : { op, id, message });
  }

  /** Stops routing call `id` (it was cancelled or timed out on this side). */
  forget(id: string): void {
    this.calls.delete(id);
  }

  sendFrame(frame: Record<string, unknown>): void {
    if (this.closedError || this.ws.readyState !== OPEN) return;
    this.ws.send(JSON.stringify(frame));
  }

  close(code = 1000, reason = 'closed by the client'): void {
    try {
      this.ws.close(code, reason);
    } catch {
      // Closing a socket that never opened throws in some runtimes: it is shut either way.
    }
    if (code === 1000) this.closed(code, reason);
  }
}
