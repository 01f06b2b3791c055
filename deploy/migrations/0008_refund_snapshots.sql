-- The processor's time (its webhook event's `created`) of the last snapshot applied to each
-- refund: webhooks arrive out of order, and a snapshot older than that one is skipped instead of
-- moving the refund back (a stale `pending` after `requires_action`). Whole seconds: a tie is
-- left to the state machine.
ALTER TABLE refunds ADD COLUMN processor_snapshot_at timestamptz;

-- When a succeeded refund turned failed at its processor (a reversal): its amount is refundable
-- again, and the billing core has to take back what it recorded as refunded.
ALTER TABLE refunds ADD COLUMN reversed_at timestamptz;
