// A bounded queue read as an async iterator: what a stream, a room or a wire
// subscription holds between the socket (which cannot be paused in a
// browser) and a reader that has not taken it yet.

import { BusbarError } from './errors.js';

/** Items a queue holds for its reader unless told otherwise. */
export const DEFAULT_QUEUE_LIMIT = 1024;

export class BoundedQueue<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private waiting: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | null = null;
  private ended = false;
  private failure: BusbarError | null = null;

  /**
   * @param limit items held at most; the push that finds the queue full
   *   returns false and the queue ends with SLOW_CONSUMER (the reader fell
   *   `limit` items behind), after the items it holds.
   */
  constructor(private readonly limit: number = DEFAULT_QUEUE_LIMIT) {}

  /** Adds an item; false when the queue ended or was full (it is ended then). */
  push(item: T): boolean {
    if (this.ended) return false;
    if (this.waiting) {
      const waiting = this.waiting;
      this.waiting = null;
      waiting.resolve({ value: item, done: false });
      return true;
    }
    if (this.items.length >= this.limit) {
      this.finish(
        new BusbarError('SLOW_CONSUMER', `the reader fell ${this.limit} items behind; its queue was full, so it was cut`),
      );
      return false;
    }
    this.items.push(item);
    return true;
  }

  /** Adds an item; when full, the oldest held item makes room (for readers
   * that may never come, where the latest items matter most). */
  pushDroppingOldest(item: T): void {
    if (!this.ended && !this.waiting && this.items.length >= this.limit) this.items.shift();
    this.push(item);
  }

  /** Ends the queue: the reader gets the held items, then the end (or `error`). */
  finish(error?: BusbarError): void {
    if (this.ended) return;
    this.ended = true;
    this.failure = error ?? null;
    if (this.waiting) {
      const waiting = this.waiting;
      this.waiting = null;
      if (this.failure) waiting.reject(this.failure);
      else waiting.resolve({ value: undefined, done: true });
    }
  }

  get isEnded(): boolean {
    return this.ended;
  }

  next(): Promise<IteratorResult<T>> {
    if (this.items.length > 0) return Promise.resolve({ value: this.items.shift()!, done: false });
    if (this.ended) {
      if (this.failure) {
        const failure = this.failure;
        // Thrown once; a reader asking again sees the end.
        this.failure = null;
        return Promise.reject(failure);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    if (this.waiting) return Promise.reject(new BusbarError('FAILED_PRECONDITION', 'one reader at a time: the previous next() has not settled'));
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
    });
  }

  /** `break` out of a for-await: the queue ends, nothing more is held. */
  return(): Promise<IteratorResult<T>> {
    this.items.length = 0;
    this.finish();
    this.failure = null;
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}
