"""Admission by deadline: a request that cannot be answered in time is refused at once (503 + Retry-After), and the
requests the server accepts are answered within their deadline."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from serving.admission import ArrivalRate, BatchCostModel, WouldMissDeadline, expected_finish
from serving.batcher import Batcher
from serving.config import ServerConfig
from serving.server import ServerThread
from tests.serving.helpers import FaultyRunner, msgpack_body, observation

MP = {"content-type": "application/msgpack", "accept": "application/json"}


def test_cost_model_fits_a_line_through_the_batch_sizes_it_saw():
    m = BatchCostModel()
    assert m.predict(4) is None  # nothing seen: admit everything
    m.observe(2, 0.020)
    assert m.predict(8) == pytest.approx(0.080)  # one size: proportional
    m.observe(8, 0.050)
    assert m.predict(4) == pytest.approx(0.030)  # 0.010 + 0.005 * b
    m.observe(8, 0.070)  # a slowdown moves it half way
    assert m.predict(8) == pytest.approx(0.060)
    m.observe(8, 0.030)  # a speed-up a tenth of the way
    assert m.predict(8) == pytest.approx(0.057)


def test_expected_finish_counts_the_running_batch_and_full_batches_ahead():
    m = BatchCostModel()
    m.observe(1, 0.010)
    m.observe(4, 0.040)
    # running batch of 4 started 10 ms ago (30 ms left), 9 queued: 2 full batches ahead, then a batch of 2
    t = expected_finish(m, now=1.0, running=(0.99, 4), queued=9, max_batch=4)
    assert t == pytest.approx(1.0 + 0.030 + 2 * 0.040 + 0.020)
    assert expected_finish(BatchCostModel(), 1.0, None, 5, 4) is None


def test_requests_arriving_before_a_batch_starts_count_in_its_size():
    m = BatchCostModel()
    m.observe(1, 0.010)
    m.observe(8, 0.080)
    # a batch of 8 runs for 40 more ms; one queued: alone, this request's batch would be 2 (20 ms), but at 100
    # requests/s four more join it before it starts: a batch of 6 (60 ms)
    assert expected_finish(m, 1.0, (0.96, 8), 1, 8) == pytest.approx(1.0 + 0.040 + 0.020)
    assert expected_finish(m, 1.0, (0.96, 8), 1, 8, arrivals_per_s=100) == pytest.approx(1.0 + 0.040 + 0.060)
    assert expected_finish(m, 1.0, (0.96, 8), 1, 8, arrivals_per_s=1e4) == pytest.approx(1.0 + 0.040 + 0.080)
    rate = ArrivalRate(window_s=1.0)
    assert rate.rate(0.0) == 0.0
    for i in range(11):
        rate.add(10.0 + 0.05 * i)  # 20 per second
    assert rate.rate(10.5) == pytest.approx(20.0)
    assert rate.rate(12.0) == 0.0  # all older than the window


def test_past_saturation_with_batching_the_admitted_requests_keep_their_deadline():
    """Open-loop arrivals at twice what the server can do, batches of up to 8 growing under load: requests are
    refused at once, and those admitted are answered before their deadline."""
    def linear(batch):
        time.sleep(0.004 + 0.004 * len(batch))  # 4 ms + 4 ms per request: at most ~220 requests/s at batch 8
        return np.zeros((len(batch), 1, 1), np.float32)

    b = Batcher(linear, max_batch=8, max_wait_ms=2)
    for n in (1, 8):
        b.cost.observe(n, 0.004 + 0.004 * n)
    deadline = 0.05

    async def main():
        late, refused, done = 0, 0, []

        async def one():
            nonlocal late, refused
            t0 = time.perf_counter()
            try:
                await b.submit(np.zeros((1, 3, 4, 4), np.uint8), np.zeros(2, np.float32), "x", deadline)
            except WouldMissDeadline:
                refused += 1
                return
            except Exception:  # noqa: BLE001 - a 504 at batch start counts as late
                late += 1
                return
            late += time.perf_counter() - t0 > deadline + 0.01  # 10 ms for threads waiting on busy cores
            done.append(1)

        tasks = []
        for _ in range(400):  # 400 requests/s for one second
            tasks.append(asyncio.ensure_future(one()))
            await asyncio.sleep(0.0025)
        await asyncio.gather(*tasks)
        return late, refused, len(done)

    late, refused, answered = asyncio.run(main())
    b.close()
    assert refused > 50 and answered > 100  # overloaded, and still serving at its capacity
    # without counting the requests that join a batch, about half were answered later than that (p50 60 ms); alone
    # on the machine none is late, and 7.5 % were with the whole suite on both cores (threads wait for a core)
    assert late <= 0.15 * answered, (late, refused, answered)


def test_batcher_refuses_what_it_cannot_finish_in_time_and_meets_what_it_accepts():
    def slow(batch):
        time.sleep(0.03 * len(batch))  # 30 ms per request, batch or not
        return np.zeros((len(batch), 1, 1), np.float32)

    b = Batcher(slow, max_batch=2, max_wait_ms=0)
    b.cost.observe(1, 0.03)
    b.cost.observe(2, 0.06)

    async def main():
        t0 = time.perf_counter()
        accepted, refused = [], []
        for i in range(12):  # a burst: 12 requests with a 150 ms deadline
            try:
                accepted.append(b.submit(np.zeros((1, 3, 4, 4), np.uint8), np.zeros(2, np.float32), "x", 0.15))
            except WouldMissDeadline as e:
                refused.append(e)
        await asyncio.gather(*accepted)
        return time.perf_counter() - t0, len(accepted), refused

    took, n_ok, refused = asyncio.run(main())
    b.close()
    assert 2 <= n_ok <= 6 and len(refused) == 12 - n_ok  # the rest were refused at once, not queued to fail
    assert took < 0.15 + 0.05  # everything accepted was answered within its deadline (+ scheduling slack)
    assert "deadline of 150 ms" in str(refused[0]) and refused[0].retry_after_s > 0.1


@pytest.mark.integration
def test_server_refuses_with_503_and_retry_after_and_honours_deadline_ms(tiny_runner):
    runner = FaultyRunner(tiny_runner)
    cfg = ServerConfig(max_batch=1, queue_size=64, timeout_ms=10_000, warmup_batch_sizes=(1,))
    with ServerThread(runner, cfg) as s:
        runner.delay_s = 0.2
        for _ in range(3):  # the cost model learns the new speed from finished batches
            assert httpx.post(s.url + "/v1/act", content=msgpack_body(observation()), headers=MP).status_code == 200
        body = msgpack_body(observation(), deadline_ms=500)  # room for two 0.2 s batches, not three

        clients = [httpx.Client(base_url=s.url, headers=MP, timeout=30) for _ in range(8)]  # set up before timing

        def post(client):
            t = time.perf_counter()
            r = client.post("/v1/act", content=body)
            return r, time.perf_counter() - t

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, clients))
        for c in clients:
            c.close()
        codes = [r.status_code for r, _ in answers]
        # a shared CI machine may run an admitted batch late (504): allowed once, never instead of refusing
        assert codes.count(200) >= 1 and codes.count(503) >= 4 and codes.count(504) <= 1, codes
        busy = next(r for r, _ in answers if r.status_code == 503)
        assert busy.json()["error"] == "overloaded" and "deadline of" in busy.json()["detail"]
        assert int(busy.headers["retry-after"]) >= 1
        # refused at once: before the admitted requests queued behind the first batch were answered
        took = {code: [t for r, t in answers if r.status_code == code] for code in (200, 503)}
        assert max(took[503]) < max(took[200]), answers
        bad = httpx.post(s.url + "/v1/act", content=msgpack_body(observation(), deadline_ms=-5), headers=MP)
        assert bad.status_code == 422 and "deadline_ms" in bad.json()["detail"]
        runner.delay_s = 0.0
        ok = httpx.post(s.url + "/v1/act", content=msgpack_body(observation(), deadline_ms=5000), headers=MP)
        assert ok.status_code == 200 and ok.json()["timings"]["decode_ms"] >= 0


def test_batch_gain_is_how_much_faster_a_batch_serves_its_requests():
    from serving.admission import batch_gain

    assert batch_gain({1: 0.010, 8: 0.080, 32: 0.330}) == pytest.approx((1.0, 8))  # a CPU: a batch of B ~ B runs
    assert batch_gain({1: 0.010, 8: 0.012, 32: 0.020}) == pytest.approx((16.0, 32))  # an accelerator
    assert batch_gain({1: 0.010}) is None and batch_gain({}) is None


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_auto_batching_runs_requests_alone_where_a_batch_costs_its_size_in_single_runs(tiny_runner, mode, caplog):
    """ONNX Runtime on a CPU runs a batch of B in about B batch-1 times: there batching served 12 robots where one
    request per run served 16 (docs/BENCHMARKS.md), the batch waiting for company and its first requests for the
    rest. --batching auto measures it at warm-up and runs requests one at a time there; on forces batches."""
    import logging

    runner = FaultyRunner(tiny_runner, per_item_s=0.04)  # a batch of B costs B x 40 ms: no gain
    cfg = ServerConfig(max_batch=8, max_wait_ms=20, warmup_batch_sizes=(1, 8), batching=mode)
    with caplog.at_level(logging.INFO, logger="rfm.serving"), ServerThread(runner, cfg) as server:
        described = httpx.get(server.url + "/v1/models").json()["server"]["batching"]
        runner.batch_sizes.clear()
        with ThreadPoolExecutor(6) as pool:
            sizes = list(pool.map(lambda _: httpx.post(server.url + "/v1/act", content=msgpack_body(observation()),
                                                       headers=MP, timeout=30).json()["batch_size"], range(6)))
    assert described["mode"] == mode and described["batches"] == (mode == "on")
    if mode != "off":
        assert described["gain"] < 1.5 and described["gain_batch_size"] == 8
    assert (max(sizes) > 1) == (mode == "on"), sizes
    assert ("batching off on" in caplog.text) == (mode == "auto")


def test_auto_batching_batches_where_a_batch_costs_little_more_than_one_request(tiny_runner):
    runner = FaultyRunner(tiny_runner, delay_s=0.05)  # a batch of any size costs 50 ms: an accelerator
    cfg = ServerConfig(max_batch=8, max_wait_ms=20, warmup_batch_sizes=(1, 8))
    with ServerThread(runner, cfg) as server:
        described = httpx.get(server.url + "/v1/models").json()["server"]["batching"]
        with ThreadPoolExecutor(6) as pool:
            sizes = list(pool.map(lambda _: httpx.post(server.url + "/v1/act", content=msgpack_body(observation()),
                                                       headers=MP, timeout=30).json()["batch_size"], range(6)))
    assert described["mode"] == "auto" and described["batches"] and described["gain"] > 4
    assert max(sizes) > 1, sizes
