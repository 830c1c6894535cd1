"""Transfer learning: a source model's stages (`backbone`), the source and the target model built from it
(`source`), the strategies from a linear probe to full fine-tuning (`strategies`), and the advisor that picks
one from the target's size and similarity (`advisor`)."""

from trainlab.transfer.source import Source, load_source, prepare_target, study_name, target_hparams, target_model
from trainlab.transfer.strategies import (
    STRATEGIES,
    FeatureCache,
    GradualUnfreeze,
    Plan,
    StrategyResult,
    compare,
    default_strategies,
    parse_strategy,
    plan_strategy,
    train_strategy,
)

__all__ = ["STRATEGIES", "Source", "StrategyResult", "Plan", "GradualUnfreeze", "FeatureCache", "parse_strategy",
           "default_strategies", "load_source", "study_name", "prepare_target", "target_hparams", "target_model",
           "plan_strategy", "train_strategy", "compare"]
