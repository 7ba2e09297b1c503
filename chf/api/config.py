"""The [api] section of conf/chf.toml: where the management API listens and who may call it."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from chf.core.validation import Port, expected
from chf.runtime.config import read_section

Token = Annotated[str, Meta(min_length=16, extra=expected("a string of at least 16 characters", secret=True))]


class ApiConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    listen: Annotated[str, Meta(min_length=1, extra=expected("an address such as 127.0.0.1"))] = "127.0.0.1"
    port: Port = 8081
    # [api.tokens] name = "token": the name becomes the actor ("api:<name>") recorded in audit events.
    tokens: Annotated[dict[str, Token], Meta(extra=expected('a table of name = "token"'))] = msgspec.field(
        default_factory=dict
    )
    enabled: bool = True


def parse_api_config(section: dict[str, Any], source: str = "conf/chf.toml") -> ApiConfig:
    """Validate the `[api]` section; errors name the file, section and field."""
    return read_section(ApiConfig, section, source, "api")
