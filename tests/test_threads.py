"""The threading policy: --threads on every command that computes, OpenMP's passive wait set when cfgedu is imported,
and the figure2 benchmark, which runs beside a busy process it always stops."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfgedu.commands.bench_figure2 import BUSY_LOOP, busy_process
from cfgedu.commands.cli import COMMANDS, build_parser, main

NOT_COMPUTING = {"describe", "prepare-imagenet64"}


def test_every_computing_command_takes_threads():
    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    lacking = [name for name in COMMANDS if name not in NOT_COMPUTING
               and "--threads" not in subparsers[name]._option_string_actions]
    assert not lacking, f"commands without --threads: {lacking}"


def test_negative_threads_is_a_one_line_error(tmp_path, capsys):
    assert main(["figure2", "--out", str(tmp_path), "--threads", "-1"]) == 2
    assert "--threads must be >= 0, got -1" in capsys.readouterr().err


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_import_sets_a_passive_openmp_wait_unless_set(preset, expected):
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = "import cfgedu, os, torch; print(os.environ['OMP_WAIT_POLICY'])"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == expected


def ended(pid: int) -> bool:
    """Whether process pid has ended (gone, or a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def test_bench_figure2_prints_idle_loaded_and_ratio_and_stops_its_busy_process(capsys):
    assert main(["bench-figure2", "--samples-per-class", "30", "--steps", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["threads", "idle", "s", "loaded", "s", "loaded/idle"]
    threads, idle, loaded, ratio = lines[1].split()
    assert threads == "1" and float(idle) > 0 and float(loaded) > 0
    assert float(ratio) == pytest.approx(float(loaded) / float(idle), abs=0.01)
    pid = int(re.fullmatch(r"busy process (\d+) stopped \(exit status -?\d+\)", lines[-1]).group(1))
    assert ended(pid)


def test_busy_process_stops_on_ctrl_c():
    with pytest.raises(KeyboardInterrupt), busy_process() as busy:
        assert busy.poll() is None
        raise KeyboardInterrupt
    assert busy.returncode is not None and ended(busy.pid)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_busy_loop_ends_when_its_parent_dies():
    """Should the benchmark itself be killed (SIGKILL, no cleanup), its busy process ends by itself."""
    parent = ("import os, subprocess, sys\n"  # starts the busy loop, says its pid and exits without stopping it
              "quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
              "print(subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid())], **quiet).pid)")
    pid = int(subprocess.run([sys.executable, "-c", parent, BUSY_LOOP], capture_output=True, text=True,
                             check=True, timeout=60).stdout)
    deadline = time.monotonic() + 20
    while not ended(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ended(pid)
