"""pipeline/reproducibility.py: digests that are equal exactly when two runs made the same weights and motion."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
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


def test_weights_digest_reads_released_layouts_and_refuses_empty_ones(tmp_path):
    w = {"lin.weight": torch.arange(6.0).reshape(2, 3)}
    torch.save({"model": w}, tmp_path / "ours.pt")
    torch.save({"model_state": w}, tmp_path / "v1.bin")  # e.g. the official FGD autoencoder
    torch.save({"net": w}, tmp_path / "rvq.pth")  # released RVQ-VAEs
    torch.save(w, tmp_path / "raw.pt")
    digests = {weights_digest(tmp_path / n) for n in ("ours.pt", "v1.bin", "rvq.pth", "raw.pt")}
    assert len(digests) == 1  # the same tensors, whatever the wrapper
    torch.save({"model_state": {"lin.weight": torch.ones(2, 3)}}, tmp_path / "v1b.bin")
    assert weights_digest(tmp_path / "v1b.bin") not in digests
    torch.save({"net": {}}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="no tensors"):
        weights_digest(tmp_path / "empty.pth")


def test_output_digests_cover_checkpoints_test_runs_and_learning_check(tmp_path):
    out = tmp_path / "out"
    (out / "stages").mkdir(parents=True)
    torch.save({"model": {"w": torch.ones(3)}}, tmp_path / "g.pt")
    (out / "stages" / "gen_shortcut.json").write_text(json.dumps({"paths": {"checkpoint": str(tmp_path / "g.pt")}}))
    (out / "stages" / "gen_ddim.json").write_text(json.dumps({"paths": {"checkpoint": str(tmp_path / "gone.pt")}}))
    (out / "stages" / "cache.json").write_text(json.dumps({"paths": {"mean_vel": "x.npy"}}))  # no checkpoint
    _npz(out / "test" / "shortcut_n2" / "res_f1.npz", 1.0)
    _npz(out / "test" / "shortcut_n2" / "gt_f1.npz", 9.0)  # ground truth: not a generated output
    own = out / "report" / "learning_check" / "own"
    _npz(own / "seed0" / "res_f1.npz", 1.0)  # the learning check writes one folder per sampling seed
    _npz(own / "seed1" / "res_f1.npz", 2.0)
    d = output_digests(out)
    assert set(d) == {"gen_shortcut weights", "gen_ddim weights", "test/shortcut_n2 res_*.npz (1)",
                      "learning_check/own res_*.npz (2)"}  # fmt: skip
    assert d["gen_shortcut weights"] == weights_digest(tmp_path / "g.pt") and d["gen_ddim weights"] == "missing"
    assert d["test/shortcut_n2 res_*.npz (1)"] == folder_digest([out / "test" / "shortcut_n2" / "res_f1.npz"])
    before = d["learning_check/own res_*.npz (2)"]
    _npz(own / "seed1" / "res_f1.npz", 2.5)  # another seed's motion changes: the condition's digest changes
    assert output_digests(out)["learning_check/own res_*.npz (2)"] != before
    _npz(own / "seed1" / "res_f1.npz", 1.0)  # seed folders with identical files must not collide
    _npz(own / "seed0" / "res_f1.npz", 2.0)
    assert output_digests(out)["learning_check/own res_*.npz (2)"] != before
    md = reproducibility_markdown(environment(), d)
    assert all(v[:16] in md for v in d.values()) and all(m in md for m in MEASURED)
    assert "compare_runs.py" in md


def test_environment_names_what_decides_bit_identity():
    env = environment()
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__
    assert env["torch_threads"] == torch.get_num_threads() and env["cpu"]
