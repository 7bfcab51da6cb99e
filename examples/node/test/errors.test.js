// Decoding google.rpc.Status details needs no server: build the trailer bytes, read them back.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "../gen/google/rpc/error_details_pb.js";
import { STATUS_DETAILS_KEY, toImagegateError } from "../src/errors.js";

function callError(status) {
  const metadata = new grpc.Metadata();
  metadata.set(STATUS_DETAILS_KEY, Buffer.from(toBinary(StatusSchema, status)));
  return Object.assign(new Error(status.message), { code: status.code, details: status.message, metadata });
}

test("every detail of a rich status becomes a field of the error and a line of its text", () => {
  const status = create(StatusSchema, {
    code: grpc.status.RESOURCE_EXHAUSTED,
    message: "monthly images quota of plan 'free' exhausted",
    details: [
      anyPack(ErrorInfoSchema, create(ErrorInfoSchema, {
        reason: "QUOTA_EXCEEDED", domain: "imagegate.quota", metadata: { plan: "free", trace_id: "ab".repeat(16) },
      })),
      anyPack(QuotaFailureSchema, create(QuotaFailureSchema, {
        violations: [{ subject: "tenant:t_1", description: "monthly images limit 50 of plan free reached" }],
      })),
      anyPack(BadRequestSchema, create(BadRequestSchema, {
        fieldViolations: [{ field: "width", description: "must be 64 to 4096" }],
      })),
      anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: { seconds: 2n, nanos: 500_000_000 } })),
    ],
  });
  const err = toImagegateError(callError(status));
  assert.equal(err.codeName, "RESOURCE_EXHAUSTED");
  assert.equal(err.reason, "QUOTA_EXCEEDED");
  assert.equal(err.domain, "imagegate.quota");
  assert.equal(err.metadata.plan, "free");
  assert.deepEqual(err.quotaViolations, [{ subject: "tenant:t_1", description: "monthly images limit 50 of plan free reached" }]);
  assert.deepEqual(err.fieldViolations, [{ field: "width", description: "must be 64 to 4096" }]);
  assert.equal(err.retryAfterSeconds, 2.5);
  const text = err.format().split("\n");
  assert.equal(text[0], "error: RESOURCE_EXHAUSTED QUOTA_EXCEEDED: monthly images quota of plan 'free' exhausted");
  assert.ok(text.includes("  quota tenant:t_1: monthly images limit 50 of plan free reached"));
  assert.ok(text.includes("  field width: must be 64 to 4096"));
  assert.ok(text.includes("  retry after 2.5s"));
  assert.ok(text.includes(`  trace ${"ab".repeat(16)}`));
});

test("a reason that repeats the code is printed once", () => {
  const status = create(StatusSchema, {
    code: grpc.status.INVALID_ARGUMENT,
    message: "bad",
    details: [anyPack(ErrorInfoSchema, create(ErrorInfoSchema, { reason: "INVALID_ARGUMENT" }))],
  });
  assert.equal(toImagegateError(callError(status)).format(), "error: INVALID_ARGUMENT: bad");
});

test("an error without the trailer keeps its code and message", () => {
  const err = toImagegateError(Object.assign(new Error("x"), {
    code: grpc.status.UNAVAILABLE, details: "connection refused", metadata: new grpc.Metadata(),
  }));
  assert.equal(err.codeName, "UNAVAILABLE");
  assert.equal(err.reason, "");
  assert.equal(err.format(), "error: UNAVAILABLE: connection refused");
});
