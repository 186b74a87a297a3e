// world switchyard:plugin/plugin@0.1.0
export type Identity = import('./interfaces/switchyard-plugin-types.js').Identity;
export type ConnectInfo = import('./interfaces/switchyard-plugin-types.js').ConnectInfo;
export type ConnectDecision = import('./interfaces/switchyard-plugin-types.js').ConnectDecision;
export type SubscribeDecision = import('./interfaces/switchyard-plugin-types.js').SubscribeDecision;
export type PublishDecision = import('./interfaces/switchyard-plugin-types.js').PublishDecision;
export type GroupContext = import('./interfaces/switchyard-plugin-types.js').GroupContext;
export type DeliverDecision = import('./interfaces/switchyard-plugin-types.js').DeliverDecision;
export type * as SwitchyardPluginHost010 from './interfaces/switchyard-plugin-host.js'; // import switchyard:plugin/host@0.1.0
export type * as SwitchyardPluginTypes010 from './interfaces/switchyard-plugin-types.js'; // import switchyard:plugin/types@0.1.0
/**
* Called once per instance with the binding's config (JSON text); an error refuses the plugin.
*/
export function init(config: string): void;
/**
* Called when a client connects, for the plugin configured as the gateway's connect plugin.
*/
export function onConnect(info: ConnectInfo): ConnectDecision;
/**
* Called when `who` asks to subscribe to `channel`.
*/
export function onSubscribe(who: Identity, channel: string): SubscribeDecision;
/**
* Called when `who` publishes `data` (JSON text) to `channel`.
*/
export function onPublish(who: Identity, channel: string, data: string): PublishDecision;
/**
* Called once per message per delivery group on a node, before the frame is encoded.
*/
export function onDeliver(group: GroupContext, channel: string, data: string): DeliverDecision;
