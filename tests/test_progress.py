"""Progress in logs: whole lines at most every interval, never carriage returns."""

import io

from vitres.cli import main
from vitres.progress import PlainProgress, progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_at_most_every_interval_and_at_the_end():
    out, clock = io.StringIO(), FakeClock()
    with PlainProgress(total=100, desc="sweep", unit="config", file=out, clock=clock) as bar:
        for _ in range(100):
            clock.now += 0.5  # 50 s in all: a line at most every 10 s
            bar.update(1)
            bar.set_postfix_str("28px eager")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("sweep: 0/100 config (0 %)")
    assert lines[-1].startswith("sweep: 100/100 config (100 %) [50 s, 2 config/s] 28px eager")
    assert 5 <= len(lines) <= 7  # start, one per 10 s, end


def test_iterating_and_disabled_and_terminal_choice():
    out = io.StringIO()
    assert list(progress_bar([1, 2, 3], desc="res", file=out)) == [1, 2, 3]
    assert out.getvalue().splitlines()[-1].startswith("res: 3/3 it (100 %)")
    quiet = io.StringIO()
    with PlainProgress(total=3, file=quiet, disable=True) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert not isinstance(progress_bar(total=1, file=Terminal()), PlainProgress)


def test_a_command_writes_no_carriage_returns_to_a_log(capsys):
    assert main(["eval", "--model", "fmnist-vit-single", "--res", "16", "--limit", "64"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err


def test_a_reader_that_leaves_ends_the_command_quietly():
    """`vitres models | head -1`: no BrokenPipeError traceback, the shell's SIGPIPE code."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from vitres.cli import main; "
         "sys.exit(main(['models']))"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    process.stdout.close()  # the reader leaves before the command writes
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err
