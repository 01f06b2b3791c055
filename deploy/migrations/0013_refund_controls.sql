-- Refund controls: refunds over a threshold wait for a second person's approval, and every refund
-- keeps the client that asked for it (the approver must be another).
ALTER TABLE refunds DROP CONSTRAINT refunds_stage_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_stage_check CHECK (stage IN
    ('not_sent', 'sending', 'outcome_unknown', 'pending_at_processor', 'done', 'awaiting_approval'));
ALTER TABLE refunds ADD COLUMN requested_by text;
CREATE INDEX refunds_requested_by_idx ON refunds (requested_by, created_at) WHERE requested_by IS NOT NULL;
CREATE INDEX refunds_awaiting_approval_idx ON refunds (created_at) WHERE stage = 'awaiting_approval';
