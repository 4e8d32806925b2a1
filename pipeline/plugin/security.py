"""What code a recipe may make the pipeline import.

Recipes are data: a recipe file from a colleague or the internet must not run code of its
author's choosing. A recipe can name code in two ways, and both are policed:

- installed plugins (entry points): installing a package is already a decision to trust it;
- `model.target` (a builder function `package.module:function`): allowed only inside the
  project's own packages and the modules the *user* lists in the environment variable
  `PIPELINE_ALLOWED_MODULES` (comma-separated module prefixes). `PIPELINE_ALLOW_ANY_TARGET=1`
  lifts the restriction. Both live outside the recipe on purpose, so that a recipe cannot
  grant itself permission.

Model files load with Keras safe mode unless `model.safe_mode=false`.
"""

from __future__ import annotations

import os

from pipeline.errors import PipelineError

OWN_PACKAGES = ("pipeline", "stages")
ALLOWED_ENV = "PIPELINE_ALLOWED_MODULES"
ANY_ENV = "PIPELINE_ALLOW_ANY_TARGET"


def allowed_modules() -> tuple[str, ...]:
    """Module prefixes a recipe may import from: ours plus the user's."""
    extra = [name.strip() for name in os.environ.get(ALLOWED_ENV, "").split(",") if name.strip()]
    return (*OWN_PACKAGES, *extra)


def check_target(target: str, key: str) -> None:
    """Raise PipelineError unless `target`'s module is allowed (or the user allowed any)."""
    if os.environ.get(ANY_ENV) == "1":
        return
    module = target.split(":")[0] if ":" in target else target.rpartition(".")[0]
    allowed = allowed_modules()
    if not any(module == prefix or module.startswith(prefix + ".") for prefix in allowed):
        top = module.split(".")[0]
        raise PipelineError(
            f"{key}: {target} is outside the modules a recipe may import ({', '.join(allowed)}); "
            f"if you trust it, export {ALLOWED_ENV}={top}"
        )
