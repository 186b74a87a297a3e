// What the browser tests share: the repository's paths, Debian's chromium launched through
// playwright-core (which downloads no browser), and screenshots checked for content.
//
// Processes come from the JS client's test harness (clients/js/build/test, compiled by the JS
// suite, which scripts/test.sh runs first): every one is stopped when its test ends.
import assert from "node:assert/strict";
import { mkdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

export * from "../../clients/js/build/test/harness.js";

/** The repository root. */
export const REPO = fileURLToPath(new URL("../../", import.meta.url));
/** The system browser (Debian's `chromium` package) unless CHROMIUM names another. */
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** One viewport for every page, so screenshots compare with the blank one. */
export const VIEWPORT = { width: 1100, height: 760 };

/**
 * A headless browser closed when test `t` ends, and `shot(page, name, options)`, which saves a
 * screenshot (playwright's options, e.g. fullPage) under target/<dir>/ (emptied first) and
 * checks it is far from blank: several times the size of a blank page's at the same viewport.
 */
export async function browserFor(t, dir) {
  const shots = join(REPO, "target", dir);
  rmSync(shots, { recursive: true, force: true });
  mkdirSync(shots, { recursive: true });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  t.after(() => browser.close());
  const blank = (await (await browser.newPage({ viewport: VIEWPORT })).screenshot()).length;
  const shot = async (page, name, options = {}) => {
    const path = join(shots, `${name}.png`);
    await page.screenshot({ path, ...options });
    const bytes = statSync(path).size;
    assert.ok(bytes > 3 * blank, `${name}.png is ${bytes} bytes, a blank page ${blank}: blank?`);
  };
  /** Runs `steps`; when one fails, saves what each of `pages` showed, then fails. */
  const recording = async (pages, steps) => {
    try {
      await steps();
    } catch (e) {
      for (const [name, page] of Object.entries(pages)) {
        await page.screenshot({ path: join(shots, `failed-${name}.png`) }).catch(() => {});
      }
      throw e;
    }
  };
  return { browser, shot, recording, shots };
}
