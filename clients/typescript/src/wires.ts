// Wires: a subscription is one `busbar.v1.Wires/Subscribe` stream of byte
// chunks, opened again after a reconnect; publishing is one client-streaming
// `busbar.v1.Wires/Publish` call.

import { BusbarError } from './errors.js';
import { CallStream, startCall, type CallOptions } from './calls.js';
import { BoundedQueue, DEFAULT_QUEUE_LIMIT } from './queue.js';
import { asBytes, fromBase64, toBase64 } from './bytes.js';
import type { Connection, Resumable } from './connection.js';

export interface PublishSummary {
  chunks: number;
  bytes: number;
  /** Chunks no subscriber heard (wires keep nothing for later subscribers). */
  unheard_chunks: number;
}

/**
 * The chunks of a wire from now on. Holds at most 1024 chunks not yet read;
 * past that the subscription is closed and the iterator throws
 * SLOW_CONSUMER. `subscribe()` resolves once the node says the
 * subscription is in place (`started`): every chunk published after that
 * arrives.
 */
export class Subscription implements AsyncIterable<Uint8Array> {
  /** How many times it was opened again after a reconnect (chunks published meanwhile were missed). */
  resubscribed = 0;
  private readonly queue = new BoundedQueue<Uint8Array>(DEFAULT_QUEUE_LIMIT);
  private current: { cancel: () => void } | null = null;
  /** What ended it, if an error did. */
  private failure: BusbarError | null = null;
  private readonly resumable: Resumable;

  private constructor(
    private readonly connection: Connection,
    readonly path: string,
  ) {
    this.resumable = {
      resume: async () => {
        try {
          await this.open();
          this.resubscribed++;
        } catch (error) {
          // Gone for good (the wire deleted, the right revoked): end with why.
          if (!(error instanceof BusbarError) || !this.connection.willResume(error)) {
            this.end(error instanceof BusbarError ? error : new BusbarError('INTERNAL', String(error)));
          }
        }
      },
      abandon: (error) => this.end(error),
    };
  }

  /** @internal use `connection.subscribe(path)` */
  static async open(connection: Connection, path: string): Promise<Subscription> {
    const subscription = new Subscription(connection, path);
    await subscription.open();
    connection.keep(subscription.resumable);
    return subscription;
  }

  private async open(): Promise<void> {
    // Resolves at the node's `started` frame (the subscription is in place,
    // so a chunk published after this resolves arrives), or fails with the
    // node's refusal (no such wire, no right) if that comes first.
    let accepted!: () => void;
    let refused!: (error: BusbarError) => void;
    const started = new Promise<void>((resolve, reject) => {
      accepted = resolve;
      refused = reject;
    });
    const { socket, id } = await startCall(this.connection, 'busbar.v1.Wires/Subscribe', { path: this.path }, {}, {
      started: () => accepted(),
      message: (chunk: any) => {
        const data = typeof chunk?.data === 'string' ? fromBase64(chunk.data) : new Uint8Array();
        if (!this.queue.push(data)) this.close();
      },
      binary: () => undefined,
      end: () => {
        refused(new BusbarError('UNAVAILABLE', `the subscription to ${this.path} ended before it started`));
        this.end(null);
      },
      fail: (error) => {
        refused(error);
        if (!this.connection.willResume(error)) this.end(error);
      },
    });
    this.current = { cancel: () => socket.follow('cancel', id) };
    await started;
  }

  private end(error: BusbarError | null): void {
    this.failure ??= error;
    this.connection.drop(this.resumable);
    this.queue.finish(error ?? undefined);
  }

  /** Stops the subscription; the iterator ends. */
  close(): void {
    this.current?.cancel();
    this.end(null);
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return {
      next: () => this.queue.next(),
      return: async () => {
        this.close();
        return { value: undefined, done: true };
      },
    };
  }
}

/** Publishes chunks into a wire; resolves with the node's summary. */
export async function publish(
  connection: Connection,
  path: string,
  data: Uint8Array | string | Array<Uint8Array | string>,
  options: CallOptions,
): Promise<PublishSummary> {
  const chunks = Array.isArray(data) ? data : [data];
  const call = new CallStream<any>(connection, 'busbar.v1.Wires/Publish', { path }, options);
  for (const chunk of chunks) await call.send({ data: toBase64(asBytes(chunk)) });
  await call.end();
  const [summary] = await call.all();
  return {
    chunks: Number(summary?.chunks ?? 0),
    bytes: Number(summary?.bytes ?? 0),
    unheard_chunks: Number(summary?.unheard_chunks ?? 0),
  };
}
