"""Our composites and flip inside kornia's AugmentationSequential: masks, boxes and keypoints follow the
geometry, params= replays, inverse() inverts, and impossible combinations raise.

References are independent of our code: kornia's own warp (``kornia.geometry.transform.warp_affine``) applied
with the matrices kornia records on each child, kornia's own ``RandomHorizontalFlip`` in its own container, and
the physical position of a bright dot / a filled rectangle in the transformed image.
"""

from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch
from kornia.geometry.transform import warp_affine
from torch import nn

from unimlip_kit.augment import (
    ConservativeResizedCrop,
    GentleElastic,
    LateralityAwareFlip,
    MedicalCompose,
    RandomGamma,
    RandomGaussianNoise,
    SmallAffine,
    preset,
)

B, H, W = 4, 40, 36


def _rect(b: int = B, h: int = H, w: int = W) -> torch.Tensor:
    x = torch.zeros(b, 1, h, w)
    x[..., 9:27, 8:25] = 1.0
    return x


def _dot(cx: float, cy: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    return torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 1.5**2)).expand(B, 1, H, W).contiguous()


def _geometry_matrix(compose: MedicalCompose) -> torch.Tensor:
    """Product of the matrices kornia recorded on each geometric child during the last call."""
    total = torch.eye(3).repeat(B, 1, 1)
    for t in compose.transforms:
        if isinstance(t, (ConservativeResizedCrop, SmallAffine)):
            total = t.transform_matrix.double().float() @ total
    return total


@pytest.mark.parametrize("size", [None, (32, 30)])
@pytest.mark.parametrize("modality", ["xray", "ct", "mri", "ultrasound", "generic"])
def test_preset_mask_follows_the_image_geometry_inside_augmentation_sequential(modality: str, size) -> None:
    comp = preset(modality, "medium", size=size, generator=11)
    aug = K.AugmentationSequential(comp, data_keys=["input", "mask"])
    mask = _rect()
    image = mask * 3071.0 if modality == "ct" else mask
    out, m = aug(image, mask)
    oh, ow = size if size is not None else (H, W)
    assert out.shape == m.shape == (B, 1, oh, ow)
    # reference: kornia's own warp of the mask with kornia's recorded matrices (crop then affine), nearest
    ref = warp_affine(mask, _geometry_matrix(comp)[:, :2], (oh, ow), mode="nearest", padding_mode="border", align_corners=True)
    assert float((m != ref).float().mean()) < 2e-3  # float rounding of the sampling grid at exact half-pixels
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    # replay through the container is identical, and equals a direct call with the same draw
    out2, m2 = aug(image, mask, params=aug._params)
    assert torch.equal(out, out2) and torch.equal(m, m2)
    assert torch.equal(comp(image, params=aug._params[0].data), out)


def test_fused_geometry_keeps_image_and_mask_aligned() -> None:
    """Geometry only: the bilinear image thresholded at 0.5 equals the nearest-neighbour mask away from edges."""
    comp = MedicalCompose(ConservativeResizedCrop(size=(32, 30)), SmallAffine(degrees=15.0, p=1.0), generator=5)
    aug = K.AugmentationSequential(comp, data_keys=["input", "mask"])
    mask = _rect()
    out, m = aug(mask.clone(), mask)
    disagree = (out > 0.5).float() != m
    edge = (out > 0.02) & (out < 0.98)  # pixels the bilinear image puts on the boundary
    assert not bool((disagree & ~edge).any())
    assert float(disagree.float().mean()) < 0.02


def test_keypoints_and_boxes_follow_the_geometry_and_invert() -> None:
    comp = MedicalCompose(ConservativeResizedCrop(size=(32, 30)), SmallAffine(degrees=15.0, p=1.0), RandomGamma(p=1.0), generator=3)
    aug = K.AugmentationSequential(comp, data_keys=["input", "keypoints", "bbox_xyxy", "mask"])
    kp = torch.tensor([[12.0, 15.0]]).repeat(B, 1, 1)
    box = torch.tensor([[[8.0, 9.0, 24.0, 26.0]]]).repeat(B, 1, 1)
    image = _dot(12.0, 15.0)
    rect = _rect()
    out, k, b, m = aug(image, kp, box, rect)
    # the dot lands where the keypoint says (intensity ops do not move it; gamma keeps the argmax)
    flat = out.flatten(1).argmax(1)
    peak = torch.stack([flat % out.shape[-1], flat // out.shape[-1]], 1).float()
    assert float((peak - k[:, 0]).abs().max()) <= 1.0
    # the box encloses the warped rectangle (kornia encloses rotated corners: never smaller, at most a little larger)
    ys, xs = torch.meshgrid(torch.arange(m.shape[-2]).float(), torch.arange(m.shape[-1]).float(), indexing="ij")
    for i in range(B):
        on = m[i, 0] > 0.5
        x0, x1, y0, y1 = xs[on].min(), xs[on].max(), ys[on].min(), ys[on].max()
        bx0, by0, bx1, by1 = b[i, 0].tolist()
        assert bx0 <= x0 + 1 and by0 <= y0 + 1 and bx1 >= x1 - 1 and by1 >= y1 - 1
        assert (bx1 - bx0) <= (x1 - x0) + 8 and (by1 - by0) <= (y1 - y0) + 8
    img_inv, k_inv, b_inv, m_inv = aug.inverse(out, k, b, m)
    torch.testing.assert_close(k_inv, kp, atol=1e-3, rtol=0)
    assert img_inv.shape == image.shape and m_inv.shape == rect.shape
    # inverse(forward(mask)) == mask inside the region the forward kept (away from the crop edge)
    inner = torch.zeros_like(rect, dtype=torch.bool)
    inner[..., 12:24, 11:22] = True
    assert torch.equal(m_inv[inner], rect[inner])


def test_inverse_of_a_geometric_compose_recovers_the_image_on_the_valid_region() -> None:
    comp = MedicalCompose(ConservativeResizedCrop(scale=(0.8, 0.9)), SmallAffine(degrees=8.0, p=1.0), generator=9)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    x = (0.5 + 0.4 * torch.sin(3 * xx) * torch.cos(2 * yy)).expand(B, 1, H, W).contiguous()
    y = comp(x)
    back = comp.inverse(y)
    valid = comp.inverse(torch.ones_like(y)) > 0.999  # pixels whose inverse comes from inside the output
    valid[..., :2, :] = valid[..., -2:, :] = False
    assert float(valid.float().mean()) > 0.4
    assert float((back - x)[valid].abs().max()) < 0.03  # two bilinear resamplings of a smooth image


def test_conservative_resized_crop_inverse_like_kornia_resized_crop() -> None:
    """inverse(crop(x)) == x inside the crop rectangle and 0 outside, as kornia's RandomResizedCrop inverts."""
    x = torch.rand(B, 1, H, W)
    for crop in (ConservativeResizedCrop(size=(20, 18), generator=0), K.RandomResizedCrop((20, 18), scale=(0.7, 1.0), p=1.0)):
        y = crop(x)
        back = crop.inverse(y)
        assert back.shape == x.shape
        support = crop.inverse(torch.ones_like(y)) > 0.999
        assert bool((back[~(crop.inverse(torch.ones_like(y)) > 0)] == 0).all())
        assert float(support.float().mean()) > 0.5
    # ours: an upsampled crop inverts to the original exactly up to bilinear interpolation error of a smooth image
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    smooth = (0.5 + 0.4 * torch.sin(4 * xx + 1) * torch.cos(3 * yy)).expand(B, 1, H, W).contiguous()
    crop = ConservativeResizedCrop(size=(2 * H, 2 * W), generator=1)
    back = crop.inverse(crop(smooth))
    inside = crop.inverse(torch.ones(B, 1, 2 * H, 2 * W)) > 0.999
    assert float((back - smooth)[inside].abs().max()) < 0.01


def test_crop_inside_a_kornia_container_with_masks_boxes_and_a_skipping_gate() -> None:
    crop = ConservativeResizedCrop(size=(20, 18), p=0.5, generator=4)
    aug = K.AugmentationSequential(crop, K.RandomAffine(0.0, p=1.0), data_keys=["input", "mask", "bbox_xyxy"])
    rect = _rect()
    box = torch.tensor([[[8.0, 9.0, 24.0, 26.0]]]).repeat(B, 1, 1)
    params = aug.forward_parameters(rect.shape)
    params[0].data["batch_prob"] = torch.tensor([1.0, 0.0, 1.0, 0.0])  # two samples only resized
    out, m, b = aug(rect.clone(), rect, box, params=params)
    assert out.shape == m.shape == (B, 1, 20, 18)
    assert float(((out > 0.5).float() != m).float().mean()) < 0.05
    # a skipped sample is a pure resize: its box scales by (W'-1)/(W-1), (H'-1)/(H-1)
    sx, sy = 17 / 35, 19 / 39
    torch.testing.assert_close(b[1, 0], torch.tensor([8 * sx, 9 * sy, 24 * sx, 26 * sy]), atol=1e-4, rtol=0)


def test_laterality_flip_matches_kornia_horizontal_flip_on_every_data_key() -> None:
    flip = LateralityAwareFlip(p=0.5, mode="allow", generator=2)
    ours = K.AugmentationSequential(flip, data_keys=["input", "mask", "bbox_xyxy", "keypoints"])
    rect = _rect()
    x = torch.rand(B, 1, H, W)
    box = torch.tensor([[[8.0, 9.0, 24.0, 26.0]]]).repeat(B, 1, 1)
    kp = torch.tensor([[3.0, 5.0]]).repeat(B, 1, 1)
    out = ours(x, rect, box, kp)
    gate = flip.flipped()
    assert 0 < int(gate.sum()) < B
    ref_flip = K.RandomHorizontalFlip(p=0.5)
    ref = K.AugmentationSequential(ref_flip, data_keys=["input", "mask", "bbox_xyxy", "keypoints"])
    rp = ref.forward_parameters(x.shape)
    rp[0].data["batch_prob"] = gate.float()
    expected = ref(x, rect, box, kp, params=rp)
    for a, e in zip(out, expected):
        torch.testing.assert_close(a, e, atol=1e-6, rtol=0)
    again = ours(x, rect, box, kp, params=ours._params)
    for a, e in zip(out, again):
        assert torch.equal(a, e)
    for a, e in zip(ours.inverse(*out), (x, rect, box, kp)):
        torch.testing.assert_close(a, e, atol=1e-6, rtol=0)


def test_flip_in_a_container_needs_the_captions_in_swap_mode() -> None:
    flip = LateralityAwareFlip(p=1.0, generator=0)
    aug = K.AugmentationSequential(flip, SmallAffine(p=1.0, generator=1), data_keys=["input", "mask"])
    x = _rect(3)
    with pytest.raises(RuntimeError, match="bind_captions"):
        aug(x, x)
    caps = ["left effusion", "dilated left ventricle", "no finding"]
    flip.bind_captions(caps)
    out, m = aug(x, x)
    assert flip.flipped().tolist() == [True, False, True]  # the heart caption is held back
    assert flip.swapped_captions() == ["right effusion", "dilated left ventricle", "no finding"]
    assert float(((out > 0.5).float() != m).float().mean()) < 0.05
    with pytest.raises(RuntimeError, match="bind_captions"):  # one binding serves one call
        aug(x, x)
    with pytest.raises(ValueError, match="2 entries but the batch has 3"):
        flip.bind_captions(caps[:2])
        aug(x, x)


def test_direct_flip_inverse_and_mask_replay() -> None:
    flip = LateralityAwareFlip(p=0.5, generator=3)
    x = torch.rand(6, 1, 8, 8)
    y, _ = flip(x, ["left"] * 6)
    assert torch.equal(flip.inverse(y), x)
    m, _ = flip(x > 0.5, params=flip._params)
    assert torch.equal(m, y > 0.5)


@pytest.mark.parametrize("keys", [["input", "bbox_xyxy"], ["input", "keypoints"]])
def test_non_affine_children_refuse_boxes_and_keypoints(keys) -> None:
    aug = K.AugmentationSequential(MedicalCompose(SmallAffine(p=1.0), GentleElastic(p=1.0), generator=0), data_keys=keys)
    other = torch.tensor([[[8.0, 9.0, 24.0, 26.0]]]).repeat(B, 1, 1) if keys[1] == "bbox_xyxy" else torch.rand(B, 3, 2) * 30
    with pytest.raises(NotImplementedError, match="GentleElastic"):
        aug(torch.rand(B, 1, H, W), other)


def test_elastic_masks_follow_but_cannot_be_inverted() -> None:
    aug = K.AugmentationSequential(MedicalCompose(GentleElastic(alpha=2.0, p=1.0), generator=0), data_keys=["input", "mask"])
    rect = _rect()
    out, m = aug(rect.clone(), rect)
    assert float(((out > 0.5).float() != m).float().mean()) < 0.03
    with pytest.raises(NotImplementedError, match="GentleElastic"):
        aug.inverse(out, m)


def test_plain_module_children_refuse_masks_and_noise_is_left_alone() -> None:
    aug = K.AugmentationSequential(MedicalCompose(nn.Identity()), data_keys=["input", "mask"])
    with pytest.raises(NotImplementedError, match="plain nn.Module"):
        aug(torch.rand(B, 1, H, W), _rect())
    noisy = K.AugmentationSequential(MedicalCompose(RandomGaussianNoise(p=1.0), generator=0), data_keys=["input", "mask"])
    rect = _rect()
    out, m = noisy(rect.clone(), rect)
    assert torch.equal(m, rect) and not torch.equal(out, rect)


def test_replay_params_from_a_plain_list_and_bad_params() -> None:
    comp = preset("xray", "medium", generator=0)
    x = torch.rand(2, 1, 24, 24)
    y = comp(x)
    legacy = [item.data for item in comp._params]  # a list of child dicts still replays
    assert torch.equal(comp(x, params=legacy), y)
    with pytest.raises(ValueError, match="entries for"):
        comp(x, params=legacy[:2])
    with pytest.raises(ValueError, match="no parameters"):
        preset("xray").inverse(x)
