"""Reward functions by name: the built-ins, and user rewards given as `package.module:function` or `file.py:function`.

A reward scores generated images: `reward(prompts, images, metadata) -> scores`, one float per image (docs/grpo.md,
"Writing a reward model"). `prompts` are the captions or edit instructions as the user wrote them; `images` are
PIL images, or None where a completion is not a valid image span; `metadata` holds one dict per image with what the
prompt file or dataset gave for that prompt (GenEval clauses, scenes, the edit's source image...).

A built-in is registered as a *factory*: `factory(**options) -> reward`, so a recipe's `options:` (a detector
path, a tolerance) are checked once, when the run starts, and heavy models load once. A user function gets the
recipe's `options` as keyword arguments on every call.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from mmgen.errors import UserError

RewardFn = Callable[[list[str], list[Image.Image | None], list[dict]], Sequence[float]]
RewardFactory = Callable[..., RewardFn]

_FACTORIES: dict[str, RewardFactory] = {}


def register_reward(name: str) -> Callable[[RewardFactory], RewardFactory]:
    """Register a reward factory under `name` (the key a recipe's `rewards: - name:` uses)."""

    def register(factory: RewardFactory) -> RewardFactory:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"a reward named {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return register


def available_rewards() -> list[str]:
    _load_builtins()
    return sorted(_FACTORIES)


def build_reward(spec: str, options: dict[str, Any] | None = None) -> RewardFn:
    """The reward a recipe names: a registered name, `package.module:function` or `path/to/file.py:function`."""
    _load_builtins()
    options = dict(options or {})
    if spec in _FACTORIES:
        factory = _FACTORIES[spec]
        _check_options(factory, options, f"reward {spec!r}")
        return factory(**options)
    if ":" not in spec:
        close = difflib.get_close_matches(spec, list(_FACTORIES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown reward {spec!r}{hint} Built-in rewards: {', '.join(sorted(_FACTORIES))}; "
                        "a user reward is given as 'package.module:function' or 'path/to/file.py:function'")
    function = load_user_function(spec)
    _check_options(function, options, f"reward {spec!r}", skip=("prompts", "images", "metadata"))
    _check_call_shape(function, options, spec)
    return functools.partial(function, **options) if options else function


def _check_call_shape(function: Callable, options: dict, spec: str) -> None:
    """A user reward must take (prompts, images, metadata) plus its options: checked at start-up (and by
    `--dry-run`), not at the first rollout."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins and C functions have none: let the call decide
        return
    try:
        signature.bind(["a prompt"], [None], [{}], **options)
    except TypeError as err:
        raise UserError(f"reward {spec!r} is defined as {function.__name__}{signature}, but a reward is called as "
                        f"fn(prompts, images, metadata, **options) ({err}); see docs/grpo.md, 'Writing a reward model'"
                        ) from None


def load_user_function(spec: str) -> Callable:
    """Import `module:function` or `file.py:function` (a path relative to the working directory)."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise UserError(f"reward {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'")
    if target.endswith(".py"):
        module = _import_file(Path(target), spec)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise UserError(f"reward {spec!r}: cannot import module {target!r} ({err}); is it installed or on "
                            "PYTHONPATH? A file is given as 'path/to/file.py:function'") from None
    function = getattr(module, name, None)
    if not callable(function):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise UserError(f"reward {spec!r}: {target} has no function {name!r} (it defines: "
                        f"{', '.join(sorted(found)) or 'nothing callable'})")
    return function


def _import_file(path: Path, spec: str):
    if not path.is_file():
        raise UserError(f"reward {spec!r}: no such file {path}")
    module_name = f"mmgen_user_reward_{abs(hash(str(path.resolve())))}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise UserError(f"reward {spec!r}: importing {path} failed: {type(err).__name__}: {err}") from err
    return module


def _check_options(function: Callable, options: dict, what: str, skip: tuple[str, ...] = ()) -> None:
    """Unknown options fail at start-up with the accepted names, not mid-run."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [name for name in parameters if name not in skip]
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise UserError(f"{what}: unknown option(s) {', '.join(map(repr, unknown))}; it accepts "
                        f"{', '.join(accepted) or 'no options'}")


@functools.cache
def _load_builtins() -> None:
    # Importing the modules runs their @register_reward decorators.
    from mmgen.rewards import clip_score, edit, format_reward, geneval  # noqa: F401
