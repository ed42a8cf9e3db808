// A run's event stream through EventSource, exact across reconnects.
//
// EventSource cannot send headers, so each connection starts with a stream token
// (`POST /runs/{id}/stream-token`, valid ADE_STREAM_TOKEN_TTL_S) and opens its `events_url`.
// - Within one EventSource the browser reconnects by itself after a network error, sending
//   Last-Event-ID, which the server resumes after.
// - When the server refuses a reconnect (typically: the token expired, 401), the EventSource closes for
//   good. A new token is fetched and a new EventSource opened with `after_sequence=<last seen>` (a new
//   EventSource cannot set Last-Event-ID).
// - Every event whose sequence is <= the last one seen is ignored, so replays never duplicate.
// - `event: end` (after the terminal event) closes the stream.

import { api, ApiError } from "./api.js";

const FIRST_RETRY_MS = 250;
const MAX_RETRY_MS = 15_000;

export class RunStream {
  /**
   * @param {string} runId
   * @param {{onEvent: (event: object) => void, onEnd?: () => void,
   *          onState?: (state: string, detail?: string) => void}} handlers
   */
  constructor(runId, { onEvent, onEnd = () => {}, onState = () => {} }) {
    this.runId = runId;
    this.onEvent = onEvent;
    this.onEnd = onEnd;
    this.onState = onState;
    this.lastSequence = 0;
    this.connections = 0;
    this.source = null;
    this.closed = false;
    this.timer = null;
    this.retryMs = FIRST_RETRY_MS;
  }

  start() {
    this.connect();
    return this;
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.source?.close();
    this.source = null;
  }

  async connect() {
    if (this.closed) return;
    this.onState(this.connections ? "reconnecting" : "connecting");
    let token;
    try {
      token = await api(`/runs/${encodeURIComponent(this.runId)}/stream-token`, { method: "POST" });
    } catch (error) {
      if (error instanceof ApiError && [401, 403, 404].includes(error.status)) {
        this.onState("failed", error.message);
        return;
      }
      this.retry(error.message);
      return;
    }
    if (this.closed) return;
    const url = new URL(token.events_url, window.location.origin);
    url.searchParams.set("after_sequence", String(this.lastSequence));
    const source = new EventSource(url);
    this.source = source;
    this.connections += 1;

    source.addEventListener("open", () => {
      this.retryMs = FIRST_RETRY_MS;
      this.onState("live");
    });
    source.addEventListener("ade.event", (message) => {
      const event = JSON.parse(message.data);
      if (event.sequence <= this.lastSequence) return;
      this.lastSequence = event.sequence;
      this.onEvent(event);
    });
    source.addEventListener("end", () => {
      this.close();
      this.onState("ended");
      this.onEnd();
    });
    source.addEventListener("error", () => {
      if (this.closed || source !== this.source) return;
      if (source.readyState === EventSource.CLOSED) {
        // Refused (an expired token, too many streams, a restarting server): start over with a new token.
        this.source = null;
        this.retry("the stream was refused");
      } else {
        this.onState("reconnecting"); // the browser retries by itself, sending Last-Event-ID
      }
    });
  }

  retry(reason) {
    if (this.closed) return;
    this.onState("reconnecting", reason);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
  }
}
