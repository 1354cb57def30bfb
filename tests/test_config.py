import json

import pytest
import torch
from omegaconf import OmegaConf

from utils.config import ConfigError, instantiate_from_config, load_config, to_container
from utils.runs import create_run_dir


def _write(p, text):
    p.write_text(text)
    return p


@pytest.fixture
def cfg_tree(tmp_path):
    _write(tmp_path / "base.yaml", "seed: 1\nlr: 0.1\nmodel:\n  width: 8\n  depth: 2\nlist: [1, 2]\nname: null\n")
    _write(tmp_path / "mid.yaml", "bases: [base.yaml]\nlr: 0.2\nmodel:\n  depth: 3\n")
    _write(tmp_path / "exp.yaml", "bases: mid.yaml\nmodel:\n  width: 16\nname: ${model.width}\n")
    return tmp_path


def test_bases_merge_in_order(cfg_tree):
    cfg = load_config(cfg_tree / "exp.yaml")
    assert cfg.seed == 1 and cfg.lr == 0.2
    assert cfg.model.width == 16 and cfg.model.depth == 3
    assert cfg.name == 16  # interpolation resolved after merging
    assert cfg.exp_name == "exp"
    assert "bases" not in cfg


def test_overrides_typed_and_nested(cfg_tree):
    cfg = load_config(cfg_tree / "exp.yaml", ["lr=3e-4", "model.depth=5", "list=[3,4,5]", "+extra.flag=true"])
    assert cfg.lr == pytest.approx(3e-4) and isinstance(cfg.lr, float)
    assert cfg.model.depth == 5 and cfg.list == [3, 4, 5]
    assert cfg.extra.flag is True


def test_unknown_override_key_is_an_error(cfg_tree):
    with pytest.raises(ConfigError, match="unknown config key 'model.widht'"):
        load_config(cfg_tree / "exp.yaml", ["model.widht=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(cfg_tree / "exp.yaml", ["lr"])


def test_override_value_is_never_evaluated(cfg_tree):
    cfg = load_config(cfg_tree / "exp.yaml", ["+note=__import__('os').getcwd()"])
    assert cfg.note == "__import__('os').getcwd()"
    with pytest.raises(ConfigError, match="expected a number"):  # and a number setting refuses the string
        load_config(cfg_tree / "exp.yaml", ["lr=__import__('os').getcwd()"])


def test_missing_base_and_cycle(tmp_path):
    _write(tmp_path / "a.yaml", "bases: [missing.yaml]\n")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "a.yaml")
    _write(tmp_path / "x.yaml", "bases: [y.yaml]\n")
    _write(tmp_path / "y.yaml", "bases: [x.yaml]\n")
    with pytest.raises(ConfigError, match="cyclic"):
        load_config(tmp_path / "x.yaml")


def test_instantiate_builds_target():
    node = OmegaConf.create({"target": "torch.nn.Linear", "params": {"in_features": 3, "out_features": 2}})
    m = instantiate_from_config(node, "model.head")
    assert isinstance(m, torch.nn.Linear) and m.weight.shape == (2, 3)


@pytest.mark.parametrize(
    "node, match",
    [
        ({"params": {}}, "model.head: missing key 'target'"),
        ({"target": "torch.nn.Linear", "params": {"in_features": 3}}, r"missing required key\(s\) \['out_features'\]"),
        (
            {"target": "torch.nn.Linear", "params": {"in_features": 3, "out_features": 2, "widht": 1}},
            r"unknown key\(s\) \['widht'\]",
        ),
        ({"target": "torch.nn.NoSuchLayer"}, "has no attribute 'NoSuchLayer'"),
        ({"target": "no_such_pkg.Thing"}, "cannot import module 'no_such_pkg'"),
        ({"target": "Linear"}, "dotted path"),
        ({"target": "torch.nn.Linear", "parms": {}}, r"unknown keys \['parms'\]"),
    ],
)
def test_instantiate_errors_name_node_and_key(node, match):
    with pytest.raises(ConfigError, match=match):
        instantiate_from_config(OmegaConf.create(node), "model.head")


def test_run_dir_has_resolved_config_and_provenance(tmp_path):
    cfg = OmegaConf.create({"output_dir": str(tmp_path / "out"), "exp_name": "toy", "seed": 7, "a": "${seed}"})
    run = create_run_dir(cfg, timestamp="20260101_000000")
    assert run == tmp_path / "out" / "toy" / "20260101_000000"
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.a == 7
    info = json.loads((run / "run_info.json").read_text())
    assert info["seed"] == 7 and "commit" in info["git"] and info["versions"]["torch"]
    run2 = create_run_dir(cfg, timestamp="20260101_000000")
    assert run2 != run and run2.exists()


def test_run_config_has_no_dead_copies(tmp_path):
    # the generator reads model.generator.params.denoiser, a copy of the top-level `denoiser` after interpolation;
    # in a run's config.yaml the copy is a reference, so editing the top-level node (what a reader sees) has effect
    from inference.model_source import _from_run_dir

    cfg = load_config("configs/shortcut_tiny.yaml", [f"output_dir={tmp_path}"])
    run = create_run_dir(cfg, timestamp="20260101_000000")
    text = (run / "config.yaml").read_text()
    assert "denoiser: ${denoiser}" in text and "modality_encoder: ${modality_encoder}" in text
    saved = OmegaConf.load(run / "config.yaml")
    assert OmegaConf.to_container(saved, resolve=True) == OmegaConf.to_container(cfg, resolve=True)  # same run
    saved.denoiser.params.latent_dim = 48
    OmegaConf.save(saved, run / "config.yaml")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.pt").write_bytes(b"")
    read = to_container(_from_run_dir(run).cfg.model.generator)
    assert read["params"]["denoiser"]["params"]["latent_dim"] == 48


def test_misspelt_key_in_a_file_is_an_error_with_a_suggestion(cfg_tree):
    _write(cfg_tree / "typo.yaml", "bases: [base.yaml]\nmodel:\n  depht: 4\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown config key 'model\.depht' \(did you mean 'depth'\?\)"):
        load_config(cfg_tree / "typo.yaml")
    # a later base is checked against the bases before it, too
    _write(cfg_tree / "over.yaml", "lr: 0.3\nsed: 4\n")
    _write(cfg_tree / "uses.yaml", "bases: [base.yaml, over.yaml]\n")
    with pytest.raises(ConfigError, match=r"over\.yaml: unknown config key 'sed' \(did you mean 'seed'\?\)"):
        load_config(cfg_tree / "uses.yaml")


def test_defines_keys_and_free_form_overrides(cfg_tree):
    _write(cfg_tree / "stage.yaml", "defines_keys: true\nbases: [base.yaml]\nsolver: {iterations: 10}\n"
                                    "overrides: {anything: {goes: 1}}\n")  # fmt: skip
    _write(cfg_tree / "child.yaml", "bases: [stage.yaml]\nsolver: {iterations: 20}\noverrides: {other: 2}\n")
    cfg = load_config(cfg_tree / "child.yaml")
    assert cfg.solver.iterations == 20 and cfg.overrides.other == 2 and "defines_keys" not in cfg
    _write(cfg_tree / "child2.yaml", "bases: [stage.yaml]\nsolver: {iteratons: 20}\n")
    with pytest.raises(ConfigError, match=r"'solver\.iteratons' \(did you mean 'iterations'\?\)"):
        load_config(cfg_tree / "child2.yaml")


def test_wrong_types_name_the_key(cfg_tree):
    with pytest.raises(ConfigError, match=r"lr: expected a number \(like 0\.1\), got 'abc'"):
        load_config(cfg_tree / "base.yaml", ["lr=abc"])
    with pytest.raises(ConfigError, match=r"model\.width: expected an integer \(like 8\), got 'sixteen'"):
        load_config(cfg_tree / "base.yaml", ["model.width=sixteen"])
    _write(cfg_tree / "bad_type.yaml", "bases: [base.yaml]\nseed: seven\n")
    with pytest.raises(ConfigError, match=r"bad_type\.yaml: seed: expected an integer"):
        load_config(cfg_tree / "bad_type.yaml")
    assert load_config(cfg_tree / "base.yaml", ["lr=1", "seed=null"]).lr == 1  # int for float, null: fine


def test_unknown_override_suggests_the_close_key(cfg_tree):
    with pytest.raises(ConfigError, match=r"'model\.widht'.*did you mean 'width'"):
        load_config(cfg_tree / "exp.yaml", ["model.widht=3"])


def test_every_shipped_config_passes_the_key_check():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    standalone = [p for p in root.rglob("*.yaml") if p.name not in ("base.yaml", "tiny_overrides.yaml")]
    assert len(standalone) > 10
    for p in standalone:
        load_config(p)


def test_run_dirs_started_together_are_distinct(tmp_path):
    """Processes started in the same second race for one timestamped name; each must get its own folder."""
    import multiprocessing as mp

    cfg = OmegaConf.create({"output_dir": str(tmp_path), "exp_name": "race", "seed": 0})
    ctx = mp.get_context("fork")
    with ctx.Pool(4) as pool:
        runs = pool.starmap(_make_run, [(cfg, "20260101_000000")] * 8)
    assert len(set(runs)) == 8 and all((tmp_path / "race" / r / "config.yaml").is_file() for r in runs)


def _make_run(cfg, ts):
    return create_run_dir(cfg, timestamp=ts).name
