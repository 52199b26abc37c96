"""WebDataset shards: the converter, the webdataset-based reader, rank/worker splitting, skips and exact resume.

References: the folder reader itself (ImageTextDataset + build_dataloader on the same records gives the
same batches, pixel for pixel), webdataset's own WebDataset pipeline and the standard library's tarfile
for the tar layout, a naive round-robin list for the interleaving order, and an uninterrupted run for
every resume (same batches, same weights).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("webdataset")

from unimlip_kit.data import (ImageTextDataset, ImageTextRecord, SkipCounter, StepStream, SyntheticConfig, build_dataloader,  # noqa: E402
                              build_synthetic_dataset, is_shard_source, list_shards, open_shards, read_roco,
                              read_shard_metadata, write_shards)
from unimlip_kit.data import __main__ as data_cli  # noqa: E402
from unimlip_kit.data import shards as shards_mod  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BATCH_KEYS = ("images", "captions", "ids", "labels", "group_ids", "group_keys", "modality", "skipped")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    cfg = SyntheticConfig(n_train=40, n_validation=4, n_test=4, image_size=32, seed=3)
    return build_synthetic_dataset(cfg, tmp_path_factory.mktemp("syn"))


@pytest.fixture(scope="module")
def records(synthetic):
    return read_roco(synthetic, "train")


@pytest.fixture(scope="module")
def shard_dir(records, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(records, out, max_per_shard=6, prefix="syn")  # 7 shards: 6 x 6 + 4
    return out


def _png(value: int, size: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _assert_same_batch(a: dict, b: dict) -> None:
    assert set(a) == set(b) == set(BATCH_KEYS)
    assert torch.equal(a["images"], b["images"])
    for k in ("captions", "ids", "group_keys", "modality", "skipped"):
        assert a[k] == b[k], k
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["group_ids"], b["group_ids"])


# The recipe's stream (sampler.set_epoch(epoch, start=batches done * batch_size), then iterate) over shards.
_Stream = StepStream


def _stream(loader, epoch: int, done: int, n: int) -> list[dict]:
    s = _Stream(loader, epoch, done)
    return [s.next() for _ in range(n)]


# ----------------------------------------------------------------------------- converter and layout


def test_batches_equal_the_folder_reader(records, shard_dir):
    """File order, one stream: the same batches as ImageTextDataset + build_dataloader, every key, pixel for pixel."""
    ds = ImageTextDataset(records, image_size=24)
    folder = list(build_dataloader(ds, 5, shuffle=False))
    shards = list(open_shards(shard_dir, 5, image_size=24, shuffle=False, streams=1))
    assert len(shards) == len(folder) == 8
    for a, b in zip(shards, folder):
        _assert_same_batch(a, b)


def test_png_and_three_channels_equal_the_folder_reader(tmp_path):
    cfg = SyntheticConfig(n_train=6, n_validation=1, n_test=1, image_size=32, image_format="png", seed=1)
    recs = read_roco(build_synthetic_dataset(cfg, tmp_path / "c"), "train")
    write_shards(recs, tmp_path / "s", max_per_shard=4)
    assert {n.split(".", 1)[1] for n in tarfile.open(tmp_path / "s" / "shard-000000.tar").getnames()} == {"png", "txt", "json"}
    folder = next(iter(build_dataloader(ImageTextDataset(recs, image_size=16, channels=3), 6, shuffle=False)))
    shard = next(iter(open_shards(tmp_path / "s", 6, image_size=16, channels=3, shuffle=False, streams=1)))
    _assert_same_batch(shard, folder)


def test_layout_is_webdataset_and_deterministic(records, shard_dir, tmp_path):
    import webdataset as wds

    again = write_shards(records, tmp_path / "again", max_per_shard=6, prefix="syn")
    assert [Path(s.path).read_bytes() for s in again] == [p.read_bytes() for p in sorted(shard_dir.glob("*.tar"))]
    index = json.loads((shard_dir / "index.json").read_text())
    assert [e["samples"] for e in index["shards"]] == [6] * 6 + [4] and index["samples"] == 40
    # webdataset's own pipeline reads the shards: same keys, captions and json fields as the records
    seen = list(wds.WebDataset(sorted(str(p) for p in shard_dir.glob("*.tar")), shardshuffle=False))
    assert [s["__key__"] for s in seen] == [f"{i:09d}" for i in range(40)]
    assert [s["txt"].decode() for s in seen] == [r.caption for r in records]
    meta = [json.loads(s["json"]) for s in seen]
    assert [(m["id"], m["label"], m["group"], m["modality"]) for m in meta] == [
        (r.id, r.label, r.group, r.modality) for r in records]
    assert all(s["jpg"] == r.image_path.read_bytes() for s, r in zip(seen, records))


def test_metadata_without_images(records, shard_dir):
    meta = read_shard_metadata(shard_dir)
    assert [(m["id"], m["caption"], m["label"], m["group"], m["modality"]) for m in meta] == [
        (r.id, r.caption, r.label, r.group, r.modality) for r in records]
    assert [m["key"] for m in meta] == [f"{i:09d}" for i in range(40)] and meta[6]["shard"].endswith("syn-000001.tar")


def test_write_refuses_to_mix_and_validates(records, shard_dir, tmp_path):
    with pytest.raises(FileExistsError, match="already holds 7 shards"):
        write_shards(records, shard_dir, prefix="syn")
    with pytest.raises(ValueError, match="max_per_shard"):
        write_shards(records, tmp_path, max_per_shard=0)
    with pytest.raises(ValueError, match="prefix"):
        write_shards(records, tmp_path, prefix="a/b")
    write_shards(records[:3], tmp_path / "o", max_per_shard=2)
    assert [s.samples for s in write_shards(records[:5], tmp_path / "o", max_per_shard=2, overwrite=True)] == [2, 2, 1]


def test_cli_tables_roco_and_synthetic(synthetic, records, tmp_path, capsys):
    img_dir = synthetic / "data" / "train" / "radiology" / "images"
    rows = [(r.image_path.name, r.caption) for r in records[:5]] + [("gone.jpg", "Missing file.")]
    (tmp_path / "pairs.csv").write_text("file,text\n" + "".join(f'{f},"{c}"\n' for f, c in rows))
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"file": f, "text": c}) + "\n" for f, c in rows) + "{bad\n")
    for kind in ("csv", "jsonl"):
        assert data_cli.main(["shards", "--from", kind, str(tmp_path / f"pairs.{kind}"), "--image-root", str(img_dir),
                              "--image-column", "file", "--caption-column", "text", "--out", str(tmp_path / kind),
                              "--max-per-shard", "2", "--no-progress"]) == 0
        summary = json.loads(capsys.readouterr().out)
        expected = {"missing_image": 1} if kind == "csv" else {"missing_image": 1, "bad_row": 1}
        assert summary["shards"] == 3 and summary["samples"] == 5 and summary["skipped"]["by_reason"] == expected
        assert json.loads((tmp_path / kind / "index.json").read_text())["skipped"]["by_reason"] == expected
        got = [c for b in open_shards(tmp_path / kind, 5, image_size=8, shuffle=False, streams=1) for c in b["captions"]]
        assert got == [c for _, c in rows[:5]]
    assert data_cli.main(["shards", "--from", "roco", str(synthetic), "--split", "validation", "--out",
                          str(tmp_path / "roco"), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 4
    assert [s.path.rsplit("/", 1)[1] for s in list_shards(tmp_path / "roco")] == ["roco-validation-000000.tar"]
    with pytest.raises(SystemExit):
        data_cli.main(["shards", "--from", "csv", "--out", str(tmp_path / "x")])  # no table given
    # the module entry point, as a user runs it (progress bar on stderr)
    proc = subprocess.run([sys.executable, "-m", "unimlip_kit.data", "shards", "--from", "synthetic", "--n-train", "5",
                           "--n-validation", "1", "--n-test", "1", "--image-size", "16", "--cache-dir", str(tmp_path / "c"),
                           "--out", str(tmp_path / "syn"), "--max-per-shard", "2"],
                          capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["shards"] == 3 and "shards synthetic-train" in proc.stderr


# ----------------------------------------------------------------------------- sources


def test_is_shard_source_and_patterns(synthetic, shard_dir, tmp_path):
    pattern = str(shard_dir / "syn-{000000..000006}.tar")
    assert is_shard_source(shard_dir) and is_shard_source(pattern) and is_shard_source(shard_dir / "syn-000000.tar")
    assert not is_shard_source(synthetic) and not is_shard_source(tmp_path / "pairs.csv")
    assert list_shards(pattern) == list_shards(shard_dir)
    assert [s.samples for s in list_shards(str(shard_dir / "syn-{000001,000006}.tar"))] == [6, 4]
    with pytest.raises(FileNotFoundError, match="3 of 10 shards do not exist.*syn-000007.tar"):
        list_shards(str(shard_dir / "syn-{000000..000009}.tar"))
    with pytest.raises(ValueError, match="not a shard source"):
        open_shards(synthetic, 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.tar shards"):
        list_shards(tmp_path / "empty")


def test_counts_without_index_match_the_reader(tmp_path):
    """Header-only counting groups members as webdataset's group_by_keys does (meta files, dirs, extra members)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    members = [("__meta__", b"x"), ("a.png", _png(1)), ("a.txt", b"one"), ("a.extra.json", b"{}"),
               ("sub/b.png", _png(2)), ("sub/b.txt", b"two"), ("noext", b"?"), ("c.txt", b"three")]
    path = _tar(tmp_path / "x.tar", members)
    with tarfile.open(path, "a") as tf:
        tf.addfile(tarfile.TarInfo("adir/"))  # a directory entry, not a member
    with open(path, "rb") as fh:
        expected = len(list(group_by_keys(tar_file_expander([{"url": str(path), "stream": fh}]))))
    assert expected == 3 and list_shards(path)[0].samples == 3
    loader = open_shards(path, 8, image_size=8, shuffle=False)
    batch = next(iter(loader))
    assert batch["captions"] == ["one", "two"] and [s[1] for s in batch["skipped"]] == ["missing_image"]
    # a stale index (the shard rewritten since) is not trusted: the size differs, the headers are recounted
    (tmp_path / "index.json").write_text(json.dumps({"format": "unimlip_kit-shards", "shards": [
        {"name": "x.tar", "samples": 99, "bytes": 1}]}))
    assert list_shards(tmp_path)[0].samples == 3


# ----------------------------------------------------------------------------- bad data


def test_bad_samples_skipped_with_the_folder_readers_reasons(tmp_path):
    big = _png(9, size=20)
    broken = b"\x89PNG\r\n\x1a\n broken"
    members = [
        ("000.png", _png(10)), ("000.txt", b"Good."), ("000.json", b'{"id": "good", "label": 2}'),
        ("001.png", broken), ("001.txt", b"Corrupt."), ("001.json", b'{"id": "corrupt"}'),
        ("002.png", _png(10)), ("002.txt", b"   "), ("002.json", b'{"id": "blank"}'),
        ("003.png", _png(10)), ("003.json", b'{"id": "notext"}'),
        ("004.txt", b"No image."), ("004.json", b'{"id": "noimage"}'),
        ("005.png", _png(10)), ("005.txt", b"Bad json."), ("005.json", b"{oops"),
        ("006.png", big), ("006.txt", b"Too large."), ("006.json", b'{"id": "large"}'),
        ("007.png", _png(10)), ("007.txt", b"Float label."), ("007.json", b'{"id": "float", "label": 2.5}'),
    ]
    _tar(tmp_path / "bad.tar", members)
    counter = SkipCounter()
    loader = open_shards(tmp_path / "bad.tar", 16, image_size=8, shuffle=False, max_pixels=100, skips=counter)
    (batch,) = list(loader)
    assert batch["ids"] == ["good"] and batch["labels"].tolist() == [2]
    reasons = {s[0]: s[1] for s in batch["skipped"]}
    assert reasons == {"corrupt": "corrupt_image", "blank": "empty_caption", "notext": "empty_caption",
                       "noimage": "missing_image", "bad.tar:005": "bad_row", "large": "image_too_large",
                       "float": "bad_row"}
    assert counter.counts() == {"bad_row": 2, "corrupt_image": 1, "empty_caption": 2, "image_too_large": 1,
                                "missing_image": 1}
    assert "bad.tar:001.png" in dict((s[0], s[2]) for s in batch["skipped"])["corrupt"]  # names the member, not a temp file
    # the folder reader gives the same reasons for the same bytes
    for name, data in (("corrupt", broken), ("large", big)):
        (tmp_path / f"{name}.png").write_bytes(data)
    ds = ImageTextDataset([ImageTextRecord("corrupt", tmp_path / "corrupt.png", "x"),
                           ImageTextRecord("large", tmp_path / "large.png", "x")], image_size=8, max_pixels=100)
    assert [ds[0].reason, ds[1].reason] == [reasons["corrupt"], reasons["large"]]


@pytest.mark.parametrize("index_bytes", ["as written", "updated"])
def test_truncated_shard_pads_its_count_with_skips(records, tmp_path, index_bytes):
    write_shards(records[:12], tmp_path, max_per_shard=6)
    tar = tmp_path / "shard-000001.tar"
    data = tar.read_bytes()
    os.truncate(tar, len(data) // 2)  # cut in the middle of an image, as a failed copy leaves it
    if index_bytes == "updated":  # the index says 6 samples at the new size
        index = json.loads((tmp_path / "index.json").read_text())
        index["shards"][1]["bytes"] = len(data) // 2
        (tmp_path / "index.json").write_text(json.dumps(index))
        loader = open_shards(tmp_path, 4, image_size=8, shuffle=False, streams=1)
    else:  # the index still has the written size: the shard keeps its indexed count, with a warning
        with pytest.warns(UserWarning, match=rf"shard-000001.tar is {len(data) // 2} bytes, its index says "
                                             rf"{len(data)}: truncated; keeping its indexed 6 samples"):
            loader = open_shards(tmp_path, 4, image_size=8, shuffle=False, streams=1)
    batches = list(loader)
    ids = [i for b in batches for i in b["ids"]]
    lost = [s for b in batches for s in b["skipped"]]
    assert len(ids) + len(lost) == 12 and [len(b["ids"]) + len(b["skipped"]) for b in batches] == [4, 4, 4]
    assert ids[:6] == [r.id for r in records[:6]] and 0 < len(lost) < 6
    assert all(s[1] == "bad_row" and "unreadable" in s[2] for s in lost)
    # resuming inside the damaged shard keeps the same positions
    loader.set_epoch(0, start=8)
    assert next(iter(loader))["ids"] == batches[2]["ids"]
    # without the index the headers are counted: the readable samples only, and a warning names the shard
    (tmp_path / "index.json").unlink()
    with pytest.warns(UserWarning, match="shard-000001.tar: tar unreadable after"):
        counts = [s.samples for s in list_shards(tmp_path)]
    assert counts[0] == 6 and len(ids) - 6 <= counts[1] < 6


# ----------------------------------------------------------------------------- order, ranks, workers


def test_round_robin_order_equals_a_naive_interleave():
    import random

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randrange(0, 6) for _ in range(rng.randrange(1, 6))]
        queues = [[(v, k) for k in range(n)] for v, n in enumerate(lengths)]
        naive = []
        while any(queues):
            naive += [q.pop(0)[0] for q in queues if q]
        start = rng.randrange(0, len(naive) + 2)
        assert [v for _, v in shards_mod._canonical(lengths, start)] == naive[start:]
        assert shards_mod._consumed(lengths, start) == [naive[:start].count(v) for v in range(len(lengths))]


def test_epoch_order_depends_on_seed_and_epoch_only(shard_dir, records):
    def ids(seed, epoch, **kw):
        loader = open_shards(shard_dir, 8, image_size=8, seed=seed, **kw)
        loader.set_epoch(epoch)
        return [i for b in loader for i in b["ids"]]

    a = ids(0, 0)
    assert sorted(a) == sorted(r.id for r in records)  # every sample once per epoch
    assert a == ids(0, 0) and a != ids(0, 1) and a != ids(1, 0)
    assert ids(0, 1, num_workers=2) == ids(0, 1)  # workers do not change the order
    assert ids(0, 0, shuffle=False, streams=1) == [r.id for r in records]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_by_shard_into_equal_disjoint_parts(shard_dir, records, world):
    shard_of = {}
    for s in list_shards(shard_dir):
        for i in range(s.samples):
            shard_of[len(shard_of)] = s.path
    parts, opened = [], []
    for rank in range(world):
        loader = open_shards(shard_dir, 4, image_size=8, seed=5, rank=rank, world_size=world, streams=2)
        loader.set_epoch(2)
        parts.append([i for b in loader for i in b["ids"]])
        opened.append({p for stream in loader.describe_epoch()["streams"] for p, _, _ in stream})
        assert len(loader) == -(-(40 // world) // 4)
    assert all(len(p) == 40 // world for p in parts)
    flat = [i for p in parts for i in p]
    assert len(set(flat)) == len(flat) and set(flat) <= {r.id for r in records}
    # a shard is read by one rank, or by two when it straddles a range boundary
    shared = [p for p in {q for o in opened for q in o} if sum(p in o for o in opened) > 1]
    assert len(shared) <= world - 1 and sum(len(o) for o in opened) <= 7 + world - 1


def test_workers_split_by_shard(shard_dir, tmp_path, monkeypatch):
    """Each shard is opened by one DataLoader worker (fork: the patched opener reaches the workers)."""
    log = tmp_path / "opened.txt"
    real = shards_mod._open_shard

    def logged(path):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {Path(path).name}\n")
        return real(path)

    monkeypatch.setattr(shards_mod, "_open_shard", logged)
    loader = open_shards(shard_dir, 8, image_size=8, seed=0, num_workers=2, streams=4)
    with_workers = [b["ids"] for b in loader]
    by_shard = {}
    for line in log.read_text().splitlines():
        pid, name = line.split()
        by_shard.setdefault(name, set()).add(pid)
    assert len(by_shard) == 7 and all(len(p) == 1 for p in by_shard.values())
    assert len(set.union(*by_shard.values())) == 2 and str(os.getpid()) not in set.union(*by_shard.values())
    monkeypatch.setattr(shards_mod, "_open_shard", real)
    assert [b["ids"] for b in open_shards(shard_dir, 8, image_size=8, seed=0, streams=4)] == with_workers


def test_bad_arguments(shard_dir):
    for kw, match in (({"batch_size": 0}, "batch_size"), ({"batch_size": 4, "rank": 2, "world_size": 2}, "rank"),
                      ({"batch_size": 4, "streams": 0}, "streams"), ({"batch_size": 4, "world_size": 41}, "too few"),
                      ({"batch_size": 4, "window": "lugn"}, "window"), ({"batch_size": 4, "resize": "fit"}, "resize")):
        with pytest.raises(ValueError, match=match):
            open_shards(shard_dir, **kw)
    with pytest.raises(ValueError, match="start"):
        open_shards(shard_dir, 4).set_epoch(0, start=-1)


# ----------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("workers,resume_workers", [(0, 0), (2, 0)])
def test_resume_gives_the_uninterrupted_batches(shard_dir, workers, resume_workers):
    kw = dict(image_size=16, seed=11, streams=3, shuffle_buffer=4)
    full = _stream(open_shards(shard_dir, 6, num_workers=workers, **kw), 0, 0, 17)  # 7 batches per epoch
    for k in (3, 7, 9):
        epoch, done = divmod(k, 7)
        resumed = _stream(open_shards(shard_dir, 6, num_workers=resume_workers, **kw), epoch, done, 17 - k)
        for a, b in zip(resumed, full[k:]):
            _assert_same_batch(a, b)


def test_killed_and_resumed_training_ends_with_the_same_weights(shard_dir, tmp_path):
    """A tiny image-text model trained from shards, stopped after step 5 and resumed from a checkpoint file."""
    from unimlip_kit.losses import image_text_contrastive_loss

    batch_size, steps, stop = 6, 12, 5

    def build():
        torch.manual_seed(0)
        model = torch.nn.ModuleDict({"img": torch.nn.Linear(16 * 16, 8), "txt": torch.nn.EmbeddingBag(97, 8)})
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    def loss_of(model, batch):
        img = torch.nn.functional.normalize(model["img"](batch["images"].flatten(1)), dim=-1)
        tokens = [torch.tensor([sum(map(ord, w)) % 97 for w in c.lower().split()]) for c in batch["captions"]]
        offsets = torch.tensor([0] + [len(t) for t in tokens[:-1]]).cumsum(0)
        txt = torch.nn.functional.normalize(model["txt"](torch.cat(tokens), offsets), dim=-1)
        return image_text_contrastive_loss(img, txt, 10.0)

    def train(model, opt, stream, step, until):
        while step < until:
            batch = stream.next()
            opt.zero_grad()
            loss_of(model, batch).backward()
            opt.step()
            step += 1
        return step

    def loader(workers):
        return open_shards(shard_dir, batch_size, image_size=16, seed=2, num_workers=workers, streams=3, shuffle_buffer=4)

    model, opt = build()
    train(model, opt, _Stream(loader(2)), 0, steps)  # crosses an epoch end (7 batches per epoch)
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt = build()
    stream = _Stream(loader(2))
    step = train(model, opt, stream, 0, stop)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "data": stream.position(), "step": step},
               tmp_path / "ckpt.pt")
    del model, opt, stream  # "killed"
    state = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    model, opt = build()
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    train(model, opt, _Stream(loader(0), **state["data"]), state["step"], steps)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, build()[0].state_dict()[k])]
    assert changed == list(uninterrupted)  # training moved every weight
    for k, v in model.state_dict().items():
        assert torch.equal(v, uninterrupted[k]), k
