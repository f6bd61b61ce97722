"""Which code and machine a result came from, and null rather than a failure without git."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.provenance import code_during, code_version, cpu_model, machine, modified_files


def test_modified_files_leave_out_what_benchmarks_write() -> None:
    porcelain = "\0".join(
        [
            " M core/settings.py",
            "?? var/bench/x.db",
            " M benchmarks/results/simulate.json",
            "?? benchmarks/new_bench.py",
            "R  pipelines/new.py",
            "pipelines/old.py",
            "",
        ]
    )
    assert modified_files(porcelain) == ["benchmarks/new_bench.py", "core/settings.py", "pipelines/new.py"]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "core.hooksPath=/dev/null",
            *args,
        ],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_code_version_of_a_clean_then_dirty_tree(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "commit", "-qm", "one")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    (repo / "var").mkdir()
    (repo / "var" / "state.db").write_text("")
    assert code_version(repo) == {"commit": head, "dirty": False, "modified": []}

    (repo / "a.py").write_text("x = 2\n")
    assert code_version(repo) == {"commit": head, "dirty": True, "modified": ["a.py"]}


def test_without_git_or_a_repository_every_field_is_null(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nothing = {"commit": None, "dirty": None, "modified": None}
    assert code_version(tmp_path, git="no-such-git-here") == nothing
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert code_version(tmp_path) == nothing  # a tarball: no .git


def test_a_tree_changed_during_the_run_is_dirty() -> None:
    clean = {"commit": "a" * 40, "dirty": False, "modified": []}
    assert code_during(clean, clean) == clean
    later = {"commit": "b" * 40, "dirty": True, "modified": ["core/x.py"]}
    assert code_during(clean, later) == {
        "commit": "a" * 40,
        "dirty": True,
        "modified": ["core/x.py"],
        "changed_during_run": True,
        "commit_at_end": "b" * 40,
    }


def test_machine_names_the_cpu_and_its_load(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n")
    assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) Processor"
    described = machine()
    assert {"cpus", "cpu_model", "memory_gb", "load_average_at_start"} <= described.keys()
    assert described["load_average_at_start"] is None or len(described["load_average_at_start"]) == 3
