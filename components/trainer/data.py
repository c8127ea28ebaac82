"""tf.data input pipeline: gzip TFRecord shards -> parsed, shuffled, (bucketed) batches cut to their
longest real sequence, so a batch of short sentences does not pay for `max_length` steps."""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import tensorflow as tf

from components.core.artifacts import PreprocessArtifact
from components.core.errors import ArtifactError

logger = logging.getLogger(__name__)

# The features the trainer reads; the schema may carry more (e.g. reference texts for evaluation).
FEATURES = ("source_ids", "source_length", "target_input", "target_output", "target_length")
# What a copy-attention model (model.copy_attention) reads besides (components/text/copying.py).
COPY_FEATURES = ("source_copy_ids", "target_copy_output")
AUTOTUNE = tf.data.AUTOTUNE


def shard_files(artifact: PreprocessArtifact, split: str) -> list[str]:
    """The split's shards, or an ArtifactError naming the pattern that matched nothing."""
    files = artifact.split_files(split)
    if not files:
        raise ArtifactError(
            f"no {split} TFRecords in {artifact.directory} (expected {artifact.split_pattern(split)}); "
            f"re-run `seq2seq preprocess`")
    return files


def bucket_boundaries(max_length: int) -> list[int]:
    """Length-bucket bounds (each bucket holds lengths up to one less): every 2 tokens up to 24,
    where most sentences are and a batch pays for at most one padded step, then every 4, then 8."""
    bounds, edge = [], 4
    while edge < max_length:
        bounds.append(edge)
        edge += 2 if edge < 24 else 4 if edge < 48 else 8
    return bounds


def cut_to_longest(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Slice the padded features to the longest real sequence in the batch."""
    source_width = tf.maximum(tf.reduce_max(batch["source_length"]), 1)
    target_width = tf.maximum(tf.reduce_max(batch["target_length"]), 1)
    widths = {"source_ids": source_width, "source_copy_ids": source_width, "target_input": target_width,
              "target_output": target_width, "target_copy_output": target_width}
    return {name: value[:, :widths[name]] if name in widths else value for name, value in batch.items()}


def make_dataset(
    files: Sequence[str],
    artifact: PreprocessArtifact,
    batch_size: int,
    *,
    training: bool,
    seed: Optional[int | tf.Tensor] = None,
    shuffle_buffer: int = 10000,
    bucket_by_length: bool = False,
    prefetch: bool = True,
    features: Sequence[str] = FEATURES,
) -> tf.data.Dataset:
    """Batches of {source_ids [B,S], source_length [B], target_input/output [B,T], target_length [B]}.

    Deterministic for a given seed (the trainer passes seed + epoch), so a resumed epoch sees the
    same batches in the same order and can skip the ones already trained on.
    """
    full_spec = artifact.feature_spec()
    spec = {name: full_spec[name] for name in features}
    dataset = tf.data.Dataset.from_tensor_slices(list(files))
    if training and len(files) > 1:
        dataset = dataset.shuffle(len(files), seed=seed)
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=min(len(files), 4), num_parallel_calls=AUTOTUNE, deterministic=True)
    if training and shuffle_buffer > 1:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    if bucket_by_length:
        p = artifact.preprocess
        # Parsed a block at a time (one vectorized parse_example instead of one op per record), then
        # unbatched for bucketing: the pipeline shares the CPU cores with the train step.
        dataset = dataset.batch(256).map(lambda r: tf.io.parse_example(r, spec), num_parallel_calls=AUTOTUNE,
                                         deterministic=True).unbatch()
        boundaries = bucket_boundaries(max(p.max_source_length, p.max_target_length))
        dataset = dataset.bucket_by_sequence_length(
            lambda e: tf.cast(tf.maximum(e["source_length"], e["target_length"]), tf.int32),
            bucket_boundaries=boundaries, bucket_batch_sizes=[batch_size] * (len(boundaries) + 1))
    else:
        # Parse whole batches at once: one vectorized parse_example per batch.
        dataset = dataset.batch(batch_size).map(lambda r: tf.io.parse_example(r, spec),
                                                num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.map(cut_to_longest, num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.prefetch(AUTOTUNE) if prefetch else dataset


def shard_policy(files: Sequence[str], workers: int) -> tf.data.experimental.AutoShardPolicy:
    """How a multi-worker run splits a split's shards among its workers: by file when every worker
    gets at least one, else by data (every worker reads every shard and keeps its part of each
    batch). tf.data's default, FILE, fails when there are fewer files than workers."""
    policy = tf.data.experimental.AutoShardPolicy
    return policy.FILE if len(files) >= workers else policy.DATA


def with_shard_policy(dataset: tf.data.Dataset, policy: tf.data.experimental.AutoShardPolicy) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options)


def find_unreadable_shard(files: Sequence[str], artifact: PreprocessArtifact) -> Optional[str]:
    """After a read error, read each shard alone to name the broken one (with the reason)."""
    full_spec = artifact.feature_spec()
    spec = {name: full_spec[name] for name in FEATURES + COPY_FEATURES}
    for path in files:
        try:
            for records in tf.data.TFRecordDataset(path, compression_type="GZIP").batch(1024):
                tf.io.parse_example(records, spec)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as e:
            reason = (e.message or type(e).__name__).strip().splitlines()[0]
            return f"{path}: {reason}"
        except tf.errors.NotFoundError:
            return f"{path}: the file disappeared"
    return None


def input_error(error: tf.errors.OpError, files: Sequence[str], artifact: PreprocessArtifact) -> ArtifactError:
    """Turn a TF read/parse error into one clear line naming the shard."""
    culprit = find_unreadable_shard(files, artifact)
    if culprit:
        return ArtifactError(f"unreadable TFRecord shard {culprit} (corrupt or not written by this "
                             f"preprocess config); re-run `seq2seq preprocess`")
    reason = (error.message or type(error).__name__).strip().splitlines()[0]
    return ArtifactError(f"cannot read the TFRecords in {artifact.directory}: {reason}")
