"""Progress output: tqdm bars on a terminal, a few whole lines (never ``\\r``) in a file or pipe,
nothing with SAMUNET_PROGRESS=0 (samunet.utilities.progress)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from tqdm import tqdm

from conftest import make_synthetic_raw
from samunet.utilities import progress as progress_module
from samunet.utilities.progress import PlainProgress, progress

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _auto_mode(monkeypatch):
    monkeypatch.delenv("SAMUNET_PROGRESS", raising=False)


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(progress_module, "time", SimpleNamespace(monotonic=c))  # this module's clock only
    return c


class TTYStream(io.StringIO):
    def isatty(self):
        return True


def test_file_gets_a_few_lines_and_no_carriage_returns(clock):
    out = io.StringIO()
    bar = progress(range(1000), desc="epoch 1/3", file=out)
    assert isinstance(bar, PlainProgress)
    for _ in bar:
        clock.t += 0.125  # 125 s in all (exact in binary)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 12, lines
    assert lines[0] == "epoch 1/3: 0/1000"
    assert lines[1].startswith("epoch 1/3: 100/1000 (10%) after 12.5 s, ~1:52 left, 8.00 it/s")
    assert lines[-1] == "epoch 1/3: 1000/1000 (100%) done in 2:05, 8.00 it/s"


def test_short_loop_gets_start_and_end_lines_only():
    out = io.StringIO()
    for _ in progress(range(1000), desc="cases", file=out):
        pass
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0] == "cases: 0/1000" and lines[1].startswith("cases: 1000/1000 (100%) done in ")


def test_default_stream_is_stderr(capsys):
    for _ in progress(range(20), desc="cases"):
        pass
    captured = capsys.readouterr()  # pytest's capture is not a terminal
    assert captured.out == ""
    assert "\r" not in captured.err and "cases: 20/20 (100%) done" in captured.err


def test_progress_off(monkeypatch):
    monkeypatch.setenv("SAMUNET_PROGRESS", "0")
    for stream in (io.StringIO(), TTYStream()):
        bar = progress(range(50), desc="x", file=stream)
        assert not isinstance(bar, tqdm)
        assert list(bar) == list(range(50))
        with progress(total=5, desc="y", file=stream) as b:
            b.update(5)
            b.set_postfix(loss=0.5)
        assert stream.getvalue() == ""


def test_disable_is_silent():
    out = io.StringIO()
    assert list(progress(range(5), desc="x", disable=True, file=out)) == list(range(5))
    assert out.getvalue() == ""


def test_terminal_or_forced_gives_tqdm(monkeypatch):
    bar = progress(range(3), desc="x", file=TTYStream())
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setattr(sys, "stderr", TTYStream())
    bar = progress(range(3), desc="x")  # tqdm's default stream, stderr, is a terminal
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setenv("SAMUNET_PROGRESS", "1")
    out = io.StringIO()  # not a terminal, but forced
    bar = progress(range(3), desc="forced", file=out)
    assert isinstance(bar, tqdm)
    list(bar)
    assert "\r" in out.getvalue()


def test_manual_updates_postfix_and_close(clock):
    out = io.StringIO()
    bar = progress(total=4, desc="boxes", unit="case", file=out)
    clock.t += 10
    bar.update()
    bar.set_postfix(loss=0.123456, lr="1e-3")
    clock.t += 10
    bar.update(2)
    bar.set_postfix_str("dice 0.8")
    bar.set_description("stage1 boxes")
    clock.t += 10
    bar.update()
    bar.close()
    bar.close()  # twice is fine
    bar.update()  # after close: counted, not written
    lines = out.getvalue().splitlines()
    assert lines == [
        "boxes: 0/4",
        "boxes: 1/4 (25%) after 10.0 s, ~30.0 s left, 10.00 s/case",
        "boxes: 3/4 (75%) after 20.0 s, ~6.7 s left, 6.67 s/case, loss=0.1235, lr=1e-3",
        "stage1 boxes: 4/4 (100%) done in 30.0 s, 7.50 s/case, dice 0.8",
    ]
    assert bar.n == 5 and len(bar) == 4


def test_context_manager_and_early_stop():
    out = io.StringIO()
    with progress(total=10, desc="m", file=out) as bar:
        bar.update(3)
    assert out.getvalue().splitlines()[-1].startswith("m: stopped at 3/10 (30%) after ")
    out = io.StringIO()
    for i in progress(range(10), desc="b", file=out):
        if i == 4:
            break
    import gc

    gc.collect()
    assert "b: stopped at 4/10" in out.getvalue()


def test_unknown_total_is_time_limited(clock):
    out = io.StringIO()
    bar = progress(iter(range(100_000)), desc="stream", file=out)  # no len()
    for i in bar:
        clock.t += 0.001  # 100 s in all
    lines = out.getvalue().splitlines()
    assert lines[0] == "stream: started"
    assert lines[-1].startswith("stream: 100000 it done in 1:40")
    assert 3 <= len(lines) <= 2 + 100 / progress_module.MIN_INTERVAL_S, lines
    assert "\r" not in out.getvalue()


def test_transient_bar_is_quiet_unless_the_loop_is_long(clock):
    out = io.StringIO()
    for _ in progress(range(100), desc="epoch 1/2", leave=False, file=out):
        clock.t += 0.01  # 1 s: the caller's own epoch line is enough
    assert out.getvalue() == ""
    for _ in progress(range(100), desc="epoch 2/2", leave=False, file=out):
        clock.t += 1.0  # 100 s: a line per 10 % once past 30 s
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("epoch 2/2: 30/100 (30%) after 30.0 s")
    assert 5 <= len(lines) <= 9 and all("/100" in ln for ln in lines)


def test_write_and_closed_stream():
    out = io.StringIO()
    bar = progress(range(2), desc="x", file=out)
    bar.write("a message")
    assert "a message\n" in out.getvalue()
    out.close()
    assert list(bar) == [0, 1]  # a closed stream does not stop the loop


# ---- real commands, output to a file --------------------------------------------------

BOOT = """
import sys
sys.path.insert(0, {tests!r})
import network_guard
network_guard.block_network()
from {module} import main
main(sys.argv[1:])
"""


def _run(module: str, args: list[str], roots: dict[str, Path], log: Path, **extra) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMUNET_")}
    env.update(SAMUNET_raw=str(roots["raw"]), SAMUNET_preprocessed=str(roots["preprocessed"]),
               SAMUNET_results=str(roots["results"]), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    with open(log, "wb") as out:
        res = subprocess.run([sys.executable, "-c", BOOT.format(tests=str(TESTS), module=module), *args], env=env,
                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=600)
    text = log.read_bytes().decode(errors="replace")
    assert res.returncode == 0, text[-3000:]
    return text


def test_commands_logged_to_a_file_have_no_carriage_returns(samunet_roots, tmp_path):
    make_synthetic_raw(samunet_roots["raw"])
    prep = "samunet.experiment_planning.plan_and_preprocess"
    text = _run(prep, ["-d", "650", "-np", "1"], samunet_roots, tmp_path / "plan.log")
    assert "\r" not in text
    assert "fingerprint: 6/6 (100%) done in " in text and "preprocessing: 6/6 (100%) done in " in text
    assert len(text.splitlines()) < 80
    # the same command with bars forced: the bars are there, so the check above means something
    forced = _run(prep, ["-d", "650", "-np", "1", "--clean"], samunet_roots, tmp_path / "forced.log",
                  SAMUNET_PROGRESS="1")
    assert "\r" in forced and "preprocessing: 100%" in forced
    quiet = _run(prep, ["-d", "650", "-np", "1", "--clean"], samunet_roots, tmp_path / "quiet.log",
                 SAMUNET_PROGRESS="0")
    assert "\r" not in quiet and "fingerprint:" not in quiet and "preprocessing:" not in quiet
    assert "INFO" in quiet  # logging stays


@pytest.mark.slow
def test_training_log_file_has_no_carriage_returns(samunet_roots, tmp_path):
    make_synthetic_raw(samunet_roots["raw"])
    _run("samunet.experiment_planning.plan_and_preprocess", ["-d", "650", "-np", "1"], samunet_roots,
         tmp_path / "plan.log")
    plans_file = samunet_roots["preprocessed"] / "Dataset650_Synthetic" / "plans.json"
    plans = json.loads(plans_file.read_text())
    plans["stage1"].update(base_width=8, patch_size=[32, 32], batch_size=2, num_val_iterations_per_epoch=1)
    plans_file.write_text(json.dumps(plans, indent=2))
    text = _run("samunet.run.train", ["650", "0", "-tr", "ResNetTrainer", "--epochs", "2", "--iters", "3",
                                      "-device", "cpu"], samunet_roots, tmp_path / "train.log")
    assert "\r" not in text
    assert "epoch 1/2: train loss" in text and "epoch 2/2: train loss" in text
    assert "validation: " in text and "(100%) done in " in text  # the final validation's progress lines
