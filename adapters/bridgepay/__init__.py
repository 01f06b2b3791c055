"""BridgePay-like processor: BridgeComm's SOAP API with base64-encoded XML, and its Reporting API."""

from adapters.bridgepay.client import BridgePayAdapter

__all__ = ["BridgePayAdapter"]
