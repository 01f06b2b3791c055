-- The operator console's chart counts refunds reaching an outcome, by hour: an index on when,
-- over only the events that are outcomes, so that the last day is read without a full scan.
CREATE INDEX refund_events_outcome_idx ON refund_events (created_at)
    WHERE to_status IN ('succeeded', 'failed', 'requires_attention');
