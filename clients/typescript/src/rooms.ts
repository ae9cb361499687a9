// Rooms: a membership is one `busbar.v1.Rooms/Join` stream; its events go to
// `on(event)` handlers and to every iterator of the room. After a reconnect
// the room is joined again (a new member id; events emitted meanwhile are
// missed, as with the other clients).

import { BusbarError } from './errors.js';
import { startCall, type CallOptions } from './calls.js';
import { BoundedQueue, DEFAULT_QUEUE_LIMIT } from './queue.js';
import type { Connection, Resumable } from './connection.js';

/** One event of a room as its iterators see it. */
export interface RoomEvent {
  /** `emit`: an application event; `rejoined`: the room was joined again
   * after a reconnect (events emitted while away were missed). */
  kind: 'emit' | 'rejoined';
  /** The application event's name (`emit`). */
  event: string;
  /** Its arguments. */
  args: unknown[];
  /** The first argument: the usual single payload of `emit(event, data)`. */
  data: unknown;
  /** Identity name of the emitter. */
  sender: string;
  /** The emitter's member id, if it sent one. */
  memberId: string;
}

type Handler = (...args: unknown[]) => void;

export class Room implements AsyncIterable<RoomEvent> {
  /** This membership's id (changes when the room is joined again). */
  memberId = '';
  /** Set when the membership ended with an error (SLOW_CONSUMER, PERMISSION_DENIED, ...). */
  error: BusbarError | null = null;
  private readonly handlers = new Map<string, Set<Handler>>();
  private readonly anyHandlers = new Set<(event: RoomEvent) => void>();
  /** Events for iterators, from the join on: at most DEFAULT_QUEUE_LIMIT
   * (1024) not yet read. Until something iterates, the oldest make room
   * (a room read only by handlers holds the latest 1024); once iterated, a
   * full queue ends the iteration with SLOW_CONSUMER (the membership and
   * its handlers go on). Iterators share it: each event is taken once. */
  private readonly events = new BoundedQueue<RoomEvent>(DEFAULT_QUEUE_LIMIT);
  private iterated = false;
  private ended = false;
  private endWaiters: Array<{ resolve: () => void; reject: (e: BusbarError) => void }> = [];
  private current: { cancel: () => void } | null = null;
  private readonly resumable: Resumable;

  private constructor(
    private readonly connection: Connection,
    readonly path: string,
    private readonly options: CallOptions,
  ) {
    this.resumable = {
      // A room that cannot be joined again (deleted meanwhile, the right
      // revoked) ends with why; a socket lost again waits for the next try.
      resume: () =>
        this.open(true).catch((error: BusbarError) => {
          if (!this.connection.willResume(error)) this.finish(error);
        }),
      abandon: (error) => this.finish(error),
    };
  }

  /** @internal use `connection.join(path)` */
  static async join(connection: Connection, path: string, options: CallOptions): Promise<Room> {
    const room = new Room(connection, path, options);
    await room.open(false);
    connection.keep(room.resumable);
    return room;
  }

  /** Opens a Join stream; resolves at its JOINED event. */
  private open(again: boolean): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let joined = false;
      // Only the deadline and metadata apply to the join itself: the stream
      // lives on, so no timeout is sent with it.
      const { timeout, ...streamOptions } = this.options;
      const joinTimer =
        timeout !== undefined
          ? setTimeout(() => {
              if (!joined) {
                reject(new BusbarError('TIMEOUT', `the node did not confirm the join of ${this.path} within ${timeout} ms`));
                this.current?.cancel();
              }
            }, timeout)
          : undefined;
      const started = startCall(this.connection, 'busbar.v1.Rooms/Join', { path: this.path }, streamOptions, {
        message: (event: any) => {
          switch (event?.kind) {
            case 'JOINED':
              this.memberId = event.member_id ?? '';
              joined = true;
              clearTimeout(joinTimer);
              if (again) this.deliver({ kind: 'rejoined', event: '', args: [], data: undefined, sender: '', memberId: this.memberId });
              resolve();
              return;
            case 'EMIT': {
              const args: unknown[] = Array.isArray(event.args) ? event.args : [];
              this.deliver({ kind: 'emit', event: event.event ?? '', args, data: args[0], sender: event.sender ?? '', memberId: event.member_id ?? '' });
              return;
            }
            default:
              return; // LEFT and DELETED: the stream's end follows
          }
        },
        binary: () => undefined,
        end: () => {
          clearTimeout(joinTimer);
          if (!joined) reject(new BusbarError('INTERNAL', `the join of ${this.path} ended before it was confirmed`));
          this.finish(null);
        },
        fail: (error) => {
          clearTimeout(joinTimer);
          if (!joined) {
            reject(error);
            return;
          }
          // A lost socket: the connection joins again when it is back.
          if (!this.connection.willResume(error)) this.finish(error);
        },
      });
      started.then(
        ({ socket, id }) => {
          this.current = { cancel: () => socket.follow('cancel', id) };
        },
        (error) => {
          clearTimeout(joinTimer);
          reject(error);
        },
      );
    });
  }

  private deliver(event: RoomEvent): void {
    if (this.iterated) this.events.push(event);
    else this.events.pushDroppingOldest(event);
    for (const handler of this.anyHandlers) this.run(() => handler(event));
    if (event.kind !== 'emit') return;
    for (const handler of this.handlers.get(event.event) ?? []) this.run(() => handler(...event.args));
  }

  private run(handler: () => void): void {
    try {
      handler();
    } catch (error) {
      // One handler's bug must not stop the room's other readers.
      console.error(`busbar: a handler of room ${this.path} threw`, error);
    }
  }

  private finish(error: BusbarError | null): void {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    this.connection.drop(this.resumable);
    this.events.finish(error ?? undefined);
    const waiters = this.endWaiters;
    this.endWaiters = [];
    for (const waiter of waiters) (error ? waiter.reject(error) : waiter.resolve());
  }

  /** `handler(...args)` runs for every `event` emitted to the room; returns a function that removes it. */
  on(event: string, handler: Handler): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(handler);
    return () => set!.delete(handler);
  }

  /** `handler(event)` runs for every event of the room (and `rejoined`); returns a function that removes it. */
  onAny(handler: (event: RoomEvent) => void): () => void {
    this.anyHandlers.add(handler);
    return () => this.anyHandlers.delete(handler);
  }

  /** Emits `event` to every member, this one included; resolves with how many it reached. */
  emit(event: string, ...args: unknown[]): Promise<number> {
    return this.send(event, args, false);
  }

  /** Emits `event` to every member but this one. */
  emitPeers(event: string, ...args: unknown[]): Promise<number> {
    return this.send(event, args, true);
  }

  private async send(event: string, args: unknown[], peersOnly: boolean): Promise<number> {
    if (this.ended) throw new BusbarError('FAILED_PRECONDITION', `room ${this.path} was left; join it again`);
    // JSON has no undefined: it travels as null, as in a list.
    const values = args.map((arg) => (arg === undefined ? null : arg));
    const reply = await this.connection.call('busbar.v1.Rooms/Emit', {
      path: this.path,
      event,
      args: values,
      member_id: this.memberId,
      peers_only: peersOnly,
    });
    return Number(reply?.delivered ?? 0);
  }

  /** Leaves the room; resolves once the node confirmed it and the iterators ended. */
  async leave(): Promise<void> {
    if (this.ended) return;
    const done = this.wait();
    try {
      await this.connection.call('busbar.v1.Rooms/Leave', { member_id: this.memberId });
    } catch (error) {
      // The Leave's own failure is the answer; how the membership ends
      // later must not surface as an unhandled rejection.
      done.catch(() => undefined);
      throw error;
    }
    await done;
  }

  /** Resolves when the membership ends (left or the room deleted); rejects with the error that ended it. */
  wait(): Promise<void> {
    if (this.ended) return this.error ? Promise.reject(this.error) : Promise.resolve();
    return new Promise((resolve, reject) => this.endWaiters.push({ resolve, reject }));
  }

  get left(): boolean {
    return this.ended;
  }

  /** The room's events since the join (or the last one read). */
  [Symbol.asyncIterator](): AsyncIterator<RoomEvent> {
    this.iterated = true;
    const events = this.events;
    return {
      next: () => events.next(),
      // `break` stops reading; the membership goes on (leave() ends it).
      return: async () => ({ value: undefined, done: true }),
    };
  }
}
