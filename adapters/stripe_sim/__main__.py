"""`python -m adapters.stripe_sim`: runs the simulator until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import signal

from adapters.stripe_sim.config import SimConfig
from adapters.stripe_sim.testing import running_simulator


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, SimConfig]:
    parser = argparse.ArgumentParser(prog="python -m adapters.stripe_sim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--api-key", default="sk_test_sim")
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument("--webhook-secret", action="append", default=[],
                        help="repeat to sign with two secrets, as during a rotation")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--delivery-max-attempts", type=int, default=8)
    parser.add_argument("--delivery-initial-backoff", type=float, default=0.5, help="seconds")
    args = parser.parse_args(argv)
    config = SimConfig(api_key=args.api_key, webhook_url=args.webhook_url, webhook_secrets=args.webhook_secret,
                       seed=args.seed, delivery_max_attempts=args.delivery_max_attempts,
                       delivery_initial_backoff_seconds=args.delivery_initial_backoff)
    return args, config


async def serve(host: str, port: int, config: SimConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_simulator(config, host=host, port=port) as running:
        webhooks = f"webhooks to {config.webhook_url}" if config.webhook_url else "no webhook URL"
        print(f"stripe-sim listening on {running.url} (API key {config.api_key[:8]}..., {webhooks})", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args, config = parse_args(argv)
    asyncio.run(serve(args.host, args.port, config))


if __name__ == "__main__":
    main()
