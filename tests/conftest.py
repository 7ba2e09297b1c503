"""The suite's rules: a stale build is refused, and every test is marked unit, interop or slow (pyproject.toml
registers the markers): `pytest -m unit` runs the quick in-process tests alone.

interop  the test starts an external program or peer (tshark, OTP diameter, nats-server, curl, openssl):
         tests.support.require_tool() fails a test that starts one and is not in INTEROP.
slow     the test takes more than about a second on a developer's machine (a real `chf serve`, a killed
         process, property tests with many examples); a unit test that takes longer is named at the end of the
         run.
unit     everything else.
A test may also carry @pytest.mark.slow or @pytest.mark.interop itself; the tables here keep the test modules
free of markers and in one place.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import support
from tools import native

# Entries: "module.py" (every test in it), "module.py::function" or "module.py::Class".
INTEROP = {
    "test_gy_erlang.py",
    "test_gy_wire.py::test_tshark_dissects_a_test_run",
    "test_chaos.py::test_overload_is_refused_fast_and_recovers",
    "test_cli.py::test_no_fee_for_terminated_or_provisioned_lines_when_the_clock_moves_on",
    "test_nchf.py::test_curl_http2_prior_knowledge",
    "test_nchf.py::test_http1_expect_continue",
    "test_nchf.py::test_tls_with_alpn_h2",
    "test_systemd.py::test_systemd_analyze_verify",
    "test_monitoring.py::test_promtool_check_and_test_rules",
    "test_monitoring.py::test_prometheus_scrapes_chf_serve_and_every_dashboard_query_has_data",
    "test_snmp.py::test_chf_serve_agent_through_snmpd",
    "test_snmp.py::test_mib_loads_in_snmptranslate_with_the_agents_oids",
    "test_snmp.py::test_mib_passes_smilint_level_3",
}
# Fixtures that start an external program.
INTEROP_FIXTURES = {"nats_server", "net_snmp", "redis_cluster"}

SLOW = {
    "test_backup.py::test_backup_while_chf_serve_charges_then_restore",
    "test_usage_bounds.py::test_nchf_implausible_usage_is_refused_naming_the_pointer",
    "test_catalogue.py::test_affordable_agrees_with_charge",
    "test_chaos.py::test_fuzzers_over_the_wire_find_no_crash",
    "test_chaos.py::test_coverage_guided_fuzzing_finds_nothing",
    "test_chaos.py::test_slow_no_read_and_idle_peers_stay_bounded",
    "test_chaos.py::test_overload_is_refused_fast_and_recovers",
    "test_chaos.py::test_sigkill_loses_no_acknowledged_debit_and_doubles_none",
    "test_chaos.py::test_loadtest_gy_provisions_lines_for_a_running_server",
    "test_catalogue.py::test_period_chain_properties",
    "test_cli.py::test_catalogue_reload_signals_the_running_server",
    "test_cli.py::test_events_follow_and_entry_point",
    "test_cdr.py::test_cdr_sink_survives_killed_exporters",
    "test_cdr.py::test_chf_serve_writes_the_cdrs_of_nchf_sessions",
    "test_cdr.py::test_generic_types_agree_with_pycrates_compile_of_the_full_specification",
    "test_cli.py::test_no_fee_for_terminated_or_provisioned_lines_when_the_clock_moves_on",
    "test_crash.py::test_acknowledged_operations_survive_sigkill",
    "test_export.py::test_file_sink_survives_a_killed_exporter_and_restarts",
    "test_export.py::test_nats_sink_survives_a_killed_broker",
    "test_export.py::test_nats_sink_survives_a_killed_exporter",
    "test_gy_erlang.py",
    "test_gy_fastpath.py::test_fast_path_agrees_with_the_reference_on_mutants",
    "test_gy_hostile.py::test_answers_for_a_peer_that_never_reads_are_bounded_and_the_peer_closed",
    "test_gy_hostile.py::test_a_message_that_never_completes_is_cut_off",
    "test_gy_protocol.py::test_watchdog_and_graceful_shutdown",
    "test_gy_wire.py::test_ours_encode_python_diameter_decodes",
    "test_huffman.py::test_arbitrary_bytes_decode_or_fail_like_hpack",
    "test_import.py::test_bulk_import_writes_exactly_what_add_line_writes",
    "test_nchf.py::test_a_request_that_never_completes_is_cut_off",
    "test_nchf.py::test_chf_serve_runs_the_nchf_front_end",
    "test_nchf.py::test_create_update_release_flow",
    "test_monitoring.py::test_prometheus_scrapes_chf_serve_and_every_dashboard_query_has_data",
    "test_nchf_schemathesis.py",
    "test_pools_wire.py::test_nchf_stacked_pool_then_adaptive_top_off",
    "test_packaging.py::test_the_wheel_installed_in_a_fresh_venv_gives_a_working_chf",
    "test_progress.py::test_import_bar_on_a_terminal_only",
    "test_progress.py::test_reconcile_bars_on_a_terminal_only",
    "test_progress.py::test_report_bar_on_a_terminal_only",
    "test_properties.py::TestChargingSystem",
    "test_service.py::test_serve_refuses_a_bad_section_without_a_traceback",
    "test_snmp.py::test_chf_serve_agent_through_snmpd",
    "test_store.py::test_full_queue_answers_busy",
    "test_storecopy.py::test_chf_store_copy_and_verify",
    "test_store.py::test_record_encoding_matches_the_msgpack_package",
    "test_systemd.py::test_ready_after_the_listeners_watchdog_pings_stopping_and_drain",
    "test_systemd.py::test_ready_waits_for_the_frontend_workers",
    "test_workers.py::test_serve_with_two_frontend_workers",
    "test_wholesale_wire.py::test_nchf_session_and_iec_are_rated_at_every_level",
}
SLOW_UNIT_SECONDS = 2.0

# The store backends a parametrised suite runs on: LMDB on disk, and a Redis Cluster (3 primaries, 3 replicas)
# started once per session (tests/redis_cluster.py); the Redis variants start external programs (interop).
BACKENDS = ["lmdb", pytest.param("redis", marks=pytest.mark.interop)]


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """A real 6-node Redis Cluster on loopback for the whole session (tmp dirs, free ports, stopped at the end)."""
    from tests.redis_cluster import RedisCluster

    support.require_tool("redis-server")
    support.require_tool("redis-cli")
    cluster = RedisCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Any]:
    """`open_store(name="store", **lmdb_options)`: the store `name` of this test on the backend under test; the same
    name opens the same store again (a reopen)."""
    from store.lmdbstore import Store as LmdbStore

    if backend == "lmdb":
        return lambda name="store", **kw: LmdbStore(tmp_path / name, **kw)
    cluster = request.getfixturevalue("redis_cluster")
    namespaces: dict[str, str] = {}

    def open_redis(name: str = "store", **kw: Any) -> Any:
        namespace = namespaces.setdefault(name, "t" + secrets.token_hex(5))
        return cluster.store(namespace=namespace)

    return open_redis


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test a stale build: a compiled module older than its source would test yesterday's code."""
    stale = native.stale()
    if stale:
        pytest.exit(
            f"compiled modules are older than their source: {', '.join(stale)}. "
            "Rebuild them (`make test` does; or `python setup.py build_ext --inplace`), "
            "or remove them with `make pure`.",
            returncode=2,
        )


def _names(item: pytest.Item) -> set[str]:
    """The names a table entry may use for node id "tests/m.py::Class::test[params]": m.py, m.py::Class, ..."""
    path, *parts = item.nodeid.split("::")
    names = [path.rpartition("/")[2]]
    for part in parts:
        names.append(f"{names[-1]}::{part.partition('[')[0]}")
    return set(names)


def _check_entries(items: Iterable[pytest.Item]) -> None:
    """An entry that names nothing (a test renamed or removed) would drop its marker silently."""
    modules = {item.path.name: getattr(item, "module", None) for item in items}
    for entry in sorted(INTEROP | SLOW):
        module_name, _, attribute = entry.partition("::")
        module = modules.get(module_name)
        if module is not None and attribute and not hasattr(module, attribute):
            raise pytest.UsageError(f"tests/conftest.py names {entry}, which is not a test")


def _marked(item: pytest.Item, name: str) -> bool:
    return item.get_closest_marker(name) is not None


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _check_entries(items)
    for item in items:
        names = _names(item)
        fixtures = getattr(item, "fixturenames", ())
        interop = bool(names & INTEROP or INTEROP_FIXTURES.intersection(fixtures)) or _marked(item, "interop")
        slow = bool(names & SLOW) or _marked(item, "slow")
        if interop:
            item.add_marker(pytest.mark.interop)
        if slow:
            item.add_marker(pytest.mark.slow)
        if not interop and not slow:
            item.add_marker(pytest.mark.unit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    support.current_test = item
    try:
        return (yield)
    finally:
        support.current_test = None


_slow_units: list[tuple[str, float]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and "unit" in report.keywords and report.duration > SLOW_UNIT_SECONDS:
        _slow_units.append((report.nodeid, report.duration))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _slow_units:
        terminalreporter.section("unit tests slower than a unit test should be")
        for nodeid, seconds in _slow_units:
            terminalreporter.write_line(f"{seconds:5.1f} s  {nodeid}  (add it to SLOW in tests/conftest.py)")
