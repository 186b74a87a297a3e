/** A position in a channel's history: meaningful only together with its epoch. */
export interface Position {
  /** Goes up by one per message published on the channel. */
  offset: number;
  /** Changes whenever the channel's history was lost. */
  epoch: string;
}

/** Any frame the gateway sends; fields are checked where they are read. */
export interface ServerFrame {
  type?: unknown;
  id?: unknown;
  channel?: unknown;
  data?: unknown;
  offset?: unknown;
  epoch?: unknown;
  recovered?: unknown;
  server?: unknown;
  code?: unknown;
  message?: unknown;
  user?: unknown;
  info?: unknown;
  expires_at?: unknown;
  in_secs?: unknown;
  [field: string]: unknown;
}

/** The `offset` and `epoch` of a frame, when it carries both. */
export function positionOf(frame: ServerFrame): Position | undefined {
  const { offset, epoch } = frame;
  return typeof offset === "number" && typeof epoch === "string" ? { offset, epoch } : undefined;
}

/** One stored message as a `history` reply lists it. */
export interface HistoryMessage {
  offset: number;
  data: unknown;
}

/** The answer to {@link Client.history}. */
export interface HistoryResult {
  channel: string;
  /** The channel's current position (absent when the channel never had a message). */
  offset?: number;
  epoch?: string;
  /** The oldest offset history still holds. */
  first?: number;
  messages: HistoryMessage[];
  /** The limit applied (lowered to 1,000 when more was asked, then `clamped` is true). */
  limit?: number;
  clamped?: boolean;
  /** With `since`: whether the messages follow it with nothing lost. */
  recovered?: boolean;
}

/** The answer to {@link Client.publish}: the message's position on channels with history. */
export interface PublishResult {
  offset?: number;
  epoch?: string;
}
