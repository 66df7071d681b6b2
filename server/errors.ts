// The one error family of the server. Verbs throw these; a single onError in app.ts maps them to HTTP:
// JSON {error, message} on the API, one plain-text line on Nix routes (Nix prints it to the user).
// Anything else that escapes is a 500 with a request-scoped log line and a generic message.

export type ErrorCode =
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "conflict"
  | "payload_too_large"
  | "invalid_nar"
  | "hash_mismatch"
  | "size_mismatch"
  | "missing_references"
  | "unsupported_media_type"
  | "range_not_satisfiable"
  | "unavailable";

const statusOf: Record<ErrorCode, number> = {
  bad_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  range_not_satisfiable: 416,
  invalid_nar: 422,
  hash_mismatch: 422,
  size_mismatch: 422,
  missing_references: 422,
  unavailable: 503,
};

export class AppError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details: Record<string, unknown> | undefined;
  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = "AppError";
    this.code = code;
    this.status = statusOf[code];
    this.details = details;
  }
}

export const badRequest = (message: string, details?: Record<string, unknown>) =>
  new AppError("bad_request", message, details);
export const notFound = (message: string) => new AppError("not_found", message);
export const unauthorized = (
  message = "authentication required: send a token as Bearer or as the Basic-auth password",
) => new AppError("unauthorized", message);
export const forbidden = (message: string) => new AppError("forbidden", message);
export const conflict = (message: string, details?: Record<string, unknown>) =>
  new AppError("conflict", message, details);
