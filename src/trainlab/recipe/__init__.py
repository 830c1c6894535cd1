"""The 7-step recipe for choosing hyperparameters on a time budget: its pure arithmetic (`plan`, `costs`),
the steps (`steps`), the runner that carries them out and resumes them (`runner`), what it returns
(`records`) and the HTML report (`report`, its figures drawn by `report_figures`)."""

from trainlab.recipe.records import RecipeResult, StepResult
from trainlab.recipe.runner import DEFAULT_BUDGET_MINUTES, DEFAULT_REPORT_DIR, run_recipe, study_name

__all__ = ["run_recipe", "RecipeResult", "StepResult", "study_name", "DEFAULT_BUDGET_MINUTES", "DEFAULT_REPORT_DIR"]
