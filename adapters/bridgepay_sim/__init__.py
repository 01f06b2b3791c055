"""A stateful BridgePay-like processor simulator: BridgeComm's SOAP RequestHandler (sale 004,
void/refund 012, ping 099, base64 XML inside SOAP) and the Reporting API's transaction lookup, plus
fault injection, on a loopback port.

Run it with `python -m adapters.bridgepay_sim --port 12112 --username ... --password ...`, or
in-process with `async with running_simulator(SimConfig(...)) as sim:` (then `sim.url`). The
control API for tests and chaos runs is under /_sim (see control.py).
"""

from adapters.bridgepay_sim.app import create_app
from adapters.bridgepay_sim.config import SimConfig
from adapters.bridgepay_sim.testing import RunningSimulator, running_simulator

__all__ = ["RunningSimulator", "SimConfig", "create_app", "running_simulator"]
