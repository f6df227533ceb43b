"""backends.toml: msgspec structs, ${VAR} expansion, validation with messages naming the key."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, parse_qs, urlsplit

import msgspec

from airouter.balance_config import PrefixConfig
from airouter.output.parsers import REASONING_PARSERS, TOOL_PARSERS
from airouter.share_config import KeyConfig as KeyConfig
from airouter.share_config import LimitsConfig as LimitsConfig
from airouter.share_config import QueueTimeouts, ShareConfig
from airouter.upstream import base_url_problem, proxy_problem, tls_problem

DEFAULT_CONFIG = "backends.toml"


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and the key."""


class Base(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


Seconds = Annotated[float, msgspec.Meta(gt=0)]


class ServerConfig(Base):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 3000
    api_keys: list[str] = []
    allow_unauthenticated: bool = False
    workers: Annotated[int, msgspec.Meta(ge=1)] = 1
    max_body_mb: Annotated[float, msgspec.Meta(gt=0)] = 16.0
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    access_log: bool = True
    # On SIGTERM: stop accepting, give in-flight streams this long, then end them cleanly.
    shutdown_grace: Seconds = 30.0
    # On SIGHUP with a valid file: new workers start, the old ones stop accepting and give
    # in-flight requests (streams included) this long before ending them. Not a shutdown.
    reload_grace: Seconds = 300.0
    otlp_endpoint: str | None = None
    # Bearer key for /metrics and the /health detail; unset leaves them open.
    metrics_key: str | None = None
    # Slow or silent clients: a connection that sends no request headers for header_timeout
    # (idle keep-alive connections included) is closed; a body that stalls for body_timeout
    # between two reads gets 408. max_connections caps open connections per worker.
    header_timeout: Seconds = 60.0
    body_timeout: Seconds = 60.0
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 16384
    # A request head past this many bytes gets 431 (see backends.toml).
    max_header_bytes: Annotated[int, msgspec.Meta(ge=8192, le=1 << 20)] = 16384
    # Shared limits: every replica and worker counts in this Redis (else: one process group).
    redis_url: str | None = None
    limits_on_redis_failure: Literal["allow", "deny"] = "allow"
    # How long a node slot held in Redis outlives a replica that died holding it.
    slot_lease_ttl: Seconds = 30.0


class NodeConfig(Base):
    url: str
    weight: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    metrics_url: str | None = None  # the engine's Prometheus text; unset: the type's default


class NodesConfig(Base):
    """What every backend type shares: its nodes and how to treat them."""

    urls: list[str | NodeConfig] = []
    balance: Literal["least_inflight", "round_robin", "prefix", "prefix_load"] = "least_inflight"
    prefix: PrefixConfig = msgspec.field(default_factory=PrefixConfig)
    metrics_interval: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # 0 = no engine scraping
    # Attempts on other nodes when one fails before any byte reached the client.
    retries: Annotated[int, msgspec.Meta(ge=0)] = 2
    connect_timeout: Seconds = 5.0
    # The answer's start (a whole answer's head, a stream's first event); idle_timeout between
    # reads; request_timeout for a whole answer (Triton: the whole call). See backends.toml.
    first_token_timeout: Seconds = 120.0
    idle_timeout: Seconds = 120.0
    request_timeout: Seconds = 600.0
    max_concurrent: Annotated[int, msgspec.Meta(ge=0)] = 0  # per node; 0 = no limit
    max_queue: Annotated[int, msgspec.Meta(ge=0)] = 100
    queue_timeout: Seconds = 30.0
    queue_timeouts: QueueTimeouts = msgspec.field(default_factory=QueueTimeouts)
    # Hold requests in the router past these engine readings (needs metrics_interval).
    saturation_waiting: Annotated[int, msgspec.Meta(ge=1)] | None = None
    saturation_kv: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    health_interval: Annotated[float, msgspec.Meta(ge=0)] = 5.0  # 0 = no active checks
    health_timeout: Seconds = 2.0
    unhealthy_after: Annotated[int, msgspec.Meta(ge=1)] = 2
    healthy_after: Annotated[int, msgspec.Meta(ge=1)] = 1
    eject_after: Annotated[int, msgspec.Meta(ge=1)] = 3
    cooldown: Seconds = 10.0
    panic_threshold: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5  # see backends.toml


class OpenAIBackendConfig(NodesConfig, tag="openai", tag_field="type"):
    base_url: str | None = None
    api_key: str | None = None
    headers: dict[str, str] = {}
    # "auto" follows the client; "never" always asks the upstream for one JSON answer;
    # "always" always streams from the upstream. The router re-chunks either way.
    stream: Literal["auto", "never", "always"] = "auto"
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 512
    # https upstreams: a private CA bundle (PEM, in place of the system's), a client
    # certificate and its key (both or neither); paths relative to this file.
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # "http://[user:password@]host:port"; unset: the environment's; "": none at all.
    proxy: str | None = None
    # A streamed chat answer whose node broke off mid-answer is finished on another node:
    # "continue_final_message" (vLLM's) sends it the text so far to continue. See backends.toml.
    resume: Literal["off", "continue_final_message"] = "off"

    def node_urls(self) -> list[NodeConfig]:
        return _nodes(self.base_url, self.urls)


class TritonBackendConfig(NodesConfig, tag="triton", tag_field="type"):
    url: str | None = None

    def node_urls(self) -> list[NodeConfig]:
        return _nodes(self.url, self.urls)


def _nodes(single: str | None, many: list[str | NodeConfig]) -> list[NodeConfig]:
    out = [NodeConfig(url=single)] if single else []
    out += [NodeConfig(url=n) if isinstance(n, str) else n for n in many]
    return out


BackendConfig = OpenAIBackendConfig | TritonBackendConfig


class ModelConfig(ShareConfig, kw_only=True):
    backend: str
    backend_model: str | None = None
    default: bool = False
    # Defaults applied when the client sends none.
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # Triton: how chat messages become a prompt (one of these), and the model interface.
    prompt_format: str | None = None
    tokenizer_config: str | None = None
    template_file: str | None = None
    interface: Literal["auto", "trtllm", "vllm", "embedding"] = "auto"
    cumulative: bool | None = None
    embedding_input: str = "text"
    # Aliases to try, in order, when every node of this model's backend is unavailable.
    fallbacks: list[str] = []
    embedding_output: str = "embedding"
    # tokenizer.json, a Hugging Face tokenizer folder, or a .gguf file: exact token counts.
    tokenizer: str | None = None
    # Triton: how the model writes tool calls and reasoning (parser names), and how it takes
    # a guided-decoding guide ("auto": TensorRT-LLM's declared inputs, vLLM's guided_decoding).
    tool_parser: str | None = None
    reasoning_parser: str | None = None
    guided_decoding: Literal["auto", "off", "structured_outputs"] = "auto"


class Config(Base):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    keys: dict[str, KeyConfig] = {}
    backends: dict[str, BackendConfig] = {}
    models: dict[str, ModelConfig] = {}

    @property
    def max_body_bytes(self) -> int:
        return int(self.server.max_body_mb * 1024 * 1024)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, where: str, env: dict[str, str]) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, fallback = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if fallback is not None:
                return fallback
            raise ConfigError(f"{where}: environment variable {name} is not set")

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}" if where else k, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]", env) for i, v in enumerate(value)]
    return value


def _key_path(msgspec_path: str) -> str:
    # msgspec says `$.server.port`; users wrote server.port.
    path = msgspec_path.strip("`").removeprefix("$").lstrip(".")
    return path or "(top level)"


_UNKNOWN = re.compile(r"Object contains unknown field `([^`]+)`")


def _convert_error(e: msgspec.ValidationError, prefix: str) -> ConfigError:
    msg, _, path = str(e).rpartition(" - at ")
    if not msg:
        msg, path = str(e), "$"
    where = _key_path(path)
    unknown = _UNKNOWN.match(msg)
    if unknown:
        where = f"{where}.{unknown.group(1)}" if where != "(top level)" else unknown.group(1)
    if prefix:
        where = prefix if where == "(top level)" else f"{prefix}.{where}"
    return ConfigError(f"{where}: {msg}")


def _locate(raw: Any, e: msgspec.ValidationError) -> ConfigError:
    """msgspec cannot name a dict key in its error path; find the table that fails."""
    sections: dict[str, Any] = {"keys": KeyConfig, "backends": BackendConfig, "models": ModelConfig}
    if isinstance(raw, dict):
        for section, typ in sections.items():
            tables = raw.get(section)
            if not isinstance(tables, dict):
                continue
            for name, table in tables.items():
                try:
                    msgspec.convert(table, typ)
                except msgspec.ValidationError as inner:
                    return _convert_error(inner, f"{section}.{name}")
    return _convert_error(e, "")


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def _redacted(url: str) -> str:
    """A URL as an error may quote it: whatever precedes the last @ of its authority (a user
    and password) and a query's password replaced by ***."""
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))
    authority = rest[:end]
    if "@" not in authority:
        return url
    return f"{scheme}://***@{authority.rpartition('@')[2]}{rest[end:]}"


def _split(url: str, where: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError:
        raise ConfigError(f"{where}: {_redacted(url)!r} is not a valid URL") from None


def _check_url(url: str, where: str, schemes: tuple[str, ...]) -> None:
    parts = _split(url, where)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{where}: {_redacted(url)!r} is not a valid {'/'.join(schemes)} URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{where}: {_redacted(url)!r} has an invalid port") from None


def redis_database(parts: SplitResult) -> str:
    """The database a redis_url names, as redis-py reads it: redis://host/N, else ?db=N (the
    only form for a unix socket), else 0."""
    named = "" if parts.scheme == "unix" else parts.path.strip("/")
    return named or parse_qs(parts.query).get("db", ["0"])[0]


def _check_redis_url(url: str) -> None:
    """redis://, rediss:// or unix:///path/to/redis.sock (redis-py's forms), with a database
    number if any."""
    where = "server.redis_url"
    parts = _split(url, where)
    if parts.scheme == "unix":
        # Nothing but a user and password (ending in @) before the path: a password's own /
        # must be percent-encoded, or part of it would read as the path.
        if not parts.path.startswith("/") or (parts.netloc and not parts.netloc.endswith("@")):
            raise ConfigError(
                f"{where}: not a valid unix socket URL (unix:///path/to/redis.sock?db=0, "
                "a password percent-encoded)"
            )
    else:
        _check_url(url, where, ("redis", "rediss", "unix"))
    db = redis_database(parts)
    if not (db.isascii() and db.isdigit()):
        raise ConfigError(f"{where}: the database must be a number, not {db!r}")
    reqs = parse_qs(parts.query).get("ssl_cert_reqs", ["required"])[-1].lower()
    if reqs not in ("none", "optional", "required"):
        raise ConfigError(f"{where}: ssl_cert_reqs must be none, optional or required")


def _check_host_port(url: str, where: str) -> None:
    host, sep, port = url.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: {url!r} must be host:port")


GLOB_CHARS = frozenset("*?[")


def is_pattern(alias: str) -> bool:
    """A model alias that is a glob pattern (`gpt-*`), not a name."""
    return not GLOB_CHARS.isdisjoint(alias)


def _check_parsers(m: ModelConfig, where: str) -> None:
    for key, known in (("tool_parser", TOOL_PARSERS), ("reasoning_parser", REASONING_PARSERS)):
        name = getattr(m, key)
        if name is not None and name not in known:
            raise ConfigError(
                f"{where}.{key}: unknown parser {name!r} (known: {', '.join(sorted(known))})"
            )


def _check_openai(b: OpenAIBackendConfig, where: str) -> None:
    if b.proxy is not None and (problem := proxy_problem(b.proxy)) is not None:
        raise ConfigError(f"{where}.proxy: {_redacted(b.proxy)!r} {problem}")
    tls = tls_problem(b.tls_ca_file, b.tls_cert_file, b.tls_key_file)
    if tls is not None:
        raise ConfigError(f"{where}.{tls[0]}: {tls[1]}")


def validate(cfg: Config) -> None:
    """Semantic checks msgspec cannot express; raises ConfigError naming the key."""
    for name, b in cfg.backends.items():
        where = f"backends.{name}"
        single = "base_url" if isinstance(b, OpenAIBackendConfig) else "url"
        nodes = b.node_urls()
        if not nodes:
            raise ConfigError(f"{where}: set {single} or urls")
        for i, n in enumerate(nodes):
            key = f"{where}.{single}" if i == 0 and getattr(b, single) else \
                f"{where}.urls[{i - (1 if getattr(b, single) else 0)}]"
            if isinstance(b, OpenAIBackendConfig):
                problem = base_url_problem(n.url)
                if problem is not None:
                    raise ConfigError(f"{key}: {_redacted(n.url)!r} {problem}")
            else:
                _check_host_port(n.url, key)
        if isinstance(b, OpenAIBackendConfig):
            _check_openai(b, where)
        if (b.saturation_waiting or b.saturation_kv) and not b.metrics_interval:
            raise ConfigError(f"{where}: saturation_waiting and saturation_kv need the engine "
                              "metrics: set metrics_interval")
    defaults = [alias for alias, m in cfg.models.items() if m.default]
    if len(defaults) > 1:
        raise ConfigError(f"models: more than one default model ({', '.join(defaults)})")
    for alias, m in cfg.models.items():
        where = f"models.{alias}"
        if m.backend not in cfg.backends:
            known = ", ".join(sorted(cfg.backends)) or "none defined"
            raise ConfigError(f"{where}.backend: unknown backend {m.backend!r} (known: {known})")
        if m.default and is_pattern(alias):
            raise ConfigError(f"{where}.default: a glob pattern cannot be the default model")
        for fb in m.fallbacks:
            if fb not in cfg.models or is_pattern(fb):
                raise ConfigError(f"{where}.fallbacks: {fb!r} is not a model alias")
        chosen = [k for k in ("prompt_format", "tokenizer_config") if getattr(m, k)]
        if len(chosen) > 1:
            raise ConfigError(f"{where}: set only one of {', '.join(chosen)}")
        _check_parsers(m, where)
    if cfg.server.metrics_key is not None and not cfg.server.metrics_key:
        raise ConfigError("server.metrics_key: empty key (leave it unset to keep /metrics open)")
    if cfg.server.redis_url:
        _check_redis_url(cfg.server.redis_url)
    seen: set[str] = set()
    unnamed = {unnamed_label(i) for i in range(len(cfg.server.api_keys))}
    for i, key in enumerate(cfg.server.api_keys):
        if not key:
            raise ConfigError(f"server.api_keys[{i}]: empty key")
        seen.add(key)
    for name, k in cfg.keys.items():
        if name in unnamed:
            raise ConfigError(
                f"keys.{name}: the name labels server.api_keys[{name[4:]}] already; choose another"
            )
        if not k.key:
            raise ConfigError(f"keys.{name}.key: empty key")
        if k.key in seen:
            raise ConfigError(f"keys.{name}.key: the same key is configured twice")
        seen.add(k.key)


def unnamed_label(index: int) -> str:
    """`server.api_keys[index]`'s label in metrics, logs and /v1/usage: nothing of the key."""
    return f"key-{index}"


def _resolve_paths(cfg: Config, base_dir: Path) -> None:
    """Paths are relative to the config file, not to where the router started."""
    tables: list[tuple[Any, tuple[str, ...]]] = [
        (m, ("tokenizer_config", "template_file", "tokenizer")) for m in cfg.models.values()]
    tables += [(b, ("tls_ca_file", "tls_cert_file", "tls_key_file"))
               for b in cfg.backends.values() if isinstance(b, OpenAIBackendConfig)]
    for table, attrs in tables:
        for attr in attrs:
            value = getattr(table, attr)
            if value and not os.path.isabs(value):
                setattr(table, attr, str((base_dir / value).resolve()))


def parse(
    text: str,
    source: str = "<memory>",
    env: dict[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Parse and validate TOML text; raises ConfigError with `source` and the key in the message."""
    try:
        raw = tomllib.loads(text)
        raw = _expand(raw, "", dict(os.environ) if env is None else env)
        cfg = msgspec.convert(raw, Config)
        if base_dir is not None:
            _resolve_paths(cfg, base_dir)
        validate(cfg)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {_locate(raw, e)}") from None
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def load(path: str | os.PathLike[str], base_dir: Path | None = None) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror or e}") from None
    return parse(text, str(p), base_dir=base_dir or p.parent)
