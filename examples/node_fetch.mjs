// Node.js 18+ (global fetch), no dependencies: batches LogEntries to the sidecar's POST /api/logs,
// gzipped, one Idempotency-Key per batch kept across its retries, retrying 429/5xx/network errors
// with exponential backoff and full jitter, at least Retry-After.
//
//   SIDECAR_URL=http://127.0.0.1:8080 SIDECAR_TOKEN=$(cat data/dev-token) node examples/node_fetch.mjs
import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import { promisify } from "node:util";
import { gzip } from "node:zlib";

const gzipAsync = promisify(gzip);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const deadline = (ms) => new Promise((resolve) => setTimeout(resolve, ms).unref());

export class SidecarLogger {
  constructor({ service, url = process.env.SIDECAR_URL ?? "http://127.0.0.1:8080",
                token = process.env.SIDECAR_TOKEN, batchSize = 500, flushIntervalMs = 1000,
                maxQueue = 10000, timeoutMs = 10000, backoffBaseMs = 500, backoffCapMs = 30000 }) {
    Object.assign(this, { service, token, batchSize, maxQueue, timeoutMs, backoffBaseMs, backoffCapMs });
    this.endpoint = url.replace(/\/+$/, "") + "/api/logs";
    this.queue = [];
    this.dropped = 0;      // queue full, or rejected by the sidecar (4xx other than 429)
    this.sending = null;   // the flush in progress, if any
    this.timer = setInterval(() => this.flush(), flushIntervalMs);
    this.timer.unref();    // the timer alone never keeps the process alive
  }

  log(level, message, fields = {}, error = undefined) {
    if (this.queue.length >= this.maxQueue) { this.dropped++; return; }  // never block the app
    const { trace_id, span_id, user_id, ...metadata } = fields;
    const entry = { timestamp: new Date().toISOString(), level, service: this.service, message,
                    host: hostname(), trace_id, span_id, user_id, metadata };
    if (error) {
      entry.exception = { type: error.name, value: error.message };
      metadata.stack = error.stack;
    }
    this.queue.push(entry);
    if (this.queue.length >= this.batchSize) this.flush();
  }
  info(message, fields) { this.log("info", message, fields); }
  warn(message, fields) { this.log("warn", message, fields); }
  error(message, error, fields) { this.log("error", message, fields, error); }

  // Send everything queued, one batch at a time; resolves when the queue is empty.
  flush() {
    this.sending ??= (async () => {
      try {
        while (this.queue.length) await this.send(this.queue.splice(0, this.batchSize));
      } finally { this.sending = null; }
    })();
    return this.sending;
  }

  async send(batch) {
    if (this.dropped) {  // report drops in the next batch, as the Python handler does
      batch.push({ level: "warn", service: this.service, message: `sidecar client dropped ${this.dropped} records`,
                   metadata: { event: "sidecar.client.dropped", dropped: { total: this.dropped } } });
      this.dropped = 0;
    }
    const body = await gzipAsync(JSON.stringify(batch));
    const headers = { "Content-Type": "application/json", "Content-Encoding": "gzip",
                      "Authorization": `Bearer ${this.token}`, "Idempotency-Key": randomUUID() };
    for (let attempt = 0; ; attempt++) {
      let retryAfterMs = 0;
      try {
        const response = await fetch(this.endpoint, { method: "POST", headers, body,
                                                      signal: AbortSignal.timeout(this.timeoutMs) });
        await response.arrayBuffer();  // read the answer so the connection is reused
        if (response.ok) return;
        if (response.status !== 429 && response.status !== 409 && response.status < 500) {
          this.dropped += batch.length;  // 400/401/413: retrying would not help
          return;
        }
        const header = response.headers.get("Retry-After");
        if (header) retryAfterMs = /^\d+(\.\d+)?$/.test(header) ? Number(header) * 1000
                                                                : Math.max(0, Date.parse(header) - Date.now());
      } catch { /* connection refused, reset, timeout: retry */ }
      const backoff = Math.random() * Math.min(this.backoffCapMs, this.backoffBaseMs * 2 ** attempt);
      await sleep(Math.max(backoff, retryAfterMs || 0));
    }
  }

  async close() {
    clearInterval(this.timer);
    await this.flush();
  }
}

// Usage
const log = new SidecarLogger({ service: "web" });
log.info("order placed", { order_id: 1234, trace_id: "4bf92f3577b34da6", user_id: "u-42" });
log.warn("stock low", { sku: "A-17", left: 3 });
log.error("payment failed", new Error("card declined"), { order_id: 1234 });
// On shutdown (SIGTERM, the end of a script): wait for the last batch, but at most 5 s.
const sent = await Promise.race([log.close().then(() => true), deadline(5000).then(() => false)]);
if (!sent) console.error("sidecar unreachable: the last logs were not sent");
process.exit(0);
