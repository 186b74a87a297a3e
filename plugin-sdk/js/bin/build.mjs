#!/usr/bin/env node
// switchyard-plugin-js: builds a JavaScript plugin into a WebAssembly component.
//
//   switchyard-plugin-js build <plugin.js> [-o <out.wasm>]
//
// The plugin module is wrapped (src/adapter.js: config parsing, defaults for missing hooks),
// bundled into one ES module with esbuild (so it may import "@switchyard/plugin" and npm
// packages), and componentized by componentize-js against plugin-sdk/wit with every WASI
// feature disabled: the gateway provides nothing but switchyard:plugin/host.
import { componentize } from "@bytecodealliance/componentize-js";
import { build } from "esbuild";
import { mkdtempSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const SDK = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const WIT = resolve(SDK, "../wit");
/** Everything componentize-js can leave out: the component then imports no WASI at all. */
const DISABLE = ["stdio", "random", "clocks", "http", "fetch-event"];
const HOOKS = ["init", "onConnect", "onSubscribe", "onPublish", "onDeliver"];

/** Builds `entry` into component bytes. */
export async function buildPlugin(entry) {
  const work = mkdtempSync(join(tmpdir(), "switchyard-plugin-js-"));
  try {
    const wrapper = join(work, "entry.js");
    writeFileSync(
      wrapper,
      `import * as plugin from ${JSON.stringify(resolve(entry))};\n` +
        `import { adapt } from ${JSON.stringify(join(SDK, "src/adapter.js"))};\n` +
        `const hooks = adapt(plugin);\n` +
        HOOKS.map((h) => `export function ${h}(...args) { return hooks.${h}(...args); }\n`).join(""),
    );
    const bundle = join(work, "bundle.js");
    await build({
      entryPoints: [wrapper],
      bundle: true,
      format: "esm",
      platform: "neutral",
      target: "es2022",
      outfile: bundle,
      external: ["switchyard:plugin/*"],
      alias: { "@switchyard/plugin": join(SDK, "src/index.js") },
      logLevel: "warning",
    });
    const { component } = await componentize({
      sourcePath: bundle,
      witPath: WIT,
      worldName: "plugin",
      disableFeatures: DISABLE,
    });
    return component;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { out: { type: "string", short: "o" }, help: { type: "boolean", short: "h" } },
  });
  const [command, entry] = positionals;
  if (values.help || command !== "build" || !entry) {
    console.error("usage: switchyard-plugin-js build <plugin.js> [-o <out.wasm>]");
    process.exit(values.help ? 0 : 2);
  }
  const out = values.out ?? `${basename(entry).replace(/\.[cm]?js$/, "")}.wasm`;
  const started = Date.now();
  const component = await buildPlugin(entry);
  writeFileSync(out, component);
  console.error(`${out}: ${(component.length / 1e6).toFixed(1)} MB in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

// Run as a command (also through node_modules/.bin's symlink), not when imported.
if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(`switchyard-plugin-js: ${e.message ?? e}`);
    process.exit(1);
  });
}
