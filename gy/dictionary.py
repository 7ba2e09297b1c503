"""The AVP dictionary, taken from python-diameter (codes, vendors, types, M flag), plus names used here.

Only the dictionary of python-diameter is used: its message classes and node are too slow for the hot path
(docs/architecture.md). Lookups are by (code, vendor) and by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from diameter.message.avp import avp as _avp_types
from diameter.message.avp.dictionary import AVP_DICTIONARY, AVP_VENDOR_DICTIONARY

VENDOR_3GPP = 10415

# python-diameter type class -> our type tag. Enumerated is an Integer32 on the wire.
_TYPE_TAGS: dict[type, str] = {
    _avp_types.AvpAddress: "address",
    _avp_types.AvpFloat32: "float32",
    _avp_types.AvpFloat64: "float64",
    _avp_types.AvpGrouped: "grouped",
    _avp_types.AvpInteger32: "int32",
    _avp_types.AvpInteger64: "int64",
    _avp_types.AvpOctetString: "octets",
    _avp_types.AvpUnsigned32: "uint32",
    _avp_types.AvpUnsigned64: "uint64",
    _avp_types.AvpUtf8String: "utf8",
    _avp_types.AvpTime: "time",
}


def _tag(cls: type) -> str:
    for klass in cls.__mro__:
        tag = _TYPE_TAGS.get(klass)
        if tag is not None:
            return tag
    return "octets"


@dataclass(frozen=True, slots=True)
class AvpDef:
    code: int
    vendor: int
    name: str
    type: str  # address | float32 | float64 | grouped | int32 | int64 | octets | uint32 | uint64 | utf8 | time
    mandatory: bool


BY_KEY: dict[tuple[int, int], AvpDef] = {}
BY_NAME: dict[str, AvpDef] = {}


def _load() -> None:
    tables: list[tuple[int, dict[int, dict]]] = [(0, AVP_DICTIONARY)]
    tables.extend((vendor, table) for vendor, table in AVP_VENDOR_DICTIONARY.items() if vendor)
    for vendor, table in tables:
        for code, info in table.items():
            d = AvpDef(code, vendor, info["name"], _tag(info["type"]), bool(info.get("mandatory", False)))
            BY_KEY[(code, vendor)] = d
            # The base and 3GPP definitions win a name clash over other vendors' reuse of a name.
            if d.name not in BY_NAME or vendor in (0, VENDOR_3GPP):
                if d.name in BY_NAME and BY_NAME[d.name].vendor == 0 and vendor != 0:
                    continue
                BY_NAME[d.name] = d


_load()

# The specifications' names where python-diameter spells them otherwise (gy/grammar.py uses the specifications').
ALIASES = {"Acct-Multi-Session-Id": "Accounting-Multi-Session-Id", "Reporting-Reason": "3GPP-Reporting-Reason"}
for _alias, _name in ALIASES.items():
    BY_NAME[_alias] = BY_NAME[_name]


def avp(name: str) -> AvpDef:
    """The definition of an AVP by its dictionary name; KeyError names the AVP."""
    return BY_NAME[name]


def lookup(code: int, vendor: int = 0) -> AvpDef | None:
    return BY_KEY.get((code, vendor))
