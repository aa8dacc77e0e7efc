"""A request without an instruction: a model of several tasks refuses it (422 naming the field), a server started
with --default-instruction runs that task, and a model of one task runs its own; the OpenAPI document says which."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from rfm.config import RobotInterface
from rfm.model.policy import RFMPolicy
from rfm.runtime.loader import load_runner
from rfm.runtime.observation import ObservationError
from serving.config import ServerConfig
from serving.server import ServerThread
from tests.serving.helpers import INTERFACE, json_body, load_tiny, observation

TASKS = ["pick up the cube", "open the drawer"]


def _checkpoint(path, tasks):
    policy = RFMPolicy.build("tiny", interface=RobotInterface(**INTERFACE))
    policy.meta["data"] = {"tasks": list(tasks)}
    policy.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("two") / "ckpt", TASKS)


def test_a_runner_cannot_guess_the_task_of_a_model_of_several(two_tasks, tmp_path):
    runner = load_runner(two_tasks, backend="torch", device="cpu", seed=0)
    obs = {**observation(), "instruction": ""}
    with pytest.raises(ObservationError, match=r"'instruction' is missing or empty: this model was trained on 2 "
                                               r"instructions \('pick up the cube'; 'open the drawer'\)"):
        runner.predict(obs)
    runner.default_instruction = "open the drawer"
    np.testing.assert_array_equal(runner.predict(obs), runner.predict({**obs, "instruction": "open the drawer"}))
    one = load_runner(_checkpoint(tmp_path / "one", ["open the drawer"]), backend="torch", device="cpu", seed=0)
    assert one.instruction_for("  ") == "open the drawer"


@pytest.mark.integration
def test_the_server_refuses_a_request_without_a_task_unless_it_has_a_default(two_tasks):
    body = json_body(observation())
    del body["instruction"]
    with ServerThread(load_tiny(two_tasks), ServerConfig(max_batch=2, warmup_batch_sizes=(1,))) as srv:
        r = httpx.post(srv.url + "/v1/act", json=body)
        assert r.status_code == 422 and "--default-instruction" in r.text and "'instruction'" in r.text, r.text
        assert httpx.post(srv.url + "/v1/act", json=json_body(observation())).status_code == 200  # still serving
        assert httpx.get(srv.url + "/v1/models").json()["server"]["default_instruction"] is None
        schema = httpx.get(srv.url + "/openapi.json").json()["components"]["schemas"]
        assert "instruction" in schema["ActRequestBody"]["required"]
        assert "instruction" in schema["TicksRequestBody"]["properties"]["ticks"]["items"]["required"]
    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), default_instruction="open the drawer")
    with ServerThread(load_tiny(two_tasks), cfg) as srv:
        r = httpx.post(srv.url + "/v1/act", json=body)
        assert r.status_code == 200, r.text
        expected = httpx.post(srv.url + "/v1/act", json={**body, "instruction": "open the drawer"}).json()
        assert r.json()["actions"] == expected["actions"]
        assert httpx.get(srv.url + "/v1/models").json()["server"]["default_instruction"] == "open the drawer"
        schema = httpx.get(srv.url + "/openapi.json").json()["components"]["schemas"]
        assert "instruction" not in schema["ActRequestBody"]["required"]
