"""The strategy configs say what they claim, fsdp is FSDP2 with atomic sharded checkpoints, DeepSpeed (never run) is refused."""

from __future__ import annotations

import pytest

from lightning_modules.config import TrainerConfig
from lightning_modules.sharding import ShardedStrategy
from workflows.train import UsageError, lightning_strategy, parse_config
from tests.conftest import ROOT


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_strategy_configs_parse_on_top_of_a_method(name, tiny_args):
    config, _, _, _ = parse_config(["--method", "grpo", "--config", str(ROOT / "configs" / "strategies" / f"{name}.yaml"), *tiny_args])
    assert (config.trainer.strategy, config.trainer.accelerator, config.trainer.devices, config.trainer.precision) == (name, "gpu", "auto", "bf16-mixed")


def test_plain_strategies_pass_through_fsdp_is_fsdp2_and_deepspeed_is_refused():
    assert lightning_strategy(TrainerConfig(strategy="ddp")) == "ddp"
    assert isinstance(lightning_strategy(TrainerConfig(strategy="fsdp")), ShardedStrategy)
    for name in ("deepspeed", "deepspeed_stage_2", "deepspeed_stage_3_offload"):
        with pytest.raises(UsageError, match=f"trainer.strategy {name} is not supported; fsdp is the tested sharded way"):
            lightning_strategy(TrainerConfig(strategy=name))


@pytest.mark.parametrize("env", [{"TORCHELASTIC_RUN_ID": "job-1"}, {"SLURM_NTASKS": "16"}])
def test_a_torchrun_or_srun_launch_must_name_its_run(env, tiny_args, monkeypatch):
    from workflows.train import RUN_NAME_ENV, run_dir_of

    monkeypatch.delenv(RUN_NAME_ENV, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config, _, _, _ = parse_config(["--method", "sft", *tiny_args])
    with pytest.raises(UsageError, match="set --run_name"):
        run_dir_of(config)
    config.run_name = "named"
    assert run_dir_of(config).name == "named"
