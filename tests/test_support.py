"""The suite's own rules (tests/support.py, tests/conftest.py): what is missing from outside the repository skips
on a developer's machine and fails under CI, and only interop tests start external programs."""

from __future__ import annotations

import pytest

from tests import support


def test_missing_material_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no such thing"):
        support.unavailable("no such thing")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no such thing"):
        support.unavailable("no such thing")


def test_a_test_not_marked_interop_may_not_start_a_program() -> None:
    with pytest.raises(pytest.fail.Exception, match="add it to INTEROP"):
        support.require_tool("sh")


def test_every_test_has_one_kind(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
    for item in request.session.items:
        kinds = {name for name in ("unit", "interop", "slow") if item.get_closest_marker(name)}
        assert kinds and ("unit" not in kinds or kinds == {"unit"}), (item.nodeid, kinds)


def test_fixture_files_are_read_from_the_repository() -> None:
    assert support.fixture_text("core.toml").startswith("# ")
    assert support.FIXTURES.is_relative_to(support.REPO)
