// Turns a plugin module into the five exports of the `plugin` world: the config parsed from
// JSON before `init` sees it, an exception from `init` as the refusal, defaults for the hooks
// the module leaves out. Used by the build (as the component's entry) and by the test harness.
import { accept, allow, deliver, pass } from "./index.js";

/** The world's exports for `plugin` (the module's namespace object). */
export function adapt(plugin) {
  const hook = (name, fallback) => (typeof plugin[name] === "function" ? plugin[name] : fallback);
  const onConnect = hook("onConnect", () => accept());
  const onSubscribe = hook("onSubscribe", () => allow());
  const onPublish = hook("onPublish", () => pass());
  const onDeliver = hook("onDeliver", () => deliver());
  return {
    init(configText) {
      let config;
      try {
        config = configText && configText !== "null" ? JSON.parse(configText) : {};
      } catch (e) {
        throw `invalid config: ${e.message}`;
      }
      if (typeof plugin.init !== "function") return;
      try {
        plugin.init(config);
      } catch (e) {
        // The contract's result<_, string>: the message is the refusal.
        throw e instanceof Error ? e.message : String(e);
      }
    },
    onConnect: (info) => onConnect(info),
    onSubscribe: (who, channel) => onSubscribe(who, channel),
    onPublish: (who, channel, data) => onPublish(who, channel, data),
    onDeliver: (group, channel, data) => onDeliver(group, channel, data),
  };
}
