-- The credit note's refund as the billing core lives it: a retry after a decline, an off-PSP refund,
-- one credit note over several payments, a next action for every failure, a void's balance.

-- A credit note may have several refunds over time (a retry after a decline) and at once (one per
-- payment of a split invoice): no longer one per payment. Each retry names the refund it follows,
-- and a refund is followed at most once (two retries of one decline racing cannot both land).
ALTER TABLE refunds DROP CONSTRAINT refunds_transaction_id_credit_note_id_key;
ALTER TABLE refunds ADD COLUMN previous_refund_id text REFERENCES refunds (id);
CREATE UNIQUE INDEX refunds_previous_refund_idx ON refunds (previous_refund_id) WHERE previous_refund_id IS NOT NULL;

-- The bank transfer's or voucher's reference of a refund made outside the processor.
ALTER TABLE refunds ADD COLUMN external_reference text;

-- 'offline': recorded by the billing core as refunded outside the processor, never sent to it.
ALTER TABLE refunds DROP CONSTRAINT refunds_origin_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_origin_check CHECK (origin IN ('gateway', 'external', 'offline'));

-- What the billing core can do about a failed or stuck refund (NULL: nothing).
ALTER TABLE refunds ADD COLUMN next_action text
    CHECK (next_action IN ('retry', 'refund_offline', 'contact_support'));

-- A processor that voids an unsettled sale (BridgePay) allows one void per sale: after it, nothing
-- more is refundable through the processor until the payment is registered as settled.
ALTER TABLE transactions ADD COLUMN voided_at timestamptz;
