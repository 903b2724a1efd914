"""python -m sigma.sweep: distinct, documented exit codes — bad input (2) before anything is
created, an output folder that cannot be written (3), never a traceback."""

import os
import shutil
import subprocess
import sys

import pytest
from sweeputil import PLAIN, ROOT, write_grid

from sigma.sweep import cli


def test_exit_codes_are_distinct_and_documented_in_help(capsys):
    codes = [cli.OK, cli.RUNS_FAILED, cli.BAD_INPUT, cli.CANNOT_RUN, cli.INTERRUPTED]
    assert codes == [0, 1, 2, 3, 130]
    for argv in (["--help"], ["grid", "--help"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 0
        text = capsys.readouterr().out
        for code, words in [(1, "some runs"), (2, "bad input"), (3, "could not run"),
                            (130, "interrupted")]:  # fmt: skip
            assert f"  {code} " in text and words in text


def test_the_readme_documents_the_exit_codes():
    readme = (ROOT / "README.md").read_text()
    for line in (
        "| 1 | some runs",
        "| 2 | bad input",
        "| 3 | could not run",
        "| 130 | interrupted",
    ):
        assert line in readme, line


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "soon"])
def test_timeout_must_be_positive_seconds(tmp_path, capsys, value):
    grid = write_grid(tmp_path, {"beta": [1.0]})
    for argv in (["grid", str(grid), "--out", str(tmp_path / "out")], ["run", str(PLAIN)]):
        with pytest.raises(SystemExit) as info:
            cli.main([*argv, "--timeout", value])
        assert info.value.code == cli.BAD_INPUT
        err = capsys.readouterr().err
        assert f"argument --timeout: expected a positive number of seconds, got {value!r}" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "many"])
def test_workers_must_be_a_positive_whole_number(tmp_path, capsys, value):
    grid = write_grid(tmp_path, {"beta": [1.0]})
    with pytest.raises(SystemExit) as info:
        cli.main(["grid", str(grid), "--workers", value])
    assert info.value.code == cli.BAD_INPUT
    assert (
        f"argument --workers: expected a whole number ≥ 1, got {value!r}" in capsys.readouterr().err
    )


def test_a_bad_grid_is_bad_input(tmp_path, capsys):
    grid = write_grid(tmp_path, {"beta": []})
    assert cli.main(["grid", str(grid), "--out", str(tmp_path / "out")]) == cli.BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "no runs at all" in err
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_is_a_file_cannot_run(tmp_path, capsys):
    grid = write_grid(tmp_path, {"beta": [1.0]})
    out = tmp_path / "out"
    out.write_text("not a folder")
    for argv in (["grid", str(grid), "--out", str(out)], ["run", str(PLAIN), "--out", str(out)]):
        assert cli.main(argv) == cli.CANNOT_RUN
        err = capsys.readouterr().err
        assert err.startswith("error: cannot create the output folder ")
        assert err.rstrip().endswith(f"{out} is a file")
        assert "Traceback" not in err
    assert out.read_text() == "not a folder"


def _without_root_override() -> list[str]:
    """A command prefix under which a read-only folder is read-only: as root, drop the
    capability that lets root write anywhere (util-linux's setpriv)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only folder is writable")
    drop = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}"]


@pytest.mark.slow
def test_a_read_only_output_folder_cannot_run(tmp_path):
    grid = write_grid(tmp_path, {"beta": [1.0]})
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)  # read-only
    commands = [["grid", str(grid), "--out", str(out)], ["run", str(PLAIN), "--out", str(out)]]
    code = (  # both commands in one interpreter: one start-up
        "import sys\nfrom sigma.sweep.cli import main\n"
        f"for argv in {commands!r}:\n"
        "    code = main(argv)\n    print(code, file=sys.stderr)\n"
    )
    try:
        proc = subprocess.run(
            [*_without_root_override(), sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    finally:
        out.chmod(0o755)
    lines = proc.stderr.splitlines()
    assert lines[1::2] == [str(cli.CANNOT_RUN)] * 2, proc.stderr
    assert lines[::2] == [
        f"error: cannot create the output folder {out / 'tiny_plain'}: Permission denied",
        f"error: cannot write in the output folder {out}: Permission denied",
    ]
    assert list(out.iterdir()) == []
