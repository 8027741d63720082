"""`StrictModel`: the one pydantic base of every mmtok config and file schema.

``extra="forbid"`` everywhere, so a typo in a YAML or JSON file is an error naming the key, never a
silently ignored setting. `problems` turns a `ValidationError` into one line per problem.
"""

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["StrictModel", "problems"]


class StrictModel(BaseModel):
    """Base of every config / schema: unknown keys are errors. Subclasses may add to
    ``model_config`` (e.g. ``ConfigDict(frozen=True)``); pydantic merges it with this one."""

    model_config = ConfigDict(extra="forbid")


def problems(err: ValidationError) -> list[str]:
    """``"<dotted.location>: <message>"`` for each problem of a pydantic `ValidationError`."""
    return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
