// Against a running stack (tests/integration/test_node_client.py starts one and sets the
// variables): generate with progress, then each kind of rich error the Router answers.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { describeEvent, generate, routerClient } from "../src/client.js";
import { ImagegateError } from "../src/errors.js";

const { IMAGEGATE_ROUTER_ADDR: address, IMAGEGATE_API_KEY: key, IMAGEGATE_FREE_API_KEY: freeKey } = process.env;
if (!address || !key || !freeKey) {
  throw new Error(
    "IMAGEGATE_ROUTER_ADDR, IMAGEGATE_API_KEY and IMAGEGATE_FREE_API_KEY must name a running stack: " +
      "run `pytest tests/integration/test_node_client.py` (or `make test`)",
  );
}
const client = routerClient(address);
after(() => client.close());

async function failure(promise) {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof ImagegateError, `not an ImagegateError: ${err}`);
    return err;
  }
  assert.fail("the request succeeded");
}

test("generates a PNG and streams its progress in order", async () => {
  const events = [];
  const result = await generate(client, key, { prompt: "a red fox in snow", width: 256, height: 256 }, {
    onEvent: (event) => events.push(event),
  });
  const kinds = events.map((e) => e.event.case);
  assert.equal(kinds[0], "accepted");
  assert.ok(kinds.includes("attemptStarted"), kinds.join(","));
  assert.ok(kinds.includes("progress"), kinds.join(","));
  assert.ok(events.every((e) => describeEvent(e) !== null));
  assert.equal(result.images.length, 1);
  const png = result.images[0].data;
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  assert.equal(result.images[0].width, 256);
  assert.match(result.traceId, /^[0-9a-f]{32}$/);
  assert.equal(typeof result.costMicros, "bigint");
});

test("a bad field is INVALID_ARGUMENT with a BadRequest violation naming it", async () => {
  const err = await failure(generate(client, key, { prompt: "x", width: 10, height: 256 }));
  assert.equal(err.codeName, "INVALID_ARGUMENT");
  assert.ok(err.fieldViolations.some((v) => v.field === "width"), JSON.stringify(err.fieldViolations));
  assert.match(err.format(), /^error: INVALID_ARGUMENT.*\n  field width: /);
});

test("an unknown model carries an ErrorInfo reason, domain and metadata", async () => {
  const err = await failure(generate(client, key, { prompt: "x", model: "no-such-model" }));
  assert.equal(err.reason, "UNKNOWN_MODEL");
  assert.equal(err.domain, "imagegate.router");
  assert.ok(Object.values(err.metadata).includes("no-such-model"), JSON.stringify(err.metadata));
});

test("a wrong API key is UNAUTHENTICATED with its reason", async () => {
  const err = await failure(generate(client, "igk_not_a_key", { prompt: "x" }));
  assert.equal(err.codeName, "UNAUTHENTICATED");
  assert.ok(err.reason.startsWith("API_KEY_"), err.reason);
});

test("a free tenant past its monthly images gets a QuotaFailure", async () => {
  let err = null;
  for (let i = 0; i < 20 && err === null; i++) {
    try {
      await generate(client, freeKey, { prompt: `quota ${i}`, numImages: 4, width: 64, height: 64 });
    } catch (caught) {
      err = caught;
    }
  }
  assert.ok(err instanceof ImagegateError, String(err));
  assert.equal(err.codeName, "RESOURCE_EXHAUSTED");
  assert.equal(err.reason, "QUOTA_EXCEEDED");
  assert.ok(err.quotaViolations[0].subject.startsWith("tenant:"), JSON.stringify(err.quotaViolations));
  assert.match(err.format(), /\n  quota tenant:/);
});
