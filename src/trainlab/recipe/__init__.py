"""The 7-step recipe for choosing hyperparameters on a time budget: its pure arithmetic (`plan`), the
runner that carries the steps out and resumes them (`runner`), and the HTML report (`report`)."""

from trainlab.recipe.runner import RecipeResult, StepResult, run_recipe, study_name

__all__ = ["run_recipe", "RecipeResult", "StepResult", "study_name"]
