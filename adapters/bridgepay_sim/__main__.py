"""`python -m adapters.bridgepay_sim`: runs the simulator until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import signal

from adapters.bridgepay_sim.config import SimConfig
from adapters.bridgepay_sim.testing import running_simulator


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, SimConfig]:
    defaults = SimConfig()
    parser = argparse.ArgumentParser(prog="python -m adapters.bridgepay_sim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12112)
    parser.add_argument("--username", default=defaults.username)
    parser.add_argument("--password", default=defaults.password)
    parser.add_argument("--merchant-code", default=defaults.merchant_code)
    parser.add_argument("--merchant-account-code", default=defaults.merchant_account_code)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--sandbox-amounts", action="store_true",
                        help="refunds of 1-499 and 7000+ cents are denied by the bank, as on the real sandbox")
    args = parser.parse_args(argv)
    config = SimConfig(username=args.username, password=args.password, merchant_code=args.merchant_code,
                       merchant_account_code=args.merchant_account_code, seed=args.seed,
                       sandbox_amounts=args.sandbox_amounts)
    return args, config


async def serve(host: str, port: int, config: SimConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_simulator(config, host=host, port=port) as running:
        sandbox = "sandbox amounts on" if config.sandbox_amounts else "sandbox amounts off"
        # Never the password.
        print(f"bridgepay-sim listening on {running.url} (user {config.username}, merchant "
              f"{config.merchant_code}/{config.merchant_account_code}, {sandbox})", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args, config = parse_args(argv)
    asyncio.run(serve(args.host, args.port, config))


if __name__ == "__main__":
    main()
