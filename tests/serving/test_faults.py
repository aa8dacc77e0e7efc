"""Overload, deadlines, a failing batch and graceful shutdown, on real servers with a fault-injecting runner."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serving.config import ServerConfig
from serving.server import ServerThread
from tests.serving.helpers import FaultyRunner, msgpack_body, observation

pytestmark = pytest.mark.integration  # real uvicorn servers

MP = {"content-type": "application/msgpack"}


def post(server) -> httpx.Response:
    return httpx.post(server.url + "/v1/act", content=msgpack_body(observation()), headers=MP, timeout=30)


@pytest.fixture(scope="module")
def faulty(tiny_runner):
    runner = FaultyRunner(tiny_runner)
    cfg = ServerConfig(max_batch=1, queue_size=1, timeout_ms=2000, warmup_batch_sizes=(1,))
    with ServerThread(runner, cfg) as s:
        s.runner = runner
        yield s


def test_one_failing_batch_does_not_stop_the_server(faulty):
    faulty.runner.arm(1)
    r = post(faulty)
    assert r.status_code == 500
    assert r.json() == {"error": "inference_failed", "detail": "inference failed for this batch (RuntimeError)"}
    assert "secret" not in r.text and "Traceback" not in r.text
    assert post(faulty).status_code == 200
    assert 'status="500"' in httpx.get(faulty.url + "/metrics").text


def test_queue_full_gets_503_with_retry_after(faulty):
    faulty.runner.delay_s = 0.4
    try:
        first = threading.Thread(target=post, args=(faulty,))
        first.start()  # occupies the worker
        time.sleep(0.15)
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: post(faulty), range(4)))
        first.join()
    finally:
        faulty.runner.delay_s = 0.0
    codes = sorted(r.status_code for r in responses)
    assert 503 in codes and 200 in codes, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"] == "overloaded"
    assert "limit 1" in busy.json()["detail"]
    assert post(faulty).status_code == 200


def test_deadline_gives_504_and_expired_requests_are_not_run(tiny_runner):
    runner = FaultyRunner(tiny_runner)
    cfg = ServerConfig(max_batch=1, queue_size=8, timeout_ms=250, warmup_batch_sizes=(1,))
    with ServerThread(runner, cfg) as s:
        runner.delay_s = 1.0  # long enough for all three to arrive while the first runs, on a busy CI machine too
        runs_before = len(runner.batch_sizes)  # (one arriving after it ended is refused at once: 503, not 504)
        with ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(lambda _: post(s), range(3)))
        assert [r.status_code for r in responses] == [504, 504, 504]
        assert responses[0].json()["error"] == "deadline_exceeded"
        time.sleep(1.1)  # the worker finishes the first batch, then drops the two expired requests
        assert len(runner.batch_sizes) - runs_before == 1
        runner.delay_s = 0.0
        assert post(s).status_code == 200


def test_graceful_shutdown_finishes_in_flight_requests(tiny_runner):
    runner = FaultyRunner(tiny_runner)
    s = ServerThread(runner, ServerConfig(max_batch=4, warmup_batch_sizes=(1,))).start()
    runner.delay_s = 0.5
    runner.entered.clear()  # (set by the warm-up)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=post(s)))
    t.start()
    assert runner.entered.wait(10)  # in flight (a fixed sleep was not always enough on a busy machine)
    s.stop()
    t.join()
    assert result["r"].status_code == 200
    assert not s.thread.is_alive()
