"""Properties and float64 references for unimlip_kit.augment image transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimlip_kit.augment import (
    ConservativeResizedCrop,
    GentleElastic,
    MedicalCompose,
    RandomBiasField,
    RandomBlurSharpen,
    RandomBrightnessContrast,
    RandomCLAHE,
    RandomGamma,
    RandomGaussianNoise,
    RandomHEDJitter,
    RandomRicianNoise,
    RandomSpeckleNoise,
    RandomWindow,
    SmallAffine,
    from_float,
    to_float,
)
from unimlip_kit.augment.bias_field import legendre_basis
from unimlip_kit.augment.stain import RGB_FROM_HED

RANGES = [(0.0, 1.0), (-1024.0, 3071.0), (0.0, 255.0), (-1.0, 1.0)]

# name -> (factory(value_range, p, seed), output range (None: the input's), needs RGB)
FACTORIES = {
    "gamma": (lambda r, p, g: RandomGamma((0.7, 1.4), value_range=r, p=p, generator=g), None, False),
    "bc": (lambda r, p, g: RandomBrightnessContrast(0.2, (0.7, 1.3), value_range=r, p=p, generator=g), None, False),
    "gauss": (lambda r, p, g: RandomGaussianNoise((0.0, 0.1), value_range=r, p=p, generator=g), None, False),
    "rician": (lambda r, p, g: RandomRicianNoise((0.0, 0.1), value_range=r, p=p, generator=g), None, False),
    "speckle": (lambda r, p, g: RandomSpeckleNoise((0.0, 0.3), value_range=r, p=p, generator=g), None, False),
    "bias": (lambda r, p, g: RandomBiasField(0.4, value_range=r, p=p, generator=g), None, False),
    "blur": (lambda r, p, g: RandomBlurSharpen((-1.0, 1.0), value_range=r, p=p, generator=g), None, False),
    "clahe": (lambda r, p, g: RandomCLAHE(value_range=r, p=p, generator=g), None, False),
    "hed": (lambda r, p, g: RandomHEDJitter(0.2, 0.2, value_range=r, p=p, generator=g), None, True),
    "window": (lambda r, p, g: RandomWindow([(sum(r) / 2, (r[1] - r[0]) / 3)], value_range=r, p=p, generator=g), (0.0, 1.0), False),
    "crop": (lambda r, p, g: ConservativeResizedCrop(p=p, generator=g), None, False),
    "affine": (lambda r, p, g: SmallAffine(p=p, generator=g), None, False),
    "elastic": (lambda r, p, g: GentleElastic(sigma=4.0, p=p, generator=g), None, False),
}


def _image(b: int, c: int, h: int, w: int, vr, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo, hi = vr
    return (torch.rand(b, c, h, w, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype)


cases = st.tuples(
    st.sampled_from(sorted(FACTORIES)),
    st.integers(1, 3),  # B
    st.sampled_from([1, 3]),  # C
    st.integers(8, 24),  # H
    st.integers(8, 24),  # W
    st.sampled_from(RANGES),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 2**31 - 1),
)


@settings(max_examples=40, deadline=None)
@given(cases)
def test_shape_dtype_range_seed_and_replay(case):
    name, b, c, h, w, vr, dtype, seed = case
    factory, out_range, rgb = FACTORIES[name]
    if rgb:
        c = 3
    x = _image(b, c, h, w, vr, seed, dtype)
    aug = factory(vr, 0.7, seed)
    y = aug(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    lo, hi = out_range or vr
    tol = 1e-5 * (hi - lo)
    assert float(y.min()) >= lo - tol and float(y.max()) <= hi + tol
    # replayed params -> same output
    assert torch.equal(aug(x, params=aug._params), y)
    # same seed -> same output, with a fresh instance
    assert torch.equal(factory(vr, 0.7, seed)(x), y)


@settings(max_examples=20, deadline=None)
@given(cases)
def test_p_zero_is_identity(case):
    name, b, c, h, w, vr, dtype, seed = case
    factory, out_range, rgb = FACTORIES[name]
    if out_range is not None:  # windowing changes units by design; its p=0 is the default window
        return
    x = _image(b, 3 if rgb else c, h, w, vr, seed, dtype)
    assert torch.equal(factory(vr, 0.0, seed)(x), x)


def test_seeded_transform_leaves_global_rng_alone():
    x = torch.full((2, 1, 8, 8), 0.5)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    RandomGaussianNoise(p=1.0, generator=5)(x)
    assert torch.equal(torch.rand(3), expected)


def test_stream_advances_and_restarts():
    aug = RandomGamma(p=1.0, generator=1)
    x = torch.rand(4, 1, 8, 8)
    a, b = aug(x), aug(x)
    assert not torch.equal(a, b)
    aug.manual_seed(1)
    assert torch.equal(aug(x), a)


def test_unseeded_follows_global_rng():
    x = torch.rand(4, 1, 8, 8)
    torch.manual_seed(7)
    a = RandomGaussianNoise(p=1.0)(x)
    torch.manual_seed(7)
    assert torch.equal(RandomGaussianNoise(p=1.0)(x), a)


def test_workers_get_different_streams(monkeypatch):
    class Info:
        def __init__(self, i, seed):
            self.id, self.seed = i, seed

    x = torch.full((2, 1, 8, 8), 0.5)
    outs = []
    for wid, seed in ((0, 100), (1, 101), (0, 555), (0, 100)):  # two workers, then a new epoch's worker 0
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda wid=wid, seed=seed: Info(wid, seed))
        outs.append(RandomGaussianNoise(p=1.0, generator=3)(x))
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    assert torch.equal(outs[0], outs[3])  # same worker seed -> same stream (reproducible runs)


def test_gamma_and_window_match_float64_formula():
    vr = (0.0, 4095.0)
    x = _image(3, 1, 6, 6, vr, 0, torch.float64)
    aug = RandomGamma((0.5, 2.0), value_range=vr, p=1.0, generator=0)
    y = aug(x)
    g = aug._params["log_gamma"].double().exp().view(-1, 1, 1, 1)
    torch.testing.assert_close(y, 4095.0 * (x / 4095.0) ** g)

    hu = _image(3, 1, 6, 6, (-1024.0, 3071.0), 1, torch.float64)
    win = RandomWindow([(40.0, 400.0), (-600.0, 1500.0)], 0.1, 0.2, p=1.0, generator=0)
    out = win(hu)
    p = win._params
    base = torch.tensor([(40.0, 400.0), (-600.0, 1500.0)], dtype=torch.float64)[p["window"]]
    c = base[:, 0] + p["centre_u"].double() * 0.1 * base[:, 1]
    w = base[:, 1] * 1.2 ** p["width_u"].double()
    for i in range(3):
        ref = np.clip((hu[i].numpy() - (c[i].item() - w[i].item() / 2)) / w[i].item(), 0, 1)
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-9)


def test_window_skipped_samples_still_in_unit_range():
    hu = _image(8, 1, 4, 4, (-1024.0, 3071.0), 2)
    y = RandomWindow(p=0.5, generator=0)(hu)
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_brightness_contrast_and_noise_references():
    vr = (-1.0, 1.0)
    x = _image(2, 1, 5, 5, vr, 3, torch.float64)
    aug = RandomBrightnessContrast(0.2, (0.5, 1.5), value_range=vr, p=1.0, generator=0)
    y = aug(x)
    u = (x + 1) / 2
    m = u.mean(dim=(1, 2, 3), keepdim=True)
    ref = ((u - m) * aug._params["contrast"].double().view(-1, 1, 1, 1) + m + aug._params["brightness"].double().view(-1, 1, 1, 1)).clamp(0, 1) * 2 - 1
    torch.testing.assert_close(y, ref)

    x = torch.full((2, 3, 16, 16), 0.5, dtype=torch.float64)
    noise = RandomGaussianNoise((0.01, 0.02), p=1.0, generator=0)
    y = noise(x)
    fields = torch.stack(
        [torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in noise._params["noise_seed"]]
    )
    ref = 0.5 + noise._params["sigma"].double().view(-1, 1, 1, 1) * fields
    torch.testing.assert_close(y, ref.clamp(0, 1).expand_as(y))
    assert torch.equal(y[:, 0], y[:, 1])  # one field for all channels


def test_bias_basis_matches_numpy_legendre():
    basis = legendre_basis(7, 5, 3).numpy()
    ys, xs = np.linspace(-1, 1, 7), np.linspace(-1, 1, 5)
    k = 0
    for i in range(4):
        for j in range(4 - i):
            ref = np.outer(np.polynomial.legendre.Legendre.basis(i)(ys), np.polynomial.legendre.Legendre.basis(j)(xs))
            np.testing.assert_allclose(basis[k], ref, atol=1e-12)
            k += 1


def test_hed_matches_per_pixel_reference():
    x = _image(2, 3, 3, 4, (0.05, 1.0), 4, torch.float64)
    aug = RandomHEDJitter(0.3, 0.1, p=1.0, generator=0)
    y = aug(x)
    m = RGB_FROM_HED.numpy()
    minv = np.linalg.inv(m)
    a, b = aug._params["alpha"].double().numpy(), aug._params["beta"].double().numpy()
    for n in range(2):
        for i in range(3):
            for j in range(4):
                od = -np.log(x[n, :, i, j].numpy())
                s = od @ minv
                ref = np.clip(np.exp(-((a[n] * s + b[n]) @ m)), 0, 1)
                np.testing.assert_allclose(y[n, :, i, j].numpy(), ref, atol=1e-9)
    assert not torch.allclose(y, x)


def test_blur_sharpen_matches_kornia_blur_reference():
    from kornia.filters import gaussian_blur2d

    x = _image(3, 1, 12, 10, (0.0, 1.0), 5, torch.float64)
    aug = RandomBlurSharpen((-1.0, 1.0), sigma=1.5, p=1.0, generator=0)
    y = aug(x)
    k = aug.flags["kernel_size"]
    blurred = gaussian_blur2d(x, (k, k), (1.5, 1.5), border_type="reflect")
    s = aug._params["amount"].double().view(-1, 1, 1, 1)
    torch.testing.assert_close(y, (x + s * (x - blurred)).clamp(0, 1))


def test_crop_keeps_at_least_scale_of_the_image():
    # a ramp image: the crop's horizontal extent is readable from the output's value span
    w = 101
    ramp = torch.linspace(0, 1, w).expand(1, 1, 101, w).repeat(16, 1, 1, 1)
    y = ConservativeResizedCrop(scale=(0.7, 1.0), ratio=(1.0, 1.0), generator=0)(ramp)
    span = y.amax(dim=(1, 2, 3)) - y.amin(dim=(1, 2, 3))
    assert float(span.min()) >= math.sqrt(0.7) - 1e-3


def test_crop_replays_onto_a_mask():
    x = torch.rand(4, 1, 20, 20)
    mask = (x > 0.5).float()
    aug = ConservativeResizedCrop(mode="nearest", generator=0)
    y = aug(x)
    m = aug(mask, params=aug._params)
    torch.testing.assert_close((y > 0.5).float(), m)


def test_grey_never_gets_colour_ops():
    compose = MedicalCompose(RandomGamma(p=1.0), RandomHEDJitter(p=1.0))
    with pytest.raises(ValueError, match="grey images"):
        compose(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="needs RGB"):
        RandomHEDJitter(p=1.0)(torch.rand(2, 1, 8, 8))


def test_integer_round_trip_is_lossless():
    for dtype, top in ((torch.uint8, 255), (torch.uint16, 65535)):
        x = torch.arange(top + 1).to(dtype)
        assert torch.equal(from_float(to_float(x), dtype), x)
        y = to_float(x, (-1024.0, 3071.0), torch.float64)
        assert torch.equal(from_float(y, dtype, (-1024.0, 3071.0)), x)


def test_uint16_input_through_compose_equals_float_input():
    g = torch.Generator().manual_seed(0)
    x16 = torch.randint(0, 65536, (3, 1, 16, 16), generator=g).to(torch.uint16)
    make = lambda: MedicalCompose(SmallAffine(p=1.0), RandomGamma(p=1.0), RandomGaussianNoise(p=1.0), generator=4)
    assert torch.equal(make()(x16), make()(x16.float() / 65535))
    identity = MedicalCompose(RandomGamma(p=0.0))
    assert torch.equal(from_float(identity(x16), torch.uint16), x16)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(2, 2, 8, 8), "1 \\(grey\\) or 3 \\(RGB\\)"),
        (torch.rand(8, 8), "4-D"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.int16), "floating point, uint8 or uint16"),
        (torch.rand(2, 1, 8, 8) * 2, "outside value_range"),
    ],
)
def test_compose_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        MedicalCompose(RandomGamma())(bad)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        RandomGamma(value_range=(1.0, 0.0))
    with pytest.raises(ValueError):
        ConservativeResizedCrop(scale=(0.5, 1.2))
    with pytest.raises(TypeError):
        RandomGamma(generator="seed")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_params():
    x = torch.rand(4, 1, 16, 16)
    cpu = RandomGaussianNoise(p=1.0, generator=0)
    gpu = RandomGaussianNoise(p=1.0, generator=0)
    y = cpu(x)
    yg = gpu(x.cuda())
    torch.testing.assert_close(yg.cpu(), y)


class _AugDataset(torch.utils.data.Dataset):
    def __init__(self):
        self.aug = RandomGaussianNoise(p=1.0, generator=11)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.aug(torch.full((1, 1, 4, 4), 0.5))[0]


def test_real_dataloader_workers_differ_and_runs_reproduce():
    def run():
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(_AugDataset(), batch_size=1, num_workers=2)
        return [b[0] for b in loader]

    a, b = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])  # items 0 and 1 come from different workers, same call index


def test_works_inside_kornia_augmentation_sequential_with_masks():
    import kornia.augmentation as K

    seq = K.AugmentationSequential(
        ConservativeResizedCrop(generator=0), SmallAffine(p=1.0, generator=1), RandomGamma(p=1.0, generator=2),
        data_keys=["input", "mask"],
    )
    x = torch.rand(3, 1, 16, 16)
    labels = (torch.rand(3, 1, 16, 16) > 0.5).float()
    y, m = seq(x, labels)
    assert y.shape == x.shape and m.shape == labels.shape
    assert set(m.unique().tolist()) <= {0.0, 1.0}  # masks are resampled with nearest


def test_fused_geometry_matches_sequential_warps():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 40), indexing="ij")
    smooth = (0.5 + 0.25 * torch.sin(6 * xx) * torch.cos(4 * yy)).expand(6, 1, 48, 40).contiguous()
    fused = MedicalCompose(ConservativeResizedCrop(size=(32, 36)), SmallAffine(p=0.5), RandomGamma(p=0.5), generator=0)
    y = fused(smooth)
    assert y.shape == (6, 1, 32, 36)
    sequential = MedicalCompose(*fused.transforms, fuse_geometry=False)
    y_seq = sequential(smooth, params=fused._params)
    # one interpolation vs two, and align_corners of kornia's RandomAffine: close, not equal
    assert float((y - y_seq)[..., 3:-3, 3:-3].abs().max()) < 0.03
    assert torch.equal(fused(smooth, params=fused._params), y)


@pytest.mark.parametrize("size, dsize", [((37, 51), (20, 33)), ((64, 64), (96, 80)), ((9, 9), (9, 9))])
def test_warp_affine_batched_matches_kornia(size, dsize):
    from kornia.geometry.transform import warp_affine

    from unimlip_kit.augment.warp import warp_affine_batched

    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, *size, generator=g)
    m = torch.eye(3).repeat(5, 1, 1) + 0.1 * torch.randn(5, 3, 3, generator=g)
    m[:, 2] = torch.tensor([0.0, 0.0, 1.0])
    m[:, :2, 2] *= 10  # translations of a few pixels
    for mode, padding in [("bilinear", "border"), ("bilinear", "zeros"), ("bilinear", "reflection")]:
        ref = warp_affine(x, m[:, :2], dsize, mode=mode, padding_mode=padding, align_corners=True)
        out = warp_affine_batched(x, m, dsize, mode=mode, padding_mode=padding)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["gamma", "bc", "gauss", "rician", "speckle", "blur", "bias", "clahe", "hed"])
@pytest.mark.parametrize("on", [[1, 0, 0, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0], [1, 0, 1, 0, 1]])
def test_gate_skips_exactly_the_unselected_rows(name, on):
    """Both gate paths (gather the few selected rows / compute all and restore the few skipped) agree with p = 1."""
    factory, _, rgb = FACTORIES[name]
    vr = (-1.0, 1.0)
    x = _image(5, 3 if rgb else 1, 12, 10, vr, 3)
    aug = factory(vr, 0.5, 7)
    aug(x)
    params = dict(aug._params)
    params["batch_prob"] = torch.tensor(on, dtype=torch.float32)
    y = aug(x, params=params)
    everything = dict(params, batch_prob=torch.ones(5))
    y_all = factory(vr, 1.0, 7)(x, params=everything)
    rows = torch.tensor(on, dtype=torch.bool)
    assert torch.equal(y[~rows], x[~rows])
    torch.testing.assert_close(y[rows], y_all[rows], atol=1e-6, rtol=0)
    assert y.data_ptr() != x.data_ptr()  # never the caller's tensor
