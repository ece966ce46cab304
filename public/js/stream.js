// One EventSource for every symbol: the browser reconnects it by itself and sends Last-Event-ID, and
// the server then replays exactly what was missed. If the browser gives up (readyState CLOSED), a new
// EventSource resumes from the last id through the `last_event_id` query parameter.

export class TickStream {
  constructor(onTicks, onState) {
    this.onTicks = onTicks;
    this.onState = onState;
    this.lastGseq = 0;
    this.lastSeq = new Map();
    this.gaps = 0;
    this.pending = [];
    this.frame = 0;
    this.retryMs = 1000;
    this.open();
  }

  open() {
    const url = this.lastGseq ? `stream/sse?last_event_id=${this.lastGseq}` : "stream/sse";
    this.source = new EventSource(url);
    this.source.onopen = () => { this.retryMs = 1000; this.onState("live"); };
    this.source.onerror = () => {
      if (this.source.readyState === EventSource.CLOSED) {
        this.onState("reconnecting");
        setTimeout(() => this.open(), this.retryMs);
        this.retryMs = Math.min(this.retryMs * 2, 30000);  // back off, never a reconnect storm
      } else {
        this.onState("reconnecting");
      }
    };
    this.source.addEventListener("tick", (event) => this.receive(JSON.parse(event.data)));
  }

  receive(tick) {
    if (tick.gseq <= this.lastGseq) return;  // never apply a tick twice
    const previous = this.lastSeq.get(tick.symbol);
    if (previous !== undefined && tick.seq !== previous + 1) this.gaps += 1;
    this.lastSeq.set(tick.symbol, tick.seq);
    this.lastGseq = tick.gseq;
    this.pending.push(tick);
    // Batch everything that arrives within one frame into one chart update.
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    const ticks = this.pending;
    this.pending = [];
    this.onTicks(ticks);
    document.body.dataset.lastGseq = String(this.lastGseq);
    document.body.dataset.gaps = String(this.gaps);
  }
}
