"""The sweep spec: typed models with defaults, YAML loading, `--set` overrides, clear errors.

Every field a user can write is declared here, with `extra="forbid"` so a typo is an error
that names the field. `load_spec` returns a validated `Spec` or raises `InputError` with one
line: the dotted field, what is wrong, and what to do.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from filterkd_ray import InputError, read_yaml_mapping
from filterkd_ray.data import DATASETS
from filterkd_ray.data.noise import NOISE_KINDS
from filterkd_ray.labels import METHODS, SNAPSHOTS
from filterkd_ray.models import MODELS
from filterkd_ray.pathmodes import PATH_MODES


def _registered(what: str, registry: dict):
    """A validator: the value must name an entry of `registry`."""
    def check(v: str) -> str:
        if v not in registry:
            raise ValueError(f"unknown {what} {v!r}; choose one of {sorted(registry)}")
        return v
    return AfterValidator(check)


DatasetName = Annotated[str, _registered("dataset", DATASETS)]
ModelName = Annotated[str, _registered("model", MODELS)]
MethodName = Annotated[str, _registered("method", METHODS)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoiseSpec(Strict):
    kind: Literal[NOISE_KINDS] = "symmetric"   # type: ignore[valid-type]
    rates: list[float] = Field(default=[0.0], min_length=1)
    matrix: list[list[float]] | None = None
    path: str | None = None      # kind 'file': a per-sample label file (data/noise_file.py)
    key: str | None = None       # kind 'file': the entry of a .pt/.npz (e.g. worse_label)

    @field_validator("rates")
    @classmethod
    def _rates(cls, v):
        for r in v:
            if not 0.0 <= r < 1.0:
                raise ValueError(f"rate {r} is outside [0, 1)")
        if len(set(v)) != len(v):
            raise ValueError("rates repeat a value")
        return v

    @model_validator(mode="after")
    def _matrix(self):
        if (self.kind == "matrix") != (self.matrix is not None):
            raise ValueError("give `matrix` exactly when kind is 'matrix'")
        if (self.kind == "file") != (self.path is not None):
            raise ValueError("give `path` (a label file) exactly when kind is 'file'")
        if self.key is not None and self.kind != "file":
            raise ValueError("`key` applies only to kind 'file'")
        if self.kind == "file":
            from filterkd_ray.data.noise_file import SUFFIXES
            p = Path(self.path).expanduser()
            if p.suffix.lower() not in SUFFIXES:
                raise ValueError(f"path {self.path!r}: unknown label-file format; use one of "
                                 f"{list(SUFFIXES)}")
            if not p.is_file():
                raise ValueError(f"path {self.path!r}: label file not found")
            if len(self.rates) != 1:
                raise ValueError("kind 'file' takes its noise from the file: give one rate, "
                                 "used only as the results' noise_rate label (e.g. [0.4])")
        return self


class DataSpec(Strict):
    name: DatasetName
    options: dict = {}          # keyword arguments of the dataset's loader
    noise: NoiseSpec = NoiseSpec()

    @model_validator(mode="after")
    def _options(self):
        params = inspect.signature(DATASETS[self.name]).parameters
        unknown = sorted(set(self.options) - set(params))
        if unknown:
            raise ValueError(f"options {unknown} are not options of dataset {self.name!r}; "
                             f"allowed: {sorted(params)}")
        return self


class TrainSpec(Strict):
    model: ModelName = "mlp"
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    nesterov: bool = False
    schedule: Literal["constant", "cosine", "step", "onecycle"] = "cosine"
    milestones: list[int] = []
    gamma: float = Field(0.1, gt=0, le=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    warmup_fraction: float = Field(0.2, gt=0, lt=1)
    drop_last: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"
    select_metric: Literal["val_acc", "val_nll"] = "val_acc"

    @model_validator(mode="after")
    def _nesterov(self):
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if self.schedule == "step" and not self.milestones:
            raise ValueError("schedule 'step' needs milestones (epochs)")
        return self


class FloatRange(Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _order(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


# A search dimension: a constant, a float range, or a list of choices.
Dimension = Union[float, str, FloatRange, list[Union[float, str]]]

DEFAULT_SPACE: dict[str, dict] = {
    "oht": {},
    "ls": {"ls_epsilon": FloatRange(low=0.0, high=0.5)},
    "kd": {"temperature": FloatRange(low=1.0, high=10.0, log=True),
           "distill_weight": FloatRange(low=0.0, high=1.0)},
    "eskd": {"temperature": FloatRange(low=1.0, high=10.0, log=True),
             "distill_weight": FloatRange(low=0.0, high=1.0)},
    "filter_kd": {"ema_rate": FloatRange(low=0.01, high=1.0, log=True),
                  "temperature": FloatRange(low=1.0, high=10.0, log=True),
                  "distill_weight": FloatRange(low=0.0, high=1.0),
                  "snapshot": ["best", "last"]},
    # The prediction-memory family (family.py); ema_rate = weight of the newest prediction.
    "temporal_ensembling": {"ema_rate": FloatRange(low=0.05, high=0.9, log=True),
                            "temperature": FloatRange(low=1.0, high=4.0, log=True),
                            "distill_weight": FloatRange(low=0.0, high=1.0)},
    "ps_kd": {"pskd_alpha": FloatRange(low=0.0, high=1.0)},
    "sat": {"ema_rate": FloatRange(low=0.02, high=0.5, log=True),
            "start_epoch": [2.0, 5.0, 10.0]},
    "elr": {"ema_rate": FloatRange(low=0.01, high=0.9, log=True),
            "elr_lambda": FloatRange(low=0.3, high=10.0, log=True)},
}

PARAM_BOUNDS = {"ema_rate": (0.0, 1.0, "(0, 1]"), "temperature": (0.0, None, "> 0"),
                "distill_weight": (0.0, 1.0, "[0, 1]"), "ls_epsilon": (0.0, 1.0, "[0, 1)"),
                "pskd_alpha": (0.0, 1.0, "[0, 1]"),
                "start_epoch": (0.0, None, ">= 0 (epochs)"), "elr_lambda": (0.0, None, ">= 0")}
# What a spec without `methods:` runs: the paper's five (family.py's are opt-in).
PAPER_METHODS = ["oht", "ls", "kd", "eskd", "filter_kd"]


class SearchSpec(Strict):
    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    metric: Literal["val_acc", "val_nll"] = "val_acc"
    seed: int = 0                         # the TPE sampler's seed
    # The seed whose teacher the search distils from. One for now: a search objective averaged
    # over several seeds is not implemented, and a second seed must not be silently ignored.
    seeds: list[int] | None = Field(None, min_length=1, max_length=1)
    scheduler: Literal["none", "asha"] = "none"
    grace_period: int = Field(1, ge=1)
    space: dict[str, dict[str, Dimension]] = {}

    @model_validator(mode="after")
    def _space(self):
        for method, dims in self.space.items():
            if method not in METHODS:
                raise ValueError(f"space: unknown method {method!r}; choose from {sorted(METHODS)}")
            for p, dim in dims.items():
                if p not in METHODS[method].params:
                    raise ValueError(f"space.{method}: {p!r} is not a hyperparameter of "
                                     f"{method}; it takes {list(METHODS[method].params)}")
                _check_dimension(f"space.{method}.{p}", p, dim)
        return self

    def space_for(self, method: str) -> dict:
        return {**DEFAULT_SPACE[method], **self.space.get(method, {})}


def _check_dimension(where: str, param: str, dim) -> None:
    values = dim if isinstance(dim, list) else [dim.low, dim.high] if isinstance(dim, FloatRange) else [dim]
    if isinstance(dim, list) and not dim:
        raise ValueError(f"{where}: an empty list of choices")
    for v in values:
        if param == "snapshot":
            if v not in SNAPSHOTS:
                raise ValueError(f"{where}: {v!r}; choose from {list(SNAPSHOTS)}")
            continue
        if isinstance(v, str):
            raise ValueError(f"{where}: {v!r} is not a number")
        lo, hi, text = PARAM_BOUNDS[param]
        bad = v < lo or (hi is not None and v > hi) or (param in ("temperature", "ema_rate") and v == 0) \
            or (param == "ls_epsilon" and v == 1.0)
        if bad:
            raise ValueError(f"{where}: {v} is outside {text}")


class ScalingSpec(Strict):
    num_workers: int = Field(1, ge=1)        # >1: a Ray Train TorchTrainer (DDP)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)  # fractions let 1-worker trials share a GPU
    resources_per_worker: dict[str, float] = {}
    max_failures: int = Field(2, ge=0)
    checkpoint_every: int = Field(5, ge=1)   # epochs
    # Report metrics to Tune every k epochs (and at every checkpoint and the last epoch):
    # fewer results for the driver to process; ASHA then decides at the next report.
    report_every: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _gpu(self):
        if self.use_gpu and self.gpus_per_worker == 0:
            raise ValueError("use_gpu needs gpus_per_worker > 0")
        if not self.use_gpu and self.gpus_per_worker > 0:
            raise ValueError("gpus_per_worker > 0 needs use_gpu: true")
        if self.num_workers > 1 and 0 < self.gpus_per_worker < 1:
            raise ValueError("fractional gpus_per_worker works only with num_workers: 1 "
                             "(two DDP ranks on one GPU fail in NCCL)")
        return self


class PathSpec(Strict):
    """How a teacher keeps its learning path for Filter-KD (pathmodes.py; which mode fits
    which dataset size, with the memory arithmetic: README "Path modes")."""
    mode: Literal[PATH_MODES] = "dense"   # type: ignore[valid-type]
    # bank: filtered tables kept online for these EMA rates only; the search picks among them.
    bank_rates: list[float] = Field(default=[0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0], min_length=1)
    topk: int = Field(5, ge=1)             # topk: probabilities kept per sample and epoch

    @field_validator("bank_rates")
    @classmethod
    def _rates(cls, v):
        for a in v:
            if not 0.0 < a <= 1.0:
                raise ValueError(f"EMA rate {a} is outside (0, 1]")
        if len(set(v)) != len(v):
            raise ValueError("bank_rates repeat a value")
        return sorted(v)


def reads_teacher_path(method: str) -> bool:
    """Filter-KD filters the teacher's path (family methods' ema_rate is their own memory's)."""
    m = METHODS[method]
    return m.needs_teacher and "ema_rate" in m.params


class Spec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataSpec
    seeds: list[int] = Field(default=[0], min_length=1)
    teacher: TrainSpec = TrainSpec()
    student: TrainSpec = TrainSpec()
    methods: list[MethodName] = Field(default=PAPER_METHODS, min_length=1)
    search: SearchSpec = SearchSpec()
    scaling: ScalingSpec = ScalingSpec()
    loss_scale: float = Field(1.0, gt=0)     # 2.0 = the official code's extra factor
    reproduce: bool = True                   # re-run each best config on every seed
    path: PathSpec = PathSpec()
    # Born-again distillation: generation g + 1 of a teacher-based method distils from its own
    # generation-g student (same hyperparameters, same seed); 1 = the teacher's students only.
    generations: int = Field(1, ge=1)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("methods repeat a name")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("seeds repeat a value")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.search.seeds is not None and not set(self.search.seeds) <= set(self.seeds):
            raise ValueError(f"search.seeds {self.search.seeds} must be a subset of seeds {self.seeds}")
        for m in self.search.space:
            if m not in self.methods:
                raise ValueError(f"search.space.{m}: method {m!r} is not in methods {self.methods}")
        if self.search.scheduler == "asha" and self.search.grace_period > self.student.epochs:
            raise ValueError("search.grace_period exceeds student.epochs")
        if self.generations > 1 and not self.reproduce:
            raise ValueError("generations > 1 needs reproduce: true (generation 2 distils from "
                             "the reproduced generation-1 students)")
        if self.generations > 1 and not any(METHODS[m].needs_teacher for m in self.methods):
            raise ValueError(f"generations > 1: none of methods {self.methods} distils from a "
                             "teacher (add kd, eskd or filter_kd)")
        if self.path.mode == "bank":
            for m in self.methods:
                dim = self.search.space.get(m, {}).get("ema_rate")
                if dim is None or not reads_teacher_path(m):
                    continue
                values = dim if isinstance(dim, list) else [dim]
                if isinstance(dim, FloatRange) or not set(values) <= set(self.path.bank_rates):
                    raise ValueError(f"search.space.{m}.ema_rate: path.mode 'bank' keeps tables "
                                     f"for path.bank_rates {self.path.bank_rates} only; give "
                                     "ema_rate as a list of those rates (or add rates to the bank)")
        return self

    def space_for(self, method: str) -> dict:
        """The search space of `method`; with a bank, Filter-KD picks EMA rates from its grid."""
        space = self.search.space_for(method)
        if self.path.mode == "bank" and reads_teacher_path(method) \
                and "ema_rate" not in self.search.space.get(method, {}):
            space["ema_rate"] = list(self.path.bank_rates)
        return space

    @property
    def search_seeds(self) -> list[int]:
        return self.search.seeds or self.seeds[:1]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` (value parsed as YAML) into a nested dict, creating levels as needed."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected key=value, e.g. search.num_samples=4")
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise InputError(f"--set {key}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = yaml.safe_load(value)
    return raw


_UNION_TAGS = {"float", "str", "int", "bool", "FloatRange"}


def format_error(err: ValidationError) -> str:
    """The most useful error as one line: our own checks (value errors) before type errors,
    with pydantic's union-member tags dropped from the dotted location."""
    errors = err.errors()
    e = next((x for x in errors if x["type"] == "value_error"), errors[0])
    loc = ".".join(str(p) for p in e["loc"]
                   if str(p) not in _UNION_TAGS and not str(p).startswith(("function-", "list[")))
    msg = e["msg"].removeprefix("Value error, ")
    return f"{loc or 'spec'}: {msg}"


def validate_spec(raw) -> Spec:
    if not isinstance(raw, dict):
        raise InputError("spec: the file must hold a YAML mapping (name:, data:, ...)")
    try:
        return Spec.model_validate(raw)
    except ValidationError as err:
        raise InputError(format_error(err)) from None


def load_spec(path: str | Path, overrides: list[str] = ()) -> Spec:
    # A mapping before the overrides: --set on a YAML list would otherwise crash.
    raw = read_yaml_mapping(path, "spec file", "name:, data:, ...")
    return validate_spec(apply_overrides(raw, list(overrides)))
