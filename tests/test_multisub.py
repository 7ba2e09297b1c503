"""Multi-subscription (issue 15, item 9): a line with an extra plan beside its main plan, at the engine, on both
stores. tests/fixtures/core.toml: main plan `pre` (fee 1000, 3000 bytes of rating group 10 at priority 10), extra
plan `svc` (fee 200, 500 bytes of rating group 10 at priority 20: used after the main plan's data)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chf.core import provisioning
from chf.core.extraplans import add_plan, remove_plan
from chf.core.model import RequestError
from tests.corekit import World, check_invariants, initial, snapshot, terminate


@pytest.fixture
def world(tmp_path: Path, open_store: Callable[..., Any]) -> Iterator[World]:
    w = World(tmp_path / "store", opener=open_store)
    w.tenant()
    yield w
    with w.store.read() as txn:
        check_invariants(txn)
    w.close()


def at(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp())


def _gone() -> Any:
    raise AssertionError("the line is gone")


def add(world: World, line: int, plan: str = "svc", key: str | None = None) -> Any:
    return world.admin(add_plan, f"#{line}", plan, actor="shop", reason="bought", idempotency_key=key)


def remove(world: World, line: int, plan: str = "svc") -> Any:
    return world.admin(remove_plan, f"#{line}", plan, actor="shop", reason="cancelled")


def extra(world: World, line: int) -> list[Any]:
    return [b for b in world.line_buckets(line) if b.kind == "extra"]


def test_extra_plan_charges_its_fee_grants_its_allowances_and_is_used_after_the_main_plan(world: World) -> None:
    world.account("a", balance=2_000)
    line, imsi = world.line("a", plan="pre")  # 1000 left
    seq = world.last_seq()
    result = add(world, line)
    assert result.value == {"line": line, "plan": "pre", "extra_plans": ["svc"]}
    change, renewal = world.events(seq)
    assert (change["kind"], change["plan"], change["extra"]) == ("plan_change", "svc", True)
    assert (renewal["kind"], renewal["plan"], renewal["charge"]) == ("renewal", "svc", 200)
    assert [i["delta"] for i in renewal["impacts"]] == [-200, 500]
    (video,) = extra(world, line)
    assert (video.name, video.remaining, video.valid_to) == ("svc:video", 500, at(2026, 4, 1))
    assert world.acct("a").balance == 800
    assert add(world, line).value["extra_plans"] == ["svc"] and world.acct("a").balance == 800  # no second fee
    # 3200 bytes: the main plan's 3000 first (priority 10), then 200 of the extra plan's (priority 20).
    world.charge(initial("s1", imsi, requested={"bytes": 3200}))
    world.charge(terminate("s1", 1, imsi, used=3200))
    plan_data = next(b for b in world.line_buckets(line) if b.kind == "plan")
    assert (plan_data.remaining, extra(world, line)[0].remaining) == (0, 300)
    assert world.acct("a").balance == 800


def test_extra_plan_renews_with_its_own_period_while_the_line_is_in_service(world: World) -> None:
    world.account("a", balance=5_000)
    line, imsi = world.line("a", plan="pre")
    add(world, line)
    world.now = at(2026, 4, 1) + 60
    world.charge(initial("s1", imsi))
    renewals = [e for e in world.events() if e["kind"] == "renewal" and e["plan"] == "svc"]
    assert [(e["period_index"], e["charge"], e["time"]) for e in renewals][-1] == (1, 200, at(2026, 4, 1))
    (video,) = extra(world, line)
    assert (video.valid_from, video.remaining) == (at(2026, 4, 1), 500)
    assert world.acct("a").balance == 5_000 - 1000 - 200 - 1000 - 200
    world.admin(provisioning.set_state, f"#{line}", "terminated", actor="ops", reason="ops")
    world.now = at(2026, 6, 2)
    # Bring the line up to date: its periods stop at the boundary, no fee for a terminated line.
    world.store.write(lambda txn: world.engine.context(txn, txn.get_subscriber(line) or _gone(), world.now).flush())
    assert world.acct("a").balance == 5_000 - 2400
    with world.store.read() as txn:
        bs = txn.get_line_balances(line)
        assert bs is not None and bs.extras is None


def test_removing_an_extra_plan_ends_its_buckets_without_refund(world: World) -> None:
    world.account("a", balance=2_000)
    line, _ = world.line("a", plan="pre")
    add(world, line)
    seq = world.last_seq()
    assert remove(world, line).value["extra_plans"] == []
    assert extra(world, line) == []
    kinds = [e["kind"] for e in world.events(seq)]
    assert kinds == ["expiry", "plan_change"]
    assert world.acct("a").balance == 800
    with pytest.raises(RequestError) as exc:
        remove(world, line)
    assert exc.value.field == "plan"


def test_an_extra_plan_refused_changes_nothing(world: World) -> None:
    world.account("a", balance=1_100)
    line, _ = world.line("a", plan="pre")  # 100 left: cannot pay svc's 200
    provisioned, _ = world.line("a", plan="pre", state="provisioned")
    with world.store.read() as txn:
        before = snapshot(txn)
    for plan, field in (("svc", "wallet"), ("nope", "plan"), ("pre", "plan"), ("post", "plan")):
        with pytest.raises(RequestError) as exc:
            add(world, line, plan)
        assert exc.value.field == field
    with pytest.raises(RequestError, match="in service"):
        add(world, provisioned)
    with world.store.read() as txn:
        assert snapshot(txn) == before


def test_the_main_plan_cannot_become_a_plan_the_line_runs_as_an_extra(world: World) -> None:
    """Main and extra on one plan would charge its fee and grant its allowances twice: refused, nothing written."""
    world.account("a", balance=10_000)
    line, _ = world.line("a", plan="pre")
    add(world, line)
    with world.store.read() as txn:
        before = snapshot(txn)
    with pytest.raises(RequestError) as exc:
        world.admin(provisioning.assign_plan, "svc", actor="shop", reason="upgrade", line_ref=f"#{line}")
    assert exc.value.field == "plan"
    with world.store.read() as txn:
        assert snapshot(txn) == before
