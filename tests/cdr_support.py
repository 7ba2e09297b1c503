"""Helpers of tests/test_cdr.py: a spool of the rated events CDRs are written for, and readers of the CDR files
that share nothing with the writer (chf/export/cdr.py, chf/export/chfrecord.py, which encode BER by hand):

- the TS 32.297 file and CDR headers are parsed here, field by field, from the layout in the specification;
- each CHFRecord is decoded twice, by asn1tools and by the decoder pycrate's ASN.1 compiler generates, both
  built from the module in the repository (chf/export/asn1/chf-cdr.asn), and the two must agree.
"""

from __future__ import annotations

import calendar
import functools
import importlib.util
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chf.core import provisioning
from chf.core.model import (
    DIRECT_DEBITING,
    INITIAL,
    REFUND_ACCOUNT,
    SUCCESS,
    TERMINATE,
    UPDATE,
    ChargingRequest,
    UnitRequest,
    UsageReport,
)
from tests.corekit import World, event

REPO = Path(__file__).resolve().parents[1]
ASN1 = REPO / "chf" / "export" / "asn1" / "chf-cdr.asn"


# ------------------------------------------------------------------------------------------------------------------
# A spool of usage
# ------------------------------------------------------------------------------------------------------------------
class UsageSpool(World):
    """One prepaid account with money enough and a few lines on plan "pre" (tests/fixtures/core.toml). Each
    `round()` commits a Gy data session (initial, an update on quota exhaustion with uplink and downlink octets,
    a final report), an Nchf voice session (an update on validity time, a final report), an SMS debited as a
    one-shot event and a refund: every shape of CDR, and top-ups (not CDRs) between them."""

    def __init__(self, path: Path, lines: int = 3) -> None:
        super().__init__(path)
        self.tenant()
        self.account("acct")
        self.admin(provisioning.topup, "acct", 10**12, actor="test", reason="funds")
        self.imsis = [self.line("acct", plan="pre")[1] for _ in range(lines)]
        self.rounds = 0

    def round(self) -> None:
        n = self.rounds = self.rounds + 1
        imsi = self.imsis[n % len(self.imsis)]
        ids = [("imsi", imsi)]
        gy = f"gy:pgw.example;{n};1"
        self._ok(ChargingRequest(INITIAL, gy, 0, ids, [UnitRequest(10, requested={})]))
        self.now += 30
        used = UsageReport({"bytes_in": 100 + n, "bytes_out": 300 + n}, "quota_exhausted")
        self._ok(ChargingRequest(UPDATE, gy, 1, ids, [UnitRequest(10, requested={}, used=[used])]))
        self.now += 20
        final = UsageReport({"bytes": 200}, "final")
        self._ok(ChargingRequest(TERMINATE, gy, 2, ids, [UnitRequest(10, used=[final])]))
        nchf = f"nchf:ref-{n}"
        self._ok(ChargingRequest(INITIAL, nchf, 1, ids, [UnitRequest(20, requested={})], protocol="nchf"))
        self.now += 40
        report = UsageReport({"seconds": 40}, "validity_time")
        self._ok(ChargingRequest(UPDATE, nchf, 2, ids, [UnitRequest(20, requested={}, used=[report])], protocol="nchf"))
        self.now += 5
        final = UsageReport({"seconds": 5}, "final")
        self._ok(ChargingRequest(TERMINATE, nchf, 3, ids, [UnitRequest(20, used=[final])], protocol="nchf"))
        self._ok(event(f"gy:smsc;{n}", imsi, DIRECT_DEBITING, rg=40, amount={"events": 1}))
        self._ok(event(f"gy:smsc-refund;{n}", imsi, REFUND_ACCOUNT, rg=40, amount={"events": 1}))
        self.admin(provisioning.topup, "acct", 1, actor="test", reason="between")
        self.now += 1

    def _ok(self, req: ChargingRequest) -> None:
        answer = self.charge(req)
        assert answer.result == SUCCESS, answer

    def cursor(self, name: str = "cdr") -> int:
        with self.store.read() as txn:
            return txn.get_cursor("export:" + name)

    def last(self) -> int:
        return self.last_seq()


# ------------------------------------------------------------------------------------------------------------------
# TS 32.297 files, read by hand
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class CdrFile:
    name: str
    size: int
    header: dict[str, Any]
    cdr_headers: list[dict[str, int]] = field(default_factory=list)
    cdrs: list[bytes] = field(default_factory=list)


def _release(octet: int, ext: int | None) -> tuple[int, int]:
    """(release, version) of a release / version identifier octet (3 + 5 bits) and its extension octet."""
    rel = octet >> 5
    release = {0: 99, 1: 4, 2: 5, 3: 6, 4: 7, 5: 8, 6: 9}.get(rel)
    if release is None:  # 7: beyond Release 9, the extension octet holds release - 10
        assert ext is not None
        release = 10 + ext
    return release, octet & 0x1F


def _stamp(value: int) -> tuple[int, int, int, int, str]:
    """(month, day, hour, minute, "+hhmm") of a file header timestamp."""
    offset = f"{'+' if value >> 11 & 1 else '-'}{value >> 6 & 0x1F:02d}{value & 0x3F:02d}"
    return value >> 28, value >> 23 & 0x1F, value >> 18 & 0x1F, value >> 12 & 0x3F, offset


def read_cdr_file(path: Path) -> CdrFile:
    data = path.read_bytes()
    file_length, header_length, high, low = struct.unpack_from(">IIBB", data, 0)
    opened, appended, count, sequence, reason = struct.unpack_from(">IIIIB", data, 10)
    address, lost, filter_length = data[27:47], data[47], struct.unpack_from(">H", data, 48)[0]
    i = 50 + filter_length
    private_length = struct.unpack_from(">H", data, i)[0]
    private = data[i + 2 : i + 2 + private_length]
    i += 2 + private_length
    high_ext = low_ext = None
    if high >> 5 == 7:
        high_ext, i = data[i], i + 1
    if low >> 5 == 7:
        low_ext, i = data[i], i + 1
    assert i == header_length, (i, header_length)
    header = {
        "file_length": file_length,
        "header_length": header_length,
        "high": _release(high, high_ext),
        "low": _release(low, low_ext),
        "opened": _stamp(opened),
        "appended": _stamp(appended),
        "count": count,
        "sequence": sequence,
        "reason": reason,
        "address": address,
        "lost": lost,
        "routeing_filter": data[50 : 50 + filter_length],
        "private": private,
    }
    out = CdrFile(path.name, len(data), header)
    while i < len(data):
        length, rel, fmt = struct.unpack_from(">HBB", data, i)
        i += 4
        ext = None
        if rel >> 5 == 7:
            ext, i = data[i], i + 1
        release, version = _release(rel, ext)
        out.cdr_headers.append({"release": release, "version": version, "format": fmt >> 5, "ts": fmt & 0x1F})
        out.cdrs.append(data[i : i + length])
        assert len(out.cdrs[-1]) == length, f"{path.name}: a CDR cut short"
        i += length
    return out


def bcd_time(stamp: bytes) -> tuple[int, str]:
    """A TimeStamp (YYMMDDhhmmss in BCD, sign in ASCII, hhmm in BCD) as (UNIX time, "+hhmm")."""
    digits = [(b >> 4) * 10 + (b & 0xF) for b in stamp[:6]]
    year, month, day, hour, minute, second = digits
    epoch = calendar.timegm((2000 + year, month, day, hour, minute, second, 0, 0, 0))
    hours, minutes = ((b >> 4) * 10 + (b & 0xF) for b in stamp[7:9])
    offset = f"{chr(stamp[6])}{hours:02d}{minutes:02d}"
    return epoch, offset


# ------------------------------------------------------------------------------------------------------------------
# Two decoders of the CHFRecord, neither of them the writer
# ------------------------------------------------------------------------------------------------------------------
@functools.cache
def asn1tools_spec() -> Any:
    import asn1tools

    return asn1tools.compile_files([str(ASN1)], "ber")


@functools.cache
def pycrate_record() -> Any:
    """CHFRecord as pycrate's compiler generates it from chf-cdr.asn (in a temporary module)."""
    from pycrate_asn1c.asnproc import PycrateGenerator, compile_text, generate_modules
    from pycrate_asn1c.glob import GLOBAL

    GLOBAL.clear()
    compile_text(ASN1.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="chf-pycrate-") as tmp:
        target = Path(tmp) / "chf_cdr_pycrate.py"
        generate_modules(PycrateGenerator, str(target))
        spec = importlib.util.spec_from_file_location("chf_cdr_pycrate", target)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["chf_cdr_pycrate"] = module
        spec.loader.exec_module(module)
    GLOBAL.clear()
    return module.CHFChargingDataTypes.CHFRecord


def framed_length(ber: bytes) -> int:
    """The length of the BER TLV at the start of `ber`, header included."""
    n, i = ber[3], 4  # three octets of tag: [200], constructed, context-specific
    if n & 0x80:
        n, i = int.from_bytes(ber[4 : 4 + (n & 0x7F)], "big"), 4 + (n & 0x7F)
    return i + n


def decode(ber: bytes) -> dict[str, Any]:
    """The chargingFunctionRecord in `ber`, as asn1tools decodes it; pycrate must decode the same value, and the
    whole of `ber` must be that one record."""
    assert ber[:3] == b"\xbf\x81\x48" and framed_length(ber) == len(ber)
    kind, value = asn1tools_spec().decode("CHFRecord", ber)
    assert kind == "chargingFunctionRecord"
    record = pycrate_record()
    record.from_ber(ber)
    assert record.get_val() == (kind, value), (record.get_val(), value)
    return dict(value)
