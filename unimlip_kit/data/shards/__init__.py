"""WebDataset tar shards: written from any reader's records, streamed back as the folder reader's batches.

**Layout** (the WebDataset convention: the members of one sample share a key, the name before the first dot)::

    <out>/<prefix>-000000.tar    000000000.jpg  000000000.txt  000000000.json  000000001.png ...
    <out>/index.json             {"format": "unimlip_kit-shards", "shards": [{"name", "samples", "bytes"}], ...}

The image keeps its bytes and format (``jpg``, ``png``, ``tiff``, ``bmp``, ``dcm``, ``nii``/``nii.gz``);
``key.txt`` is the caption in UTF-8; ``key.json`` holds ``id``, ``label``, ``group``, ``modality``,
``meta`` and ``image_key`` (the source path, which the collate uses to group duplicates as the folder
reader does). Keys are running numbers, not ids, because ids may contain dots or slashes. Writing uses
only the standard library's :mod:`tarfile` (members with mtime 0, uid/gid 0: the same records give
byte-identical shards); ``index.json`` stores the sample counts, so opening a thousand shards reads no
tar. Shards without an index (written elsewhere) are counted once from their tar headers.

**Reading** (:func:`open_shards` -> :class:`ShardLoader`) parses tars with the ``webdataset`` library
(``tar_file_expander`` + ``group_by_keys``) and shuffles inside a shard with its seeded ``shuffle``
buffer; decoding is :func:`~unimlip_kit.data.load_image` itself (the member is written to a temporary
file in ``/dev/shm`` and decoded by path), so pixels are bit-identical to :class:`ImageTextDataset` on
the same files, and batches come from the same :class:`ImageTextCollate` (same keys). The order of an
epoch depends only on ``(seed, epoch)``, the shard list, ``world_size`` and ``streams``:

1. the shards are permuted by ``derive_seed(seed, "shards", epoch)``;
2. each shard's samples pass a ``shuffle_buffer``-sample buffer seeded by
   ``derive_seed(seed, "buffer", epoch, shard index)``, per shard, so no shard's order depends on another;
3. the resulting sequence of ``N`` samples is cut into ``world_size`` contiguous ranges of
   ``N // world_size``; rank ``r`` reads range ``r`` (every rank the same number of samples, so DDP
   ranks take the same number of steps; a shard on a boundary is read by both ranks, each keeping its
   part; the ``N mod world_size`` samples left over wait for another epoch's order);
4. the rank's pieces of shards are dealt to ``streams`` streams (piece ``k`` to stream ``k mod streams``),
   and samples interleave round-robin: one from every stream that still has one, in stream order;
5. batches are ``batch_size`` consecutive samples of that sequence; the epoch's last one may be shorter.

**Workers**: DataLoader worker ``p`` of ``n`` reads streams ``p, p + n, ...`` (each shard is opened by one
worker of one rank) and sends back ``(position, sample)``; the main process restores the order of step 4,
so the batches do not depend on ``num_workers`` (``num_workers > streams`` leaves workers idle).

**Exact resume** mirrors :class:`EpochSampler`: ``loader.set_epoch(epoch, start=k)`` (also as
``loader.sampler.set_epoch``) starts the epoch after this rank's first ``k`` samples: whole pieces are
skipped by their counts, the partly read piece is read through without decoding. ``webdataset``'s own
pipeline cannot do this: its default shuffle buffer seeds from the pid and the clock, DataLoader workers
interleave in the loader's scheduling order, and it has no notion of "sample ``k`` of epoch ``e``"; its
``with_epoch``/``slice`` restart counts from the beginning of each worker's stream.

**Bad data** is skipped and counted with the folder readers' reasons, carried in ``batch["skipped"]``
and merged into ``loader.skips``: ``missing_image`` (no image member), ``empty_caption`` (no ``.txt``
or only whitespace), ``corrupt_image`` / ``unsupported_format`` / ``image_too_large`` (the decoder's),
``bad_row`` (``.json`` not an object, a caption that is not UTF-8, a label that is no class index, a
sample lost to a truncated or unreadable shard: the shard's indexed count is padded with such skips, so
positions never shift). A shard with more samples than its index is read up to the index (a warning).

**Modules**: :mod:`~unimlip_kit.data.shards.layout` (the index's name and format, the image members'
extensions, :class:`ShardInfo`), :mod:`~unimlip_kit.data.shards.write` (:func:`write_shards`),
:mod:`~unimlip_kit.data.shards.find` (:func:`is_shard_source`, :func:`list_shards`,
:func:`read_shard_metadata`, :func:`conversion_skips`), :mod:`~unimlip_kit.data.shards.order` (one epoch's
order: steps 1 and 3-4 above, and where a resumed epoch starts) and :mod:`~unimlip_kit.data.shards.read`
(:func:`open_shards`, :class:`ShardLoader`: parsing, the in-shard buffer, decoding, workers).
"""

# Also re-exported: the private helpers that tests and benchmarks reach as unimlip_kit.data.shards._name
# (_count_samples, _canonical, _consumed, _scratch_dir; tests replace _open_shard here, see read._open_shard).
from unimlip_kit.data.shards.find import (_count_samples, conversion_skips, is_shard_source, list_shards,
                                          read_shard_metadata)
from unimlip_kit.data.shards.layout import INDEX_NAME, ShardInfo
from unimlip_kit.data.shards.order import _canonical, _consumed
from unimlip_kit.data.shards.read import ShardLoader, _open_shard, _scratch_dir, open_shards
from unimlip_kit.data.shards.write import write_shards

__all__ = ["INDEX_NAME", "ShardInfo", "ShardLoader", "conversion_skips", "is_shard_source", "list_shards", "open_shards",
           "read_shard_metadata", "write_shards"]
