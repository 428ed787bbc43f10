"""The README documents every hook with its exact signature."""

import inspect
from pathlib import Path

from hub import hookspecs

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_hook_is_documented_with_its_signature():
    hooks = [(name, fn) for name, fn in vars(hookspecs).items()
             if inspect.isfunction(fn) and hasattr(fn, "omnihub_spec")]
    assert hooks
    for name, fn in hooks:
        args = ", ".join(inspect.signature(fn).parameters)
        assert f"`{name}({args})`" in README, f"hook {name} is not documented in README.md"
