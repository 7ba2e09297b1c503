"""Effective-dated catalogue on the wire (chf.core.versions): over Gy and over Nchf, a grant made before a version
change ends at it (Validity-Time / validityTime), the usage reported at its end is priced by the version it was
granted in, the next grant by the new one, and each usage event names the version that priced it.

The server's clock is the test's (ChargingService.clock): the change is crossed by moving it. Both stores.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chf.core.catalogue_loader import parse_catalogue
from chf.core.versions import CatalogueVersions
from chf.runtime.catalogues import ARCHIVE_DIR
from gy.client import Mscc, ccr_avps
from gy.codec import find, find_all
from tests import gy_support, nchf_harness
from tests.gy_support import balance_of, provision, running_server
from tests.nchf_harness import Chf, request_body, start_chf, stop_chf, usage
from tests.nchf_openapi import specs_or_skip
from tests.support import fixture_text

T = int(datetime(2026, 11, 22, 10, 0, tzinfo=UTC).timestamp())
CHANGE = T + 40  # version 2 takes effect 40 s after the session starts
CHANGE_TEXT = "2026-11-22T10:00:40Z"


def later_version(text: str, old: str, new: str) -> str:
    """`text` with `old` replaced by `new` (a price), in force from CHANGE."""
    assert old in text
    changed = text.replace(old, new, 1)
    return changed.replace('default_zone = "world"\n', f'default_zone = "world"\neffective = {CHANGE_TEXT}\n', 1)


def usage_events(store_read: Any) -> list[dict[str, Any]]:
    with store_read() as txn:
        return [e for e in txn.events() if e["kind"] == "usage"]


# -- Gy -------------------------------------------------------------------------------------------------------------
@pytest.fixture
def gy_store(backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    if backend == "redis":
        gy_support.STORE_SECTION = gy_support.redis_section(request.getfixturevalue("redis_cluster"))
    yield backend
    gy_support.STORE_SECTION = None


def result_code(cca: Any) -> int:
    avp = find(cca.avps, 268)
    assert avp is not None
    return int(avp.u32())


def validity_of(cca: Any, rg: int) -> int | None:
    for m in find_all(cca.avps, 456):
        rating_group = find(m.children, 432)
        if rating_group is not None and rating_group.u32() == rg:
            vt = find(m.children, 448)
            return None if vt is None else vt.u32()
    raise AssertionError(f"no MSCC for rating group {rg}")


async def test_gy_grant_ends_at_a_version_change(tmp_path: Path, gy_store: str) -> None:
    # The configured catalogue is a directory of versions (gy_support names it catalogue.toml; made a directory
    # first, it is used as such): `chf serve` loads both and keeps them in <data_dir>/catalogues.
    versions = tmp_path / "catalogue.toml"
    versions.mkdir()
    text = fixture_text("gy.toml")
    (versions / "1.toml").write_text(text)
    (versions / "2.toml").write_text(later_version(text, "price = 10_000\n", "price = 30_000\n"))
    async with running_server(tmp_path) as srv:
        v1, v2 = srv.service.engine.versions.versions
        assert {p.name for p in (tmp_path / ARCHIVE_DIR).iterdir()} == {f"{v1.version}.toml", f"{v2.version}.toml"}
        clock = [T]
        srv.service.clock = lambda: clock[0]
        await srv.op(provision())
        client = await srv.client()
        sid = "pgw.test;versions;1"
        cca = await client.ccr(
            ccr_avps(
                sid, 1, 0, origin_host="pgw.test", origin_realm="test", imsi="208010000000001", mscc=[Mscc(10, {})]
            )
        )
        assert result_code(cca) == 2001
        assert validity_of(cca, 10) == CHANGE - T  # 600 s in the catalogue, cut at the change
        clock[0] = CHANGE
        used = [{"bytes": 1_000_000, "reason": 4}]  # VALIDITY_TIME
        cca = await client.ccr(
            ccr_avps(sid, 2, 1, origin_host="pgw.test", origin_realm="test", mscc=[Mscc(10, {}, used=used)])
        )
        assert result_code(cca) == 2001 and validity_of(cca, 10) == 600
        clock[0] = CHANGE + 10
        cca = await client.ccr(
            ccr_avps(
                sid,
                3,
                2,
                origin_host="pgw.test",
                origin_realm="test",
                mscc=[Mscc(10, used=[{"bytes": 1_000_000, "reason": 2}])],
            )
        )
        assert result_code(cca) == 2001
        # 1 MB at version 1's 0.01 EUR, then 1 MB at version 2's 0.03 EUR
        assert balance_of(srv, "a1") == 10_000_000 - 10_000 - 30_000
        events = usage_events(srv.service.read)
        assert [(e["charge"], e["catalogue"]) for e in events] == [(10_000, v1.version), (30_000, v2.version)]


# -- Nchf -----------------------------------------------------------------------------------------------------------
@pytest.fixture
async def nchf(tmp_path: Path, open_store: Any) -> AsyncIterator[Chf]:
    specs_or_skip()
    nchf_harness.STORE_OPENER = open_store
    running = await start_chf(tmp_path)
    try:
        yield running
    finally:
        await stop_chf(running)
        nchf_harness.STORE_OPENER = None


@pytest.mark.slow  # an Nchf create takes seconds here (as test_nchf.py's flows)
async def test_nchf_grant_ends_at_a_version_change(nchf: Chf) -> None:
    text = fixture_text("nchf.toml")
    v1 = parse_catalogue(text, "1.toml")
    v2 = parse_catalogue(
        later_version(text, "block = 60\nprice = 100_000\n", "block = 60\nprice = 200_000\n"), "2.toml"
    )
    nchf.service.engine.versions = CatalogueVersions([v1, v2])
    clock = [T]
    nchf.service.clock = lambda: clock[0]
    client = await nchf.client()
    created = await nchf.call(client, "create", request_body(1, units=[usage(20)]))
    assert created.status == 201, created.body
    [mui] = created.body["multipleUnitInformation"]
    assert mui["grantedUnit"] == {"time": 600} and mui["validityTime"] == CHANGE - T
    before = nchf.wallet("acct-a")[0]
    clock[0] = CHANGE
    updated = await nchf.call(client, "update", request_body(2, units=[usage(20, {"time": 90})]), created.ref)
    assert updated.status == 200, updated.body
    assert updated.body["multipleUnitInformation"][0]["validityTime"] == 3600
    clock[0] = CHANGE + 100
    released = await nchf.call(
        client, "release", request_body(3, units=[usage(20, {"time": 90}, request=False, final=True)]), created.ref
    )
    assert released.status == 204
    # 90 s = 2 started minutes: at version 1's 0.10 EUR, then at version 2's 0.20 EUR
    assert nchf.wallet("acct-a")[0] == before - 200_000 - 400_000
    events = usage_events(nchf.store.read)
    assert [(e["charge"], e["catalogue"]) for e in events] == [(200_000, v1.version), (400_000, v2.version)]
    await client.close()
