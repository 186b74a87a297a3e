// The contract's TypeScript types (types/) are what `npm run types` generates from
// plugin-sdk/wit now: a WIT change without regenerating them fails here.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { join, relative } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const SDK = fileURLToPath(new URL("../", import.meta.url));
const JCO = join(SDK, "node_modules/.bin/jco");

function files(dir) {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath ?? e.path, e.name)))
    .sort();
}

test("types/ matches the WIT", () => {
  // jco reads WIT only below its working directory.
  const out = mkdtempSync(join(SDK, ".types-check-"));
  try {
    execFileSync(JCO, ["types", "wit", "--world-name", "plugin", "-o", relative(join(SDK, ".."), out)], {
      cwd: join(SDK, ".."),
      stdio: "pipe",
    });
    const committed = join(SDK, "types");
    assert.deepEqual(files(out), files(committed));
    for (const f of files(committed)) {
      assert.equal(readFileSync(join(out, f), "utf8"), readFileSync(join(committed, f), "utf8"), `types/${f}: run npm run types`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
