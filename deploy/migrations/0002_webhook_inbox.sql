-- Processor webhooks and refunds the gateway did not create.

-- Every verified event, stored before the processor gets its 2xx, once per processor event id.
CREATE TABLE webhook_events (
    id              bigserial PRIMARY KEY,
    processor_id    text NOT NULL,
    event_id        text NOT NULL,
    event_type      text NOT NULL,
    headers         jsonb NOT NULL,
    body            bytea NOT NULL,         -- the raw bytes the signature was checked on
    event           jsonb NOT NULL,         -- what the adapter made of it (adapters.base.WebhookEvent)
    match_keys      text[] NOT NULL,        -- payment and refund ids it names, to match it again later
    status          text NOT NULL DEFAULT 'received'
                    CHECK (status IN ('received', 'applied', 'unmatched', 'failed', 'ignored')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    received_at     timestamptz NOT NULL DEFAULT now(),
    processed_at    timestamptz,
    UNIQUE (processor_id, event_id)
);
CREATE INDEX webhook_events_due_idx ON webhook_events (next_attempt_at) WHERE status IN ('received', 'failed');
CREATE INDEX webhook_events_unmatched_idx ON webhook_events USING gin (match_keys) WHERE status = 'unmatched';

-- A refund made outside the gateway (in the processor's dashboard) is recorded too, so the
-- refundable balance stays true; it has no idempotency key of ours.
ALTER TABLE refunds ADD COLUMN origin text NOT NULL DEFAULT 'gateway' CHECK (origin IN ('gateway', 'external'));

-- Such a refund is a fact that can arrive while our own refunds hold reservations, so the
-- hard limit is on what was refunded; reservations are checked under the row lock.
ALTER TABLE transactions DROP CONSTRAINT transactions_not_over_refunded;
ALTER TABLE transactions ADD CONSTRAINT transactions_not_over_refunded CHECK (refunded_amount <= amount);
