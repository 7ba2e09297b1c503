"""The validation adapter (chf/core/validation.py): strict decoding into Structs, every problem at once, the
project's wording, and the two renderings (configuration lines, problem+json invalidParams)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import pytest
from msgspec import Meta

from chf.core.validation import (
    BODY,
    CONFIG,
    Invalid,
    NonEmptyStr,
    Port,
    Problem,
    config_errors,
    decode,
    describe,
    expected,
    format_path,
    invalid_params,
)


class Peer(msgspec.Struct, forbid_unknown_fields=True):
    host: NonEmptyStr
    realm: str = ""


class Files(msgspec.Struct, forbid_unknown_fields=True):
    max_age: Annotated[float, Meta(ge=0.01)] = 300.0


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    port: Port = 3868
    batch: Annotated[int, Meta(ge=1)] = 500
    durability: Literal["fsync", "os"] = "fsync"
    tokens: dict[
        str, Annotated[str, Meta(min_length=16, extra=expected("a token of 16+ characters", secret=True))]
    ] = {}
    peers: list[Peer] = []
    files: Files | None = None
    line: NonEmptyStr | int | None = None
    enabled: bool = True


class Paired(msgspec.Struct, forbid_unknown_fields=True):
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")


def problems(data: object, type_: type = Section) -> list[Problem]:
    with pytest.raises(Invalid) as info:
        decode(type_, data)
    return info.value.problems


def test_valid_values_decode_strictly() -> None:
    s = decode(Section, {"port": 0, "batch": 1, "files": {"max_age": 1}, "peers": [{"host": "pgw"}], "line": 7})
    assert s.port == 0 and s.files == Files(1.0) and s.peers == [Peer("pgw")] and s.line == 7
    assert isinstance(s.files.max_age, float)  # an integer is a number
    assert decode(Section, {}) == Section()


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        ({"port": "3868"}, ("port",), "must be an integer from 0 to 65535, got '3868'"),
        ({"port": 70000}, ("port",), "must be an integer from 0 to 65535, got 70000"),
        ({"batch": True}, ("batch",), "must be an integer >= 1, got True"),
        ({"batch": 1.5}, ("batch",), "must be an integer >= 1, got 1.5"),
        ({"durability": "never"}, ("durability",), "must be one of fsync, os, got 'never'"),
        ({"enabled": 1}, ("enabled",), "must be true or false, got 1"),
        ({"tokens": {"crm": "short"}}, ("tokens", "crm"), "must be a token of 16+ characters"),  # not quoted: a secret
        ({"tokens": []}, ("tokens",), "must be a table, got []"),
        ({"peers": [{"host": ""}]}, ("peers", 0, "host"), "must be a non-empty string, got ''"),
        ({"peers": [{}]}, ("peers", 0, "host"), "is required"),
        ({"peers": "pgw"}, ("peers",), "must be a list, got 'pgw'"),
        ({"files": {"max_age": "soon"}}, ("files", "max_age"), "must be a number >= 0.01, got 'soon'"),
        ({"line": False}, ("line",), "must be a non-empty string or an integer, got False"),
        (
            {"colour": "red"},
            ("colour",),
            "unknown setting (known: batch, durability, enabled, files, line, peers, port, tokens)",
        ),
        (3, (), "must be a table, got 3"),
    ],
)
def test_each_fault_is_named_and_worded(data: object, path: tuple[str | int, ...], reason: str) -> None:
    assert problems(data) == [Problem(path, reason)]


def test_every_problem_is_reported_at_once() -> None:
    found = problems({"port": "x", "batch": 0, "colour": 1, "files": {"max_age": "soon", "c": 2}})
    assert {p.path for p in found} == {("port",), ("batch",), ("colour",), ("files", "max_age"), ("files", "c")}


def test_a_structs_own_check_keeps_its_message() -> None:
    assert problems({"cert": "a.pem"}, Paired) == [Problem((), "cert and key go together")]
    assert decode(Paired, {"cert": "a.pem", "key": "a.key"}).key == "a.key"


def test_body_wording_and_a_long_value_is_not_echoed_in_full() -> None:
    with pytest.raises(Invalid) as info:
        decode(Section, {"colour": 1, "peers": [{"host": "h" * 10_000, "x": 1}], "batch": "9" * 10_000}, BODY)
    reasons = {p.path: p.reason for p in info.value.problems}
    assert reasons[("colour",)].startswith("unknown field (known: ")
    assert len(reasons[("batch",)]) < 120
    with pytest.raises(Invalid) as info:
        decode(Section, [], BODY)
    assert info.value.problems == [Problem((), "must be a JSON object, got []")]


def test_renderings() -> None:
    found = [
        Problem(("port",), "must be an integer"),
        Problem(("tokens", "crm"), "too short"),
        Problem(("files", "max_age"), "must be a number"),
        Problem(("peers", 0, "host"), "is required"),
        Problem((), "must be a table"),
    ]
    assert config_errors(found, "chf.toml", "gy") == [
        "chf.toml: [gy] port: must be an integer",
        "chf.toml: [gy.tokens] crm: too short",
        "chf.toml: [gy.files] max_age: must be a number",
        "chf.toml: [gy] peers[0].host: is required",
        "chf.toml: [gy]: must be a table",
    ]
    assert [p["param"] for p in invalid_params(found)] == [
        "port",
        "tokens.crm",
        "files.max_age",
        "peers[0].host",
        "body",
    ]
    assert format_path(("a", 1, "b")) == "a[1].b"


def test_descriptions() -> None:
    assert describe(Annotated[int, Meta(ge=0, le=9)]) == "an integer from 0 to 9"
    assert describe(Annotated[int, Meta(le=9)]) == "an integer <= 9"
    assert describe(Annotated[float, Meta(gt=0)]) == "a number > 0"
    assert describe(Annotated[str, Meta(pattern="^[A-Z]{3}$")]) == "a string matching ^[A-Z]{3}$"
    assert describe(Annotated[str, Meta(min_length=2, max_length=4)]) == "a string of 2 to 4 characters"
    assert describe(Files, CONFIG) == "a table" and describe(Files, BODY) == "a JSON object"
    assert describe(Literal["debug", "info", "warning", "error"]) == "one of debug, info, warning, error"


def test_a_secret_is_never_quoted_back() -> None:
    class Keys(msgspec.Struct, forbid_unknown_fields=True):
        tokens: Annotated[list[str], Meta(extra=expected("a list of tokens", secret=True))] | None = None

    with pytest.raises(Invalid) as info:
        decode(Keys, {"tokens": "s3cr3t-value"})
    assert info.value.problems == [Problem(("tokens",), "must be a list of tokens")]
    assert "s3cr3t" not in str(info.value)
