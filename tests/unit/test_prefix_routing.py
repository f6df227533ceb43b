"""The prefix index, the prefix-aware balancers and the engines' metrics parser."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time

import pytest

from airouter import config
from airouter.backends.engine_metrics import EngineLoad, parse_metrics
from airouter.backends.engine_scrape import EngineScraper, metrics_url
from airouter.backends.node import NodeSpec
from airouter.backends.nodes import NodePool
from airouter.backends.prefix import PrefixIndex, block_hashes, rendezvous
from airouter.backends.prefix_policy import prompt_start
from airouter.balance_config import PrefixConfig
from tests.support.procs import free_port

URLS = [f"http://10.0.0.{i}:8000/v1" for i in range(1, 5)]


def _pool(balance: str = "prefix_load", urls: list[str] = URLS, **extra: object) -> NodePool:
    cfg = config.OpenAIBackendConfig(balance=balance, urls=list(urls),  # type: ignore[arg-type]
                                     prefix=PrefixConfig(**extra), eject_after=1)
    return NodePool.from_config("b", cfg, [NodeSpec(u) for u in urls])


def _text(group: int, tail: int, size: int = 4096) -> bytes:
    shared = (f"group {group} system prompt " * 400).encode()[:size]
    return shared + f" question {tail} ".encode() * 20


def test_block_hashes_chain_and_skip_a_partial_block() -> None:
    a = block_hashes(b"x" * 1000, 256, 100)
    assert len(a) == 3  # 232 bytes left over: not a block
    b = block_hashes(b"x" * 512 + b"y" * 256, 256, 100)
    assert a[:2] == b[:2] and a[2] != b[2]
    assert block_hashes(b"short", 256, 100) == []
    assert len(block_hashes(b"x" * 10_000_000, 256, 256)) == 256  # bounded prefix
    assert block_hashes(b"x" * 512, 256, 10, seed=1) != block_hashes(b"x" * 512, 256, 10)


def test_prompt_start_is_the_first_prompt_member() -> None:
    # Parameters a client writes first are skipped; whichever prompt member comes first wins.
    assert prompt_start(b'{"model":"m","messages":[]}') == 13
    assert prompt_start(b'{"temperature":1,"tools":[],"messages":[]}') == 17
    assert prompt_start(b'{"messages":[],"tools":[]}') == 1
    assert prompt_start(b'{"model":"m","prompt":"x","messages":[]}') == 13
    assert prompt_start(b'{"model":"m","input":"x"}') == 0  # none: keyed from the start
    # Inside a string a quote is escaped: a member name in the text is not a member.
    assert prompt_start(b'{"user":"a \\"tools\\": b","messages":[]}') == 25
    late = b'{"metadata":"' + b"x" * 5000 + b'","messages":[]}'
    assert prompt_start(late) == 0  # beyond the first 4 KB: keyed from the start


def test_index_longest_match_per_node() -> None:
    idx = PrefixIndex(3, 100)
    h = block_hashes(b"a" * 256 * 8, 256, 100)
    idx.insert(0, h[:3])
    idx.insert(2, h[:6])
    assert idx.match(h) == [3, 0, 6]
    other = block_hashes(b"b" * 256 * 4, 256, 100)
    assert idx.match(other) == [0, 0, 0]
    idx.insert(1, h)
    assert idx.match(h) == [3, 8, 6]


def test_index_evicts_least_recently_used_blocks() -> None:
    idx = PrefixIndex(1, 8)
    old = block_hashes(b"o" * 256 * 4, 256, 100)
    idx.insert(0, old)
    for i in range(10):
        idx.insert(0, block_hashes(bytes([i]) * 256 * 4, 256, 100))
        idx.insert(0, old)  # kept fresh: survives
    assert idx.size(0) <= 9
    assert idx.match(old) == [4]
    assert idx.match(block_hashes(bytes([0]) * 256 * 4, 256, 100)) == [0]


def test_index_forgets_a_node_and_shrinks_on_contradiction() -> None:
    idx = PrefixIndex(2, 64)
    h = block_hashes(b"z" * 256 * 4, 256, 100)
    idx.insert(0, h)
    idx.insert(1, h)
    idx.drop(0)
    assert idx.match(h) == [0, 4] and idx.size(0) == 0
    for _ in range(30):
        idx.contradicted(1)
    assert idx.capacity[1] == 8  # never below an eighth
    idx.confirmed(1)
    assert idx.capacity[1] == 9


def test_rendezvous_moves_only_the_removed_nodes_keys() -> None:
    names = [u.encode() for u in URLS]
    w = [1.0] * 4
    before = [rendezvous(k, names, w) for k in range(1, 2000)]
    after = [rendezvous(k, names[:3], w[:3]) for k in range(1, 2000)]
    moved = [b for b, a in zip(before, after, strict=True) if b != a]
    assert moved and set(moved) == {3}
    assert {before.count(i) for i in range(4)} <= set(range(400, 600))


def test_prefix_requests_stick_and_cold_ones_spread() -> None:
    pool = _pool("prefix")
    assert pool.prefix is not None
    homes = set()
    for g in range(40):
        first = pool.pick((), pool.prefix.key(_text(g, 0), "m"))
        assert first is not None
        homes.add(first.url)
        for t in range(1, 4):
            assert pool.pick((), pool.prefix.key(_text(g, t), "m")) is first
    assert len(homes) == 4


def test_home_of_a_cold_prefix_is_the_same_in_every_process() -> None:
    code = (
        "from tests.unit.test_prefix_routing import _pool, _text\n"
        "p = _pool()\n"
        "print(','.join(p.pick((), p.prefix.key(_text(g, 0), 'm')).url for g in range(30)))\n"
    )
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout for _ in range(2)}
    assert len(runs) == 1
    pool = _pool()
    assert pool.prefix is not None
    here = ",".join(pool.pick((), pool.prefix.key(_text(g, 0), "m")).url  # type: ignore[union-attr]
                    for g in range(30))
    assert runs == {here + "\n"}


def test_prefix_load_passes_over_a_hot_node() -> None:
    pool = _pool("prefix_load", abs_threshold=4, rel_threshold=1.5)
    assert pool.prefix is not None
    home = pool.pick((), pool.prefix.key(_text(1, 0), "m"))
    assert home is not None
    home.in_flight = 10
    other = pool.pick((), pool.prefix.key(_text(1, 1), "m"))
    assert other is not None and other is not home
    # Now both hold the prefix: the less loaded one of them takes the next.
    other.in_flight = 3
    assert pool.pick((), pool.prefix.key(_text(1, 2), "m")) is other
    # "prefix" alone never passes over the match.
    p2 = _pool("prefix")
    assert p2.prefix is not None
    h2 = p2.pick((), p2.prefix.key(_text(1, 0), "m"))
    assert h2 is not None
    h2.in_flight = 100
    assert p2.pick((), p2.prefix.key(_text(1, 1), "m")) is h2


def test_engine_queue_counts_as_load() -> None:
    pool = _pool("prefix_load", abs_threshold=4)
    assert pool.prefix is not None
    home = pool.pick((), pool.prefix.key(_text(2, 0), "m"))
    assert home is not None
    pool.prefix.engine_read(home, EngineLoad(waiting=50, running=8, known=True, at=1e18))
    assert pool.pick((), pool.prefix.key(_text(2, 1), "m")) is not home


def test_failover_excludes_tried_nodes_and_one_node_is_served() -> None:
    pool = _pool()
    assert pool.prefix is not None
    tried = []
    for _ in range(4):
        n = pool.pick(tried, pool.prefix.key(_text(3, 0), "m"))
        assert n is not None and n not in tried
        tried.append(n)
    assert pool.pick(tried, pool.prefix.key(_text(3, 0), "m")) is None
    one = _pool(urls=URLS[:1])
    assert one.prefix is not None
    assert one.pick((), one.prefix.key(b"hi", "m")) is one.nodes[0]


def test_ejected_node_loses_its_entries_and_short_prompts_go_least_loaded() -> None:
    pool = _pool()
    assert pool.prefix is not None
    key = pool.prefix.key(_text(4, 0), "m")
    n = pool.pick((), key)
    assert n is not None and pool.prefix.index.size(key.pos) > 0
    pool.failed(n, "boom")
    assert pool.prefix.index.size(key.pos) == 0
    short = pool.prefix.key(b"hello", "m")
    assert short.hashes == [] and short.home == 0
    busy = [x for x in pool.nodes if x is not n]
    for i, x in enumerate(busy[:-1]):
        x.in_flight = 5 + i
    assert pool.pick((), short) is busy[-1]


def test_session_names_the_home() -> None:
    pool = _pool("prefix")
    assert pool.prefix is not None
    a = pool.pick((), pool.prefix.key(_text(5, 0), "m", session="user-1"))
    b = pool.pick((), pool.prefix.key(_text(6, 0), "m", session="user-1"))
    assert a is b


TRT = """# HELP nv_trt_llm_request_metrics TRT LLM request metrics
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 7
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 3
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 25
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm",version="1"} 100
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per",model="trt",version="1"} 64
nv_trt_llm_general_metrics{general_type="iteration_counter",model="tensorrt_llm",version="1"} 900
nv_inference_pending_request_count{model="ensemble",version="1"} 2
"""
VLLM = """vllm:num_requests_waiting{model_name="m"} 4.0
vllm:num_requests_running{model_name="m"} 2.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
vllm:cache_config_info{block_size="16",num_gpu_blocks="1000"} 1.0
process_start_time_seconds 1700000000.0
"""


def test_parse_engine_metrics() -> None:
    t = parse_metrics(TRT)
    assert (t.waiting, t.running, t.kv_usage, t.kv_tokens, t.known) == (7, 3, 0.25, 6400, True)
    assert t.tokens_per_block == 64
    v = parse_metrics(VLLM)
    assert (v.waiting, v.running, v.kv_usage, v.kv_tokens) == (4, 2, 0.5, 16000)
    s = parse_metrics("sglang:num_queue_reqs 5\nsglang:num_running_reqs 1\nsglang:token_usage 0.9")
    assert (s.waiting, s.running, s.kv_usage) == (5, 1, 0.9)
    core = parse_metrics('nv_inference_pending_request_count{model="a"} 3\n'
                         'nv_inference_pending_request_count{model="b"} 4\n')
    assert core.waiting == 7
    for junk in ("", "<html>nope</html>", "vllm:num_requests_waiting NaN",
                 "vllm:num_requests_waiting{ 3", "other_metric 5", "\x00" * 100):
        assert not parse_metrics(junk).known
    restarted = parse_metrics(TRT.replace(" 900", " 3"))
    assert restarted.restarted(t) and not t.restarted(t)


def test_metrics_url_defaults() -> None:
    assert metrics_url("10.0.0.1:8001", "triton", None) == "http://10.0.0.1:8002/metrics"
    assert metrics_url("dns:///tri:8001", "triton", None) == "http://tri:8002/metrics"
    assert metrics_url("http://u:p@h:8000/v1", "openai", None) == "http://h:8000/metrics"
    assert metrics_url("h:8001", "triton", "http://m:9/x") == "http://m:9/x"


async def test_scraper_falls_back_on_garbage_hangs_and_refusals(
        caplog: pytest.LogCaptureFixture) -> None:
    pages = {"good": b"HTTP/1.0 200 OK\r\n\r\nvllm:num_requests_waiting 30\n",
             "garbage": b"HTTP/1.0 200 OK\r\n\r\n<html>",
             "error": b"HTTP/1.0 500 Oops\r\n\r\n"}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode()
        name = line.split()[1].strip("/")
        if name == "hang":
            await asyncio.sleep(5)
        writer.write(pages.get(name, b""))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    names = ["good", "garbage", "error", "hang"]
    urls = [f"http://10.0.0.{i}:8000/v1" for i in range(5)]
    pool = _pool(urls=urls)
    assert pool.prefix is not None
    scraper = EngineScraper(pool, [f"http://127.0.0.1:{port}/{n}" for n in names]
                            + [f"http://127.0.0.1:{free_port()}/refused"], 1.0, 0.3)
    with caplog.at_level(logging.WARNING, "airouter.nodes"):
        await scraper.scrape_once()
        await scraper.scrape_once()
    server.close()
    engine = pool.prefix.engine
    assert engine[0] is not None and engine[0].waiting == 30
    assert engine[1:] == [None] * 4
    assert len([r for r in caplog.records if "unreadable" in r.message]) == 4  # once each
    # Only the node that reported a queue looks loaded.
    now = time.monotonic()
    assert pool.prefix.load(pool.nodes[0], now) == 30 and pool.prefix.load(pool.nodes[1], now) == 0
