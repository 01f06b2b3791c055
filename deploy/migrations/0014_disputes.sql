-- Disputes (chargebacks): a payment under dispute takes no new refund and its unsent refunds wait;
-- a lost dispute counts its amount as charged back, out of what is refundable.

CREATE TABLE disputes (
    id               text PRIMARY KEY,
    processor_id     text NOT NULL,
    psp_dispute_id   text NOT NULL,
    transaction_id   text NOT NULL REFERENCES transactions (id),
    amount           bigint NOT NULL CHECK (amount > 0),
    currency         char(3) NOT NULL,
    status           text NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    funds_withdrawn  boolean NOT NULL DEFAULT false,
    reason           text,
    source           text NOT NULL CHECK (source IN ('webhook', 'operator')),
    version          integer NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (processor_id, psp_dispute_id)
);
CREATE INDEX disputes_transaction_idx ON disputes (transaction_id);

ALTER TABLE transactions ADD COLUMN charged_back_amount bigint NOT NULL DEFAULT 0 CHECK (charged_back_amount >= 0);

-- The billing core hears of dispute changes through the same outbox as refund changes.
ALTER TABLE outbox_events ALTER COLUMN refund_id DROP NOT NULL;
ALTER TABLE outbox_events ADD COLUMN dispute_id text REFERENCES disputes (id);
ALTER TABLE outbox_events ADD CONSTRAINT outbox_events_one_subject CHECK ((refund_id IS NULL) <> (dispute_id IS NULL));
CREATE UNIQUE INDEX outbox_events_dispute_version_idx ON outbox_events (dispute_id, version) WHERE dispute_id IS NOT NULL;
