"""Kubernetes resource quantities ("10Mi", "10485760", "1G", "1.5Gi", "1e6") as exact numbers.

Only what the webhook needs to translate `sgx.intel.com/epc` (bytes) into
`kubernetes.azure.com/sgx_epc_mem_in_MiB` (integer MiB) and back.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from quotehelper.errors import QuoteHelperError

MIB = 1024 * 1024

_SUFFIX = {
    "": 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "Pi": 1024**5, "Ei": 1024**6,
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)$")


_MAX_LEN = 64         # Kubernetes quantities are short; a 3 MiB digit string is an attack, not a size
_MAX_EXPONENT = 30


class QuantityError(QuoteHelperError, ValueError):
    """Not a Kubernetes quantity."""


def parse_quantity(value: str | int | float) -> Fraction:
    """Exact value of a quantity (YAML may hand us an int)."""
    if isinstance(value, bool):
        raise QuantityError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(str(value))
    text = str(value).strip()
    m = _QUANTITY.match(text) if len(text) <= _MAX_LEN else None
    if not m:
        raise QuantityError(f"not a Kubernetes quantity: {value!r}"[:200])
    number, exponent, suffix = m.groups()
    out = Fraction(number)
    if exponent and abs(int(exponent[1:])) > _MAX_EXPONENT:  # 1e999999999 would take minutes to compute
        raise QuantityError(f"quantity exponent out of range: {value!r}")
    if exponent:
        out *= Fraction(10) ** int(exponent[1:])
    return out * _SUFFIX[suffix or ""]


def bytes_to_mib(value: str | int | float) -> int:
    """A byte quantity as whole MiB, rounded up (asking for less EPC than requested is the wrong way)."""
    return math.ceil(parse_quantity(value) / MIB)


def mib_count(value: str | int | float) -> int:
    """An integer-MiB resource value (the legacy AKS resource is a plain count), rounded up."""
    return math.ceil(parse_quantity(value))
