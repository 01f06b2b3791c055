-- The inbox is claimed in due order straight from an index, whatever its backlog: fresh and failed
-- events from one index, parked (`unmatched`) ones from another, after them.
DROP INDEX webhook_events_due_idx;
CREATE INDEX webhook_events_due_idx ON webhook_events (next_attempt_at, id) WHERE status IN ('received', 'failed');
CREATE INDEX webhook_events_parked_due_idx ON webhook_events (next_attempt_at, id) WHERE status = 'unmatched';
