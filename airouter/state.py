"""Everything built from one config at start-up: keys, backends, the model map."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec

from airouter import tokenizers
from airouter.auth import ClientKey, KeyStore
from airouter.backends import Backend, create_backend
from airouter.backends.node_slots import SlotStore
from airouter.backends.observer import QUIET, NodeObserver
from airouter.backends.prefix_share import PrefixShare, share_from_env
from airouter.config import Config, ConfigError
from airouter.limits import Limiter
from airouter.limits.slots import make_slot_store
from airouter.routing import ModelMap


class ModelCard(msgspec.Struct):
    id: str
    created: int
    owned_by: str
    object: str = "model"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"


@dataclass(slots=True, eq=False)
class State:
    cfg: Config
    keys: KeyStore
    backends: dict[str, Backend]
    models: ModelMap
    body_limit: int
    limits: Limiter
    body_timeout: float = 60.0
    slots: SlotStore | None = None
    prefix_share: PrefixShare | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    _listings: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg: Config, observer: NodeObserver = QUIET) -> State:
        """`observer` hears the backends' node verdicts; validating a config needs none."""
        backends = {name: create_backend(name, b, observer) for name, b in cfg.backends.items()}
        for alias, m in cfg.models.items():
            try:
                backends[m.backend].check(m)
            except ValueError as e:
                raise ConfigError(f"models.{alias}: {e}") from None
        tokenizers.load_all(cfg)
        return cls(
            cfg,
            KeyStore(cfg),
            backends,
            ModelMap(cfg, backends),
            cfg.max_body_bytes,
            Limiter(cfg),
            cfg.server.body_timeout,
        )

    async def start(self) -> None:
        started: list[Backend] = []
        await self.limits.start()
        try:
            await self._share_slots()
            for b in self.backends.values():
                await b.start()
                started.append(b)
            await self._share_prefixes()
            for alias in self.models.aliases:
                t = self.models.lookup(alias)
                if t is not None:
                    await t.backend.prepare(t)
        except BaseException:
            for b in started:
                await b.aclose()
            await self._close_slots()
            await self.limits.aclose()
            raise

    async def _share_slots(self) -> None:
        """Count the nodes' concurrency slots with the other workers (and replicas)."""
        self.slots = make_slot_store(self.cfg)
        if self.slots is None:
            return
        await self.slots.start()
        for b in self.backends.values():
            b.pool.slots = self.slots

    async def _share_prefixes(self) -> None:
        """Keep the prefix indexes of this router's workers alike (several workers only)."""
        pools = {name: b.pool.prefix for name, b in self.backends.items() if b.pool.prefix}
        if not pools:
            return
        self.prefix_share = share_from_env()
        if self.prefix_share is None:
            return
        for name, balancer in pools.items():
            self.prefix_share.attach(name, balancer)
        await self.prefix_share.start()

    async def _close_slots(self) -> None:
        if self.slots is not None:
            await self.slots.aclose()

    async def aclose(self) -> None:
        if self.prefix_share is not None:
            self.prefix_share.close()
        for b in self.backends.values():
            await b.aclose()
        await self._close_slots()
        await self.limits.aclose()

    def card(self, alias: str) -> ModelCard:
        return ModelCard(alias, self.created, "airouter")

    def listing(self, key: ClientKey) -> bytes:
        """/v1/models for `key`, encoded once per key."""
        out = self._listings.get(key.name)
        if out is None:
            cards = [self.card(a) for a in self.models.aliases if key.allows(a)]
            out = self._listings[key.name] = msgspec.json.encode(ModelList(cards))
        return out
