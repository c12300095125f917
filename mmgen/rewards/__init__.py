"""Rewards for RL: image critics scoring `(prompts, images, metadata) -> scores`.

Built-ins (by name in a recipe): `geneval`, `shapes`, `clip_score`, `edit_consistency`, `format`. A user reward is
any function with that signature, named as `package.module:function` or `path/to/file.py:function`.
"""

from mmgen.rewards.registry import RewardFn, available_rewards, build_reward, register_reward
from mmgen.rewards.scoring import RewardError, RewardSet

__all__ = ["RewardError", "RewardFn", "RewardSet", "available_rewards", "build_reward", "register_reward"]
