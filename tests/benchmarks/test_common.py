"""benchmarks/_common.py: the train command of a resumable benchmark's run folder."""

import json


def test_a_run_folder_is_trained_resumed_or_extended(load_benchmark, tmp_path):
    common = load_benchmark("_common")
    fresh = ["dgm-pyro", "train", "cvae", "--name", "r"]
    folder = tmp_path / "r"
    assert common.resumable_command(folder, fresh, 12) == fresh
    folder.mkdir()  # killed before its first checkpoint: resumed as it was configured
    resume = ["dgm-pyro", "train", "--resume", str(folder), "--quiet", "--threads", "1"]
    assert common.resumable_command(folder, fresh, 12) == resume
    (folder / "checkpoint.pt").write_bytes(b"")
    (folder / "config.json").write_text(json.dumps({"epochs": 5}))
    assert common.resumable_command(folder, fresh, 12) == resume + ["--epochs", "12"]  # extended
    assert common.resumable_command(folder, fresh, 5) == resume
