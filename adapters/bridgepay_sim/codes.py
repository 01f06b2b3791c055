"""BridgePay's five-digit ResponseCodes with the descriptions the simulator answers, and the error
that turns into an <ErrorResponse>: a request refused before it reached processing."""

from __future__ import annotations

SUCCESS = "00000"
MISSING_REFERENCE = "10001"
INVALID_REQUEST_TYPE = "10022"
INVALID_CREDENTIALS = "10024"
INVALID_AMOUNT_FORMAT = "10028"
INVALID_DATE_TIME = "10029"
INVALID_VOID_REQUEST = "10033"
ALREADY_VOIDED = "10042"
INVALID_REFERENCE = "10055"
INTERNAL_ERROR = "20002"
UNAVAILABLE = "20003"
INVALID_AMOUNT = "30026"
DENIED = "30032"
UNKNOWN_ERROR = "99999"

DESCRIPTIONS = {
    SUCCESS: "Successful Request",
    MISSING_REFERENCE: "Missing reference number",
    INVALID_REQUEST_TYPE: "Invalid request type",
    INVALID_CREDENTIALS: "Invalid credentials",
    INVALID_AMOUNT_FORMAT: "Invalid amount format",
    INVALID_DATE_TIME: "Invalid date/time",
    INVALID_VOID_REQUEST: "Invalid void request",
    ALREADY_VOIDED: "Transaction already voided",
    INVALID_REFERENCE: "Invalid reference number",
    INTERNAL_ERROR: "Internal Server Error",
    UNAVAILABLE: "Service Unavailable",
    INVALID_AMOUNT: "Invalid amount",
    DENIED: "Denied by the bank",
    UNKNOWN_ERROR: "Unknown error",
}


class BridgePayError(Exception):
    """A request refused before processing; answered as <ErrorResponse> with this code."""

    def __init__(self, code: str, description: str | None = None):
        self.code, self.description = code, description or DESCRIPTIONS[code]
        super().__init__(f"{self.code} {self.description}")
