"""`format`: 1 for a completion that is a valid image span (exactly N codes, then `<|image_end|>`), else 0.

mmgen's own rollouts are constrained and always valid, so under them this reward is constant and carries no
signal; it matters when completions come from elsewhere (a custom rollout function, unconstrained sampling).
"""

from __future__ import annotations

from mmgen.rewards.registry import register_reward


@register_reward("format")
def format_reward():
    def format(prompts, images, metadata):
        return [0.0 if image is None else 1.0 for image in images]

    return format
