-- Callbacks carry the request id of the change they describe (X-Request-ID towards the billing
-- core); rows written before this migration have none and get a fresh one when delivered.
ALTER TABLE outbox_events ADD COLUMN request_id text;

-- Every metrics scrape counts the webhook events still to apply or parked, by processor and status.
CREATE INDEX webhook_events_open_idx ON webhook_events (processor_id, status)
    WHERE status IN ('received', 'failed', 'unmatched');
