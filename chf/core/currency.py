"""The currency of a request's money.

A request may name money (Gy: CC-Money in a Requested- or Used-Service-Unit, RFC 4006 8.22) and the currency it
is in (Currency-Code, ISO 4217). An account holds money in one currency, and no rule converts between currencies:
money in another one is refused whole, before anything is written, never charged as if it were the account's.
Without a currency the money is the account's (RFC 4006 8.22: Currency-Code is optional).
"""

from __future__ import annotations

from chf.core.model import ChargingRequest, RequestError
from store.schema import Account

# RequestError.field of the refusal: the Gy front-end answers 5031 DIAMETER_RATING_FAILED with the request's
# Currency-Code as Failed-AVP (gy/application.py).
CURRENCY_FIELD = "currency"


def check_currency(req: ChargingRequest, account: Account) -> None:
    """Refuse (RequestError, CURRENCY_FIELD) a request whose money is not in the account's currency."""
    if req.currency is not None and req.currency != account.currency:
        raise RequestError(
            CURRENCY_FIELD,
            f"money in {req.currency}, account {account.id!r} is in {account.currency}; no rule converts them",
        )
