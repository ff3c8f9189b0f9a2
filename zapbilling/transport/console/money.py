"""Money for people: integer minor units shown in major units with the currency, exactly.

The API keeps every amount in minor units (cents for usd, yen for jpy, fils for bhd); a person
reads 1,234.56 USD. The number of minor digits is ISO 4217's (the `iso4217` package's copy of
the standard's table), read once at import; a code without a minor unit (xau, xdr: "N.A." in
the table) is shown in whole units. Integer arithmetic only: divmod by a power of ten, never a
float, so 9,223,372,036,854,775.807 BHD is shown to the last digit.
"""
from __future__ import annotations

import iso4217

from ...billing.currencies import CODES

MINOR_DIGITS: dict[str, int] = {
    code: iso4217.Currency[code].exponent or 0 for code in CODES
}
"""Currency code (lowercase, as the API spells it) -> ISO 4217 minor digits."""


def major(amount: int, currency: str) -> str:
    """`amount` minor units of `currency` as major units with the code: 123456, usd ->
    "1,234.56 USD"; -5, jpy -> "-5 JPY"; 1, bhd -> "0.001 BHD"."""
    digits = MINOR_DIGITS.get(currency.lower(), 2)
    sign = "-" if amount < 0 else ""
    whole, part = divmod(abs(amount), 10**digits)
    fraction = f".{part:0{digits}d}" if digits else ""
    return f"{sign}{whole:,}{fraction} {currency.upper()}"
