"""GET /v1/usage: a key's use so far, its limits and what is left of them; an admin key
([keys.NAME] admin = true) sees every key and every model-wide limit. Key names only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from airouter.exchange import Exchange

if TYPE_CHECKING:
    from airouter.auth import ClientKey
    from airouter.lifecycle import Holder

_encode = msgspec.json.Encoder().encode


class UsageEndpoint:
    def __init__(self, holder: Holder) -> None:
        self.holder = holder

    async def __call__(self, x: Exchange, key: ClientKey | None) -> None:
        assert key is not None
        state = self.holder.state
        kc = state.cfg.keys.get(key.name)
        admin = kc is not None and kc.admin
        names = list(state.cfg.keys) if admin else [key.name]
        limits = state.limits
        body: dict[str, Any] = {
            "object": "usage",
            "key": key.name,
            "keys": [await limits.report(n) for n in names],
        }
        labels = list(state.cfg.models) if admin else [
            a for a in state.cfg.models if key.allows(a)
        ]
        body["models"] = await limits.report_models(labels)
        x.send_json(200, _encode(body))
