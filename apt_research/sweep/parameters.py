"""The sweep parameters, declared once.

``Parameters`` (a pydantic model) gives each parameter its type, default, validator, one-line
doc, whether it changes the importance maps (``maps=True``) and whether it only says how a run
is executed (``execution=True``: shards, batches, device; the records are the same). From it
derive: spec and notebook validation (``validate_params``), run ids (a hash of the validated
parameters but the execution ones), cache keys (``MAP_KEYS``), the parameters that vary between
runs or records (``varied_parameters``: the report's columns and the dry-run listing), and the
parameter table of docs/sweeps.md (``parameter_table``).

Relative folder paths (``dataset: photos/`` or ``dataset_options: {root: photos/}``) resolve
against a base directory: the spec file's directory for a spec, the working directory otherwise.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..calibration import STRATEGIES
from ..datasets import DATASETS, RESIZE_POLICIES, load_dataset
from .._validation import check_extent, closest
from ..contract import MAX_BINS
from ..scorers import SCORERS, get_scorer, options_with_bins, scorer_options
from ..models.vit import VIT_CONFIGS
from ..errors import ParameterError

Threshold = Annotated[float, Field(allow_inf_nan=False)]


def _field(default, doc: str, maps: bool = False, execution: bool = False, **constraints):
    return Field(default, description=doc, json_schema_extra={"maps": maps, "execution": execution}, **constraints)


class Parameters(BaseModel):
    """One configuration of a sweep run, validated."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, protected_namespaces=())

    dataset: str = _field("skimage", "`skimage`, `synthetic`, `folder` or a folder of images", maps=True)
    dataset_options: dict[str, Any] = _field(
        {}, "keyword options of the data set (e.g. `names`, `count`, `seed`, `root`)", maps=True)
    resize: Literal[RESIZE_POLICIES] = _field("center_crop", "resize policy", maps=True)
    image_size: int = _field(224, "side the images are resized to, in pixels", maps=True, ge=1)
    patch_size: int = _field(16, "base (smallest) patch size, in pixels", maps=True, ge=1)
    num_scales: int = _field(3, "number of patch sizes (base, 2x base, ...)", maps=True, ge=1)
    bins: int = _field(512, "histogram bins of the entropy scorer", maps=True, ge=2, le=MAX_BINS)
    method: str = _field("entropy", "scorer of the importance maps (a registered scorer)", maps=True)
    method_options: dict[str, Any] = _field({}, "keyword options of the scorer", maps=True)
    thresholds: Union[list[Threshold], list[list[Threshold]]] = _field(
        [[5.75, 4.0]], "one threshold setting (`num_scales - 1` numbers) or a list of settings")
    target_retention: Union[float, list[float], None] = _field(
        None, "instead of thresholds: retention(s) in (0, 1] to calibrate thresholds for")
    calibration: Literal[STRATEGIES] = _field("shared", "how thresholds are calibrated to a target retention")
    measure_speed: list[str] = _field([], "ViT models timed on packed and uniform tokens")
    limit: Union[Annotated[int, Field(ge=1)], None] = _field(None, "use only the first `limit` images", maps=True)
    shard_size: Union[Annotated[int, Field(ge=1)], None] = _field(
        None, "images per shard: a configuration is computed, kept and resumed shard by shard (one Dask task "
        "each with `--scheduler`); the records are the same", execution=True)
    batch_size: int = _field(16, "images scored at once", execution=True, ge=1)
    device: str = _field("cpu", "torch device of the scoring (`cpu`, `cuda`, `cuda:1`)", execution=True)
    model: Union[str, None] = _field(None, "classifier run on uniform and APT tokens: a timm model name or "
                                           "`synthetic` (trained in the run on the synthetic kinds; needs the "
                                           "`[models]` extra)")
    pretrained: bool = _field(True, "load the timm model's pretrained weights (false: random weights)")
    model_options: dict[str, Any] = _field({}, "keyword options of `timm.create_model`, or of "
                                               "`train_synthetic_vit` for `synthetic`")
    finetune_steps: int = _field(0, "fine-tune the classifier on APT tokens for this many steps at each threshold "
                                    "setting before it predicts (0: zero-shot; needs `model`)", ge=0)
    finetune_options: dict[str, Any] = _field({}, "keys of a finetune spec (docs/training.md) for those steps, e.g. "
                                                  "`train_data` (default `synthetic`), `batch_size`, `lr`")

    @field_validator("thresholds", "dataset_options", "method_options", "measure_speed", "model_options",
                     "finetune_options", mode="before")
    @classmethod
    def _tuples_as_lists(cls, value):
        return list(value) if isinstance(value, tuple) else value

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str, info: ValidationInfo) -> str:
        if value in DATASETS:
            return value
        folder = _resolve(value, info)
        if not folder.is_dir():
            raise ValueError(f"expects one of {sorted(DATASETS)} or an existing folder, got {value!r}"
                             + (f" (resolved to {str(folder)!r})" if str(folder) != value else ""))
        return str(folder)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value not in SCORERS:
            raise ValueError(f"expects a registered scorer {sorted(SCORERS)}, got {value!r}")
        return value

    @field_validator("target_retention")
    @classmethod
    def _targets(cls, value):
        for target in value if isinstance(value, list) else [] if value is None else [value]:
            if not 0 < target <= 1:
                raise ValueError(f"expects numbers in (0, 1], got {target!r}")
        return value

    @field_validator("measure_speed")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        for model in value:
            if model not in VIT_CONFIGS:
                raise ValueError(f"expects models among {sorted(VIT_CONFIGS)}, got {model!r}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        try:
            device = torch.device(value)
        except RuntimeError as error:
            raise ValueError(f"expects a torch device (cpu, cuda, cuda:1), got {value!r}") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"is {value!r}, but this machine has no CUDA device")
        return value

    @model_validator(mode="after")
    def _together(self, info: ValidationInfo):
        self._check_options()
        self._check_model()
        self._check_dataset_options(info)
        if self.shard_size is not None and (self.target_retention is not None or self.measure_speed):
            raise ValueError("key 'shard_size' needs fixed thresholds and no measure_speed (calibration and speed "
                             "measurements use all of a configuration's images at once)")
        if self.target_retention is None:
            self.thresholds = _threshold_settings(self.thresholds, self.num_scales)
            return self
        if "thresholds" in self.model_fields_set and self.thresholds:
            raise ValueError("keys 'thresholds' and 'target_retention' exclude each other: give one")
        if self.num_scales < 2:
            raise ValueError(f"key 'target_retention' needs num_scales >= 2, got {self.num_scales}")
        targets = self.target_retention if isinstance(self.target_retention, list) else [self.target_retention]
        self.target_retention = _distinct("target_retention", [float(t) for t in targets])
        self.thresholds = []
        return self

    def _check_model(self) -> None:
        if self.model is None:
            if self.model_options:
                raise ValueError(f"key 'model_options' needs a 'model', got model: null and {self.model_options!r}")
            if self.finetune_steps or self.finetune_options:
                raise ValueError(f"key 'finetune_steps' needs a 'model', got model: null and finetune_steps: "
                                 f"{self.finetune_steps}")
            return
        from .models import check_finetune_options

        check_finetune_options(self.finetune_options)
        from .models import SQUARE_RESIZE, check_model

        check_model(self.model, self.pretrained, self.model_options)
        if self.resize not in SQUARE_RESIZE:
            raise ValueError(f"key 'resize' is {self.resize!r}, but a 'model' takes square images: expected one of "
                             f"{SQUARE_RESIZE}")

    def _check_options(self) -> None:
        """The scorer's own checks (names and values of its options, ``bins`` included) and the library's
        extent rule, so that what a run would refuse is refused by the spec check."""
        known = sorted(set(scorer_options(self.method)) - {"bins"})
        unknown = sorted(set(self.method_options) - set(known))
        if unknown:
            raise ValueError(f"key 'method_options' has unknown option(s) {unknown} for method {self.method!r} "
                             f"(known: {known})")
        try:
            get_scorer(self.method).resolve(run_scorer_options(self.model_dump()))
        except (TypeError, ValueError) as error:
            raise ValueError(f"key 'method_options' {self.method_options!r} (with bins={self.bins}) is refused by "
                             f"scorer {self.method!r}: {error}") from None
        if self.resize != "native":
            check_extent(self.patch_size, self.num_scales, self.image_size, self.image_size)

    def _check_dataset_options(self, info: ValidationInfo) -> None:
        """The data set is built as a run builds it, so bad options fail here, not in the run."""
        if self.dataset not in DATASETS:
            if self.dataset_options:
                raise ValueError(f"key 'dataset_options' expects no options for a folder data set, "
                                 f"got {self.dataset_options!r}")
        else:
            loader = DATASETS[self.dataset]
            try:
                inspect.signature(loader).bind(**self.dataset_options)
            except TypeError as error:
                raise ValueError(f"key 'dataset_options' does not fit data set {self.dataset!r}: {error} "
                                 f"(options: {list(inspect.signature(loader).parameters)})") from None
        if "root" in self.dataset_options:
            self.dataset_options = {**self.dataset_options,
                                    "root": str(_resolve(str(self.dataset_options["root"]), info))}
        checked = (info.context or {}).get("checked")
        key = dataset_key({"dataset": self.dataset, "dataset_options": self.dataset_options})
        if checked is not None and key in checked:
            return
        try:
            source = load_dataset(self.dataset, **self.dataset_options)
        except (ValueError, TypeError, KeyError) as error:
            if self.dataset not in DATASETS:
                raise ValueError(f"key 'dataset' {self.dataset!r}: {error}") from None
            raise ValueError(f"key 'dataset_options' {self.dataset_options!r} fails for data set "
                             f"{self.dataset!r}: {error}") from None
        if checked is not None:
            checked[key] = source


def dataset_key(params: dict) -> str:
    """What names a configuration's data set among those ``validate_params`` has built (its ``checked`` dict)."""
    return json.dumps([params["dataset"], params.get("dataset_options") or {}], sort_keys=True, default=str)


def run_scorer_options(params: dict) -> dict:
    """The scorer's keyword options of a configuration (``bins`` joins them for a scorer that takes it)."""
    return options_with_bins(params["method"], params["method_options"], params["bins"])


def _resolve(path: str, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base")
    folder = Path(path).expanduser()
    if not folder.is_absolute() and base is not None:
        folder = Path(base) / folder
    return folder.resolve() if folder.exists() else folder


def _threshold_settings(value: list, num_scales: int) -> list[list[float]]:
    settings = value if value and all(isinstance(v, list) for v in value) else [value]
    for setting in settings:
        if len(setting) != num_scales - 1:
            raise ValueError(f"key 'thresholds' needs num_scales - 1 = {num_scales - 1} numbers per setting, "
                             f"got {setting!r}")
    return _distinct("thresholds", [[float(v) for v in setting] for setting in settings])


def _distinct(key: str, settings: list) -> list:
    """``settings`` if no two are equal (each setting is one row of the report: a repeat would count its images
    twice)."""
    for index, setting in enumerate(settings):
        if setting in settings[:index]:
            raise ValueError(f"key '{key}' lists the setting {setting!r} twice (settings {settings[:index].index(setting)}"
                             f" and {index}); give each setting once")
    return settings


PARAMETERS: dict[str, Any] = {name: field.default for name, field in Parameters.model_fields.items()}
"""Every parameter and its default, in declaration order."""

MAP_KEYS: tuple[str, ...] = tuple(name for name, field in Parameters.model_fields.items()
                                  if field.json_schema_extra["maps"])
"""The parameters the importance maps depend on (``bins`` only for the entropy scorer)."""

EXECUTION_KEYS: tuple[str, ...] = tuple(name for name, field in Parameters.model_fields.items()
                                        if field.json_schema_extra["execution"])
"""The parameters that say only how a run is executed: not part of its run id, never a configuration column."""


def _canonical(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    return json.dumps(value, sort_keys=True, default=str)


def varied_parameters(columns: Mapping[str, Iterable]) -> list[str]:
    """The parameters, execution ones left out, that hold more than one value, in declaration order.

    The one rule for "which parameters vary", for runs (the dry-run listing), the report's records and its
    runs table.

    Parameters
    ----------
    columns : mapping
        Parameter name -> its values (a ``pandas.DataFrame`` of records, or ``{name: [value per run]}``);
        names that are no parameter are ignored. A missing value (``None``, NaN) is one value; lists and
        dicts compare by content, also when given as their JSON text.

    Returns
    -------
    list of str

    Examples
    --------
    >>> varied_parameters({"bins": [256, 512], "image_size": [224, 224], "shard_size": [1, 2]})
    ['bins']
    """
    varied = []
    for key in PARAMETERS:
        if key in columns and key not in EXECUTION_KEYS:
            values = columns[key]
            distinct = values.drop_duplicates() if hasattr(values, "drop_duplicates") else values
            if len({_canonical(value) for value in distinct}) > 1:
                varied.append(key)
    return varied


def unknown_key(name: str, where: str = "") -> str:
    """The message for a key that is not a parameter, naming the closest parameter."""
    return f"unknown key '{where}{name}'{closest(name, PARAMETERS)} (known: {', '.join(PARAMETERS)})"


def _expects(annotation) -> str:
    """A type annotation in words: ``int``, ``one of 'a', 'b'``, ``list of number or null``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _expects(args[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is Union:
        return " or ".join(_expects(a) for a in args)
    if origin is list:
        return f"list of {_expects(args[0])}" if args else "list"
    if annotation is type(None):
        return "null"
    kind = origin or annotation
    return {float: "number", dict: "mapping"}.get(kind, getattr(kind, "__name__", str(annotation)))


def _message(error: dict) -> str:
    key = str(error["loc"][0]) if error["loc"] else ""
    if error["type"] == "extra_forbidden":
        return unknown_key(key)
    text = str(error["ctx"]["error"]) if error["type"] == "value_error" else None
    if not key:
        return text or error["msg"]
    if text is not None:
        return f"key '{key}' {text}"
    expected = _expects(Parameters.model_fields[key].annotation)
    return f"key '{key}' expects {expected}, got {error['input']!r} ({error['msg'][0].lower()}{error['msg'][1:]})"


def validate_params(params: dict, where: str, base=None, checked: dict | None = None) -> dict:
    """Check one configuration; returns it with defaults filled and thresholds normalised.

    Parameters
    ----------
    params : dict
        Parameter name -> value; missing parameters take their defaults.
    where : str
        Prefix of the error message (the spec file and the run).
    base : path, optional
        What relative folder paths resolve against (the working directory when ``None``).
    checked : dict, optional
        Data sets already built by this caller, ``dataset_key`` -> the ``ImageSource`` (filled here): each is
        built once per spec, not once per run, and ``maps.list_images`` can reuse the listing.

    Returns
    -------
    dict
        Every parameter, validated.

    Raises
    ------
    ParameterError
        Naming ``where``, the key, the value and what was expected.

    Examples
    --------
    >>> validate_params({"num_scales": 2, "thresholds": [5.5]}, "example")["thresholds"]
    [[5.5]]
    >>> validate_params({"num_scale": 2}, "example")
    Traceback (most recent call last):
    ...
    apt_research.errors.ParameterError: example: unknown key 'num_scale' (did you mean 'num_scales'?) ...
    """
    try:
        model = Parameters.model_validate(params, context={"base": base, "checked": checked})
    except ValidationError as error:
        raise ParameterError(f"{where}: {_message(error.errors()[0])}") from None
    return model.model_dump()


def parameter_table() -> str:
    """The parameters as a markdown table (name, default, changes the maps, part of the run id, doc), as the
    docs/sweeps.md shows it."""
    lines = ["| parameter | default | changes the maps | part of the run id | meaning |", "|---|---|---|---|---|"]
    for name, field in Parameters.model_fields.items():
        default = "none" if field.default is None else f"`{field.default}`"
        maps = "yes" if field.json_schema_extra["maps"] else "no"
        identifies = "no" if field.json_schema_extra["execution"] else "yes"
        lines.append(f"| `{name}` | {default} | {maps} | {identifies} | {field.description} |")
    return "\n".join(lines)

