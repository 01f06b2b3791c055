-- GET /v1/events serves the outbox in commit order. Ids come from a sequence and commit out of
-- order (id 3 still open while id 4 commits), so a cursor on ids alone could pass an event for
-- good. Each row records the transaction that wrote it; a row is served only once every
-- transaction as old as its own has ended, in (xid, id) order, which is the cursor's order.
-- Rows written before this migration share the migration's xid and keep their id order.
ALTER TABLE outbox_events ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX outbox_events_xid_idx ON outbox_events (xid, id);

-- A verified event whose body the adapter cannot read is stored too (status failed, the reason in
-- last_error) with no parsed event yet: reprocessing parses the stored body again. `signature` is
-- the signature check's result, kept with the raw headers and body: 'verified' for every row here
-- (what fails the check is a rejection, in webhook_rejections with its reason).
ALTER TABLE webhook_events ALTER COLUMN event DROP NOT NULL;
ALTER TABLE webhook_events ADD COLUMN signature text NOT NULL DEFAULT 'verified';
