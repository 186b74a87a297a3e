// allow-all in JavaScript: exports no hook, so every hook keeps the SDK's default (accept,
// allow, pass, deliver). The benchmarks' measure of what a JS plugin costs per call.
export {};
