// Busbar's errors: one class, BusbarError, whose `code` is the node's stable
// error code (the busbar.v1.ErrorCode names, as the gateway's `error` frames
// and the other clients give them), so code can branch on `error.code`.

/** Every stable code a Busbar error may carry. */
export const ERROR_CODES = [
  'INVALID_ARGUMENT',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'UNAUTHENTICATED',
  'SLOW_CONSUMER',
  'TIMEOUT',
  'UNAVAILABLE',
  'CONFLICT',
  'FAILED_PRECONDITION',
  'RESOURCE_EXHAUSTED',
  'UNIMPLEMENTED',
  'CANCELLED',
  'INTERNAL',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** A failure: from the node (with its message and trace id) or from checks this client makes. */
export class BusbarError extends Error {
  /** The stable code, e.g. `"NOT_FOUND"`. */
  readonly code: ErrorCode;
  /** Finds the call in the node's log, when the node answered. */
  readonly traceId?: string;

  constructor(code: ErrorCode | string, message: string, traceId?: string) {
    super(message);
    this.name = 'BusbarError';
    // A code from a newer node that this client does not know stays readable
    // in the message; the code itself is one callers can switch on.
    this.code = (ERROR_CODES as readonly string[]).includes(code) ? (code as ErrorCode) : 'INTERNAL';
    if (traceId) this.traceId = traceId;
  }

  override toString(): string {
    return `${this.code}: ${this.message}`;
  }
}

/** The error of a gateway `error` frame. */
export function errorFromFrame(frame: { code?: unknown; message?: unknown; trace_id?: unknown }): BusbarError {
  return new BusbarError(
    typeof frame.code === 'string' ? frame.code : 'INTERNAL',
    typeof frame.message === 'string' ? frame.message : 'the node sent an error without a message',
    typeof frame.trace_id === 'string' && frame.trace_id ? frame.trace_id : undefined,
  );
}

/** Calls fail with this when the socket under them is lost; rooms and wire
 * subscriptions are opened again after a reconnect instead. */
export function connectionLost(why: string): BusbarError {
  const error = new BusbarError('UNAVAILABLE', `the connection to the node was lost (${why}); calls in flight failed, retry them`);
  lostErrors.add(error);
  return error;
}

const lostErrors = new WeakSet<BusbarError>();

/** Whether `error` says the socket was lost (not that the node refused something). */
export function isConnectionLost(error: unknown): boolean {
  return error instanceof BusbarError && lostErrors.has(error);
}
