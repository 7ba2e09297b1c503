"""B2B2B and tax profiles through the `chf` CLI, on the demo data (conf/demo.toml: operator -> connect-iot ->
smartfarm, conf/catalogue.toml's worked example)."""

from __future__ import annotations

import json
from typing import Any

from tests.test_cli import chf, demo, home  # noqa: F401  (the CLI tests' fixtures)


def test_demo_hierarchy_margin_and_refusals(demo: Any) -> None:  # noqa: F811
    shown = json.loads(demo("--json", "account", "show", "smartfarm-contract").out)
    assert (shown["tenant"], shown["parent"], shown["price_list"]) == (
        "connect-iot", "connect-iot-wholesale", "reseller-to-enterprise"
    )  # fmt: skip
    # Two sensors started their first period: smartfarm-contract paid connect-iot 0.50 EUR + 20 % each.
    assert shown["balance"] == -1_200_000
    out = demo("account", "show", "smartfarm-contract").out
    assert "price list:   reseller-to-enterprise" in out and "tax profile:  fr-business" in out
    r = demo("--json", "report", "margin", "--from", "2000-01-01", "--to", "2100-12-31")
    assert r.status == 0, r.err
    groups = {g["group"]: g for g in json.loads(r.out)["groups"]}
    assert groups["smartfarm"]["costs"] == {"EUR": 1_200_000} and groups["smartfarm"]["revenue"] == {"EUR": 2_000_000}
    assert groups["connect-iot"]["margin"] == {"EUR": 1_200_000}
    assert groups["connect-iot"]["net"] == {"EUR": 1_000_000} and groups["connect-iot"]["tax"] == {"EUR": 200_000}
    text = demo("report", "margin", "--from", "2000-01-01", "--to", "2100-12-31").out
    assert "smartfarm    EUR        2.00  1.20        0.80" in text
    r = demo("tenant", "create", "x", "--currency", "EUR", "--parent", "nope")
    assert r.status != 0 and "parent" in r.err and "nope" in r.err
    r = demo("account", "create", "y", "--tenant", "demo", "--payment", "postpaid", "--price-list", "nope")
    assert r.status != 0 and "price_list" in r.err
    r = demo("account", "create", "z", "--tenant", "demo", "--payment", "postpaid", "--tax-profile", "fr-consumer")
    assert r.status == 0, r.err
