#!/usr/bin/env node
// node src/generate.js PROMPT OUT.png [--model M] [--n N] [--size WxH]: progress on stderr.
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { apiKey, describeEvent, generate, routerClient } from "./client.js";
import { ImagegateError } from "./errors.js";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { model: { type: "string" }, n: { type: "string", default: "1" }, size: { type: "string" } },
});
if (positionals.length !== 2) {
  console.error("usage: node src/generate.js PROMPT OUT.png [--model M] [--n N] [--size WxH]");
  process.exit(2);
}
const [prompt, output] = positionals;
const [width, height] = (values.size ?? "0x0").split("x").map(Number);
const client = routerClient();
try {
  const result = await generate(
    client,
    apiKey(),
    { prompt, model: values.model ?? "", numImages: Number(values.n), width, height },
    { onEvent: (event) => { const line = describeEvent(event); if (line) console.error(line); } },
  );
  result.images.forEach((image, i) => {
    const path = result.images.length > 1 ? output.replace(/(\.\w+)?$/, `-${i + 1}$1`) : output;
    writeFileSync(path, image.data);
    console.log(`wrote ${path} (${image.width}x${image.height} ${image.mimeType})`);
  });
  console.log(`provider ${result.provider} model ${result.model} cost ${result.costMicros} micro-USD trace ${result.traceId}`);
} catch (err) {
  console.error(err instanceof ImagegateError ? err.format() : `error: ${err.message}`);
  process.exitCode = 1;
} finally {
  client.close();
}
