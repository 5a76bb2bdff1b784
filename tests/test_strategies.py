"""The strategy configs say what they claim, and DeepSpeed gets the clip value."""

from __future__ import annotations

import pytest

from lightning_modules.config import TrainerConfig
from lightning_modules.run import UsageError, lightning_strategy, parse_config
from tests.conftest import ROOT


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_stage_2"])
def test_strategy_configs_parse_on_top_of_a_method(name, tiny_args):
    method = "sft" if name == "fsdp" else "grpo"
    config, _, _, _ = parse_config(["--method", method, "--config", str(ROOT / "configs" / "strategies" / f"{name}.yaml"), *tiny_args])
    assert (config.trainer.strategy, config.trainer.accelerator, config.trainer.devices, config.trainer.precision) == (name, "gpu", "auto", "bf16-mixed")


def test_plain_strategies_pass_through_and_unknown_deepspeed_names_are_refused():
    assert lightning_strategy(TrainerConfig(strategy="ddp")) == "ddp"
    with pytest.raises(UsageError, match="not a DeepSpeed strategy"):
        lightning_strategy(TrainerConfig(strategy="deepspeed_stage_9"))
