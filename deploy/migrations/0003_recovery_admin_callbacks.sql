-- Durable recovery, operator actions, and callbacks to the billing core.

-- Each state change of a refund bumps its version; callbacks carry it so the billing core can
-- apply them in order (and ignore a replayed older one).
ALTER TABLE refunds ADD COLUMN version integer NOT NULL DEFAULT 1;
CREATE INDEX refunds_recovery_idx ON refunds (next_attempt_at)
    WHERE status = 'pending' AND stage IN ('not_sent', 'outcome_unknown');
CREATE INDEX refunds_leased_idx ON refunds (lease_expires_at) WHERE stage = 'sending';

-- The transactional outbox: written in the same transaction as the state change it describes,
-- delivered to the billing core at least once, in order per refund.
CREATE TABLE outbox_events (
    id              bigserial PRIMARY KEY,
    refund_id       text NOT NULL REFERENCES refunds (id),
    version         integer NOT NULL,
    type            text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    UNIQUE (refund_id, version)
);
CREATE INDEX outbox_undelivered_idx ON outbox_events (next_attempt_at, id) WHERE delivered_at IS NULL;

-- Every attempt to deliver a callback: the delivery log.
CREATE TABLE callback_deliveries (
    id           bigserial PRIMARY KEY,
    outbox_id    bigint NOT NULL REFERENCES outbox_events (id),
    attempted_at timestamptz NOT NULL DEFAULT now(),
    url          text NOT NULL,
    status_code  integer,
    error        text,
    latency_ms   integer NOT NULL
);
CREATE INDEX callback_deliveries_outbox_idx ON callback_deliveries (outbox_id);

-- Who did what to which refund or event, when and why.
CREATE TABLE admin_audit (
    id         bigserial PRIMARY KEY,
    actor      text NOT NULL,
    action     text NOT NULL,
    target     text,
    reason     text,
    request    jsonb NOT NULL DEFAULT '{}',
    result     jsonb NOT NULL DEFAULT '{}',
    request_id text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_audit_target_idx ON admin_audit (target, id);

-- Webhooks that failed verification: kept (bounded) for whoever investigates, never applied.
CREATE TABLE webhook_rejections (
    id           bigserial PRIMARY KEY,
    processor_id text NOT NULL,
    reason       text NOT NULL,
    headers      jsonb NOT NULL,
    body         bytea NOT NULL,
    body_bytes   integer NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_rejections_recent_idx ON webhook_rejections (processor_id, received_at);
