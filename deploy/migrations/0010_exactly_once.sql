-- Exactly once when time lies.
--
-- lease_token: the fencing token of a refund's processor call. Every move into `sending` (the
-- creation, a janitor's claim, a replay) takes the next one; an answer recorded under an older
-- token is kept as an attempt and never moves the refund.
ALTER TABLE refunds ADD COLUMN lease_token bigint NOT NULL DEFAULT 1;

-- The latest time a refund request for it may have been sent: the start of the newest call, or,
-- when a lease is taken over from a call whose answer never came, that lease's expiry. A processor
-- without idempotency keys may still carry a request out until this time plus its execution
-- window, so "no record" from a look-up means "never executed" only after that.
ALTER TABLE refunds ADD COLUMN last_sent_at timestamptz;

-- When to look a resent refund up again at a processor without idempotency keys: a second
-- execution found then turns it into requires_attention (duplicate_at_processor).
ALTER TABLE refunds ADD COLUMN verify_at timestamptz;
CREATE INDEX refunds_verify_due_idx ON refunds (verify_at) WHERE verify_at IS NOT NULL;

-- The processor's ids of executions beyond the first (a duplicate), kept beside psp_refund_id.
ALTER TABLE refunds ADD COLUMN duplicate_psp_refund_ids text[] NOT NULL DEFAULT '{}';

-- Parked (`unmatched`) webhook events are swept on a schedule too: the inbox's due index covers them.
DROP INDEX webhook_events_due_idx;
CREATE INDEX webhook_events_due_idx ON webhook_events (next_attempt_at)
    WHERE status IN ('received', 'failed', 'unmatched');
