"""Effective-dated catalogue (chf.core.versions): versions taking effect at a time, rating by the version in force,
grants that end at a change, every event naming its version, reloads, the kept versions and `chf catalogue check`.

The clock is the test's (World.now, the service's injected clock): a version boundary is crossed by moving it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chf.core.catalogue import CatalogueError
from chf.core.catalogue_loader import parse_catalogue
from chf.core.versions import FOREVER, CatalogueVersions, changes, load_versions
from chf.export.records import to_record
from chf.runtime.catalogues import ARCHIVE_DIR
from chf.runtime.service import ChargingService
from tests.corekit import CATALOGUE_TOML, T0, World, check_invariants, initial, terminate, update

# T0 + 50 s, in the catalogue's time zone (UTC): when the second version takes effect.
CHANGE = T0 + 50
CHANGE_TEXT = "2026-03-04T12:00:50Z"
# Version 2: data at 30 micro-units per 100 bytes instead of 10, from CHANGE.
V2_TOML = CATALOGUE_TOML.replace("block = 100\nprice = 10\n", "block = 100\nprice = 30\n", 1).replace(
    'default_zone = "world"\n', f'default_zone = "world"\neffective = {CHANGE_TEXT}\n', 1
)


def two_versions() -> CatalogueVersions:
    return CatalogueVersions([parse_catalogue(V2_TOML, "v2.toml"), parse_catalogue(CATALOGUE_TOML, "v1.toml")])


@pytest.fixture
def world(tmp_path: Path, open_store: Callable[..., Any]) -> Iterator[World]:
    w = World(tmp_path / "store", opener=open_store)
    w.engine.versions = two_versions()
    w.tenant()
    yield w
    with w.store.read() as txn:
        check_invariants(txn)
    w.close()


def unit_of(answer: Any, rg: int = 10) -> Any:
    return next(u for u in answer.units if u.rating_group == rg)


def usage_events(world: World) -> list[dict[str, Any]]:
    return [e for e in world.events() if e["kind"] == "usage"]


# -- the versions ---------------------------------------------------------------------------------------------------
def test_version_in_force_by_time() -> None:
    versions = two_versions()
    v1, v2 = versions.versions
    assert (v1.source, v2.source) == ("v1.toml", "v2.toml")  # ordered by effective time, not as given
    assert v2.effective == CHANGE and v1.effective is None
    assert v1.version == hashlib.sha256(CATALOGUE_TOML.encode()).hexdigest()[:12]
    assert versions.at(0) == (v1, -FOREVER, CHANGE)
    assert versions.at(CHANGE - 1)[0] is v1
    assert versions.at(CHANGE) == (v2, CHANGE, FOREVER)  # in force from its effective time, inclusive
    assert versions.latest() is v2 and versions.by_version(v1.version) is v1


def test_effective_time_forms() -> None:
    paris = CATALOGUE_TOML.replace('timezone = "UTC"', 'timezone = "Europe/Paris"', 1)
    local = paris.replace('default_zone = "world"\n', 'default_zone = "world"\neffective = 2026-03-05T00:00:00\n', 1)
    day = paris.replace('default_zone = "world"\n', 'default_zone = "world"\neffective = 2026-03-05\n', 1)
    # A local date-time or a date is in the catalogue's time zone (Paris is UTC+1 in March).
    assert parse_catalogue(local).effective == parse_catalogue(day).effective == T0 + 11 * 3600
    bad = CATALOGUE_TOML.replace('default_zone = "world"\n', 'default_zone = "world"\neffective = "soon"\n', 1)
    with pytest.raises(CatalogueError, match="settings: effective: must be a TOML date-time"):
        parse_catalogue(bad)


def test_versions_must_be_distinct_in_time_text_and_currency() -> None:
    v1 = parse_catalogue(CATALOGUE_TOML, "a.toml")
    with pytest.raises(CatalogueError, match=re.escape("b.toml: settings: effective: no effective time as a.toml")):
        CatalogueVersions([v1, parse_catalogue(CATALOGUE_TOML + "\n", "b.toml")])
    with pytest.raises(CatalogueError, match=re.escape("b.toml: the same text as a.toml")):
        CatalogueVersions([parse_catalogue(V2_TOML, "a.toml"), parse_catalogue(V2_TOML, "b.toml")])
    usd = V2_TOML.replace('currency = "EUR"', 'currency = "USD"', 1)
    with pytest.raises(CatalogueError, match="plan 'pre': currency: was EUR, now USD"):
        CatalogueVersions([v1, parse_catalogue(usd, "b.toml")])


def test_load_versions_from_a_directory(tmp_path: Path) -> None:
    (tmp_path / "2026-01.toml").write_text(CATALOGUE_TOML)
    (tmp_path / "2026-03.toml").write_text(V2_TOML)
    (tmp_path / "notes.txt").write_text("not a version")
    versions = load_versions(tmp_path)
    assert [c.source for c in versions.versions] == ["2026-01.toml", "2026-03.toml"]
    (tmp_path / "broken.toml").write_text("[settings]\ncurrency = 1\n")
    with pytest.raises(CatalogueError) as caught:
        load_versions(tmp_path)
    assert all(e.startswith("broken.toml: ") for e in caught.value.errors)
    assert load_versions(tmp_path / "2026-01.toml").versions[0].source == "2026-01.toml"


def test_changes_name_what_each_version_changes() -> None:
    v1, v2 = two_versions().versions
    assert changes(v1, v2) == [
        "tariff 'data' changed: price 10 -> 30 (plans deny, fam, homeonly, hyb, payg, post, pre, promo, redir, restr)"
    ]
    added = CATALOGUE_TOML.replace(
        "[plans.payg]",
        "[plans.payg2]\npayment = 'prepaid'\nfee = 5\n[plans.payg2.rating]\n'10' = 'data'\n\n[plans.payg]",
    )
    fee = added.replace("[plans.payg2]\npayment = 'prepaid'\nfee = 5", "[plans.payg2]\npayment = 'prepaid'\nfee = 7")
    assert changes(v1, parse_catalogue(added)) == ["plan 'payg2' added"]
    assert changes(parse_catalogue(added), parse_catalogue(fee)) == ["plan 'payg2' changed: fee 5 -> 7"]
    assert changes(parse_catalogue(added), v1) == ["plan 'payg2' removed"]


# -- rating by the version in force ---------------------------------------------------------------------------------
def test_grant_ends_at_the_change_and_usage_is_priced_by_its_version(world: World) -> None:
    world.account("a", balance=100_000)
    _, imsi = world.line("a", plan="payg")
    v1, v2 = world.engine.versions.versions
    answer = world.charge(initial("s", imsi))
    # The grant's Validity-Time (100 s in the catalogue) ends when version 2 takes effect.
    assert unit_of(answer).granted == 1000 and unit_of(answer).validity_time == CHANGE - T0
    assert world.session("s").reservations[10].tariff == f"data@{v1.version}"
    world.now = CHANGE  # the client reports at the end of the Validity-Time
    answer = world.charge(update("s", 1, imsi, used=500))
    assert unit_of(answer).charged == 50  # 500 bytes at version 1's 10 per 100
    assert unit_of(answer).validity_time == 100  # no later version: the catalogue's validity
    assert world.session("s").reservations[10].tariff == f"data@{v2.version}"
    world.now = CHANGE + 10
    answer = world.charge(terminate("s", 2, imsi, used=500))
    assert unit_of(answer).charged == 150  # version 2's 30 per 100
    usage = usage_events(world)
    assert [(e["charge"], e["catalogue"]) for e in usage] == [(50, v1.version), (150, v2.version)]
    assert world.acct("a").balance == 100_000 - 200


def test_usage_reported_late_keeps_its_grants_version(world: World) -> None:
    """A client that reports after the change (late) is still charged the price its grant was made with."""
    world.account("a", balance=100_000)
    _, imsi = world.line("a", plan="payg")
    v1 = world.engine.versions.versions[0]
    world.charge(initial("s", imsi))
    world.now = CHANGE + 30
    world.charge(terminate("s", 1, imsi, used=1000))
    assert [(e["charge"], e["catalogue"]) for e in usage_events(world)] == [(100, v1.version)]


def test_every_event_names_the_version_in_force(world: World) -> None:
    world.now = CHANGE + 1
    world.account("a", balance=100_000)
    _, imsi = world.line("a", plan="pre")
    v2 = world.engine.versions.versions[1]
    world.charge(initial("s", imsi, rg=11))
    world.charge(terminate("s", 1, imsi, used=200, rg=11))
    events = world.events()
    assert {e["kind"] for e in events} >= {"renewal", "usage"}
    assert {e["catalogue"] for e in events} == {v2.version}


def test_single_version_catalogue_is_unchanged(tmp_path: Path, open_store: Callable[..., Any]) -> None:
    """Without `effective` the catalogue is one version in force from the start: validity is the catalogue's."""
    world = World(tmp_path / "store", opener=open_store)
    world.tenant()
    world.account("a", balance=100_000)
    _, imsi = world.line("a", plan="payg")
    answer = world.charge(initial("s", imsi))
    assert unit_of(answer).validity_time == 100
    assert usage_events(world) == [] and world.engine.catalogue.effective is None
    world.close()


# -- reloads and the kept versions ---------------------------------------------------------------------------------
async def test_reload_of_a_directory_keeps_every_version(tmp_path: Path, open_store: Callable[..., Any]) -> None:
    catalogues = tmp_path / "catalogue.d"
    catalogues.mkdir()
    (catalogues / "2026-01.toml").write_text(CATALOGUE_TOML)
    archive = tmp_path / ARCHIVE_DIR
    world = World(tmp_path / "store", opener=open_store)
    world.tenant()
    world.account("a", balance=100_000)
    _, imsi = world.line("a", plan="payg")
    clock_now = [T0]
    service = ChargingService(
        world.store,
        load_versions(catalogues),
        catalogue_path=str(catalogues),
        catalogue_archive=str(archive),
        clock=lambda: clock_now[0],
        sweep_interval=3600,
    )
    v1 = service.engine.versions.versions[0]
    assert (archive / f"{v1.version}.toml").read_text() == CATALOGUE_TOML
    await service.start()
    try:
        assert unit_of(await service.charge(initial("s", imsi))).validity_time == 100
        (catalogues / "2026-03.toml").write_text(V2_TOML)  # the operator adds the next version, then reloads
        assert service.reload_catalogue().effective == CHANGE
        v2 = service.engine.versions.versions[1]
        assert (archive / f"{v2.version}.toml").read_text() == V2_TOML
        clock_now[0] = CHANGE
        assert unit_of(await service.charge(update("s", 1, imsi, used=1000))).charged == 100  # the grant's v1
        clock_now[0] = CHANGE + 5
        assert unit_of(await service.charge(terminate("s", 2, imsi, used=1000))).charged == 300  # v2
        # An edited version is a new one; the text that priced the events before stays kept.
        (catalogues / "2026-01.toml").write_text(CATALOGUE_TOML + "# edited\n")
        service.reload_catalogue()
        assert (archive / f"{v1.version}.toml").read_text() == CATALOGUE_TOML
        assert len(list(archive.glob("*.toml"))) == 3
        (catalogues / "2026-04.toml").write_text(
            V2_TOML.replace(CHANGE_TEXT, "2026-03-04T12:00:51Z").replace("EUR", "USD")
        )
        with pytest.raises(CatalogueError):
            service.reload_catalogue()
        assert len(service.engine.versions.versions) == 2  # the running versions stay
    finally:
        await service.stop()
    usage = usage_events(world)
    assert [(e["charge"], e["catalogue"]) for e in usage] == [(100, v1.version), (300, v2.version)]
    with world.store.read() as txn:
        check_invariants(txn)
    world.close()


def test_export_record_names_the_version() -> None:
    event = {"id": "s-1", "seq": 1, "kind": "usage", "time": T0, "catalogue": "0123456789ab", "impacts": []}
    record = to_record(event)
    assert record["catalogueVersion"] == "0123456789ab" and "details" not in record
    assert json.loads(json.dumps(record))["catalogueVersion"] == "0123456789ab"


def test_a_period_fee_is_priced_by_the_version_in_force_when_the_period_starts(
    tmp_path: Path, open_store: Callable[..., Any]
) -> None:
    """A line idle across a period boundary and a later change of its plan's fee: the period that started before
    the change pays the old fee, even though it is renewed after the change."""
    world = World(tmp_path / "store", opener=open_store)
    world.tenant()
    world.account("a", balance=100_000)
    line, imsi = world.line("a", plan="pre")  # fee 1000, monthly
    with world.store.read() as txn:
        bs = txn.get_line_balances(line)
    assert bs is not None
    first_end = bs.period_end
    dearer = CATALOGUE_TOML.replace(
        '[plans.pre]\npayment = "prepaid"\nfee = 1000', '[plans.pre]\npayment = "prepaid"\nfee = 1500', 1
    )
    assert dearer != CATALOGUE_TOML
    later = dearer.replace('default_zone = "world"\n', 'default_zone = "world"\neffective = 2026-04-10T00:00:00Z\n', 1)
    v1, v2 = parse_catalogue(CATALOGUE_TOML, "v1.toml"), parse_catalogue(later, "v2.toml")
    world.engine.versions = CatalogueVersions([v1, v2])
    world.now = int(datetime(2026, 5, 2, tzinfo=UTC).timestamp())  # the April and May periods have started
    assert first_end == int(datetime(2026, 4, 1, tzinfo=UTC).timestamp())
    world.charge(initial("s", imsi, rg=11))
    renewals = [(e["time"], e["impacts"][0]["delta"], e["catalogue"]) for e in world.events() if e["kind"] == "renewal"]
    may = int(datetime(2026, 5, 1, tzinfo=UTC).timestamp())
    assert renewals[-2:] == [(first_end, -1000, v1.version), (may, -1500, v2.version)]
    with world.store.read() as txn:
        check_invariants(txn)
    world.close()


async def test_a_restart_prices_open_grants_by_their_kept_version(
    tmp_path: Path, open_store: Callable[..., Any]
) -> None:
    """A grant made, the catalogue file edited, the service restarted: the usage of the grant is priced by the
    version it was made in, read back from the kept versions (chf.runtime.catalogues)."""
    path = tmp_path / "catalogue.toml"
    path.write_text(CATALOGUE_TOML)
    archive = tmp_path / ARCHIVE_DIR
    world = World(tmp_path / "store", opener=open_store)
    world.tenant()
    world.account("a", balance=100_000)
    _, imsi = world.line("a", plan="payg")

    def service() -> ChargingService:
        return ChargingService(
            world.store,
            load_versions(path),
            catalogue_path=str(path),
            catalogue_archive=str(archive),
            clock=lambda: T0,
            sweep_interval=3600,
        )

    first = service()
    v1 = first.catalogue
    await first.start()
    assert unit_of(await first.charge(initial("s", imsi))).granted == 1000
    await first.stop()
    path.write_text(CATALOGUE_TOML.replace("block = 100\nprice = 10\n", "block = 100\nprice = 30\n", 1))
    world.reopen()
    second = service()
    assert second.catalogue.version != v1.version
    await second.start()
    try:
        assert unit_of(await second.charge(terminate("s", 1, imsi, used=1000))).charged == 100  # v1's price
        await second.charge(initial("t", imsi))
        assert unit_of(await second.charge(terminate("t", 1, imsi, used=1000))).charged == 300
    finally:
        await second.stop()
    usage = usage_events(world)
    assert [(e["charge"], e["catalogue"]) for e in usage] == [(100, v1.version), (300, second.catalogue.version)]
    with world.store.read() as txn:
        check_invariants(txn)
    world.close()
