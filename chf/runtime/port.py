"""What a protocol front-end (Gy, Nchf) needs of the charging core, and how it answers when the core refuses.

The front-ends receive a `ChargingPort` and nothing else of the core: in one process it is the
`ChargingService` itself, in a front-end worker (chf serve with [server] frontend_workers) the core link's
`RemoteService`. `tools/serve.py` decides which; a front-end never knows.

`refusal()` is the one table from a core error to the protocol answer, shared by Gy and Nchf so that the two
agree: a core that is busy or out of reach (store queue full, store stopping, core link lost) is a transient
refusal in both (Gy 3004 DIAMETER_TOO_BUSY, which RFC 6733 section 7.1.3 tells the client to retry at another
peer; Nchf 503 NF_CONGESTION), never a permanent failure that makes a PGW give up on the session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from chf.core.model import ChargingAnswer, ChargingRequest, RequestError, Signal
from store.interface import StoreBusy, StoreClosed

Done = Callable[[ChargingAnswer | BaseException], None]
SignalHandler = Callable[[Signal], None]


class ChargingPort(Protocol):
    """The narrow interface between the front-ends and the charging core."""

    @property
    def store_id(self) -> str:
        """The identity of the store the core charges into (stable across restarts; keys the front-ends'
        own references, e.g. Nchf charging data refs)."""
        ...

    def charge_then(self, request: ChargingRequest, done: Done) -> None:
        """Charge `request`; `done` runs once with the answer after it is durable, or with the exception that
        refused it. May raise at once (the same exceptions) when the core cannot take the request."""
        ...

    def subscribe(self, protocol: str, handler: SignalHandler) -> None:
        """Receive the core's signals (re-authorise, abort) for `protocol` ("gy", "nchf"), after their change is
        durable."""
        ...


# Diameter Result-Codes (RFC 6733 section 7.1, RFC 4006 section 9) used by the table below.
DIAMETER_TOO_BUSY = 3004
DIAMETER_UNABLE_TO_COMPLY = 5012


@dataclass(frozen=True, slots=True)
class Refusal:
    """How both front-ends answer one kind of core error."""

    kind: str  # "overload", "request" or "internal": also the label of the refusal in logs and metrics
    result_code: int  # Diameter Result-Code (Gy)
    error_bit: bool  # a protocol error (3xxx): the answer carries the E bit (RFC 6733 section 7.1.3)
    status: int  # HTTP status (Nchf)
    cause: str  # ProblemDetails cause (TS 29.571 / TS 32.291)
    transient: bool  # the client should retry (elsewhere); nothing was charged


OVERLOAD = Refusal("overload", DIAMETER_TOO_BUSY, True, 503, "NF_CONGESTION", True)
REQUEST = Refusal("request", DIAMETER_UNABLE_TO_COMPLY, False, 400, "CHARGING_FAILED", False)
INTERNAL = Refusal("internal", DIAMETER_UNABLE_TO_COMPLY, False, 500, "SYSTEM_FAILURE", False)


def refusal(exc: BaseException) -> Refusal:
    """The answer to a core error. StoreBusy (write queue full) and StoreClosed (store stopping, core link down)
    are overload: nothing was charged and another CHF (or this one, later) can serve the request."""
    if isinstance(exc, StoreBusy | StoreClosed):
        return OVERLOAD
    if isinstance(exc, RequestError):
        return REQUEST
    return INTERNAL
