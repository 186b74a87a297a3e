// {{name}}: upper-cases the `text` of every message published to the channels it is bound to
// (a starting point: edit onPublish, or export onSubscribe, onDeliver, onConnect).
import { forward, pass } from "@switchyard/plugin";

export function onPublish(who, channel, data) {
  const msg = JSON.parse(data);
  if (typeof msg?.text !== "string") return pass();
  return forward([channel, { ...msg, text: msg.text.toUpperCase() }]);
}
