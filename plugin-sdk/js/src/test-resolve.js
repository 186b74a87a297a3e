// Module resolution hook for the test harness: the contract's import resolves to test-host.js.
const HOST = new URL("./test-host.js", import.meta.url).href;

export async function resolve(specifier, context, next) {
  if (specifier.startsWith("switchyard:plugin/host@")) return { url: HOST, shortCircuit: true };
  return next(specifier, context);
}
