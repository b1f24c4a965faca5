"""Level 3: the connection pool, the retry manager and verified posting, against real INN
with the fault proxy in front where INN can't produce the fault."""

import pytest
import trio

from usenetfs.nntp import errors as E
from usenetfs.nntp.client import NNTPClient, PoolOptions
from usenetfs.nntp.config import ServerConfig
from usenetfs.nntp.posting import ArticlePoster, VerifyOptions
from usenetfs.nntp.retry import Policy, Retrier, TokenBucket, scaled_policies

from faultproxy import FaultProxy, Rule
from t2_client_test import make_article, new_id

FAST = scaled_policies(0.01)
QUICK_VERIFY = VerifyOptions(delay=0.05, tries=3, interval=0.1)


async def _sample_max(counter, stop: trio.Event, out: list) -> None:
    while not stop.is_set():
        out.append(counter())
        await trio.sleep(0.002)


async def test_pool_never_exceeds_its_cap(inn):
    config = ServerConfig(inn.host, inn.port)
    samples: list[int] = []
    stop = trio.Event()
    ids = [new_id() for _ in range(30)]
    async with NNTPClient(config, PoolOptions(max_connections=3), policies=FAST) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sample_max, lambda: inn.count_connections(inn.port), stop, samples)
            async with trio.open_nursery() as workers:
                for message_id in ids:
                    workers.start_soon(client.post, make_article(message_id, b"x" * 100_000 + b"\r\n"))
            stop.set()
        for message_id in ids:
            assert await client.stat(message_id)
        assert client.pool.stats.peak_open <= 3
        assert client.pool.stats.created >= 2  # it did grow on demand
    assert max(samples) <= 3
    assert max(samples) >= 2


async def test_pool_learns_the_connection_limit(inn_limited, caplog):
    reader = inn_limited(2)
    config = ServerConfig("127.0.0.1", reader.port)
    ids = [new_id() for _ in range(12)]
    options = PoolOptions(max_connections=5, too_many_backoff=0.2)
    async with NNTPClient(config, options, policies=FAST) as client:
        async with trio.open_nursery() as workers:
            for message_id in ids:
                workers.start_soon(client.post, make_article(message_id, b"limited\r\n"))
        assert client.pool.learned_limit == 2
        assert client.pool.cap == 2
        assert client.pool.stats.too_many >= 1
        # Learned from the first burst of handshakes as a whole, never from a refusal that
        # came while others were still under way (which read a limit of 2 as 3 or 4).
        learned = [r.getMessage() for r in caplog.records if "server allows only" in r.getMessage()]
        assert learned and all("allows only 2 connections" in m for m in learned), learned
        for message_id in ids:
            assert await client.stat(message_id)


async def test_dead_idle_connections_are_replaced_by_the_health_check(inn):
    # The proxy drops connections idle for 0.2 s, before the first health check (0.5 s).
    async with FaultProxy.start(inn.host, inn.port, close_idle_after=0.2) as proxy:
        config = ServerConfig("127.0.0.1", proxy.port)
        options = PoolOptions(max_connections=2, health_interval=0.5)
        async with NNTPClient(config, options, policies=FAST) as client:
            assert not await client.stat(new_id())
            await trio.sleep(1.2)  # closed silently, then found dead by the health check
            assert client.pool.stats.dead_found >= 1
            assert not await client.stat(new_id())
            assert client.retrier.stats.retries_by_code == {}


async def test_dead_connection_without_health_check_is_retried(inn):
    async with FaultProxy.start(inn.host, inn.port, close_idle_after=0.2) as proxy:
        config = ServerConfig("127.0.0.1", proxy.port)
        options = PoolOptions(max_connections=1, health_interval=3600)
        async with NNTPClient(config, options, policies=FAST) as client:
            assert not await client.stat(new_id())
            await trio.sleep(0.5)
            assert not await client.stat(new_id())
            assert client.retrier.stats.retries_by_code["network"] == 1


async def test_connections_are_recycled_after_their_lifetime(inn):
    config = ServerConfig(inn.host, inn.port)
    async with NNTPClient(config, PoolOptions(max_connections=1, max_lifetime=0.2),
                          policies=FAST) as client:
        await client.stat(new_id())
        await trio.sleep(0.4)
        await client.stat(new_id())
        assert client.pool.stats.recycled >= 1
        assert client.pool.stats.created == 2


@pytest.mark.parametrize("rule,code", [
    (Rule(command="POST", action="reply", reply="502 Too many connections", times=2, close_after=True), "502"),
    (Rule(command="POST", action="reply", reply="503 Timeout, try later", times=2), "503"),
    (Rule(command="POST", action="reject_after_body", reply="441 Posting failed", times=2), "441"),
    (Rule(command="POST", action="cut_response", cut_bytes=0, times=1), "network"),
    (Rule(command="POST", action="delay", seconds=0.3, times=1), None),
])
async def test_faults_while_posting_land_each_article_exactly_once(make_inn, rule, code):
    server = make_inn()
    async with FaultProxy.start(server.host, server.port) as proxy:
        proxy.add_rule(rule)
        config = ServerConfig("127.0.0.1", proxy.port, response_timeout=5)
        async with NNTPClient(config, PoolOptions(max_connections=2), policies=FAST) as client:
            poster = ArticlePoster(client, QUICK_VERIFY)
            ids = [new_id() for _ in range(4)]
            for message_id in ids:
                await poster.post_verified(lambda gen, m=message_id: (m, make_article(m, b"data\r\n")))
            if code:
                assert client.retrier.stats.retries_by_code[code] >= 1
    assert rule.fired >= 1
    assert server.article_count() == len(ids)


async def test_connection_dying_before_240_is_checked_not_reposted(make_inn):
    server = make_inn()
    async with FaultProxy.start(server.host, server.port) as proxy:
        rule = proxy.add_rule(Rule(command="POST", action="drop_before_response", times=1))
        config = ServerConfig("127.0.0.1", proxy.port)
        async with NNTPClient(config, PoolOptions(max_connections=1), policies=FAST) as client:
            poster = ArticlePoster(client, QUICK_VERIFY)
            message_id = new_id()
            result = await poster.post_verified(lambda gen: (message_id, make_article(message_id, b"once\r\n")))
            assert result.generation == 0
            assert proxy.stats.commands["STAT"] >= 1  # it looked before posting again
            assert proxy.stats.commands["POST"] == 1  # and did not post again
    assert rule.fired == 1
    assert server.article_count() == 1


async def test_lost_post_is_reposted_under_the_next_generation(make_inn):
    """A 240 that was a lie (the article never stored) -> BODY finds nothing -> gen+1."""
    server = make_inn()
    async with FaultProxy.start(server.host, server.port) as proxy:
        proxy.add_rule(Rule(command="POST", action="reject_after_body", reply="240 article received", times=1))
        config = ServerConfig("127.0.0.1", proxy.port)
        async with NNTPClient(config, PoolOptions(max_connections=1), policies=FAST) as client:
            poster = ArticlePoster(client, QUICK_VERIFY)
            ids = {0: new_id(), 1: new_id()}
            result = await poster.post_verified(lambda gen: (ids[gen], make_article(ids[gen], b"z\r\n")))
            assert (result.generation, result.reposts, result.message_id) == (1, 1, ids[1])
    assert server.article_count() == 1


async def test_duplicate_of_our_own_article_counts_once_verified(make_inn):
    server = make_inn()
    config = ServerConfig(server.host, server.port)
    message_id = new_id()
    article = make_article(message_id, b"already here\r\n")
    async with NNTPClient(config, PoolOptions(max_connections=1), policies=FAST) as client:
        await client.post(article)
        poster = ArticlePoster(client, QUICK_VERIFY)
        result = await poster.post_verified(lambda gen: (message_id, article))
        assert result.generation == 0
    assert server.article_count() == 1


async def test_mixed_faults_many_articles_exactly_once(make_inn):
    server = make_inn()
    async with FaultProxy.start(server.host, server.port) as proxy:
        for rule in (Rule(command="POST", action="reply", reply="502 Too many connections", after=1, times=3),
                     Rule(command="POST", action="reject_after_body", after=4, times=2),
                     Rule(command="POST", action="drop_before_response", after=8, times=2),
                     Rule(command="BODY", action="cut_response", cut_bytes=100, after=3, times=2),
                     Rule(command="BODY", action="reply", reply="430 No such article", times=3)):
            proxy.add_rule(rule)
        config = ServerConfig("127.0.0.1", proxy.port)
        ids = [new_id() for _ in range(20)]
        async with NNTPClient(config, PoolOptions(max_connections=3), policies=FAST) as client:
            poster = ArticlePoster(client, QUICK_VERIFY)
            async with trio.open_nursery() as nursery:
                for message_id in ids:
                    nursery.start_soon(poster.post_verified,
                                       lambda gen, m=message_id: (m, make_article(m, m.encode() + b"\r\n")))
            for message_id in ids:
                assert await client.body(message_id) == message_id.encode() + b"\r\n"
    assert server.article_count() == len(ids)


async def test_permanent_errors_are_not_retried(inn_auth, inn):
    bad = ServerConfig("127.0.0.1", inn_auth.port, user="alice", password="nope")
    async with NNTPClient(bad, policies=FAST) as client:
        with pytest.raises(E.AuthenticationFailed):
            await client.stat(new_id())
        assert client.retrier.stats.attempts == 1
    async with FaultProxy.start(inn.host, inn.port) as proxy:
        proxy.add_rule(Rule(command="POST", action="reply", reply="440 Posting not allowed"))
        async with NNTPClient(ServerConfig("127.0.0.1", proxy.port), policies=FAST) as client:
            with pytest.raises(E.PostingNotAllowed):
                await client.post(make_article(new_id(), b"no\r\n"))
            assert client.retrier.stats.attempts == 1


async def test_retries_give_up_after_the_policy(inn):
    async with FaultProxy.start(inn.host, inn.port) as proxy:
        proxy.add_rule(Rule(command="POST", action="reply", reply="503 overloaded"))
        policies = {503: Policy(0.001, 3)}
        async with NNTPClient(ServerConfig("127.0.0.1", proxy.port), policies=policies) as client:
            with pytest.raises(E.ServerError):
                await client.post(make_article(new_id(), b"never\r\n"))
            assert client.retrier.stats.attempts == 3
            assert client.retrier.stats.retries_by_code["503"] == 2


def test_backoff_is_full_jitter_and_capped():
    import random
    retrier = Retrier.__new__(Retrier)
    retrier._rng = random.Random(1)
    policy = Policy(delay=2.0, tries=10, max_delay=10.0)
    draws = [retrier.backoff(policy, n) for n in range(1, 8) for _ in range(50)]
    assert all(0 <= d <= 10.0 for d in draws)
    first = [retrier.backoff(policy, 1) for _ in range(200)]
    assert max(first) <= 2.0 and min(first) < 0.5  # full jitter reaches near zero


async def test_token_bucket_paces_in_virtual_time(autojump_clock):
    bucket = TokenBucket(1000.0)  # units per second, one second of burst
    start = trio.current_time()
    for _ in range(5):
        await bucket.take(1000)
    # 5000 units at 1000/s with a 1000-unit burst: 4 seconds of waiting.
    assert trio.current_time() - start == pytest.approx(4.0, abs=0.01)
    assert TokenBucket(None).rate is None

