"""Helpers that exist once and are reused: validation, seeding, config, IO, optional deps."""

from unimlip_kit.utils.checks import as_scale_tensor, check_embeddings, check_finite, check_paired, check_positive
from unimlip_kit.utils.config import apply_overrides, config_from_dict, config_to_dict, load_config, save_config
from unimlip_kit.utils.io import atomic_write, load_json, run_metadata, save_json
from unimlip_kit.utils.optional import is_available, require
from unimlip_kit.utils.seeding import derive_seed, make_generator, seed_everything, seed_worker

__all__ = [
    "apply_overrides",
    "as_scale_tensor",
    "atomic_write",
    "check_embeddings",
    "check_finite",
    "check_paired",
    "check_positive",
    "config_from_dict",
    "config_to_dict",
    "derive_seed",
    "is_available",
    "load_config",
    "load_json",
    "make_generator",
    "require",
    "run_metadata",
    "save_config",
    "save_json",
    "seed_everything",
    "seed_worker",
]
