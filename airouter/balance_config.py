"""The `[backends.<name>.prefix]` table: how the prefix-aware balancers (balance = "prefix" or
"prefix_load") key, match and spread requests. Documented in backends.toml."""

from __future__ import annotations

from typing import Annotated

import msgspec


class PrefixConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    block_bytes: Annotated[int, msgspec.Meta(ge=16)] = 512
    max_bytes: Annotated[int, msgspec.Meta(ge=16)] = 65536  # hashed per request, at most
    min_match: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    home_blocks: Annotated[int, msgspec.Meta(ge=1)] = 2
    cache_blocks: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: from KV metrics, else 4 MB of blocks
    abs_threshold: Annotated[float, msgspec.Meta(ge=0)] = 8.0
    rel_threshold: Annotated[float, msgspec.Meta(ge=1)] = 1.5
    cold_slack: Annotated[float, msgspec.Meta(ge=0)] = 0.0
