"""An Idempotency-Key released by its first request between a second request's claim and its read
of the key: the second request claims it again, or answers a clean 409, never a 500.

The race is made in Postgres itself: a trigger on the key table makes a claim lose (its insert is
skipped and the key row the first request held is deleted) as many times as the test asks."""

from __future__ import annotations

from gateway import keys

LOSE_RACES = """
CREATE TABLE test_lost_races (n int);
CREATE FUNCTION test_lose_race() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM test_lost_races) THEN
        DELETE FROM test_lost_races WHERE ctid = (SELECT ctid FROM test_lost_races LIMIT 1);
        DELETE FROM idempotency_keys WHERE client_id = NEW.client_id AND key = NEW.key;
        RETURN NULL;  -- as if another request held the key at the insert and released it just after
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_lose_race BEFORE INSERT ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION test_lose_race();
"""


async def _lose_races(api, times: int) -> None:
    async with api.app[keys.POOL].acquire() as conn:
        await conn.execute(LOSE_RACES)
        await conn.executemany("INSERT INTO test_lost_races VALUES ($1)", [(n,) for n in range(times)])


def _transaction(invoice_id: str) -> dict:
    return {"processor": "mock", "psp_reference": f"ch_{invoice_id}", "invoice_id": invoice_id, "amount": 1_000,
            "currency": "EUR"}


async def test_key_released_between_claim_and_read_is_claimed_again(api):
    await _lose_races(api, 1)
    body = _transaction("INV-RACE-1")
    first = await api.post("/v1/transactions", body, headers={"Idempotency-Key": "race-1"})
    assert first.status == 201, await first.text()
    again = await api.post("/v1/transactions", body, headers={"Idempotency-Key": "race-1"})
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == await first.read()


async def test_key_released_again_and_again_is_a_clean_conflict_then_works(api):
    await _lose_races(api, 3)
    body = _transaction("INV-RACE-2")
    resp = await api.post("/v1/transactions", body, headers={"Idempotency-Key": "race-2"})
    assert resp.status == 409, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == "idempotency_key_in_use" and resp.headers["Retry-After"] == "1"
    async with api.app[keys.POOL].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM transactions") == 0
    retry = await api.post("/v1/transactions", body, headers={"Idempotency-Key": "race-2"})
    assert retry.status == 201, await retry.text()
