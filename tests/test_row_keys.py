"""Row keys cover everything that changes an output: a re-run with any of these
changed computes its rows again instead of reusing rows of another model."""
from __future__ import annotations

import pytest

from raveval.run.config import load_config
from raveval.run.plan import make_plan


def keys(config: str, overrides: list[str]) -> set[str]:
    return {r.key for r in make_plan(load_config(config, overrides)).requests}


API = ["model=gpt4o_mini_api", "datasets=[demo_gsm8k_gen]", "work_dir=/tmp/unused"]


@pytest.mark.parametrize("change", [
    "model.api.base_url=https://other.example/v1",
    "model.api.model=gpt-4o",
    "++model.api.extra_body={reasoning_effort: low}",
])
def test_api_model_keys_follow_the_server_and_model(change):
    assert keys("demo", API) != keys("demo", [*API, change])


def test_api_model_keys_ignore_limits_and_keys():
    same = ["model.api.requests_per_minute=10", "model.api.max_concurrent=2", "model.api.api_key_env=OTHER_KEY",
            "model.api.base_url=https://api.openai.com/v1/"]
    assert keys("demo", API) == keys("demo", [*API, *same])


LMD = ["model=internlm2_chat_1_8b_turbomind", "datasets=[demo_ceval_gen]", "work_dir=/tmp/unused"]


# session_len must equal max_model_len (a config check): changing either changes the keys.
@pytest.mark.parametrize("change", ["model.lmdeploy.chat_template=internlm2",
                                    "model.lmdeploy.session_len=2048 model.max_model_len=2048"])
def test_lmdeploy_keys_follow_template_and_session_len(change):
    pytest.importorskip("lmdeploy", reason="lmdeploy's config classes check model.lmdeploy (scripts/setup_env.sh)")
    assert keys("demo", LMD) != keys("demo", [*LMD, *change.split()])
