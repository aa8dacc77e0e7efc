"""The rfm command line: exit codes and one-line errors. `--help` and one error run as real subprocesses (the entry
point, its exit code, nothing on stderr but the message); the rest call the same `main` in this process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_in_process import rfm

pytestmark = pytest.mark.integration  # real `rfm` subprocesses
ROOT = Path(__file__).resolve().parents[1]


def rfm_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rfm.cli.main", *args], capture_output=True, text=True, check=False,
                          timeout=300)


def test_help_lists_subcommands():
    out = rfm_process("--help")
    assert out.returncode == 0 and "info" in out.stdout


def test_info_prints_params_and_flops():
    out = rfm("info", "--preset", "tiny", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert 1_000_000 < info["params"] < 3_000_000
    assert info["flops_per_chunk"] > 1e8 and info["text_encoder_flops"] > 1e8


def test_info_typo_is_a_one_line_error():
    out = rfm_process("info", "--preset", "smal")
    assert out.returncode == 2
    assert out.stderr.strip() == ("rfm info: error: unknown preset 'smal': expected one of ['base', 'small', 'tiny']. "
                                  "Did you mean 'small'?")


def test_train_dataset_weights_mismatch_is_a_one_line_error_naming_the_datasets(tmp_path):
    a, b = tmp_path / "demos", tmp_path / "field"
    out = rfm("train", "--dataset", f"{a},{b}", "--out", str(tmp_path / "run"), "--dataset-weights", "1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "dataset_weights has 1 values for 2 datasets" in out.stderr and str(b) in out.stderr
    out = rfm("train", "--dataset", str(a), "--out", str(tmp_path / "run"), "--dataset-weights", "half")
    assert out.returncode == 2 and "--dataset-weights 'half'" in out.stderr


def test_train_action_loss_weights_malformed_is_a_one_line_error(tmp_path):
    out = rfm("train", "--dataset", str(tmp_path / "demos"), "--out", str(tmp_path / "run"),
              "--action-loss-weights", "gripper")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--action-loss-weights 'gripper': item 'gripper' is not NAME=WEIGHT" in out.stderr


def test_missing_checkpoint_is_a_one_line_error():
    out = rfm("info", "--checkpoint", "/nonexistent/ckpt")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "/nonexistent/ckpt: checkpoint directory not found" in out.stderr


def test_fleet_without_a_server_is_a_one_line_error(tmp_path):
    from serving.server import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = rfm("fleet", "--url", url, "--tasks", "reach-v3", "--episodes", "1")
    assert out.returncode == 2 and f"--url {url}: cannot read the served model" in out.stderr
    assert "Traceback" not in out.stderr
    (tmp_path / "key").write_text("\n")
    out = rfm("fleet", "--url", url, "--tasks", "reach-v3", "--episodes", "1", "--api-key-file", str(tmp_path / "key"))
    assert out.returncode == 2 and "is empty" in out.stderr and "Traceback" not in out.stderr


def test_eval_more_actions_per_request_than_the_chunk_is_a_one_line_error(capsys):
    """Before any rollout: the checkpoint's chunk size bounds --action-steps."""
    from pathlib import Path

    from rfm.cli.main import main

    ckpt = Path(__file__).resolve().parents[1] / "checkpoints" / "default"
    assert main(["eval", "--checkpoint", str(ckpt), "--tasks", "reach-v3", "--episodes", "1",
                 "--action-steps", "99"]) == 2
    err = capsys.readouterr().err
    assert "--action-steps=99" in err and "at most the chunk size 16" in err


def test_train_holding_out_every_episode_is_a_one_line_error(tmp_path, capsys):
    from rfm.cli.main import main
    from tests.data.conftest import FIXTURES

    data = FIXTURES / "image"
    assert main(["train", "--dataset", str(data), "--out", str(tmp_path / "run"), "--val-episodes", "3",
                 "--steps", "1"]) == 2
    assert f"train.val_episodes=3: {data} has 3 episode(s)" in capsys.readouterr().err


def test_fleet_negative_delay_is_a_one_line_error(capsys):
    from rfm.cli.main import main

    assert main(["fleet", "--url", "http://127.0.0.1:9", "--tasks", "reach-v3", "--delay", "-1"]) == 2
    assert "--delay -1" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["serve", "--threads", "-1"], ["eval", "--tasks", "reach-v3", "--workers", "0"],
                                  ["eval", "--tasks", "reach-v3", "--max-steps", "0"], ["fleet", "--robots", "0"],
                                  ["train", "--threads", "0"], ["adapt", "--task", "reach-v3", "--episodes", "-2"],
                                  ["data", "view", "DIR", "--frames", "0"]])
def test_counts_below_one_are_usage_errors_naming_the_flag(argv, capsys):
    """Threads, workers, robots, steps: 0 or less was a torch traceback (serve --threads -1) or silently the
    default (eval --max-steps 0 ran 500 steps)."""
    from rfm.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {argv[-2]}: '{argv[-1]}': expected a whole number >= 1" in err


def test_the_bundled_checkpoints_are_found_from_any_directory(tmp_path, monkeypatch):
    """The guides' `--init checkpoints/default` names the bundled checkpoint wherever the command runs; a path
    that exists where it runs is taken as given."""
    from rfm.cli.args import checkpoint_dir

    monkeypatch.chdir(tmp_path)
    assert Path(checkpoint_dir("checkpoints/default")) == ROOT / "checkpoints" / "default"
    assert Path(checkpoint_dir("base")) == ROOT / "checkpoints" / "base"
    (tmp_path / "checkpoints" / "default").mkdir(parents=True)
    assert checkpoint_dir("checkpoints/default") == "checkpoints/default"  # the user's own, here
    assert checkpoint_dir("elsewhere/default") == "elsewhere/default"


def test_a_bad_option_value_is_one_line():
    """argparse printed its whole usage block before the line that says what was wrong."""
    out = rfm_process("adapt", "--task", "reach-v3", "--init", "x", "--out", "y", "--episodes", "0")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("rfm adapt: error: argument --episodes: '0': expected a whole number >= 1")


def test_a_file_this_user_may_not_read_is_a_one_line_error_naming_it(tmp_path):
    """A dataset or volume of another user's (a container's uid is often not the owner's): one line naming the file
    and who the process runs as, not a traceback."""
    import ast
    import shutil

    from tests.unprivileged import run_unprivileged

    fixture = ROOT.parent / "shared" / "fixtures" / "lerobot-v3.0" / "image"
    if not fixture.is_dir():  # a clone outside the workspace
        fixture = Path("/work/shared/fixtures/lerobot-v3.0/image")
    data = shutil.copytree(fixture, tmp_path / "image")
    assert rfm("data", "info", str(data)).returncode == 0  # (and what it imports is imported)
    (data / "meta" / "info.json").chmod(0o000)  # (root reads it anyway: hence the other user)
    out = run_unprivileged(lambda: vars(rfm("data", "info", str(data))))
    assert "error" not in out, out
    result = ast.literal_eval(out["value"])
    assert result["returncode"] == 2 and "Traceback" not in result["stderr"]
    assert result["stderr"].startswith(f"rfm data: error: Permission denied: {tmp_path}")  # where it was stopped
    assert "(this process runs as " in result["stderr"] and result["stderr"].count("\n") == 1
