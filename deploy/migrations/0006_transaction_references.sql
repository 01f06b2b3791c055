-- Every id a payment is known by at its processor (a Stripe charge and its payment intent), each
-- naming one transaction: the second webhook about a payment finds the first one's transaction
-- instead of registering the payment again.
CREATE TABLE transaction_references (
    processor_id   text NOT NULL,
    reference      text NOT NULL,
    -- Deferred: a registration claims its references first, then writes the transaction they name.
    transaction_id text NOT NULL REFERENCES transactions (id) DEFERRABLE INITIALLY DEFERRED,
    PRIMARY KEY (processor_id, reference)
);
-- A refund request names a payment by reference without its processor.
CREATE INDEX transaction_references_reference_idx ON transaction_references (reference);

INSERT INTO transaction_references (processor_id, reference, transaction_id)
SELECT processor_id, psp_reference, id FROM transactions;

-- The other ids the stored webhooks gave the payments they registered. A payment registered twice
-- before this migration (once per id) keeps its two transactions: each id stays with its own.
INSERT INTO transaction_references (processor_id, reference, transaction_id)
SELECT DISTINCT ON (e.processor_id, o.reference) e.processor_id, o.reference, t.id
FROM webhook_events e
CROSS JOIN LATERAL jsonb_array_elements(e.event -> 'payments') AS p
JOIN transactions t ON t.processor_id = e.processor_id AND t.psp_reference = p ->> 'psp_reference'
CROSS JOIN LATERAL jsonb_array_elements_text(p -> 'other_references') AS o (reference)
ORDER BY e.processor_id, o.reference, t.id
ON CONFLICT (processor_id, reference) DO NOTHING;
