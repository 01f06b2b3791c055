-- The refund core: original payments, refunds, one row per processor call, the refund's
-- history, and the API's idempotency keys. Amounts are bigint minor units.

CREATE TABLE transactions (
    id              text PRIMARY KEY,
    processor_id    text NOT NULL,
    psp_reference   text NOT NULL,
    invoice_id      text NOT NULL,
    customer_id     text,
    amount          bigint NOT NULL CHECK (amount > 0),
    currency        char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    captured_at     timestamptz,
    settled_at      timestamptz,
    refunded_amount bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    reserved_amount bigint NOT NULL DEFAULT 0 CHECK (reserved_amount >= 0),
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (processor_id, psp_reference),
    -- The last line of defence against over-refunding: no code path can break it.
    CONSTRAINT transactions_not_over_refunded CHECK (refunded_amount + reserved_amount <= amount)
);
CREATE INDEX transactions_invoice_idx ON transactions (invoice_id);
CREATE INDEX transactions_psp_reference_idx ON transactions (psp_reference);

CREATE TABLE refunds (
    id               text PRIMARY KEY,
    transaction_id   text NOT NULL REFERENCES transactions (id),
    processor_id     text NOT NULL,
    invoice_id       text NOT NULL,
    credit_note_id   text,
    amount           bigint NOT NULL CHECK (amount > 0),
    currency         char(3) NOT NULL,
    reason           text,
    metadata         jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL CHECK (status IN
                       ('pending', 'succeeded', 'failed', 'requires_attention', 'refunded_offline', 'canceled')),
    stage            text NOT NULL CHECK (stage IN
                       ('not_sent', 'sending', 'outcome_unknown', 'pending_at_processor', 'done')),
    idempotency_key  text NOT NULL UNIQUE,
    psp_refund_id    text,
    failure_code     text,
    failure_message  text,
    attempts         integer NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,      -- set while a processor call is in flight
    next_attempt_at  timestamptz,      -- when background work should look at it next
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (transaction_id, credit_note_id)
);
CREATE INDEX refunds_invoice_idx ON refunds (invoice_id, id);
CREATE INDEX refunds_credit_note_idx ON refunds (invoice_id, credit_note_id) WHERE credit_note_id IS NOT NULL;
CREATE INDEX refunds_status_idx ON refunds (status, id);
CREATE INDEX refunds_transaction_idx ON refunds (transaction_id);
CREATE INDEX refunds_psp_refund_idx ON refunds (processor_id, psp_refund_id) WHERE psp_refund_id IS NOT NULL;
CREATE INDEX refunds_due_idx ON refunds (next_attempt_at) WHERE stage = 'pending_at_processor';

CREATE TABLE refund_attempts (
    id             bigserial PRIMARY KEY,
    refund_id      text NOT NULL REFERENCES refunds (id),
    call           text NOT NULL CHECK (call IN ('refund', 'lookup')),
    started_at     timestamptz NOT NULL,
    latency_ms     integer NOT NULL,
    outcome        text NOT NULL,      -- succeeded | pending | declined | canceled | needs_attention | error
    error_class    text,               -- transient | outcome_unknown | protocol_error
    processor_code text,
    message        text
);
CREATE INDEX refund_attempts_refund_idx ON refund_attempts (refund_id, id);

CREATE TABLE refund_events (
    id          bigserial PRIMARY KEY,
    refund_id   text NOT NULL REFERENCES refunds (id),
    event       text NOT NULL,
    from_status text,
    to_status   text NOT NULL,
    from_stage  text,
    to_stage    text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    request_id  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refund_events_refund_idx ON refund_events (refund_id, id);

CREATE TABLE idempotency_keys (
    client_id     text NOT NULL,
    key           text NOT NULL,
    method        text NOT NULL,
    path          text NOT NULL,
    request_hash  bytea NOT NULL,
    status_code   integer,             -- null while the first request is still running
    content_type  text,
    response_body bytea,
    resource_id   text,                -- what the first request created, for recovery after a crash
    locked_until  timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, key)
);
