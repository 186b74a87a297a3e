/** @module Interface switchyard:plugin/types@0.1.0 **/
/**
 * Who is acting: the connection's identity after authentication and the connect hook.
 */
export interface Identity {
  /**
   * Stable user id, if the connection is authenticated.
   */
  user?: string,
  /**
   * Tenant the user belongs to, if any.
   */
  tenant?: string,
  /**
   * Extra claims as a JSON object (text); `{}` when there are none.
   */
  claims: string,
}
/**
 * What a plugin learns about a new connection.
 */
export interface ConnectInfo {
  /**
   * Peer address as `ip:port`.
   */
  remoteAddr: string,
  /**
   * Request headers the gateway is configured to forward (lower-case names).
   */
  headers: Array<[string, string]>,
  /**
   * Raw query string of the upgrade request, without the `?`.
   */
  query: string,
  /**
   * Identity verified by the gateway (anonymous when auth is off).
   */
  identity: Identity,
}
/**
 * Verdict of the connect hook.
 */
export type ConnectDecision = ConnectDecisionAccept | ConnectDecisionEnrich | ConnectDecisionReject;
/**
 * Accept the connection with its identity unchanged.
 */
export interface ConnectDecisionAccept {
  tag: 'accept',
}
/**
 * Accept and replace the identity (e.g. add tenant or claims).
 */
export interface ConnectDecisionEnrich {
  tag: 'enrich',
  val: Identity,
}
/**
 * Refuse the connection; the reason is sent to the client.
 */
export interface ConnectDecisionReject {
  tag: 'reject',
  val: string,
}
/**
 * Verdict of the subscribe hook.
 */
export type SubscribeDecision = SubscribeDecisionAllow | SubscribeDecisionAllowInGroup | SubscribeDecisionDeny;
/**
 * Allow, in the default delivery group (the subscriber's tenant).
 */
export interface SubscribeDecisionAllow {
  tag: 'allow',
}
/**
 * Allow, and deliver to this subscriber as part of the named group.
 */
export interface SubscribeDecisionAllowInGroup {
  tag: 'allow-in-group',
  val: string,
}
/**
 * Refuse; the reason is sent to the client with code `forbidden`.
 */
export interface SubscribeDecisionDeny {
  tag: 'deny',
  val: string,
}
/**
 * One message a publish hook routes onward.
 */
export interface Outgoing {
  /**
   * Destination channel.
   */
  channel: string,
  /**
   * Payload as JSON text.
   */
  data: string,
}
/**
 * Verdict of the publish hook.
 */
export type PublishDecision = PublishDecisionPass | PublishDecisionForward | PublishDecisionReject | PublishDecisionDrop;
/**
 * Publish the message unchanged to its own channel.
 */
export interface PublishDecisionPass {
  tag: 'pass',
}
/**
 * Publish these messages instead (zero or more, possibly rewritten or rerouted).
 */
export interface PublishDecisionForward {
  tag: 'forward',
  val: Array<Outgoing>,
}
/**
 * Refuse; the reason is sent to the publisher with code `forbidden`.
 */
export interface PublishDecisionReject {
  tag: 'reject',
  val: string,
}
/**
 * Discard silently; the publisher is acknowledged as if it had been published.
 */
export interface PublishDecisionDrop {
  tag: 'drop',
}
/**
 * The delivery group a message is about to be delivered to.
 */
export interface GroupContext {
  /**
   * Group key: the tenant, or the key a subscribe hook chose; empty for the default group.
   */
  key: string,
  /**
   * Tenant of the group's subscribers, if known.
   */
  tenant?: string,
}
/**
 * Verdict of the deliver hook.
 */
export type DeliverDecision = DeliverDecisionDeliver | DeliverDecisionRewrite | DeliverDecisionSkip;
/**
 * Deliver the message unchanged.
 */
export interface DeliverDecisionDeliver {
  tag: 'deliver',
}
/**
 * Deliver this JSON text instead.
 */
export interface DeliverDecisionRewrite {
  tag: 'rewrite',
  val: string,
}
/**
 * Do not deliver to this group.
 */
export interface DeliverDecisionSkip {
  tag: 'skip',
}
/**
 * Severity of a log record.
 * # Variants
 * 
 * ## `"trace"`
 * 
 * ## `"debug"`
 * 
 * ## `"info"`
 * 
 * ## `"warn"`
 * 
 * ## `"error"`
 */
export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
