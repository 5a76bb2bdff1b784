"""What learns: one LightningModule per method, the policy and its heads, the typed rollout
records, the reward parts, the evaluation engine, and the math as pure functions (``losses``).

A new method joins with one class here and one ``configs/<method>.yaml``.
"""

from lightning_modules.base import ReasoningModule
from lightning_modules.carft import CARFTModule
from lightning_modules.grpo import GRPOModule
from lightning_modules.label_free import EMPOModule, IntuitorModule, RENTModule, TTRLModule
from lightning_modules.ppo import PPOModule
from lightning_modules.rlsc import RLSCModule
from lightning_modules.sft import SFTModule

METHODS: dict[str, type[ReasoningModule]] = {
    cls.name: cls
    for cls in (SFTModule, PPOModule, CARFTModule, GRPOModule, RLSCModule, TTRLModule, IntuitorModule, RENTModule, EMPOModule)
}
