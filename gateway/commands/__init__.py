"""The operator's commands of `psp-gateway`: check-config, refunds and webhooks. They act on the
configured database directly, through the same functions as the admin API (gateway.operations)."""
