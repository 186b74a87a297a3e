/** @module Interface switchyard:plugin/host@0.1.0 **/
/**
 * Emit a structured log record; it lands in the gateway's log with the plugin's name and version.
 */
export function log(level: Level, message: string, fields: Array<[string, string]>): void;
/**
 * Current wall-clock time in milliseconds since the Unix epoch.
 */
export function nowMs(): bigint;
export type Level = import('./switchyard-plugin-types.js').Level;
