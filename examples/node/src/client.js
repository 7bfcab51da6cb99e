// The imagegate Router from Node: stream a generation, describe its events, read credentials.
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { create } from "@bufbuild/protobuf";
import {
  GenerateImageRequestSchema,
  RouterService,
  StreamGenerateImageRequestSchema,
} from "../gen/imagegate/router/v1/router_pb.js";
import { toImagegateError } from "./errors.js";
import { bearer, createClient, deadlineIn } from "./grpc.js";

export const DEFAULT_ROUTER_ADDR = "127.0.0.1:50051";

/** The data directory the CLI uses: IMAGEGATE_DATA_DIR, else the one `make run` recorded. */
export function dataDir(env = process.env) {
  if (env.IMAGEGATE_DATA_DIR) return resolve(env.IMAGEGATE_DATA_DIR);
  const state = env.XDG_STATE_HOME || join(homedir(), ".local", "state");
  const pointer = join(state, "imagegate", "data-dir");
  if (existsSync(pointer)) return readFileSync(pointer, "utf8").trim();
  return resolve(".imagegate");
}

/** IMAGEGATE_API_KEY, else the dev key `make run` wrote. */
export function apiKey(env = process.env) {
  if (env.IMAGEGATE_API_KEY) return env.IMAGEGATE_API_KEY.trim();
  const file = join(dataDir(env), "dev-api-key");
  if (!existsSync(file)) throw new Error(`no API key: set IMAGEGATE_API_KEY or run \`make run\` (it writes ${file})`);
  return readFileSync(file, "utf8").trim();
}

/** A RouterService client at IMAGEGATE_ROUTER_ADDR (a port past 65535 is refused, not wrapped). */
export function routerClient(address = process.env.IMAGEGATE_ROUTER_ADDR || DEFAULT_ROUTER_ADDR) {
  const port = Number(address.slice(address.lastIndexOf(":") + 1));
  if (!address.includes(":") || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`IMAGEGATE_ROUTER_ADDR=${JSON.stringify(address)} is not host:port with a port from 1 to 65535`);
  }
  return createClient(RouterService, address);
}

/**
 * Runs one generation over StreamGenerateImage. `onEvent` sees every event before the result;
 * resolves with the GenerateImageResponse, rejects with an ImagegateError.
 */
export function generate(client, key, request, { onEvent = () => {}, timeoutSeconds = 120 } = {}) {
  const message = create(StreamGenerateImageRequestSchema, {
    request: create(GenerateImageRequestSchema, { requestId: crypto.randomUUID(), ...request }),
  });
  return new Promise((resolvePromise, reject) => {
    let result = null;
    let failed = false;
    const call = client.streamGenerateImage(message, bearer(key), { deadline: deadlineIn(timeoutSeconds) });
    call.on("data", (event) => {
      if (event.event.case === "result") result = event.event.value;
      else onEvent(event);
    });
    call.on("error", (err) => {
      failed = true;
      reject(toImagegateError(err));
    });
    call.on("end", () => {
      if (failed) return;
      if (result === null) reject(new Error("the stream ended without a result"));
      else resolvePromise(result);
    });
  });
}

/** A progress line for a stream event, or null for events with nothing to show. */
export function describeEvent(event) {
  const { case: kind, value } = event.event;
  const at = `[${event.elapsedSeconds.toFixed(1).padStart(5)}s]`;
  switch (kind) {
    case "accepted":
      return `${at} accepted; candidates: ${value.candidates.join(", ")}`;
    case "attemptStarted":
      return `${at} attempt ${value.attemptNumber}: ${value.provider} ${value.providerModel}`;
    case "progress": {
      const parts = [value.provider, value.state];
      if (value.queuePosition >= 0) parts.push(`queue position ${value.queuePosition}`);
      if (value.fraction >= 0) parts.push(`${Math.round(value.fraction * 100)}%`);
      return `${at} ${parts.filter(Boolean).join(" ")}`;
    }
    case "attemptFailed":
      return `${at} attempt ${value.attemptNumber} failed: ${value.errorReason}`;
    case "failover":
      return `${at} failover ${value.fromProvider} -> ${value.toProvider} (${value.reason})`;
    case "skipped":
      return `${at} skipped ${value.provider} ${value.providerModel}: ${value.detail}`;
    default:
      return null;
  }
}
