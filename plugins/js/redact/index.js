// redact, in JavaScript: the same behaviour as plugins/redact (Rust). Masks e-mail addresses
// and card-like numbers in every string value of a published message (at any depth; object
// keys and numbers are left alone) and forwards the redacted message to its own channel; a
// message with nothing to mask passes unchanged, and is not even parsed when its raw text
// cannot hold a match.
//
// Config (all optional): { "mask": "[redacted]", "luhn": false }; with luhn only digit runs
// passing the Luhn checksum count as card numbers.
import { forward, pass, reject } from "@switchyard/plugin";

const DEFAULTS = { mask: "[redacted]", luhn: false };
/** Deeper JSON is refused rather than passed unscanned (as the Rust SDK's parser does). */
const MAX_DEPTH = 128;

// local@domain.tld: local part [A-Za-z0-9._%+-], dot-separated [A-Za-z0-9-] labels, the last
// 2+ letters; not glued to more address characters on either side.
const EMAIL = /(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![A-Za-z0-9-]|\.[A-Za-z0-9])/g;
// 13-19 digits, optionally split by single spaces or dashes, not glued to letters or digits.
const CARD = /(?<![A-Za-z0-9])\d(?:[ -]?\d){12,18}(?![A-Za-z0-9])/g;

let config = DEFAULTS;

export function init(given) {
  const unknown = Object.keys(given).filter((k) => !(k in DEFAULTS));
  if (unknown.length) throw new Error(`invalid config: unknown field \`${unknown[0]}\`, expected \`mask\` or \`luhn\``);
  if (given.mask !== undefined && typeof given.mask !== "string") throw new Error("invalid config: `mask` must be a string");
  if (given.luhn !== undefined && typeof given.luhn !== "boolean") throw new Error("invalid config: `luhn` must be a boolean");
  config = { ...DEFAULTS, ...given };
}

export function onPublish(who, channel, data) {
  if (!mayContainMatch(data)) return pass();
  let value;
  try {
    value = JSON.parse(data);
    if (depth(value) > MAX_DEPTH) throw new Error("recursion limit exceeded");
  } catch (e) {
    return reject(`cannot inspect message: ${e.message}`);
  }
  const [redacted, changed] = redactValue(value);
  return changed ? forward([channel, redacted]) : pass();
}

/** Cheap test on the raw JSON text: `\u` escapes could spell `@` or digits. */
function mayContainMatch(data) {
  return data.includes("@") || data.includes("\\u") || (data.match(/\d/g)?.length ?? 0) >= 13;
}

function depth(v) {
  if (v === null || typeof v !== "object") return 0;
  let deepest = 0;
  for (const item of Object.values(v)) deepest = Math.max(deepest, depth(item));
  return deepest + 1;
}

/** `[value with every string redacted, whether anything changed]`. */
function redactValue(v) {
  if (typeof v === "string") {
    const r = redactString(v);
    return [r, r !== v];
  }
  if (Array.isArray(v)) {
    const out = v.map(redactValue);
    return [out.map(([x]) => x), out.some(([, c]) => c)];
  }
  if (v !== null && typeof v === "object") {
    let changed = false;
    const out = {};
    for (const [k, item] of Object.entries(v)) {
      const [x, c] = redactValue(item);
      out[k] = x;
      changed ||= c;
    }
    return [out, changed];
  }
  return [v, false];
}

function redactString(text) {
  const emails = text.replace(EMAIL, config.mask);
  return emails.replace(CARD, (m) => (!config.luhn || luhn(m.replace(/\D/g, "")) ? config.mask : m));
}

function luhn(digits) {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = Number(digits[digits.length - 1 - i]);
    if (i % 2 === 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return sum % 10 === 0;
}
