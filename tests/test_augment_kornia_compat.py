"""kornia internals are reached only through unimlip_kit.augment._kornia_compat, behind a version check."""

from __future__ import annotations

import re
from pathlib import Path

import kornia
import pytest

import unimlip_kit.augment as augment
from unimlip_kit.augment import _kornia_compat as compat

AUGMENT_DIR = Path(augment.__file__).parent
# kornia names that are private (leading underscore) or moved between releases; only the compat module may use them.
PRIVATE = re.compile(
    r"_commit_state|_process_kwargs_to_params_and_flags|_transform_output_shape|_transform_matrix\b|_lazy_matrix_args"
    r"|\.transform_tensor\(|\.validate_tensor\(|kornia\.core\.utils|kornia\.utils\.helpers|from kornia[\w.]* import[^\n]*is_autocast_enabled"
    r"|from kornia[\w.]* import[^\n]*\b_[a-z]"
)


def test_no_kornia_internal_outside_the_compat_module() -> None:
    offenders = []
    for path in sorted(AUGMENT_DIR.glob("*.py")):
        if path.name == "_kornia_compat.py":
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if PRIVATE.search(code) and "_kornia_compat" not in code:
                offenders.append(f"{path.name}:{lineno}: {line.strip()}")
    assert not offenders, "kornia internals used outside _kornia_compat.py:\n" + "\n".join(offenders)


def test_installed_kornia_meets_the_floor() -> None:
    assert compat.parse_version(kornia.__version__) >= compat.parse_version(compat.MIN_KORNIA)


@pytest.mark.parametrize("old", ["0.8.3", "0.7.3", "0.6.12"])
def test_an_older_kornia_is_named_with_the_required_version(old: str) -> None:
    with pytest.raises(ImportError) as err:
        compat.check_kornia_version(old)
    msg = str(err.value)
    assert f"kornia {old} is installed" in msg and f"kornia>={compat.MIN_KORNIA}" in msg


def test_pre_releases_of_the_floor_pass_the_check() -> None:
    compat.check_kornia_version(compat.MIN_KORNIA + "rc1")
    compat.check_kornia_version("1.0.0")
