-- The durable retry budget counts the processor calls made for a refund after this attempt id: an
-- operator's replay moves it to the last call so far, and the refund gets a new budget. (Kept on
-- the refund, in the replay's transaction, so that no clock is compared with another.)
ALTER TABLE refunds ADD COLUMN budget_after_attempt bigint NOT NULL DEFAULT 0;
