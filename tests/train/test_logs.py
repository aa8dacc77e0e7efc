"""Training logs across a stop and --resume: the steps trained again are logged once, and a damaged log still plots."""

from __future__ import annotations

import csv

from rfm.train.logs import TrainLogger


def _steps(path) -> list[int]:
    return [int(r["step"]) for r in csv.DictReader(path.read_text().splitlines())]


def test_a_resumed_run_drops_what_the_stopped_run_logged_after_its_checkpoint(tmp_path):
    first = TrainLogger(tmp_path, resume_step=0)
    for step in range(1, 11):  # checkpoint at 6, killed after 10
        first.log(step, loss=1.0 / step, lr=1e-3)
    first._f.write("11,0.0")  # a line cut short when the process died
    first._f.close()

    resumed = TrainLogger(tmp_path, resume_step=6)
    for step in range(7, 13):
        resumed.log(step, loss=1.0 / step, lr=1e-3)
    png = resumed.close()
    assert _steps(tmp_path / "train.csv") == list(range(1, 13))  # 7-10 once, from the resumed run
    assert png.stat().st_size > 1000


def test_the_loss_plot_skips_rows_that_do_not_parse(tmp_path):
    log = TrainLogger(tmp_path)
    log.log(1, loss=0.5)
    log._f.write("2,not-a-number,,,,,,\n3\n")
    log.log(4, loss=0.25, val_loss=0.3)
    assert log.close().stat().st_size > 1000
