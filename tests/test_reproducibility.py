"""pipeline/reproducibility.py: digests that are equal exactly when two runs made the same weights and motion."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from pipeline.reproducibility import (
    MEASURED,
    environment,
    folder_digest,
    output_digests,
    reproducibility_markdown,
    weights_digest,
)


def _npz(path, value: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, poses=np.full((4, 165), value, np.float32))


def test_folder_digest_is_order_free_and_sees_bytes_and_names(tmp_path):
    _npz(tmp_path / "a" / "res_1.npz", 1.0)
    _npz(tmp_path / "a" / "res_2.npz", 2.0)
    files = sorted((tmp_path / "a").glob("*.npz"))
    assert folder_digest(files) == folder_digest(files[::-1])
    expected = hashlib.sha256()
    for p in files:
        expected.update(f"{p.name}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    assert folder_digest(files) == expected.hexdigest()
    _npz(tmp_path / "b" / "res_1.npz", 1.0)
    _npz(tmp_path / "b" / "res_2.npz", 2.0 + 1e-6)  # one value, a few ulps away
    assert folder_digest(sorted((tmp_path / "b").glob("*.npz"))) != folder_digest(files)
    (tmp_path / "b" / "res_2.npz").rename(tmp_path / "b" / "res_3.npz")
    _npz(tmp_path / "c" / "res_1.npz", 1.0)
    _npz(tmp_path / "c" / "res_3.npz", 2.0)
    assert folder_digest(sorted((tmp_path / "c").glob("*.npz"))) != folder_digest(files)  # same bytes, other name


def test_weights_digest_ignores_run_paths_but_not_one_weight(tmp_path):
    w = {"lin.weight": torch.arange(6.0).reshape(2, 3), "lin.bias": torch.zeros(2)}
    torch.save({"model": w, "config": {"output_dir": "run_a"}, "seconds": 1.0}, tmp_path / "a.pt")
    torch.save({"model": {k: v.clone() for k, v in w.items()}, "config": {"output_dir": "run_b"}}, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()
    assert weights_digest(tmp_path / "a.pt") == weights_digest(tmp_path / "b.pt")
    w2 = {**w, "lin.bias": torch.tensor([0.0, np.nextafter(np.float32(0), np.float32(1))])}
    torch.save({"model": w2}, tmp_path / "c.pt")
    assert weights_digest(tmp_path / "c.pt") != weights_digest(tmp_path / "a.pt")
    torch.save({"model": {**w, "lin.bias": torch.zeros(2, dtype=torch.float64)}}, tmp_path / "d.pt")
    assert weights_digest(tmp_path / "d.pt") != weights_digest(tmp_path / "a.pt")  # same values, other dtype


def test_output_digests_cover_checkpoints_test_runs_and_learning_check(tmp_path):
    out = tmp_path / "out"
    (out / "stages").mkdir(parents=True)
    torch.save({"model": {"w": torch.ones(3)}}, tmp_path / "g.pt")
    (out / "stages" / "gen_shortcut.json").write_text(json.dumps({"paths": {"checkpoint": str(tmp_path / "g.pt")}}))
    (out / "stages" / "cache.json").write_text(json.dumps({"paths": {"mean_vel": "x.npy"}}))  # no checkpoint
    _npz(out / "test" / "shortcut_n2" / "res_f1.npz", 1.0)
    _npz(out / "test" / "shortcut_n2" / "gt_f1.npz", 9.0)  # ground truth: not a generated output
    _npz(out / "report" / "learning_check" / "own" / "res_f1.npz", 1.0)
    d = output_digests(out)
    assert set(d) == {"gen_shortcut weights", "test/shortcut_n2 res_*.npz (1)", "learning_check/own res_*.npz (1)"}
    assert d["gen_shortcut weights"] == weights_digest(tmp_path / "g.pt")
    assert d["test/shortcut_n2 res_*.npz (1)"] == folder_digest([out / "test" / "shortcut_n2" / "res_f1.npz"])
    md = reproducibility_markdown(environment(), d)
    assert all(v[:16] in md for v in d.values()) and all(m in md for m in MEASURED)
    assert "compare_runs.py" in md


def test_environment_names_what_decides_bit_identity():
    env = environment()
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__
    assert env["torch_threads"] == torch.get_num_threads() and env["cpu"]
