"""YAML recipes, one folder per stage. Installed as `mmgen.recipes`, so `mmgen demo` finds them anywhere."""

from pathlib import Path

RECIPES_DIR = Path(__file__).parent


def recipe_path(name: str) -> Path:
    """The shipped recipe `name`, e.g. "tokenizer/shapes-vq.yaml"."""
    path = RECIPES_DIR / name
    if not path.is_file():
        shipped = sorted(str(p.relative_to(RECIPES_DIR)) for p in RECIPES_DIR.rglob("*.yaml"))
        raise FileNotFoundError(f"no shipped recipe {name!r}; shipped recipes: {', '.join(shipped)}")
    return path
