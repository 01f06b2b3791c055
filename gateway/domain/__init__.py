"""Pure domain logic: amounts, the refund state machine and transaction matching. No I/O."""
