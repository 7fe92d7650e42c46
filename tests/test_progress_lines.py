"""Progress in a log: when stderr is not a terminal, flexcli writes plain lines (stage, done/total, elapsed, ETA),
at most one every 10 s per stage plus its first and last, and nothing before the first update (so an error
before any progress stays one line)."""
import re
import time

from flexcli import console


def _lines(capsys):
    return [x for x in capsys.readouterr().err.splitlines() if x]


def test_plain_progress_is_throttled_and_says_stage_done_total_elapsed_eta(monkeypatch, capsys):
    now = {"t": 1000.0}
    monkeypatch.setattr(time, "monotonic", lambda: now["t"])
    bar = console.PlainProgress(interval=10)
    task = bar.add_task("distill weak mode", total=100, loss="--")
    assert _lines(capsys) == []  # adding a task prints nothing
    for step in range(1, 101):
        now["t"] += 0.5  # 2 steps a second: 50 s in all
        bar.update(task, completed=step, loss=f"{1 / step:.3f}")
    lines = _lines(capsys)
    pat = re.compile(r"^\[\d\d:\d\d:\d\d\] distill weak mode (\d+)/100 \(\d+%\) elapsed (\d+:\d\d:\d\d)"
                     r"( ETA (\d+:\d\d:\d\d))? [\d.]+ it/s loss=\S+$")
    assert all(pat.match(x) for x in lines), lines
    done = [int(pat.match(x)[1]) for x in lines]
    assert done == [1, 21, 41, 61, 81, 100]  # the first update, then every 10 s (20 steps), then the end
    # ETA from the rate so far (21 steps in 10.5 s: 79 left take 39.5 s); none at 100 %
    assert pat.match(lines[1])[4] == "0:00:39" and pat.match(lines[-1])[3] is None
    bar.update(task, completed=100)
    assert _lines(capsys) == []  # the end is reported once


def test_progress_bar_is_plain_off_a_terminal(capsys):
    assert not console.err.is_terminal  # pytest captures stderr
    with console.progress_bar() as bar:
        t = bar.add_task("sampling (steps x samples)", total=4, info="")
        bar.update(t, advance=2, info="samples 2/4")
        bar.update(t, advance=2, info="samples 4/4")
    lines = _lines(capsys)
    assert len(lines) == 2 and "sampling (steps x samples) 2/4 (50%) elapsed" in lines[0]
    assert lines[0].endswith(" samples 2/4") and "4/4 (100%)" in lines[1] and "\x1b[" not in "".join(lines)
