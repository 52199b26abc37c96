r"""Zero-shot classification from class prompts (CLIP, Radford et al. 2021, arXiv 2103.00020, §3.1.4).

Each class ``c`` becomes the prompts ``template.format(name_c)`` for every template;
their text embeddings are L2-normalised, averaged and normalised again (CLIP's
prompt ensembling) into the class weight :math:`w_c`. An image with embedding
:math:`\hat a` is assigned :math:`\arg\max_c \hat a \cdot w_c`.
"""

from __future__ import annotations

import string
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from unimlip_kit.eval.classification import classification_metrics
from unimlip_kit.utils.checks import check_embeddings

__all__ = ["DEFAULT_TEMPLATES", "prompt_ensemble", "zero_shot_classifier", "zero_shot_evaluate", "zero_shot_logits"]

#: Radiology-style prompt templates (``{}`` is replaced by the class name).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "an image of {}",
    "a radiology image showing {}",
    "a medical scan with {}",
    "this study shows {}",
)


def prompt_ensemble(encode_text: Callable[[list[str]], torch.Tensor], class_prompts: Sequence[Sequence[str]]) -> torch.Tensor:
    """(C, D) unit class weights from any number of prompts per class (normalise, average, normalise).

    Use it when prompts are not a template grid, e.g. several realistic captions per class.
    ``encode_text`` is called once with all prompts.

    Example:
        >>> table = {"x": [1.0, 0.0], "y": [0.0, 2.0], "z": [0.0, 1.0]}
        >>> prompt_ensemble(lambda xs: torch.tensor([table[p] for p in xs]), [["x", "y"], ["z"]])
        tensor([[0.7071, 0.7071],
                [0.0000, 1.0000]])
    """
    groups = [list(p) for p in class_prompts]
    if not groups or any(not g for g in groups):
        raise ValueError("class_prompts must give at least one prompt for every class")
    flat = [p for g in groups for p in g]
    emb = encode_text(flat)
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != len(flat):
        got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise ValueError(f"encode_text must return a ({len(flat)}, D) tensor for {len(flat)} prompts, got {got}")
    bad = (~torch.isfinite(emb)).flatten(1).any(1) if emb.is_floating_point() else torch.zeros(len(flat), dtype=torch.bool)
    if bool(bad.any()):
        which = [flat[i] for i in bad.nonzero().flatten().tolist()[:3]]
        raise ValueError(f"encode_text returned NaN or infinite embeddings for {int(bad.sum())} prompts, e.g. {which}")
    emb = F.normalize(emb.float(), dim=-1)
    owner = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor([len(g) for g in groups])).to(emb.device)
    sums = torch.zeros(len(groups), emb.shape[1], dtype=emb.dtype, device=emb.device).index_add_(0, owner, emb)
    return F.normalize(sums, dim=-1)  # normalising the sum == normalising the mean


def zero_shot_classifier(
    encode_text: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> torch.Tensor:
    """(C, D) unit class weights: the normalised mean of each class's normalised prompt embeddings.

    ``encode_text`` maps a list of strings to an (n, D) tensor (e.g. tokenizer +
    :meth:`UniMlipModel.encode_text`); it is called once with all C·T prompts.

    Example:
        >>> table = {"a": [1.0, 0.0], "an image of a": [1.0, 0.2], "b": [0.0, 1.0], "an image of b": [0.0, 1.0]}
        >>> w = zero_shot_classifier(lambda xs: torch.tensor([table[x] for x in xs]), ["a", "b"], ["{}", "an image of {}"])
        >>> w.shape, bool(torch.allclose(w.norm(dim=1), torch.ones(2)))
        (torch.Size([2, 2]), True)
    """
    names, temps = list(class_names), list(templates)
    if not names:
        raise ValueError("class_names is empty")
    if isinstance(templates, str) or not temps:
        raise ValueError(f"templates must be a non-empty list of strings with one '{{}}' slot, got {templates!r}")
    for t in temps:
        try:
            slots = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        except (ValueError, TypeError) as err:
            raise ValueError(f"templates must be format strings with one '{{}}' slot; {t!r} is not ({err})") from None
        if slots not in ([""], ["0"]):
            raise ValueError(f"templates must each contain exactly one '{{}}' slot (for the class name); {t!r} has {slots}")
    return prompt_ensemble(encode_text, [[t.format(n) for t in temps] for n in names])


def zero_shot_logits(image_emb: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """(N, C) cosine similarities between normalised image embeddings and class weights.

    Example:
        >>> zero_shot_logits(torch.tensor([[2.0, 0.0]]), torch.eye(2)).tolist()
        [[1.0, 0.0]]
    """
    check_embeddings(image_emb, "image_emb")
    check_embeddings(classifier, "classifier")
    if image_emb.shape[1] != classifier.shape[1]:
        raise ValueError(
            f"image_emb and classifier must share D, got shapes {tuple(image_emb.shape)} and {tuple(classifier.shape)}"
        )
    return F.normalize(image_emb.float(), dim=-1) @ classifier.to(image_emb.device).float().T


def zero_shot_evaluate(image_emb: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor) -> dict[str, float]:
    """Zero-shot accuracy and balanced accuracy of ``argmax`` over :func:`zero_shot_logits`.

    Example:
        >>> zero_shot_evaluate(torch.tensor([[1.0, 0.1], [0.2, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]), torch.eye(2))
        {'accuracy': 0.6666666666666666, 'balanced_accuracy': 0.75, 'n': 3}
    """
    pred = zero_shot_logits(image_emb, classifier).argmax(1).cpu()
    return classification_metrics(pred, torch.as_tensor(labels).cpu(), classifier.shape[0])
