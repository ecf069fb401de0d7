"""Training on Ray Train: a flat validated spec, a per-worker loop, and the final checkpoint with its card.

* :class:`TrainSpec` is the one flat, validated training spec (YAML file or CLI flags).
* :func:`train` runs a Ray Train ``TorchTrainer`` with N workers (CPU + gloo, or GPU + NCCL), DDP,
  checkpoints every epoch through Ray Train (a rerun with the same run name resumes from the latest
  one), then writes the final artefact: an ``sgma_model`` checkpoint whose card carries the bands (with
  common names), the train-split statistics, the classes, the training data and per-subset metrics.
* The worker loop is composed from parts: it receives the model and an *objective* (the loss:
  :class:`SGMAObjective` or :class:`DistillObjective` for RobustSeg stage 2) and runs
  :func:`train_epoch` / :func:`validate`, which are plain functions usable without Ray.

Optimisation follows the paper's recipe shape (AdamW, linear warm-up, poly decay 0.9), with a larger
learning rate than the paper's 6e-5 by default because our models start from scratch on few chips.
Modality dropout (whole modalities per sample + cloud-like per-pixel holes) acts on availability masks.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sgma_batch.errors import SpecError

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"

# STAC eo:bands common names of the canonical band names (sgma_batch.scenes); None where STAC has none.
COMMON_NAMES: Mapping[str, str | None] = {
    "blue": "blue", "green": "green", "red": "red", "rededge1": "rededge", "rededge2": "rededge",
    "rededge3": "rededge", "nir": "nir", "nir08": "nir08", "swir16": "swir16", "swir22": "swir22",
    "vv": None, "vh": None, "elevation": None,
}
DEFAULT_COLLECTIONS: Mapping[str, str] = {
    "s2": "sentinel-2-c1-l2a", "s1": "sentinel-1-rtc", "dem": "cop-dem-glo-30",
}


class TrainSpec(BaseModel):
    """One training job, flat and validated (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="run name; a rerun with the same name and storage resumes")
    chips: str = Field(description="chip store written by `sgma-batch chips` (a path or an s3:// gs:// az:// URL)")
    storage: str = Field("runs", description="Ray Train storage (checkpoints, results): a path, or an s3:// or "
                         "gs:// URL, which Ray Train writes through pyarrow")
    out: str | None = Field(None, description="final checkpoint directory, a path or an s3:// gs:// az:// URL "
                            "(default <storage>/<name>/model)")
    model: str = "sgma_tiny"
    modalities: list[str] | None = Field(None, description="train on these modalities of the chips only")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    poly_power: float = Field(0.9, ge=0)
    fused_weight: float = 2.0
    mas_weight: float = 1.0
    subset_prob: float = Field(0.7, ge=0, le=1, description="chance a sample keeps a random non-empty subset")
    hole_prob: float = Field(0.3, ge=0, le=1, description="chance of cloud-like holes per kept modality")
    teacher: str | None = Field(None, description="RobustSeg stage 2: frozen teacher checkpoint (a path or a URL)")
    kd_weight: float = 50.0
    hpdm_weight: float = 100.0
    rrm_weight: float = 12.0
    kd_reduction: Literal["mean", "sum"] = Field(
        "mean", description="KD over classes: mean (RobustSeg's public code) or sum (K times stronger)")
    hpdm_variant: Literal["robustseg", "hybrid"] = Field(
        "robustseg", description="HPDM: robustseg (public code: same-modality pairs) or hybrid (random teacher "
        "modality half the time; docs/model.md)")
    augment: bool = True
    val_every: int = Field(1, ge=1, description="validate every N epochs (and always after the last)")
    workers: int = Field(2, ge=1)
    gpu: bool = False
    amp: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU)")
    threads_per_worker: int = Field(1, ge=1)
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("run name must be non-empty, without '/', not starting with '.'")
        return v

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainSpec:
        """Read a YAML spec; non-None ``overrides`` (CLI flags) win."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SpecError(f"cannot read training spec {path}: {exc}") from None
        if not isinstance(data, dict):
            raise SpecError(f"training spec {path} must be a YAML mapping of keys to values")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.build(**data)

    @classmethod
    def build(cls, **data: Any) -> TrainSpec:
        """Validate, turning pydantic's errors into one actionable :class:`SpecError` line."""
        try:
            return cls(**data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise SpecError(f"training spec: {where}: {first['msg']}") from None

    @field_validator("chips", "storage", "out", "teacher", mode="before")
    @classmethod
    def _path_or_url(cls, v: Any) -> Any:
        from sgma_batch.storage import location

        return v if v is None else str(location(v))  # file:// becomes its path; ftp:// and the like are refused

    @property
    def out_dir(self) -> Path | str:
        """The final checkpoint: a Path, or an object-storage URL (a string)."""
        from sgma_batch.storage import location

        from sgma_batch.storage import join

        return location(self.out) if self.out is not None else join(location(self.storage), self.name, "model")


# -- schedule and data ------------------------------------------------------------------------------
def lr_factor(step: int, total_steps: int, warmup_steps: int, power: float = 0.9) -> float:
    """Linear warm-up to 1, then poly decay ``(1 - progress)^power`` to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return max(0.0, 1.0 - (step - warmup_steps) / span) ** power


@dataclass(frozen=True)
class SplitData:
    """One split in memory: normalised inputs per modality (N,C,H,W), masks (N,H,W), labels (N,H,W)."""

    inputs: Mapping[str, np.ndarray]
    masks: Mapping[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_split(chips_path: str | Path, split: str, stats: Mapping[str, Any] | None = None) -> SplitData:
    """Load and normalise one split (with the store's train statistics unless ``stats`` is given)."""
    from sgma_batch.chips import ChipStore, normalise

    store = ChipStore(chips_path)
    raw = store.load(split)
    mods = [m for m in store.modalities if stats is None or m in stats]
    norm = normalise(raw, stats or store.stats, mods)
    return SplitData(norm, {m: raw[f"{m}_mask"] for m in mods}, raw["label"].astype(np.int64))


def make_batch(data: SplitData, idx: np.ndarray, device: Any, rng: np.random.Generator | None = None):
    """Torch batch of chips ``idx``; with ``rng``, a random flip / rot90 per sample (same for all parts)."""
    import torch

    inputs = {m: data.inputs[m][idx] for m in data.inputs}
    masks = {m: data.masks[m][idx] for m in data.masks}
    labels = data.labels[idx]
    if rng is not None:
        ops = rng.integers(0, 8, size=len(idx))
        def aug(a: np.ndarray) -> np.ndarray:
            out = np.empty_like(a)
            for i, op in enumerate(ops):
                x = np.rot90(a[i], k=int(op % 4), axes=(-2, -1))
                out[i] = x[..., ::-1] if op >= 4 else x
            return out
        inputs = {m: aug(v) for m, v in inputs.items()}
        masks = {m: aug(v) for m, v in masks.items()}
        labels = aug(labels)
    return (
        {m: torch.from_numpy(np.ascontiguousarray(v)).to(device) for m, v in inputs.items()},
        {m: torch.from_numpy(np.ascontiguousarray(v)).to(device) for m, v in masks.items()},
        torch.from_numpy(np.ascontiguousarray(labels)).to(device),
    )


# -- objectives (the loss the loop receives) -------------------------------------------------------
class Objective(Protocol):
    def __call__(self, model: Any, inputs: dict, full_masks: dict, masks: dict, labels: Any, generator: Any) -> Any:
        """Loss of one batch; ``masks`` after modality dropout, ``full_masks`` before it."""


@dataclass
class SGMAObjective:
    """2 x CE(fused) + 1 x CE(MAS) on the dropped-out inputs (``sgma_model.losses.sgma_loss``)."""

    fused_weight: float = 2.0
    mas_weight: float = 1.0

    def __call__(self, model, inputs, full_masks, masks, labels, generator):
        from sgma_model.losses import sgma_loss

        out = model(inputs, masks, mas=self.mas_weight > 0, generator=generator)
        return sgma_loss(out, labels, fused_weight=self.fused_weight, mas_weight=self.mas_weight)


@dataclass
class DistillObjective:
    """RobustSeg stage 2: frozen teacher on full modalities, student on dropped-out ones.

    Loss = the student's SGMA loss + RobustSeg's KD + HPDM + RRM terms (``sgma_model.robustseg``).
    """

    teacher: Any
    distill: Any  # sgma_model.robustseg.RobustSegLoss
    base: SGMAObjective

    def __call__(self, model, inputs, full_masks, masks, labels, generator):
        import torch
        from sgma_model.losses import sgma_loss

        with torch.no_grad():
            t_out = self.teacher(inputs, full_masks, return_features=True)
        s_out = model(inputs, masks, mas=self.base.mas_weight > 0, generator=generator, return_features=True)
        loss = sgma_loss(s_out, labels, fused_weight=self.base.fused_weight, mas_weight=self.base.mas_weight)
        # RobustSegLoss is built with ce_weight=0, so its "loss" is the weighted KD + HPDM + RRM only
        terms = self.distill(s_out, t_out, labels, student_masks=masks, generator=generator)
        return loss + terms["loss"]


# -- loop parts -------------------------------------------------------------------------------------
def train_epoch(
    model: Any,
    objective: Objective,
    optimizer: Any,
    scheduler: Any,
    data: SplitData,
    order: np.ndarray,
    *,
    batch_size: int,
    generator: Any,
    rng: np.random.Generator | None,
    dropout: Callable[..., dict],
    device: Any,
    autocast: Callable[[], Any],
) -> float:
    """One pass over ``order`` (chip indices); returns the mean loss."""
    model.train()
    total, n = 0.0, 0
    for s in range(0, len(order) - batch_size + 1, batch_size):
        inputs, full_masks, labels = make_batch(data, order[s:s + batch_size], device, rng)
        masks = dropout(inputs, full_masks, generator)
        with autocast():
            loss = objective(model, inputs, full_masks, masks, labels, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += float(loss.detach())
        n += 1
    return total / max(1, n)


def validate(
    model: Any, data: SplitData, idx: np.ndarray, subsets: Sequence[tuple[str, ...]], num_classes: int,
    *, batch_size: int, device: Any, autocast: Callable[[], Any],
) -> dict[tuple[str, ...], Any]:
    """Confusion matrix per modality subset (dropped convention) over chips ``idx``."""
    import torch

    from sgma_batch.evaluate import confusion_matrix, present_only

    model.eval()
    cms = {s: torch.zeros(num_classes, num_classes, dtype=torch.int64) for s in subsets}
    with torch.no_grad():
        for s in range(0, len(idx), batch_size):
            inputs, masks, labels = make_batch(data, idx[s:s + batch_size], device)
            for subset in subsets:
                x, mk = present_only(inputs, masks, subset, "dropped")
                with autocast():
                    logits = model(x, mk).logits
                cms[subset] += confusion_matrix(logits.argmax(1), labels, num_classes)
    return cms


# -- the Ray Train worker ---------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerConfig:
    """What each worker needs (small and picklable)."""

    spec: dict
    model_name: str
    model_args: dict
    stats: dict


def build_objective(spec: TrainSpec, device: Any) -> Objective:
    """The loss the loop receives: SGMA's, or RobustSeg stage 2 when a teacher is given."""
    base = SGMAObjective(spec.fused_weight, spec.mas_weight)
    if spec.teacher is None:
        return base
    from sgma_model import load_checkpoint
    from sgma_model.robustseg import RobustSegLoss

    teacher, _ = load_checkpoint(spec.teacher, map_location=device)
    teacher.eval().requires_grad_(False)
    distill = RobustSegLoss(
        teacher.num_classes, ce_weight=0.0, kd_weight=spec.kd_weight, hpdm_weight=spec.hpdm_weight,
        rrm_weight=spec.rrm_weight, kd_reduction=spec.kd_reduction, hpdm_variant=spec.hpdm_variant,
    )
    return DistillObjective(teacher, distill, base)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry: build the parts from ``config["worker"]`` and run the epochs, resuming if asked."""
    import contextlib

    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import get_device, prepare_model

    from sgma_batch.evaluate import mean_iou, modality_subsets, subset_name
    from sgma_model import create_model
    from sgma_model.dropout import modality_dropout

    wc: WorkerConfig = config["worker"]
    spec = TrainSpec(**wc.spec)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(spec.threads_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = get_device() if spec.gpu else torch.device("cpu")
    torch.manual_seed(spec.seed)  # identical initial weights on every rank
    model = create_model(wc.model_name, **wc.model_args)
    num_classes = model.num_classes
    subsets = modality_subsets(model.modalities)
    ddp_model = prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    objective = build_objective(spec, device)
    train_data = load_split(spec.chips, "train", wc.stats)
    val_data = load_split(spec.chips, "val", wc.stats)
    per_rank = len(train_data) // world
    steps_per_epoch = max(1, per_rank // spec.batch_size)
    if per_rank < spec.batch_size:
        raise SpecError(f"{len(train_data)} training chips over {world} workers is less than one batch; "
                        "lower --batch-size or --workers")
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    total = steps_per_epoch * spec.epochs
    warm = int(round(spec.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warm, spec.poly_power)
    )
    start_epoch, history = 0, []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        history = [json.loads(h) for h in state.get("history_json", [])]
        log.info("rank %d resumes at epoch %d", rank, start_epoch)
    gen = torch.Generator(device=device).manual_seed(spec.seed * 1000 + rank)
    use_amp = spec.gpu and spec.amp
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext

    def dropout(inputs, masks, g):
        return modality_dropout(inputs, masks, g, subset_prob=spec.subset_prob, hole_prob=spec.hole_prob)

    val_idx = np.arange(len(val_data))[rank::world]
    for epoch in range(start_epoch, spec.epochs):
        perm = np.random.default_rng(spec.seed + epoch).permutation(len(train_data))
        order = perm[rank::world][:per_rank]
        rng = np.random.default_rng((spec.seed, epoch, rank)) if spec.augment else None
        loss = train_epoch(
            ddp_model, objective, optimizer, scheduler, train_data, order, batch_size=spec.batch_size,
            generator=gen, rng=rng, dropout=dropout, device=device, autocast=autocast,
        )
        # finished_at: when this epoch was trained; a resumed run keeps the earlier epochs' values
        metrics: dict[str, Any] = {"epoch": epoch, "loss": loss, "lr": scheduler.get_last_lr()[0],
                                   "finished_at": time.time()}
        if len(val_data) and ((epoch + 1) % spec.val_every == 0 or epoch + 1 == spec.epochs):
            cms = validate(model, val_data, val_idx, subsets, num_classes, batch_size=spec.batch_size,
                           device=device, autocast=autocast)
            stacked = torch.stack([cms[s] for s in subsets]).to(device)
            if world > 1:
                dist.all_reduce(stacked)
            scores = {subset_name(s): mean_iou(stacked[i].cpu()) for i, s in enumerate(subsets)}
            vals = [v for v in scores.values() if not math.isnan(v)]
            metrics.update({"val_miou": scores, "val_average": float(np.mean(vals)), "val_last1": float(min(vals))})
        history.append(metrics)
        if rank == 0:
            log.info("epoch %d/%d loss %.4f%s", epoch + 1, spec.epochs, loss,
                     f" val average {metrics['val_average']:.2f} last-1 {metrics['val_last1']:.2f}"
                     if "val_average" in metrics else "")
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                torch.save({
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch,
                    "history_json": [json.dumps(h) for h in history],
                }, Path(tmp) / STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({k: v for k, v in metrics.items() if k != "val_miou"}, checkpoint=checkpoint)


# -- driver -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainResult:
    """Where the final checkpoint went, and what the last epoch measured."""

    checkpoint: Path | str  # a path or an object-storage URL
    epochs: int
    history: list[dict]
    model_hash: str


def _card_modalities(store: Any, mods: Sequence[str]) -> list[dict]:
    collections = {**DEFAULT_COLLECTIONS, **store.attrs.get("collections", {})}
    out = []
    for m in mods:
        bands = store.modalities[m]
        st = store.stats[m]
        out.append({
            "name": m,
            "collection_hint": collections.get(m),
            "bands": [{"name": b, "common_name": COMMON_NAMES.get(b), "mean": float(st["mean"][i]),
                       "std": float(st["std"][i])} for i, b in enumerate(bands)],
        })
    return out


def _ray_storage(storage: Any) -> dict[str, Any]:
    """RunConfig arguments for Ray Train's storage: a path as is; an ``s3://`` URL through a pyarrow
    S3FileSystem built from the standard variables (``AWS_ENDPOINT_URL[_S3]``, ``AWS_ALLOW_HTTP``, region).

    pyarrow's own ``from_uri`` resolves the bucket's region against AWS itself and ignores the endpoint, so
    a MinIO / moto / other S3-compatible endpoint would fail there.
    """
    import os

    text = str(storage)
    if not text.startswith("s3://"):
        return {"storage_path": text}
    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kw: dict[str, Any] = {"region": region}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kw["endpoint_override"] = host or scheme
        kw["scheme"] = scheme if host else ("http" if os.environ.get("AWS_ALLOW_HTTP", "").lower() == "true" else "https")
    if os.environ.get("AWS_SKIP_SIGNATURE", "").lower() == "true":
        kw["anonymous"] = True
    return {"storage_path": text[len("s3://"):], "storage_filesystem": fs.S3FileSystem(**kw)}


def train(spec: TrainSpec) -> TrainResult:
    """Run (or resume) a training job on Ray Train and write the final checkpoint to ``spec.out_dir``."""
    import torch
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from sgma_batch.chips import ChipStore
    from sgma_batch.storage import is_url
    from sgma_model import ModelCard, create_model, read_card, save_checkpoint

    # workers run in other directories: every path they read must be absolute
    def absolute(p: Path | str) -> str:
        return str(p) if is_url(str(p)) else str(Path(p).resolve())

    spec = spec.model_copy(update={
        "chips": absolute(spec.chips), "storage": absolute(spec.storage), "out": absolute(spec.out_dir),
        "teacher": None if spec.teacher is None else absolute(spec.teacher),
    })
    store = ChipStore(spec.chips)
    trainable = [m for m in store.modalities if store.train_pixels(m) != 0]
    if spec.modalities is None:
        # a modality no training chip holds (e.g. S2 in a SAR-only archive) has no statistics and would
        # leave an untrained stem: the model is built without it
        mods = trainable
        if len(mods) < len(store.modalities):
            log.warning("no training chip holds %s: the model is trained on %s",
                        [m for m in store.modalities if m not in mods], mods)
    else:
        mods = list(spec.modalities)
    unknown = [m for m in mods if m not in store.modalities]
    if unknown or not mods:
        raise SpecError(f"modalities {unknown or mods} are not in the chip store (it has {list(store.modalities)})")
    empty = [m for m in mods if m not in trainable]
    if empty:
        raise SpecError(f"no training chip holds {empty} (chips holding each modality: "
                        f"{store.attrs.get('present_counts')}); drop it from --modalities")
    model_args = {"modalities": {m: len(store.modalities[m]) for m in mods}, "num_classes": len(store.classes)}
    if spec.teacher is not None:
        tcard = read_card(spec.teacher)
        if tuple(tcard.modality_names) != tuple(mods):
            raise SpecError(f"teacher modalities {tcard.modality_names} differ from the student's {tuple(mods)}")
    worker = WorkerConfig(
        spec=spec.model_dump(mode="json"), model_name=spec.model, model_args=model_args,
        stats={m: store.stats[m] for m in mods},
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"worker": worker},
        torch_config=TorchConfig(backend="nccl" if spec.gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=spec.gpu,
                                     resources_per_worker=None if spec.gpu else {"CPU": 1}),
        run_config=RunConfig(name=spec.name, checkpoint_config=CheckpointConfig(num_to_keep=2),
                             **_ray_storage(spec.storage)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise SpecError(f"run {spec.name!r} produced no checkpoint; check the logs above")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    history = [json.loads(h) for h in state["history_json"]]
    model = create_model(spec.model, **model_args)
    model.load_state_dict(state["model"])
    last = history[-1] if history else {}
    training = {
        "run_name": spec.name,
        "spec": spec.model_dump(mode="json"),
        "data": {"chips": spec.chips, "source": store.attrs.get("source"),
                 "counts": store.attrs.get("counts"), "chip_px": store.attrs.get("chip_px"),
                 "statistics": "per-band mean/std over the train split's valid pixels"},
        "epochs": int(state["epoch"]) + 1,
        "metrics": {"split": "val", "convention": "dropped", "miou_per_subset": last.get("val_miou", {}),
                    "average": last.get("val_average"), "last1": last.get("val_last1")},
        "history": [{k: v for k, v in h.items() if k != "val_miou"} for h in history],
    }
    card = ModelCard.for_model(model, _card_modalities(store, mods), store.classes, training)
    saved = save_checkpoint(model, spec.out_dir, card)
    log.info("final checkpoint %s (%d epochs)", spec.out_dir, training["epochs"])
    return TrainResult(spec.out_dir, training["epochs"], history, saved.model_hash)


def export_checkpoint(src: str | Path, dst: str | Path, *, dtype: str = "float16") -> Path:
    """Copy a checkpoint with its weights stored as ``dtype`` (half the size; loads back as float32).

    Used to ship the demo model inside the package; the card (statistics, classes, metrics) is kept.
    """
    import torch

    from sgma_model import load_checkpoint, save_checkpoint

    model, card = load_checkpoint(src)
    model.to(getattr(torch, dtype))
    training = {**card.training, "weights_dtype": dtype}
    save_checkpoint(model, dst, type(card)(card.architecture, card.arguments, card.modalities, card.classes, training))
    return Path(dst)
