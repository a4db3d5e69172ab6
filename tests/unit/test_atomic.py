"""atomic_dir: a directory appears complete under its final name or not at all; an existing target
is replaced, kept or merged into as asked; a killed writer's temporary directory is removed by the
next opening of the run directory."""

from __future__ import annotations

import errno

import pytest

from layerif_core.artifacts import RunDir
from layerif_core.atomic import atomic_dir
from layerif_core.errors import ArtifactError


def files(path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def test_the_directory_appears_only_when_the_block_ends(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_text("w")
        assert not target.exists()
    assert files(target) == {"config.json": "{}", "sub/w.bin": "w"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary sibling left


def test_an_exception_inside_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError, match="crash"), atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_an_exception_inside_leaves_an_existing_target_as_it_was(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "new.bin").write_text("new")
        raise RuntimeError("crash")
    assert files(target) == {"old.bin": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_replace_swaps_in_the_new_directory(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")
    (target / "same.bin").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "same.bin").write_text("new")
    assert files(target) == {"same.bin": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_keep_leaves_a_copy_another_process_finished_first(tmp_path):
    target = tmp_path / "cache"
    with atomic_dir(target, existing="keep") as tmp:
        (tmp / "config.json").write_text("mine")
        target.mkdir()  # another process renames its finished copy into place meanwhile
        (target / "config.json").write_text("theirs")
    assert files(target) == {"config.json": "theirs"}
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_merge_replaces_the_files_written_and_keeps_the_others(tmp_path):
    target = tmp_path / "adapter"
    (target / "checkpoints" / "step-1").mkdir(parents=True)
    (target / "checkpoints" / "step-1" / "state.json").write_text("ckpt")
    (target / "adapter_model.safetensors").write_text("old")
    with atomic_dir(target, existing="merge") as tmp:
        (tmp / "adapter_model.safetensors").write_text("new")
        (tmp / "adapter_config.json").write_text("{}")
    assert files(target) == {"adapter_config.json": "{}", "adapter_model.safetensors": "new",
                             "checkpoints/step-1/state.json": "ckpt"}
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_disk_full_inside_is_one_line_with_the_fix(tmp_path):
    with pytest.raises(ArtifactError, match=r"disk full while writing '.*model'; free space and rerun"), \
            atomic_dir(tmp_path / "model"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_temporary_directory_is_removed_when_the_run_is_reopened(tmp_path):
    run = tmp_path / "run"
    (run / "adapter" / ".adapter.k1ll3d.tmp").mkdir(parents=True)  # atomic_dir's temporary, never renamed
    (run / "adapter" / ".adapter.k1ll3d.tmp" / "adapter_model.safetensors").write_text("half")
    RunDir(run).close()
    assert not (run / "adapter" / ".adapter.k1ll3d.tmp").exists() and (run / "adapter").is_dir()
