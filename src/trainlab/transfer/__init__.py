"""Transfer learning: a source model's stages (`backbone`), the strategies from a linear probe to full
fine-tuning (`strategies`), and the advisor that picks one from the target's size and similarity (`advisor`)."""

from trainlab.transfer.strategies import (
                                          STRATEGIES,
                                          FeatureCache,
                                          GradualUnfreeze,
                                          Plan,
                                          Source,
                                          StrategyResult,
                                          compare,
                                          default_strategies,
                                          load_source,
                                          parse_strategy,
                                          plan_strategy,
                                          prepare_target,
                                          study_name,
                                          target_model,
                                          train_strategy,
)

__all__ = ["STRATEGIES", "Source", "StrategyResult", "Plan", "GradualUnfreeze", "FeatureCache", "parse_strategy",
           "default_strategies", "load_source", "study_name", "prepare_target", "target_model", "plan_strategy",
           "train_strategy", "compare"]
