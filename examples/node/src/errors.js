// google.rpc.Status details from the `grpc-status-details-bin` trailer, as one readable error.
import * as grpc from "@grpc/grpc-js";
import { fromBinary } from "@bufbuild/protobuf";
import { anyIs, anyUnpack } from "@bufbuild/protobuf/wkt";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  ResourceInfoSchema,
  RetryInfoSchema,
} from "../gen/google/rpc/error_details_pb.js";

export const STATUS_DETAILS_KEY = "grpc-status-details-bin";

/** The gRPC status code's name, e.g. 3 -> "INVALID_ARGUMENT". */
export function codeName(code) {
  return grpc.status[code] ?? `CODE_${code}`;
}

/** An imagegate error: the canonical code plus every detail the server attached. */
export class ImagegateError extends Error {
  constructor(fields) {
    super(fields.message);
    this.name = "ImagegateError";
    /** Numeric gRPC status code. */
    this.code = fields.code;
    /** Its name, e.g. "RESOURCE_EXHAUSTED". */
    this.codeName = codeName(fields.code);
    /** ErrorInfo reason (UPPER_SNAKE), "" when the server sent none. */
    this.reason = fields.reason ?? "";
    /** ErrorInfo domain, e.g. "imagegate.router". */
    this.domain = fields.domain ?? "";
    /** ErrorInfo metadata: every variable of the message. */
    this.metadata = fields.metadata ?? {};
    /** BadRequest: [{field, description}]. */
    this.fieldViolations = fields.fieldViolations ?? [];
    /** QuotaFailure: [{subject, description}]. */
    this.quotaViolations = fields.quotaViolations ?? [];
    /** RetryInfo: seconds to wait before retrying, or null. */
    this.retryAfterSeconds = fields.retryAfterSeconds ?? null;
    /** ResourceInfo: [{resourceType, resourceName, description}]. */
    this.resources = fields.resources ?? [];
  }

  /** One line per fact, like the Python CLI: `error: CODE REASON: message` first. */
  format() {
    const head = this.reason && this.reason !== this.codeName ? `${this.codeName} ${this.reason}` : this.codeName;
    const lines = [`error: ${head}: ${this.message}`];
    for (const v of this.fieldViolations) lines.push(`  field ${v.field}: ${v.description}`);
    for (const q of this.quotaViolations) lines.push(`  quota ${q.subject}: ${q.description}`);
    for (const r of this.resources) lines.push(`  ${r.resourceType} ${r.resourceName}: ${r.description}`);
    if (this.retryAfterSeconds !== null) lines.push(`  retry after ${this.retryAfterSeconds.toFixed(1)}s`);
    if (this.metadata.trace_id) lines.push(`  trace ${this.metadata.trace_id}`);
    return lines.join("\n");
  }
}

/** Decodes a serialized google.rpc.Status (the trailer's bytes) into an ImagegateError. */
export function fromStatusBytes(bytes, fallback = {}) {
  const status = fromBinary(StatusSchema, bytes);
  const fields = {
    code: status.code || fallback.code || grpc.status.UNKNOWN,
    message: status.message || fallback.message || "",
    fieldViolations: [],
    quotaViolations: [],
    resources: [],
  };
  for (const detail of status.details) {
    if (anyIs(detail, ErrorInfoSchema)) {
      const info = anyUnpack(detail, ErrorInfoSchema);
      Object.assign(fields, { reason: info.reason, domain: info.domain, metadata: { ...info.metadata } });
    } else if (anyIs(detail, BadRequestSchema)) {
      const bad = anyUnpack(detail, BadRequestSchema);
      for (const v of bad.fieldViolations) fields.fieldViolations.push({ field: v.field, description: v.description });
    } else if (anyIs(detail, QuotaFailureSchema)) {
      const quota = anyUnpack(detail, QuotaFailureSchema);
      for (const v of quota.violations) fields.quotaViolations.push({ subject: v.subject, description: v.description });
    } else if (anyIs(detail, RetryInfoSchema)) {
      const delay = anyUnpack(detail, RetryInfoSchema).retryDelay;
      fields.retryAfterSeconds = delay ? Number(delay.seconds) + delay.nanos / 1e9 : 0;
    } else if (anyIs(detail, ResourceInfoSchema)) {
      const r = anyUnpack(detail, ResourceInfoSchema);
      fields.resources.push({ resourceType: r.resourceType, resourceName: r.resourceName, description: r.description });
    }
  }
  return new ImagegateError(fields);
}

/** A grpc-js call error as an ImagegateError (details decoded when the trailer carries them). */
export function toImagegateError(err) {
  if (err instanceof ImagegateError) return err;
  const raw = err?.metadata?.get?.(STATUS_DETAILS_KEY) ?? [];
  if (raw.length > 0) {
    return fromStatusBytes(new Uint8Array(raw[0]), { code: err.code, message: err.details });
  }
  return new ImagegateError({ code: err?.code ?? grpc.status.UNKNOWN, message: err?.details ?? String(err) });
}
