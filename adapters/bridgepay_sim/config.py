"""The simulator's settings, built once by whoever starts it (the CLI, a test, a benchmark)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SimConfig:
    # One merchant: requests must carry these in the header (User, Password) and in requestMessage
    # (MerchantCode, MerchantAccountCode); the Reporting API takes the same UserName and Password.
    username: str = "sim_user"
    password: str = "sim_password"
    merchant_code: str = "1000"
    merchant_account_code: str = "2000"
    seed: int | None = None  # seeds fault decisions and GatewayTransIDs, for reproducible runs
    # The real sandbox's trigger amounts for 012: 1-499 and 7000 up are denied by the bank (30032).
    sandbox_amounts: bool = False
