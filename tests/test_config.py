"""Config composition, overrides, validation messages, redaction, listing."""
from __future__ import annotations

import textwrap

import pytest
import yaml

from raveval.config.compose import PACKAGE_ROOT, ConfigError, config_yaml, list_configs

from raveval.run.config import load_config


def test_demo_composes_model_and_datasets():
    cfg = load_config()
    assert cfg.model.path == "builtin:tiny-llama"
    assert list(cfg.datasets) == ["demo_mmlu_ll", "demo_ceval_gen", "demo_gsm8k_gen"]
    assert cfg.datasets["demo_mmlu_ll"].mode == "ll"
    # ${pkg:...} resolves into the installed package.
    assert cfg.datasets["demo_mmlu_ll"].path == str((PACKAGE_ROOT / "demo_data/mmlu/test").resolve())


def test_overrides_set_values_and_swap_groups():
    cfg = load_config("demo", ["datasets=[gsm8k_gen]", "data_root=/d", "datasets.gsm8k_gen.limit=5", "model.replicas=2"])
    assert list(cfg.datasets) == ["gsm8k_gen"]
    assert cfg.datasets["gsm8k_gen"].path == "/d/gsm8k/test.jsonl"
    assert cfg.datasets["gsm8k_gen"].limit == 5
    assert cfg.model.replicas == 2


@pytest.mark.parametrize("override, key, why", [
    ("model.batchsize=3", "model.batchsize", "unknown key"),
    ("datasets.demo_mmlu_ll.mode=foo", "datasets.demo_mmlu_ll.mode", "'ll' or 'gen'"),
    ("model.replicas=two", "model.replicas", "valid integer"),
    ("model_stream.calls_per_caller=0", "model_stream.calls_per_caller", "greater than or equal to 1"),
    ("calls_per_caller=2", "calls_per_caller", "moved to model_stream.calls_per_caller"),
    ("judge_batch_rows=8", "judge_batch_rows", "moved to judge_stream.batch_rows"),
])
def test_bad_override_names_key_and_override(override, key, why):
    with pytest.raises(ConfigError) as e:
        load_config("demo", [override])
    msg = str(e.value)
    assert key in msg and why in msg and f"command-line override '{override}'" in msg


def test_unknown_group_option_is_named():
    with pytest.raises(ConfigError, match="model/nope"):
        load_config("demo", ["model=nope"])


@pytest.fixture
def user_conf(tmp_path, monkeypatch):
    """A user's ./conf beside the package configs, as a project checkout would have."""
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "datasets").mkdir()
    monkeypatch.chdir(tmp_path)
    return conf


def test_typo_in_a_group_file_names_that_file(user_conf):
    (user_conf / "model" / "typo.yaml").write_text("name: m\npath: /m\nnum_gpu: 1\n")
    (user_conf / "mine.yaml").write_text("defaults:\n  - base\n  - model: typo\n  - datasets: [demo_gsm8k_gen]\n  - _self_\n")
    with pytest.raises(ConfigError) as e:
        load_config("mine")
    msg = str(e.value)
    assert "model.num_gpu: unknown key" in msg and str(user_conf / "model" / "typo.yaml") in msg


def test_missing_required_value_names_key(user_conf):
    (user_conf / "model" / "nopath.yaml").write_text("name: m\n")
    cfg_file = user_conf.parent / "run.yaml"
    cfg_file.write_text("defaults:\n  - base\n  - model: nopath\n  - datasets: [demo_gsm8k_gen]\n  - _self_\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(cfg_file))
    assert "model.path: Field required" in str(e.value)
    assert "nopath.yaml" in str(e.value)


def test_typo_in_a_dataset_file_names_that_file(user_conf):
    (user_conf / "datasets" / "bad.yaml").write_text(textwrap.dedent("""\
        bad:
          loader: gsm8k
          path: x.jsonl
          mode: gen
          generation:
            max_tokens: 3
        """))
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["datasets=[bad]"])
    assert "datasets.bad.generation.max_tokens: unknown key" in str(e.value)
    assert str(user_conf / "datasets" / "bad.yaml") in str(e.value)


def test_config_path_outside_conf_uses_package_groups(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("defaults:\n  - base\n  - model: tiny_hf\n  - datasets: [demo_gsm8k_gen]\n  - _self_\nwork_dir: out/x\n")
    cfg = load_config(str(f), ["datasets.demo_gsm8k_gen.limit=2"])
    assert cfg.work_dir == "out/x" and cfg.datasets["demo_gsm8k_gen"].limit == 2


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_saved_config_hides_typed_secrets(tmp_path, monkeypatch):
    """Secrets are typed: every header value of an endpoint, and credentials in a base_url,
    whatever their names; the names of key variables and token counts stay."""
    monkeypatch.setenv("AZURE_KEY", "az-secret-1")
    cfg = load_config("demo", [
        "model=gpt4o_mini_api", "datasets=[demo_gsm8k_gen]",
        "model.api.base_url='https://alice:pw-secret-2@llm.example.com/v1?key=q-secret-3'",
        "++model.api.headers={api-key: ${oc.env:AZURE_KEY}, x-api-key: x-secret-4, key: k-secret-5, "
        "Authorization: Bearer b-secret-6}"])
    assert cfg.model.api.headers["api-key"].get_secret_value() == "az-secret-1"  # the program has the value
    assert cfg.model.api.base_url.startswith("https://alice:pw-secret-2@")
    text = config_yaml(cfg)
    assert "secret" not in text and "alice" not in text, text
    saved = yaml.safe_load(text)
    assert saved["model"]["api"]["headers"] == dict.fromkeys(["api-key", "x-api-key", "key", "Authorization"], "**********")
    assert saved["model"]["api"]["base_url"] == "https://***@llm.example.com/v1?key=***"
    assert saved["model"]["api"]["api_key_env"] == "OPENAI_API_KEY"
    assert saved["model"]["api"]["tokens_per_minute"] == 200000
    shown = repr(cfg) + str(cfg.model.api.headers)  # header values hide in reprs too
    assert not any(s in shown for s in ("az-secret-1", "x-secret-4", "k-secret-5", "b-secret-6"))


def test_list_matches_all_words():
    found = list_configs(["mmlu", "ll"])
    assert "mmlu_ll" in found["datasets"] and "mmlu_csv_5shot_ll" in found["datasets"]
    assert "gsm8k_gen" not in found["datasets"] and "mmlu_gen" not in found["datasets"]
    assert "tiny_hf" in list_configs(["tiny"])["model"] and "tiny_hf" not in list_configs(["tiny", "vllm"])["model"]
    assert "base" not in list_configs([])["run"]


@pytest.mark.parametrize("judge", sorted(p.stem for p in (PACKAGE_ROOT.parent / "conf" / "judges").glob("*.yaml")))
def test_every_judge_config_loads(judge, tmp_path):
    cfg = load_config("eval_mt_bench", [f"judges=[{judge}]", f"datasets.mt_bench_single.judge.endpoint={judge}",
                                        f"work_dir={tmp_path}"])
    e = cfg.judges[judge]
    assert e.base_url.startswith("http") and e.model and e.max_concurrent >= 1


def test_num_cpus_auto_gives_a_local_replica_the_machine():
    """num_cpus: auto (tiny_hf's): one local replica reserves every CPU (the stream's
    callers reserve none), several share them, and on a cluster each takes 1."""
    from raveval.engines.base import machine_cpus

    n = machine_cpus()
    assert load_config("demo").model.num_cpus == n
    assert load_config("demo", ["model.replicas=2"]).model.num_cpus == max(1, n // 2)
    assert load_config("demo", ["ray_address=auto"]).model.num_cpus == 1
    assert load_config("demo", ["model.num_cpus=0.5"]).model.num_cpus == 0.5
    with pytest.raises(ConfigError, match="model.num_cpus"):
        load_config("demo", ["model.num_cpus=-1"])
