-- Reconciliation: the gateway's books held against each processor's, run by run.

CREATE TABLE reconciliation_runs (
    id               bigserial PRIMARY KEY,
    processor_id     text NOT NULL,
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    trigger          text NOT NULL CHECK (trigger IN ('command', 'schedule')),
    status           text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'finished', 'failed')),
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    processor_refunds integer,   -- how many the processor listed
    gateway_refunds  integer,    -- how many of ours were compared
    counts           jsonb NOT NULL DEFAULT '{}',  -- new findings by kind
    error            text,
    CHECK (period_start < period_end)
);
CREATE INDEX reconciliation_runs_processor_idx ON reconciliation_runs (processor_id, id);

CREATE TABLE reconciliation_findings (
    id               bigserial PRIMARY KEY,
    run_id           bigint NOT NULL REFERENCES reconciliation_runs (id),
    processor_id     text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('missing_in_gateway', 'missing_at_processor',
                                                   'duplicate_at_processor', 'amount_mismatch', 'status_mismatch')),
    key              text NOT NULL,  -- what it is about: a later run finding the same thing adds nothing
    refund_id        text,
    transaction_id   text,
    psp_refund_id    text,
    gateway          jsonb,          -- the gateway's facts
    processor        jsonb,          -- the processor's facts
    action           text,           -- what the run did about it (recorded as an external refund, or nothing)
    status           text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    resolved_at      timestamptz,
    resolved_by      text,
    resolution       text
);
CREATE UNIQUE INDEX reconciliation_findings_open_idx ON reconciliation_findings (processor_id, kind, key)
    WHERE status = 'open';
CREATE INDEX reconciliation_findings_status_idx ON reconciliation_findings (status, id);

-- Scheduled runs: one row per processor, claimed when due, so that one replica runs each.
CREATE TABLE reconciliation_schedule (
    processor_id     text PRIMARY KEY,
    next_run_at      timestamptz NOT NULL
);
