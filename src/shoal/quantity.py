"""Kubernetes-style quantities for memory and disk sizes ("8Gi", "512Mi", "1G", "1024")."""

import re
from decimal import ROUND_CEILING, Decimal

_SUFFIXES: dict[str, int] = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}
_PATTERN = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")

# Nothing in this project is larger than a petabyte; refusing beyond it keeps arithmetic sane.
MAX_BYTES = 2**50


def parse_bytes(text: str | int) -> int:
    """Return the number of bytes a quantity names; raise ValueError naming what is wrong."""
    if isinstance(text, bool):
        raise ValueError("must be a size such as '8Gi' or '512Mi'")
    if isinstance(text, int):
        value = text
    else:
        match = _PATTERN.match(text.strip())
        if not match:
            raise ValueError(f"{text!r} is not a size such as '8Gi' or '512Mi'")
        number, suffix = match.group(1), match.group(2) or ""
        # Decimal, not float: "0.1Gi" must name exactly the bytes it says; a fraction of a byte
        # rounds up, as Kubernetes does.
        value = int((Decimal(number) * _SUFFIXES[suffix]).to_integral_value(ROUND_CEILING))
    if value <= 0:
        raise ValueError("must be greater than zero")
    if value > MAX_BYTES:
        raise ValueError("is larger than 1Pi")
    return value


def format_bytes(value: int) -> str:
    """The shortest exact binary quantity for value ("8Gi", "1536Mi")."""
    for suffix in ("Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _SUFFIXES[suffix]
        if value >= unit and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


def describe_bytes(value: int) -> str:
    """value for a person to read: exact when it is a whole number of a unit ("8Gi"), else to
    one decimal of the largest unit it reaches ("23.4Gi"), never a long run of Ki."""
    exact = format_bytes(value)
    if not exact.endswith("Ki") and exact != str(value):
        return exact
    for suffix in ("Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _SUFFIXES[suffix]
        if value >= unit:
            return f"{value / unit:.1f}{suffix}"
    return f"{value}B"
