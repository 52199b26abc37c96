"""The README's Python examples run as written, and its two commands exist in the Makefile."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code):
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})


def test_readme_commands_are_make_targets():
    text = README.read_text(encoding="utf-8")
    makefile = (README.parent / "Makefile").read_text(encoding="utf-8")
    for target in ("run", "test"):
        assert f"make {target}" in text
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"Makefile has no '{target}' target"
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci


def _recipe_commands() -> list[tuple[str, list[str]]]:
    """Every ``python recipes/<name>.py ...`` line of the README's bash blocks, continuations joined, comments cut."""
    import shlex

    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for i, w in enumerate(words):
                m = re.fullmatch(r"recipes/(\w+)\.py", w)
                if m:
                    out.append((m.group(1), words[i + 1:]))
                    break
    return out


COMMANDS = _recipe_commands()


@pytest.mark.parametrize("recipe,argv", COMMANDS, ids=[f"{r}:{' '.join(a)[:60]}" for r, a in COMMANDS])
def test_readme_recipe_commands_parse_and_name_real_keys(recipe, argv):
    """Each README command's flags exist and its key=value overrides are keys of the recipe's config, typed."""
    import dataclasses
    import importlib

    from unimlip_kit.train import parse_recipe_args
    from unimlip_kit.utils import load_config

    module = importlib.import_module(f"recipes.{recipe}")
    extra = getattr(module, "RESUME", ())
    p = parse_recipe_args(recipe, argv, extra=extra)
    cls = {"uni_mlip_roco": "RecipeConfig", "evaluate": "EvaluateConfig", "finetune_vqa": "FinetuneVQAConfig",
           "ablation": "AblationConfig"}[recipe]
    config_cls = getattr(module, cls, None)
    if config_cls is None:
        from unimlip_kit import train

        config_cls = getattr(train, cls)
    assert dataclasses.is_dataclass(config_cls)
    config = p.config if p.config and (README.parent / p.config).is_file() else None  # my.yaml is the reader's
    load_config(config_cls, str(README.parent / config) if config else None, p.overrides + p.implied)


def test_readme_lists_recipe_commands():
    assert len(COMMANDS) >= 20 and {r for r, _ in COMMANDS} == {"uni_mlip_roco", "evaluate", "finetune_vqa", "ablation"}
