"""The training loop: compiled train step, eval, checkpoints, resume, early stopping, progress, signals."""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import signal
import time
from contextlib import contextmanager
from typing import Any, ContextManager, Iterator, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from components.core import io
from components.core.artifacts import PreprocessArtifact, TrainedModel
from components.core.checkpoint_files import checkpoint_number, checkpoint_prefixes, first_readable
from components.core.config import PipelineConfig
from components.core.errors import ArtifactError, UserError
from components.core.threads import configure_cpu_threads, resolve_sub_batches
from components.model import Seq2Seq
from components.model import checkpoints as ck
from components.trainer.cluster import (
    RegistrationInterrupted,
    flag_on_signals,
    keeping_signal_handlers,
    read_tf_config,
    wait_for_workers,
)
from components.trainer.data import (
    AUTOTUNE,
    COPY_FEATURES,
    FEATURES,
    input_error,
    make_dataset,
    shard_files,
    shard_policy,
    with_shard_policy,
)
from components.trainer.loss import token_loss
from components.trainer.optimizer import Adam, clip_by_global_norm, learning_rate
from components.trainer.selection import DevScorer, read_sample
from components.trainer.warm_start import warm_start

logger = logging.getLogger(__name__)


# Eval splits up to this size are held in memory as parsed batches (a few MB of int64 ids).
EVAL_IN_MEMORY_EXAMPLES = 20000

# Under trainer.on_nonfinite=skip_batch, this many non-finite batches in a row stop the run anyway:
# by then the weights themselves are usually broken, and every later batch would be skipped too.
MAX_CONSECUTIVE_SKIPPED_BATCHES = 20


class TrainingInterrupted(UserError):
    """SIGTERM/SIGINT: a checkpoint was saved; the same command resumes (exit code 128 + signal)."""

    exit_code = 130


class NonFiniteTrainingError(UserError):
    """A training step's loss or gradient norm was NaN or infinite (trainer.on_nonfinite=fail), or
    too many in a row were (skip_batch). The update of that step was not applied."""


class WorkerLostError(UserError):
    """A multi-worker run lost a peer (killed, preempted, unreachable): every collective op is
    aborted, so the survivors stop too. Restarting every worker resumes from the last checkpoint."""


# What TensorFlow's collective ops say when a peer is gone: its heartbeats stopped (the
# coordination service notices within its heartbeat timeout), or its socket closed mid-transfer.
PEER_FAILURE_MARKS = ("Collective ops is aborted", "unhealthy", "Socket closed", "failed to connect",
                      "Connection reset", "heartbeat")
TASK_NAME = re.compile(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)")


def is_peer_failure(error: tf.errors.OpError) -> bool:
    return isinstance(error, (tf.errors.UnavailableError, tf.errors.AbortedError)) or \
        any(mark in (error.message or "") for mark in PEER_FAILURE_MARKS)


def lost_peers(error: tf.errors.OpError, strategy: tf.distribute.Strategy) -> list[str]:
    """The other tasks the error names, as "worker 1 (host:port)"."""
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    own = (resolver.task_type, resolver.task_id)
    named = {}
    for job, index in TASK_NAME.findall(error.message or ""):
        if (job, int(index)) != own and int(index) < len(spec.get(job, [])):
            named[(job, int(index))] = f"{job} {index} ({spec[job][int(index)]})"
    return list(named.values())


class CheckpointWriteError(ArtifactError):
    """A checkpoint (or metrics.json) could not be written: a full disk, permissions, a file where
    the folder should be. Not an input problem: the TFRecords are fine."""


def write_error(folder: str, error: BaseException, what: str = "a checkpoint") -> CheckpointWriteError:
    reason = (getattr(error, "message", None) or str(error) or type(error).__name__).strip().splitlines()[0]
    if isinstance(error, tf.errors.ResourceExhaustedError) or "No space left" in reason \
            or getattr(error, "errno", None) == 28:  # ENOSPC
        hint = "the disk is full: free space, then run the same command again to resume"
    else:
        hint = "check that it is a writable folder (not a file) on a disk with free space"
    return CheckpointWriteError(f"cannot write {what} to {folder}: {reason} ({hint})")


@contextmanager
def writing(folder: str, what: str = "a checkpoint") -> Iterator[None]:
    """Report a failed write as such, naming FOLDER, rather than letting the loop's handler take
    it for an input error (it maps TensorFlow's OpErrors to "cannot read the TFRecords")."""
    try:
        yield
    except (tf.errors.OpError, OSError) as e:
        raise write_error(folder, e, what) from None


# ---------------------------------------------------------------- distribution


def make_strategy(kind: str, registration_timeout_s: float = 300.0) -> tf.distribute.Strategy:
    """`none`: the default strategy; `mirrored`: every GPU, else every (logical) CPU device;
    `multi_worker`: MultiWorkerMirroredStrategy configured by TF_CONFIG."""
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        # NCCL is GPU-only; on CPUs reduce through one device.
        return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if kind == "multi_worker":
        return multi_worker_strategy(registration_timeout_s)
    return tf.distribute.get_strategy()


def multi_worker_strategy(registration_timeout_s: float) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy of TF_CONFIG's cluster, built once every worker has started:
    the wait happens first, in Python, where signals and a timeout work (components/trainer/cluster.py)."""
    cluster = read_tf_config()
    if cluster is None:
        logger.warning("trainer.distribution=multi_worker but TF_CONFIG is not set: training as a single worker "
                       "(give every worker its TF_CONFIG, see docs/training.md)")
    else:
        try:
            wait_for_workers(cluster, registration_timeout_s)
        except RegistrationInterrupted as e:
            stopped = TrainingInterrupted(str(e))
            stopped.exit_code = e.exit_code
            raise stopped from None
    with keeping_signal_handlers():
        return tf.distribute.MultiWorkerMirroredStrategy()


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """The workers of a multi-worker cluster (chief included); 1 without TF_CONFIG."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, sum(len(spec.get(job, [])) for job in ("chief", "worker")))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _checkpoint_or_abort(flag: dict[str, Optional[str]], signum: int) -> None:
    """A second SIGINT aborts at once; a first signal is announced (the step loop saves, then stops)."""
    if flag["signal"] and signum == signal.SIGINT:
        raise KeyboardInterrupt
    logger.warning("%s received: saving a checkpoint after this step", signal.Signals(signum).name)


def stop_on_signals() -> ContextManager[dict[str, Optional[str]]]:
    """SIGTERM/SIGINT set a flag the loop checks after each step; a second SIGINT aborts at once."""
    return flag_on_signals(_checkpoint_or_abort)


def scalar_summary(name: str, value: float, step: int) -> None:
    """A TensorBoard scalar without importing the tensorboard package (not a dependency):
    the same event `tensorboard.summary.scalar` writes, tagged for the scalars plugin."""
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars", content=b""))
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=metadata)


def plural(count: float, word: str) -> str:
    """`1 minute`, `0.5 minutes`, `3 workers`."""
    return f"{count:g} {word}" if count == 1 else f"{count:g} {word}s"


def _number(value: float, spec: str) -> str:
    """VALUE formatted, or `-` when it is not measured yet (NaN)."""
    return format(value, spec) if math.isfinite(value) else "-"


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


# ---------------------------------------------------------------- the trainer


@dataclasses.dataclass
class EpochTotals:
    loss_sum: float = 0.0
    tokens: float = 0.0
    correct: float = 0.0
    steps: int = 0
    timed_tokens: float = 0.0
    timed_seconds: float = 0.0
    timed_steps: int = 0
    skipped: int = 0  # non-finite batches skipped (trainer.on_nonfinite=skip_batch)
    # loss_sum and tokens at the last progress line: its loss is the mean over the steps since.
    logged_loss_sum: float = 0.0
    logged_tokens: float = 0.0

    def add(self, stats: dict[str, float]) -> None:
        self.loss_sum += stats["loss"] * stats["tokens"]
        self.tokens += stats["tokens"]
        self.correct += stats["correct"]
        self.steps += 1

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens if self.tokens else float("nan")

    def loss_since_last_line(self) -> float:
        """The mean loss per token over the steps since the previous call (NaN when none counted)."""
        tokens = self.tokens - self.logged_tokens
        loss = (self.loss_sum - self.logged_loss_sum) / tokens if tokens else float("nan")
        self.logged_loss_sum, self.logged_tokens = self.loss_sum, self.tokens
        return loss

    @property
    def tokens_per_second(self) -> float:
        return self.timed_tokens / self.timed_seconds if self.timed_seconds else float("nan")


class Trainer:
    """One training run into TRAIN_DIR; `run()` trains (or resumes) and returns the metrics."""

    def __init__(self, examples: str, out: str, config: PipelineConfig, warm_start_from: Optional[str] = None):
        self.out = out.rstrip("/")
        self.training = TrainedModel(self.out)
        self.warm_start_from = warm_start_from
        self.warm_started: Optional[dict[str, Any]] = None  # what warm_start recorded, None: from scratch
        self.artifact = PreprocessArtifact.load(examples)
        if config.preprocess != self.artifact.preprocess:
            logger.info("using the preprocess settings of %s (the config's preprocess section is ignored)",
                        self.artifact.directory)
        # The run's config records the preprocess settings the TFRecords were written with.
        self.config = dataclasses.replace(config, preprocess=self.artifact.preprocess)
        self.t = self.config.trainer
        self.features = FEATURES + (COPY_FEATURES if self.config.model.copy_attention else ())
        self.source_vocab_size, self.target_vocab_size = ck.vocabulary_sizes(self.artifact)
        self.train_files = shard_files(self.artifact, "train")
        self.eval_files = self.artifact.split_files("eval")
        if not self.eval_files:
            logger.info("no eval split in %s: evaluating on the training split", self.artifact.directory)
            self.eval_files = self.train_files
        self.strategy = make_strategy(self.t.distribution, self.t.registration_timeout_s)
        self.sub_batches = resolve_sub_batches(self.t)
        self.chief = is_chief(self.strategy)
        self.multi_worker = self.t.distribution == "multi_worker"
        self.workers = worker_count(self.strategy) if self.multi_worker else 1
        self.train_examples = self._count_train_examples()

    # ------------------------------------------------------------ setup

    def _eval_examples(self) -> int:
        if self.eval_files == self.train_files:
            return self.train_examples
        try:
            return int(self.artifact.stats()["records_written"]["eval"])
        except (KeyError, TypeError, ValueError, tf.errors.OpError):
            return EVAL_IN_MEMORY_EXAMPLES + 1  # unknown: stream it

    def _count_train_examples(self) -> int:
        try:
            count = int(self.artifact.stats()["records_written"]["train"])
            if count > 0:
                return count
        except (KeyError, TypeError, ValueError, tf.errors.OpError):
            pass
        try:
            return int(tf.data.TFRecordDataset(self.train_files, compression_type="GZIP")
                       .reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
        except tf.errors.OpError as e:
            raise input_error(e, self.train_files, self.artifact) from None

    def _check_existing_run(self) -> None:
        """An existing TRAIN_DIR must have been trained with the same model shape and vocabularies."""
        if not io.exists(self.training.config_path):
            return
        previous = self.training.config()
        inputs = self.training.inputs() or {}
        before = ck.shape_fields(previous, inputs.get("source_vocab_size", self.source_vocab_size),
                                 inputs.get("target_vocab_size", self.target_vocab_size))
        now = ck.shape_fields(self.config, self.source_vocab_size, self.target_vocab_size)
        changed = [f"{key} {before[key]!r} -> {now[key]!r}" for key in now if before[key] != now[key]]
        if changed:
            raise ArtifactError(f"{self.out} holds a run that cannot resume with this config/input: "
                                f"{'; '.join(changed)}. Use a new --out, or the original config and examples")

    def _prepare_out(self) -> None:
        self._check_existing_run()
        if not self.chief:
            return
        with writing(self.out, "the run's config.yaml and inputs.json"):
            io.write_text_atomic(self.training.config_path, self.config.to_yaml())
            io.write_json_atomic(self.training.inputs_path, {
                "examples": ck.absolute(self.artifact.directory),
                "source_vocab_size": self.source_vocab_size,
                "target_vocab_size": self.target_vocab_size,
            })

    def _build_state(self) -> None:
        with self.strategy.scope():
            self.model = Seq2Seq.from_config(self.config.model, self.source_vocab_size, self.target_vocab_size,
                                             seed=self.t.seed)
            self.variables = list(self.model.trainable_variables)
            self.optimizer = Adam(self.variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")  # completed epochs
            self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
            self.best_eval_loss = tf.Variable(float("inf"), trainable=False, name="best_eval_loss")
            # The best value of trainer.select_by so far, higher is better (-eval loss for "loss").
            self.best_selection = tf.Variable(float("-inf"), trainable=False, name="best_selection")
            self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs")
        self.checkpoint = ck.build_checkpoint(
            self.model, optimizer=self.optimizer, step=self.step, epoch=self.epoch,
            step_in_epoch=self.step_in_epoch, best_eval_loss=self.best_eval_loss, bad_epochs=self.bad_epochs,
            best_selection=self.best_selection)
        # Non-chief workers of a multi-worker run must save too (collective ops), but to scratch space.
        root = self.training if self.chief else TrainedModel(self._scratch())
        self.manager = tf.train.CheckpointManager(self.checkpoint, root.checkpoints_dir,
                                                  max_to_keep=self.t.keep_checkpoints, step_counter=self.step)
        self.best_manager = tf.train.CheckpointManager(self.checkpoint, root.best_dir, max_to_keep=1,
                                                       step_counter=self.step)
        self.writer = (tf.summary.create_file_writer(self.training.tensorboard_dir) if self.chief
                       else tf.summary.create_noop_writer())

    def _resume(self) -> bool:
        """Restore the newest readable checkpoint of checkpoints/ or best/ (both hold the whole
        training state); unreadable ones are logged with their path and passed over, and with none
        readable training starts from scratch."""
        candidates = sorted(checkpoint_prefixes(self.training.checkpoints_dir)
                            + checkpoint_prefixes(self.training.best_dir), key=checkpoint_number, reverse=True)
        latest, skipped = first_readable(candidates)
        if not latest:
            if skipped:
                logger.warning("no readable checkpoint in %s (%d unreadable): training starts from scratch",
                               self.out, len(skipped))
            return False
        ck.restore_into(self.checkpoint, latest, partial=False)
        logger.info("resuming from %s: step %d, epoch %d (+%s)", latest, int(self.step.numpy()),
                    int(self.epoch.numpy()), plural(int(self.step_in_epoch.numpy()), "step"))
        return True

    # ------------------------------------------------------------ compiled steps

    def _distribute(self, dataset: tf.data.Dataset, files: list[str]):
        if self.strategy is tf.distribute.get_strategy() and self.t.distribution == "none":
            return dataset
        dataset = with_shard_policy(dataset, shard_policy(files, self.workers))
        return self.strategy.experimental_distribute_dataset(dataset)

    def _log_sharding(self) -> None:
        for split, files in (("train", self.train_files), ("eval", self.eval_files)):
            if shard_policy(files, self.workers) == tf.data.experimental.AutoShardPolicy.FILE:
                logger.info("%s, %d %s shard(s): each worker reads its own shards", plural(self.workers, "worker"),
                            len(files), split)
            else:
                logger.info("%s, %d %s shard(s): every worker reads them all and keeps its part of "
                            "each batch (preprocess.num_shards >= %d lets each read its own)",
                            plural(self.workers, "worker"), len(files), split, self.workers)

    def _compile(self) -> None:
        strategy, model, variables, t = self.strategy, self.model, self.variables, self.t
        sub_batches = self.sub_batches
        # Built once: re-iterating a dataset is cheaper than rebuilding (and retracing) it every epoch,
        # and a small eval split is kept in memory, which also skips the iterator start-up.
        if self.multi_worker:
            self._log_sharding()
        self.eval_dataset = self._distribute(
            make_dataset(self.eval_files, self.artifact, self.t.batch_size, training=False, features=self.features),
            self.eval_files)
        spec = self.eval_dataset.element_spec
        if self.t.distribution == "none" and self._eval_examples() <= EVAL_IN_MEMORY_EXAMPLES:
            try:
                self.eval_dataset = list(self.eval_dataset)
            except tf.errors.OpError as e:
                raise self._input_error(e, self.eval_files) from None
        total_steps = tf.constant(self.total_steps, tf.int64)

        def reduce(value):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

        def replica_grads(batch, seed, control):
            # Every replica divides by the global number of real target tokens (known from the
            # input), so the summed gradients are already the mean: no scaling pass over them.
            context = tf.distribute.get_replica_context()
            local_tokens = tf.cast(tf.reduce_sum(batch["target_length"]), tf.float32)
            # One all-reduce for the token count and the control values (their mean: every worker
            # then holds the same time fraction, and a stop flag raised anywhere stays above 0).
            shared = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat([local_tokens[None], control], 0))
            tokens, control = shared[0], shared[1:] / tf.cast(context.num_replicas_in_sync, tf.float32)
            # Training noise from a stateless seed of (trainer.seed, step, replica): a resumed run
            # draws the same dropout masks as an uninterrupted one.
            seed = tf.random.experimental.stateless_fold_in(seed, context.replica_id_in_sync_group)
            with tf.GradientTape() as tape:
                loss_sum, _, correct = token_loss(model, batch, sub_batches, seed=seed,
                                                  label_smoothing=t.label_smoothing)
                mean_loss = loss_sum / tf.maximum(tokens, 1.0)
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(mean_loss, variables)]
            return grads, loss_sum, local_tokens, correct, control

        # One trace: the signature leaves batch and length dimensions unknown. `control` is
        # [fraction of trainer.max_minutes spent (0 without a budget), 1 if a stop signal came]:
        # the mean over the workers is what the learning-rate schedule and the loop's stop
        # decisions use, so every worker of a multi-worker run applies the same update and stops at
        # the same step (each worker's own clock and signals differ).
        @tf.function(input_signature=[spec, tf.TensorSpec([2], tf.float32)], autograph=False)
        def train_step(batch, control):
            seed = tf.stack([tf.constant(t.seed, tf.int64), self.step])
            grads, loss_sum, tokens, correct, control = strategy.run(replica_grads, args=(batch, seed, control))
            tokens = reduce(tokens)
            grads = [reduce(g) for g in grads]
            control = strategy.experimental_local_results(control)[0]  # the same on every replica
            norm = tf.linalg.global_norm(grads)
            rate = learning_rate(t, self.step, total_steps, control[0])
            loss = reduce(loss_sum) / tf.maximum(tokens, 1.0)
            # A NaN/inf loss or gradient norm: the update is not applied (two scalar checks in the
            # graph; the loop reads the same two values anyway, see _skipped_non_finite).
            finite = tf.logical_and(tf.math.is_finite(loss), tf.math.is_finite(norm))

            def update():
                self.optimizer.apply(clip_by_global_norm(grads, norm, t.clip_norm), variables, rate)
                return tf.constant(True)

            tf.cond(finite, update, lambda: tf.constant(False))
            self.step.assign_add(1)
            return {"loss": loss, "tokens": tokens, "correct": reduce(correct), "grad_norm": norm,
                    "learning_rate": rate, "time_used": control[0], "stop": control[1]}

        @tf.function(input_signature=[spec], autograph=False)
        def eval_step(batch):
            loss_sum, tokens, correct = strategy.run(lambda b: token_loss(model, b, sub_batches), args=(batch,))
            return {"loss_sum": reduce(loss_sum), "tokens": reduce(tokens), "correct": reduce(correct)}

        self.train_step, self.eval_step = train_step, eval_step
        self.dev_scorer = None
        if t.select_by != "loss":
            try:
                sample = read_sample(self.eval_files, self.artifact, t.select_sample, t.batch_size)
            except tf.errors.OpError as e:
                raise self._input_error(e, self.eval_files) from None
            self.dev_scorer = DevScorer(model, self.artifact, sample, self.config.export.replace_unknown)
            logger.info("checkpoints are chosen by %s on %d eval sentences", self._selection_name(),
                        len(self.dev_scorer))

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.train_examples / self.t.batch_size))

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.t.epochs

    # ------------------------------------------------------------ loop

    def _numpy(self, stats: dict[str, tf.Tensor]) -> dict[str, float]:
        return {k: float(v.numpy()) for k, v in stats.items()}

    def _evaluate(self) -> dict[str, float]:
        loss_sum = tokens = correct = 0.0
        try:
            for batch in self.eval_dataset:
                stats = self._numpy(self.eval_step(batch))
                loss_sum, tokens, correct = loss_sum + stats["loss_sum"], tokens + stats["tokens"], \
                    correct + stats["correct"]
        except tf.errors.OpError as e:
            raise self._input_error(e, self.eval_files) from None
        result = {"eval_loss": loss_sum / max(tokens, 1.0), "token_accuracy": correct / max(tokens, 1.0)}
        if self.dev_scorer is not None:
            try:
                scores = self.dev_scorer.score()
            except tf.errors.OpError as e:
                raise self._input_error(e, self.eval_files) from None
            result.update(dev_chrf=scores.chrf, dev_bleu=scores.bleu)
        return result

    def _selection_name(self) -> str:
        return {"loss": "eval loss", "chrf": "dev chrF", "bleu": "dev BLEU"}[self.t.select_by]

    def _selection_value(self, evaluation: dict[str, float]) -> float:
        """trainer.select_by as a higher-is-better number."""
        if self.t.select_by == "loss":
            return -evaluation["eval_loss"]
        # An epoch evaluated before select_by was switched to a dev metric (a resumed run) has none.
        return evaluation.get(f"dev_{self.t.select_by}", float("-inf"))

    def _input_error(self, error: tf.errors.OpError, files) -> UserError:
        if self.multi_worker and is_peer_failure(error):
            return self._worker_lost(error)
        message = error.message or ""
        if "indices" in message and "is not in [0," in message:
            return ArtifactError(f"a token id in {self.artifact.directory} is outside its vocabulary: the "
                                 f"TFRecords and *.vocab files come from different preprocess runs")
        return input_error(error, files, self.artifact)

    def _worker_lost(self, error: tf.errors.OpError) -> WorkerLostError:
        peers = lost_peers(error, self.strategy)
        latest = tf.train.latest_checkpoint(self.training.checkpoints_dir)
        return WorkerLostError(
            f"training stopped at step {int(self.step.numpy())}: lost contact with "
            f"{', '.join(peers) if peers else 'another worker'} of the cluster; the last checkpoint is "
            f"{latest or 'none (nothing was saved yet)'}. Start every worker again with the same command to "
            f"resume from it")

    def _epoch_length(self) -> tuple[int, bool]:
        """The steps of one epoch, and whether that is a count: the last epoch that ran to its end
        counted them (the same in every epoch: how many batches the split makes does not depend on
        the shuffle); before that, ceil(examples / batch size), exact unless batches are bucketed
        by length (every bucket ends in a partial batch) or each worker reads its own shards."""
        counted = getattr(self, "epoch_steps", None)
        if counted:
            return counted, True
        return self.steps_per_epoch, not self.t.bucket_by_length and not self.multi_worker

    def _position(self) -> tuple[int, str]:
        """The step within the epoch (a resumed epoch counts its steps before the resume), and the
        epoch's length as shown: `267`, or `~258` while estimated."""
        position = int(self.step_in_epoch.numpy())
        length, counted = self._epoch_length()
        return position, str(length) if counted else f"~{max(length, position)}"

    def _remaining_steps(self, epoch: int) -> int:
        length, _ = self._epoch_length()
        position = int(self.step_in_epoch.numpy())
        return max(length - position, 0) + (self.t.epochs - epoch - 1) * max(length, position)

    def _log_progress(self, epoch: int, totals: EpochTotals, stats: dict[str, float]) -> None:
        """The progress line: the mean loss over the steps since the previous line, the position in
        the epoch, tokens/s and the ETA once measured (`-` before), the time budget left. The record
        also carries `progress`, which `seq2seq run`'s live display turns into its training bar."""
        step = int(self.step.numpy())
        position, length = self._position()
        remaining = self._remaining_steps(epoch)
        timed = self.steady.timed_steps
        eta = self._eta(remaining * self.steady.timed_seconds / timed) if timed else float("nan")
        budget = "" if self.t.max_minutes is None else f" budget left {format_seconds(self._budget_left())}"
        rate = totals.tokens_per_second
        line = (f"epoch {epoch + 1}/{self.t.epochs} step {step} ({position}/{length}) "
                f"loss {_number(totals.loss_since_last_line(), '.4f')} tok/s {_number(rate, '.0f')} "
                f"lr {stats['learning_rate']:.3g} ETA {format_seconds(eta)}{budget}")
        fraction = max(step / max(step + remaining, 1), self._time_used())
        shown = f"epoch {epoch + 1}/{self.t.epochs} step {step} ({position}/{length}) ETA {format_seconds(eta)}{budget}"
        logger.info("%s", line, extra={"progress": {"fraction": fraction, "text": shown}})

    def _budget_left(self) -> float:
        """Seconds of trainer.max_minutes left (inf without a budget)."""
        if self.t.max_minutes is None:
            return float("inf")
        return max(60.0 * self.t.max_minutes - self._elapsed(), 0.0)

    def _eta(self, seconds_for_the_epochs: float) -> float:
        """Training ends when the epochs or the time budget run out, whichever comes first."""
        return min(seconds_for_the_epochs, self._budget_left())

    def _save(self, reason: str) -> str:
        with writing(self.manager.directory):
            path = self.manager.save(checkpoint_number=self.step)
        logger.info("checkpoint %s (%s)", path, reason)
        return path

    def _scratch(self) -> str:
        """Where a non-chief worker saves its (never read) checkpoints."""
        return f"{self.out}/.worker-{self.strategy.cluster_resolver.task_id}"

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            if not self.chief and io.exists(self._scratch()):
                io.gfile().rmtree(self._scratch())

    def _run(self) -> dict[str, Any]:
        self._prepare_out()
        self._build_state()
        resumed = self._resume()
        metrics = self.training.metrics() if resumed else {}
        self.warm_started = metrics.get("warm_start")  # a resumed run keeps what its first attempt started from
        if not resumed and self.warm_start_from and self.t.warm_start == "auto":
            with self.strategy.scope():
                self.warm_started = warm_start(self.model, self.warm_start_from, self.artifact, self.config.model,
                                               self.t.warm_start_min_overlap)
        history = [h for h in metrics.get("history", []) if h["epoch"] <= int(self.epoch.numpy())]
        # A resumed run shows the epoch length an earlier one counted.
        self.epoch_steps = next((h["epoch_steps"] for h in reversed(history) if h.get("epoch_steps")), None)
        self.previous_wall_time = metrics.get("wall_time_s", 0.0)
        if int(self.epoch.numpy()) >= self.t.epochs or self._stopped_early() or self._budget_spent(0.0):
            logger.info("%s is already trained (%s%s); nothing to do", self.out,
                        plural(int(self.epoch.numpy()), "epoch"),
                        ", time budget spent" if self._budget_spent(0.0) else "")
            previous_rate = metrics.get("train_tokens_per_second")
            return self._write_metrics(history, self._stopped_early(), metrics.get("wall_time_s", 0.0),
                                       float("nan") if previous_rate is None else previous_rate)
        self._compile()
        self.run_started = time.perf_counter()
        self.steady = EpochTotals()  # every step of this process but its first (which traces)
        with stop_on_signals() as stop, self.writer.as_default():
            try:
                self._loop(history, stop)
            except tf.errors.OpError as e:
                raise self._input_error(e, self.train_files) from None
        self.writer.flush()
        return self._write_metrics(history, stopped_early=self._stopped_early())

    def _batches(self) -> Iterator[tuple[int, Any]]:
        """(epoch, batch) for every remaining batch of the run, resuming mid-epoch where a checkpoint was.

        Without distribution this is one tf.data pipeline over all epochs (each epoch shuffled with
        seed + epoch), so no per-epoch rebuild or iterator start-up stalls the loop.
        """
        start, skip = int(self.epoch.numpy()), int(self.step_in_epoch.numpy())

        def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
            dataset = make_dataset(self.train_files, self.artifact, self.t.batch_size, training=True,
                                   seed=self.t.seed + epoch, shuffle_buffer=self.t.shuffle_buffer,
                                   bucket_by_length=self.t.bucket_by_length, prefetch=False, features=self.features)
            return dataset.skip(tf.where(tf.equal(epoch, start), tf.constant(skip, tf.int64), 0))

        if self.t.distribution == "none":
            dataset = tf.data.Dataset.range(start, self.t.epochs).flat_map(
                lambda e: epoch_batches(e).map(lambda b: (e, b))).prefetch(AUTOTUNE)
            for epoch, batch in dataset:
                yield int(epoch), batch
            return
        for epoch in range(start, self.t.epochs):
            dataset = epoch_batches(tf.constant(epoch, tf.int64)).prefetch(AUTOTUNE)
            for batch in self._distribute(dataset, self.train_files):
                yield epoch, batch

    def _loop(self, history: list[dict[str, Any]], stop: dict[str, Optional[str]]) -> None:
        # A run stopped after the last batch of an epoch but before its evaluation resumes with that
        # epoch open, so it is still evaluated and checkpointed even when no batch of it remains.
        current = int(self.epoch.numpy()) if int(self.step_in_epoch.numpy()) else None
        totals, last = EpochTotals(), {}
        epoch_started = tick = time.perf_counter()
        first_step = True
        for epoch, batch in self._batches():
            if epoch != current:
                if current is not None:
                    history.append(self._end_epoch(current, totals, last, epoch_started))
                    self._write_metrics(history)
                    if self._stopped_early() or self._out_of_time(last):
                        if self._out_of_time(last):
                            logger.info("time budget of %s spent at the end of epoch %d: stopping",
                                        plural(self.t.max_minutes, "minute"), current + 1)
                        return
                current, totals = epoch, EpochTotals()
                epoch_started = tick = time.perf_counter()
            control = tf.constant([self._time_used(), 1.0 if stop["signal"] else 0.0], tf.float32)
            last = self._numpy(self.train_step(batch, control))
            now = time.perf_counter()
            if self._skipped_non_finite(last):
                totals.skipped += 1
                totals.steps += 1  # the batch position in the progress line still moves on
            else:
                totals.add(last)
            if not first_step:
                for agg in (totals, self.steady):
                    agg.timed_tokens += last["tokens"]
                    agg.timed_seconds += now - tick
                    agg.timed_steps += 1
            first_step = False
            self.step_in_epoch.assign_add(1)
            self._after_step(epoch, totals, last, epoch_started, history, stop)
            if self._out_of_time(last):
                position, length = self._position()
                logger.info("time budget of %s spent at step %d, step %d/%s of epoch %d: evaluating, checkpointing "
                            "and stopping", plural(self.t.max_minutes, "minute"), int(self.step.numpy()), position,
                            length, current + 1)
                history.append(self._end_epoch(current, totals, last, epoch_started, True))
                self._write_metrics(history)
                return
            tick = time.perf_counter()
        if current is not None:
            history.append(self._end_epoch(current, totals, last, epoch_started))
            self._write_metrics(history)

    def _skipped_non_finite(self, stats: dict[str, float]) -> bool:
        """True when the step's loss or gradient norm was NaN/inf, so train_step did not apply its
        update: under trainer.on_nonfinite=skip_batch a warning (and, after
        MAX_CONSECUTIVE_SKIPPED_BATCHES in a row, an error); under fail a NonFiniteTrainingError.

        The same two values the graph checked, read with the rest of the step's stats: no extra sync.
        """
        if math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"]):
            self.consecutive_skipped = 0
            return False
        step = int(self.step.numpy())
        what = f"loss {stats['loss']}, gradient norm {stats['grad_norm']}"
        if self.t.on_nonfinite == "skip_batch":
            self.consecutive_skipped = getattr(self, "consecutive_skipped", 0) + 1
            if self.consecutive_skipped < MAX_CONSECUTIVE_SKIPPED_BATCHES:
                logger.warning("step %d: non-finite %s; batch skipped, its update not applied "
                               "(trainer.on_nonfinite=skip_batch)", step, what)
                return True
            raise NonFiniteTrainingError(
                f"training stopped at step {step}: {self.consecutive_skipped} batches in a row had a non-finite "
                f"loss or gradient norm (last: {what}){self._weights_note()}. Lower trainer.learning_rate "
                f"({self.t.learning_rate:g}) or set trainer.clip_norm, and train into a new --out")
        latest = self.manager.latest_checkpoint
        raise NonFiniteTrainingError(
            f"training diverged at step {step}: non-finite {what}; the update was not applied"
            f"{self._weights_note()}. The last checkpoint is {latest or 'none (nothing was saved)'}. Lower "
            f"trainer.learning_rate ({self.t.learning_rate:g}) or set trainer.clip_norm, or set "
            f"trainer.on_nonfinite=skip_batch to skip such batches")

    def _weights_note(self) -> str:
        """On the error path only (a pass over every variable): which weights are already non-finite."""
        broken = [v.name.split(":")[0] for v in self.variables if not bool(tf.reduce_all(tf.math.is_finite(v)))]
        if not broken:
            return ""
        return (f"; the weights already hold NaN/inf ({', '.join(broken[:5])}{' ...' if len(broken) > 5 else ''}): "
                f"the checkpoint or warm start this run began from, or an earlier update, broke them")

    def _after_step(self, epoch: int, totals: EpochTotals, stats: dict[str, float], epoch_started: float,
                    history: list[dict[str, Any]], stop: dict[str, Optional[str]]) -> None:
        """Progress line and TensorBoard scalars, periodic checkpoints, and the signal check."""
        step = int(self.step.numpy())
        if step % self.t.log_every_steps == 0:
            self._log_progress(epoch, totals, stats)
            for name in ("loss", "learning_rate", "grad_norm"):
                scalar_summary(f"train/{name}", stats[name], step=step)
            if math.isfinite(totals.tokens_per_second):
                scalar_summary("train/tokens_per_second", totals.tokens_per_second, step=step)
        if self.t.checkpoint_every_steps and step % self.t.checkpoint_every_steps == 0:
            every = self.t.checkpoint_every_steps
            self._save("every step" if every == 1 else f"every {every} steps")
        # A multi-worker run acts on the flag every worker saw in the step (a signal here, or on
        # another worker); one process acts on its own signal at once.
        if stats["stop"] > 0 or (stop["signal"] and not self.multi_worker):
            cause = stop["signal"] or "a stop signal to another worker"
            path = self._save(cause)
            self._write_metrics(history)
            error = TrainingInterrupted(f"training stopped by {cause} at step {step}; checkpoint {path} saved. "
                                        f"Run the same command again to resume")
            # The shell's convention (143, 130); another worker's signal counts as a SIGTERM.
            error.exit_code = 128 + int(signal.Signals[stop["signal"] or "SIGTERM"])
            raise error

    def _elapsed(self) -> float:
        """Training wall time so far, earlier (resumed) runs of this folder included."""
        started = getattr(self, "run_started", None)
        return self.previous_wall_time + (time.perf_counter() - started if started is not None else 0.0)

    def _time_used(self) -> float:
        """The fraction of trainer.max_minutes spent so far (0.0 without a budget)."""
        if self.t.max_minutes is None:
            return 0.0
        return min(self._elapsed() / (60.0 * self.t.max_minutes), 1.0)

    def _out_of_time(self, stats: dict[str, float]) -> bool:
        """trainer.max_minutes is used up: by the time the workers shared at the last step in a
        multi-worker run (so that all stop at the same step), else by this process's clock."""
        if not self.multi_worker:
            return self._budget_spent()
        return self.t.max_minutes is not None and stats.get("time_used", 0.0) >= 1.0

    def _budget_spent(self, elapsed: Optional[float] = None) -> bool:
        """trainer.max_minutes is set and used up (ELAPSED seconds; 0.0 to ask about earlier runs only)."""
        if self.t.max_minutes is None:
            return False
        used = self._elapsed() if elapsed is None else self.previous_wall_time + elapsed
        return used >= 60.0 * self.t.max_minutes

    def _stopped_early(self) -> bool:
        patience = self.t.early_stopping_patience
        return bool(patience) and int(self.bad_epochs.numpy()) >= patience

    def _end_epoch(self, epoch: int, totals: EpochTotals, last: dict[str, float], started: float,
                   budget_stop: bool = False) -> dict[str, Any]:
        """Evaluate, keep the best checkpoint, count patience, save, log and summarize one epoch (or,
        on BUDGET_STOP, the part of it trained when the time budget ran out)."""
        evaluation = self._evaluate()
        step = int(self.step.numpy())
        position, length = self._position()
        if budget_stop:
            reason = f"time budget spent at step {step}, step {position}/{length} of epoch {epoch + 1}"
        else:
            reason = f"end of epoch {epoch + 1}"
            self.epoch_steps = position  # the epoch ran out of batches: its length, counted
        self.best_eval_loss.assign(min(evaluation["eval_loss"], float(self.best_eval_loss.numpy())))
        selection = self._selection_value(evaluation)
        # Compared as the float32 the variable stores: a score equal to the best must not count as
        # better because the stored copy was rounded down.
        improved = bool(np.float32(selection) > self.best_selection.numpy())
        if improved:
            self.best_selection.assign(selection)
            self.bad_epochs.assign(0)
        else:
            self.bad_epochs.assign_add(1)
        self.epoch.assign(epoch + 1)
        self.step_in_epoch.assign(0)
        if improved:
            with writing(self.best_manager.directory):
                self.best_manager.save(checkpoint_number=self.step)
        self._save(reason)
        rate = last.get("learning_rate", float("nan"))
        entry = {"epoch": epoch + 1, "step": step, "train_loss": totals.loss, "eval_loss": evaluation["eval_loss"],
                 "token_accuracy": evaluation["token_accuracy"], "train_token_accuracy": totals.correct / max(
                     totals.tokens, 1.0), "train_tokens_per_second": totals.tokens_per_second,
                 "learning_rate": rate, "seconds": time.perf_counter() - started,
                 "skipped_batches": totals.skipped, **{k: v for k, v in evaluation.items() if k.startswith("dev_")}}
        if not budget_stop:
            entry["epoch_steps"] = position
        scalar_summary("eval/loss", entry["eval_loss"], step=step)
        scalar_summary("eval/token_accuracy", entry["token_accuracy"], step=step)
        for name in ("dev_chrf", "dev_bleu"):
            if name in entry:
                scalar_summary(f"eval/{name[4:]}", entry[name], step=step)
        scalar_summary("train/epoch_loss", entry["train_loss"], step=step)
        remaining = (self.t.epochs - epoch - 1) * entry["seconds"]
        dev = "" if "dev_chrf" not in entry else f" dev chrF {entry['dev_chrf']:.2f} BLEU {entry['dev_bleu']:.2f}"
        logger.info("epoch %d/%d step %d loss %s eval_loss %.4f token_acc %.3f%s tok/s %s lr %.3g%s ETA %s",
                    epoch + 1, self.t.epochs, step, _number(entry["train_loss"], ".4f"), entry["eval_loss"],
                    entry["token_accuracy"], dev, _number(entry["train_tokens_per_second"], ".0f"), rate,
                    " (best)" if improved else "", format_seconds(self._eta(remaining)))
        if self._stopped_early():
            logger.info("early stopping: %s has not improved for %s (best %.4f)", self._selection_name(),
                        plural(int(self.bad_epochs.numpy()), "evaluation"), abs(float(self.best_selection.numpy())))
        return entry

    def _write_metrics(self, history: list[dict[str, Any]], stopped_early: bool = False,
                       wall_time: Optional[float] = None, tokens_per_second: Optional[float] = None
                       ) -> dict[str, Any]:
        if wall_time is None:
            wall_time = self.previous_wall_time + time.perf_counter() - self.run_started
        if tokens_per_second is None:
            tokens_per_second = self.steady.tokens_per_second
        best = max(history, key=self._selection_value) if history else {}
        final = history[-1] if history else {}
        metrics = {
            "final_eval_loss": final.get("eval_loss"),
            # The lowest eval loss; best_epoch is the epoch whose checkpoint best/ keeps (select_by).
            "best_eval_loss": min((h["eval_loss"] for h in history), default=None),
            "best_epoch": best.get("epoch"),
            "token_accuracy": final.get("token_accuracy"),
            "best_token_accuracy": best.get("token_accuracy"),
            "select_by": self.t.select_by,
            **{f"best_{k}": v for k, v in best.items() if k.startswith("dev_")},
            "steps": int(self.step.numpy()),
            "epochs": int(self.epoch.numpy()),
            "stopped_early": stopped_early,
            "time_budget_spent": self._budget_spent(),
            "wall_time_s": wall_time,
            "train_tokens_per_second": tokens_per_second if math.isfinite(tokens_per_second) else None,
            "distribution": self.t.distribution,
            "replicas": self.strategy.num_replicas_in_sync,
            "warm_start": self.warm_started,
            "sub_batches": self.sub_batches,
            # Non-finite batches skipped under trainer.on_nonfinite=skip_batch, over the finished epochs.
            "skipped_batches": sum(h.get("skipped_batches", 0) for h in history),
            "history": history,
        }
        if self.chief:
            with writing(self.training.metrics_path, "the training metrics"):
                io.write_json_atomic(self.training.metrics_path, io.without_non_finite(metrics))
        return metrics


def run_training(examples: str, out: str, config: PipelineConfig,
                 warm_start_from: Optional[str] = None) -> dict[str, Any]:
    """Train (or resume) into OUT from the preprocess output EXAMPLES; returns the metrics dict.

    `warm_start_from`, a served SavedModel, seeds a new run's weights when trainer.warm_start=auto
    and its model shape and vocabularies match (see components/trainer/warm_start.py).
    """
    if config.trainer.distribution == "multi_worker":
        read_tf_config()  # a malformed TF_CONFIG fails here (exit 2), before TensorFlow builds anything
    configure_cpu_threads(config.trainer)
    tf.random.set_seed(config.trainer.seed)
    return Trainer(examples, out, config, warm_start_from).run()
