"""The ``InformationMeasures`` callback: activation entropy and mutual information at validation.

The callback is a thin Lightning adapter. During each validation epoch it puts a forward hook on
every monitored module; the hook only reduces the module's output to ``[batch, neurons]``
activations and keeps them (plain tensor operations, which ``torch.compile`` traces into its graph
without a break). After each validation batch the kept activations go to the
`ActivationMeasurement` of that batch's dataloader, which owns the streaming metrics, the sample
quota and the range calibration; at the end of the epoch the callback logs the results through
``pl_module.log`` so that ``ModelCheckpoint`` and ``EarlyStopping`` can monitor them.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any, Callable, Literal, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from lightning_infomem._warn_once import WarnOnce
from lightning_infomem.callbacks._spawn import SpawnedResults
from lightning_infomem.callbacks.state_keys import prefixed_state_key
from lightning_infomem.checks import check_bool, check_int, check_optional_int, check_prefix, join_key
from lightning_infomem.data import batch_size_of
from lightning_infomem.functional import limited_threads
from lightning_infomem.introspection.layers import (
    DefaultLayers,
    LayerSpec,
    check_layer_spec,
    choose_default_layers,
    module_output_width,
    named_layers,
    resolve_layers,
)
from lightning_infomem.introspection.probe import ReadingProbe
from lightning_infomem.introspection.readings import (
    OutputTransform,
    Reading,
    batch_masks,
    empty_rows,
    mask_problems,
    read,
)
from lightning_infomem.metrics.calibration import Binning
from lightning_infomem.metrics.information import (
    NeuronEntropy,
    NeuronMutualInformation,
    StateTooLargeError,
)
from lightning_infomem.metrics.measurement import (
    ActivationMeasurement,
    LayerResult,
    summarize,
)
from lightning_infomem.metrics.settings import MeasurementSettings
from lightning_infomem.reporting import (
    heatmap_image,
    log_histogram,
    log_image,
    logging_step,
    shows_histograms,
    where_histograms_go,
    write_csv,
)

__all__ = ["InformationMeasures"]

SequenceReductionChoice = Literal["auto", "first", "mean", "last"]
_LOADER_SUFFIX = re.compile(r"/dataloader_idx_\d+$")
_APPLICATION = re.compile(r"^(?P<prefix>.*?)(?P<layer>[^/]+)\.application_\d+/(?P<stat>[a-z_]+)$")
# MI heatmaps are enlarged (by pixel repetition) to at least this many pixels a side: 2 pixels a neuron
# for the default 128 neurons, so that single cells can be told apart. A larger image costs encoding and
# writing: in benchmarks/callback_breakdown.py an epoch drawing three 128-neuron heatmaps took 83 ms more
# than the others at 256 pixels, 43 ms more at 128 (measured before the heatmaps went to every logger).
_HEATMAP_MIN_SIZE = 256


class InformationMeasures(Callback):
    """Log the entropy H and mutual information I of neuron activations at validation epochs.

    Logged through ``pl_module.log`` at the end of each measured validation epoch (keys use ``prefix``):

    - ``infomem/entropy``: mean per-neuron entropy over all monitored neurons of all layers;
    - ``infomem/mutual_info``: mean pairwise MI over all monitored pairs (pairs within a layer,
      diagonal left out);
    - ``infomem/<layer>/entropy`` and ``infomem/<layer>/mutual_info``: the same per layer;
    - ``infomem/<layer>/effective_rank``: the effective rank (RankMe, `effective_rank`) of the layer's
      measured samples (those with every value finite, all processes), and ``infomem/effective_rank``,
      its mean over the layers (NaN when any layer's is undefined): a label-free peer of H and I on the
      same samples.

    With several validation dataloaders every key ends in ``/dataloader_idx_K`` (Lightning's
    convention) and each loader is measured on its own: its own sample quota, ranges and values.

    Shortcut memorization shows low H and high I; fitting noisy labels shows high H and low I (the
    paper's finding). What the package's own experiments support (docs/selection.md: an MLP, a staged
    CNN and a [CLS] transformer, each with a shortcut and with label noise, 5 seeds): ranking the final
    models of several runs by ``infomem/mutual_info`` (lower is better) or ``infomem/effective_rank``
    (higher is better) when the validation data may carry a shortcut, where ``val_acc`` ranks them
    backwards; how well is architecture-dependent (I: Kendall tau +0.92 on the CNN, +0.76 on the MLP,
    +0.64 on the transformer). Under label noise they move as the paper says but do not beat
    ``val_loss``. What they do not support: choosing a checkpoint within a run or stopping early on
    these keys, where ``val_loss`` / ``val_acc`` did as well or better; keep those as the monitor.

    A layer with no finite activation in an evaluation (a diverged model) logs NaN for its keys and
    for the overall ones, with one warning; ``ModelCheckpoint`` ranks NaN worst and
    ``EarlyStopping(check_finite=True)`` stops on it. A layer whose activations have no spread (every
    neuron constant) keeps its own keys but is left out of the overall keys, with one warning; when no
    layer has spread (a dead network) the overall keys are NaN, with one warning. A
    layer of one monitored neuron logs its entropy and an MI of 0 (no pairs). With ``prefix=""`` keys
    have no prefix (``entropy``).

    Args:
        layers: modules to monitor: exact names (``"net.0"``), path patterns (``"encoder.layer.*"``:
            ``*`` within one dotted part, ``**`` across parts), module types (``nn.Linear``), or a list
            of these. ``None``: chosen from the module tree (see `choose_default_layers`): the blocks
            or stages of the trunk (transformers, ViTs, ResNets, Swin, MobileNets), both stacks of an
            encoder-decoder, a shared layer once per application (ALBERT: keys
            ``<layer>.application_<k>/...``), a plain CNN's activations, an MLP's hidden linear layers.
            The choice is printed at the start.
        settings: the estimator settings (`MeasurementSettings`: bins, binning ranges, calibration, bias
            correction, the MI state's memory budget, the effective rank); default ``MeasurementSettings()``.
            The estimator keywords of earlier versions (``entropy_bins=...``, ``binning=...``, ...) still work
            for one release, with a ``FutureWarning``.
        max_samples: samples per evaluation and dataloader (over all processes); ``None`` for all.
        max_neurons: neurons per layer; a layer with more is monitored through a random subset
            drawn once with ``seed``, kept for the whole run and stored in checkpoints. ``None`` for all.
        every_n_epochs: measure when ``(epoch + 1) % every_n_epochs == 0`` (``trainer.validate()``
            always measures). The keys exist only after measured epochs: monitor them with
            ``ModelCheckpoint(every_n_epochs=k * every_n_epochs)`` and ``EarlyStopping(strict=False)``
            (its patience then counts measurements), or measure at every validation and run validation
            every n epochs (``Trainer(check_val_every_n_epoch=n)``). Other monitor set-ups are refused
            at setup, naming the fix.
        sequence_reduction: the token that stands for a ``[batch, tokens, features]`` output: ``"first"`` (a
            [CLS] vector), ``"mean"`` over tokens, or ``"last"`` token, over the real tokens of the batch's masks
            (``attention_mask``, ``decoder_attention_mask``, the labels' padding). ``"auto"`` (the default): as
            observed on the first measured batch (`ReadingProbe`): a causal stack (a changed token changes no
            earlier position: GPT-2, BLOOM, Mamba, an LSTM, a decoder) at its last real token; otherwise the
            first token in a model with class tokens or token-id inputs, the mean over tokens for the rest.
            How each layer is read is printed after that batch and kept in ``readings``.
        output_transform: function from a module's output to the activation tensor, applied before the
            reading is observed (for outputs whose main tensor the probe cannot find).
        log_histograms: log histograms of per-neuron H and of pairwise I per layer (TensorBoard, W&B; see
            `lightning_infomem.reporting` for what each logger gets).
        heatmap_every_n_measurements: log an MI-matrix heatmap image per layer, with its colour scale, every
            this many measurements (0 disables).
        prefix: first part of every logged key; two instances with different prefixes coexist.
        seed: seed of the neuron subsets.
        dataloaders: indices of the validation dataloaders to measure (``None``: all).
        threads: torch intra-op threads for the callback's own tensor operations (calibration, the
            epoch-end reductions), restored afterwards; the model's forward pass keeps torch's setting.
            Default 1: these are many mid-sized operations, which on a machine whose other cores are
            busy run many times slower with several threads (see docs/benchmarks.md). ``None``:
            torch's setting. The compiled kernels (counting, binning; Numba) keep torch's thread count
            set outside the callback: each is one large loop in equal tasks whose idle threads sleep.
    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning.pytorch import LightningModule, Trainer
        >>> class Net(LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        ...     def validation_step(self, batch, batch_idx):
        ...         return self.net(batch[0])
        >>> data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 8)), batch_size=16)
        >>> callback = InformationMeasures(layers=["net.0"], settings=MeasurementSettings(calibration_samples=32))
        >>> trainer = Trainer(callbacks=[callback], logger=False, enable_progress_bar=False,
        ...                   enable_model_summary=False, enable_checkpointing=False)
        >>> _ = trainer.validate(Net(), data, verbose=False)
        >>> print(", ".join(sorted(callback.history[-1])[:5]))
        epoch, global_step, infomem/effective_rank, infomem/entropy, infomem/mutual_info
    """

    def __init__(
        self,
        layers: LayerSpec = None,
        *,
        settings: Optional[MeasurementSettings] = None,
        max_samples: Optional[int] = 2048,
        max_neurons: Optional[int] = 128,
        every_n_epochs: int = 1,
        sequence_reduction: SequenceReductionChoice = "auto",
        output_transform: Optional[OutputTransform] = None,
        dataloaders: Optional[Sequence[int]] = None,
        log_histograms: bool = True,
        heatmap_every_n_measurements: int = 5,
        prefix: str = "infomem",
        seed: int = 0,
        threads: Optional[int] = 1,
        **deprecated: Any,
    ) -> None:
        if settings is not None and not isinstance(settings, MeasurementSettings):
            raise TypeError(
                f"settings must be a MeasurementSettings (lightning_infomem.MeasurementSettings), received "
                f"{type(settings).__name__}"
            )
        self.settings = _with_deprecated(settings or MeasurementSettings(), deprecated)
        if sequence_reduction not in ("auto", "first", "mean", "last"):
            raise ValueError(
                f"sequence_reduction must be 'auto', 'first', 'mean' or 'last', received {sequence_reduction!r}"
            )
        if isinstance(dataloaders, (str, bytes)) or (dataloaders is not None and not isinstance(dataloaders, Sequence)):
            raise ValueError(f"dataloaders must be None or a sequence of dataloader indices, received {dataloaders!r}")
        self.layers = check_layer_spec(layers)
        if output_transform is not None and not callable(output_transform):
            raise ValueError(
                f"output_transform must be None or a function from a module's output to a tensor, received "
                f"{output_transform!r} ({type(output_transform).__name__})"
            )
        self.max_samples = check_optional_int(max_samples, "max_samples", minimum=1)
        self.max_neurons = check_optional_int(max_neurons, "max_neurons", minimum=1)
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", minimum=1)
        self.sequence_reduction = sequence_reduction
        self.output_transform = output_transform
        self.log_histograms = check_bool(log_histograms, "log_histograms")
        self.heatmap_every_n_measurements = check_int(
            heatmap_every_n_measurements, "heatmap_every_n_measurements", minimum=0
        )
        self.prefix = check_prefix(prefix)
        self.seed = check_int(seed, "seed", minimum=0, maximum=2**63 - 1)  # torch.Generator's seeds
        self.threads = check_optional_int(threads, "threads", minimum=1)
        self.dataloaders = (
            None if dataloaders is None else sorted({check_int(i, "dataloaders", minimum=0) for i in dataloaders})
        )

        self._history: list[dict[str, Any]] = []
        self.layer_names: list[str] = []
        self.series_names: list[str] = []  # what is measured: the layers, a shared layer once per application
        self._shared: set[str] = set()  # layers applied several times in one call of the model (ALBERT, Siamese)
        self.neuron_indices: dict[str, Optional[Tensor]] = {}
        self.layer_widths: dict[str, int] = {}
        self.measurements: dict[int, ActivationMeasurement] = {}
        self.results: dict[int, dict[str, LayerResult]] = {}
        self._measurements = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._stash: dict[str, list[Tensor]] = {}
        self._called: set[str] = set()  # layers whose hook fired in this validation (with rows or not)
        self._masks: list[dict[str, Tensor]] = [{}]  # the validation batch's [batch, tokens] masks, if any
        self.readings: dict[str, Reading] = {}  # how each layer is read, observed on the first measured batch
        self._probe: Optional[ReadingProbe] = None  # recording the first measured batch, until it is observed
        self._bypassed: set[str] = set()  # monitored modules whose forward is called directly (hooks never fire)
        self._applications: dict[str, int] = {}  # calls of each layer in one call of the model (the probe's count)
        self._empty_rows: Optional[Tensor] = None  # samples without a real token in this evaluation (on the device)
        self._hook_for_cache: dict[str, Callable[..., None]] = {}
        self._measuring = False
        self._world_size = 1
        self._distributed = False
        self._num_loaders = 1
        self._fit_measurements = 0
        self._fit_validations: list[tuple[int, bool]] = []
        self._announced = False
        self._warn_once = WarnOnce()
        self._told_where = False
        self._spawned = SpawnedResults()  # results measured by this callback's copy in a ddp_spawn worker

    @classmethod
    def paper(cls, layers: LayerSpec = None, **overrides: Any) -> InformationMeasures:
        """The estimator settings of Bansal et al. (2022), as one switch.

        One global binning range over all monitored layers, calibrated on the whole evaluation set;
        100 bins for entropy; every neuron and every sample. With ``layers=None`` the layers are chosen
        from the module tree as in the paper (an MLP at the pre-activation outputs of its hidden linear
        layers). The paper's MI numbers use the KSG kNN estimator, an offline computation
        (`ksg_mutual_information`); the histogram MI logged here keeps ``mutual_info_bins=16``, since
        100 bins per neuron would make the plug-in MI mostly bias. Any argument can be overridden.

        Example:
            >>> callback = InformationMeasures.paper(layers=["net.0", "net.2"])
            >>> callback.settings.mutual_info_binning, callback.settings.entropy_bins, callback.max_neurons
            ('global', 100, None)
        """
        options: dict[str, Any] = {
            "settings": MeasurementSettings.paper(),
            "max_samples": None,
            "max_neurons": None,
            "prefix": "infomem_paper",
        }
        options.update(overrides)
        return cls(layers, **options)

    # ------------------------------------------------------------------------ estimator settings
    # Read-only views of `settings`, by the names of earlier versions.
    entropy_bins = property(lambda self: self.settings.entropy_bins)
    mutual_info_bins = property(lambda self: self.settings.mutual_info_bins)
    entropy_binning = property(lambda self: self.settings.entropy_binning)
    mutual_info_binning = property(lambda self: self.settings.mutual_info_binning)
    range_quantile = property(lambda self: self.settings.range_quantile)
    calibration_samples = property(lambda self: self.settings.calibration_samples)
    miller_madow = property(lambda self: self.settings.miller_madow)
    max_state_bytes = property(lambda self: self.settings.max_state_bytes)
    effective_rank = property(lambda self: self.settings.effective_rank)

    @property
    def binning(self) -> Optional[Binning]:
        """The binning of both H and I where they share one, else ``None``."""
        same = self.settings.entropy_binning == self.settings.mutual_info_binning
        return self.settings.entropy_binning if same else None

    # ------------------------------------------------------------------------------ identity
    @property
    def state_key(self) -> str:
        return prefixed_state_key(self, self.prefix)

    def measurement_settings(self) -> dict[str, Any]:
        """The settings that define what the logged values measure; a checkpoint made with others is refused.

        Example:
            >>> settings = MeasurementSettings(entropy_bins=50)
            >>> InformationMeasures(settings=settings).measurement_settings()["entropy_bins"]
            50
        """
        return {
            "layers": list(self.layer_names),
            "entropy_bins": self.entropy_bins,
            "mutual_info_bins": self.mutual_info_bins,
            "entropy_binning": self.entropy_binning,
            "mutual_info_binning": self.mutual_info_binning,
            "max_samples": self.max_samples,
            "max_neurons": self.max_neurons,
            "seed": self.seed,
            "range_quantile": self.range_quantile,
            "calibration_samples": self.calibration_samples,
            "miller_madow": self.miller_madow,
            "sequence_reduction": self.sequence_reduction,
        }  # effective_rank adds keys, it does not change the others: not a setting of the measurement

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "settings": self.measurement_settings(),
            "layer_names": list(self.layer_names),
            "series_names": list(self.series_names),
            "layer_widths": dict(self.layer_widths),
            "neuron_indices": {k: (v.cpu() if v is not None else None) for k, v in self.neuron_indices.items()},
            "history": [dict(row) for row in self.history],
            "measurements": self._measurements,
            "seed": self.seed,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the history of a checkpoint made with the same measurement settings.

        A checkpoint whose settings differ (other layers, bins, binning, samples, neurons, seed, ...) is
        refused, naming each difference: its values and this callback's would be different estimators
        under the same keys, which ``ModelCheckpoint`` compares. Resume with the same settings, or give
        the new measurement its own ``prefix`` (a new history beside the old one).
        """
        saved = state_dict.get("settings")
        if saved is not None:
            current = self.measurement_settings()
            if not current["layers"]:  # not set up yet: the layers are compared once they are resolved
                saved = {key: value for key, value in saved.items() if key != "layers"}
            differing = [
                f"{key}={saved[key]!r} in the checkpoint, {current[key]!r} now"
                for key in saved
                if key in current and saved[key] != current[key]
            ]
            if differing:
                raise ValueError(
                    f"InformationMeasures(prefix={self.prefix!r}): the checkpoint was measured with other settings "
                    f"({'; '.join(differing)}); continuing would mix two estimators under the same keys. Resume "
                    "with the checkpoint's settings, or give this measurement another prefix to start a new history"
                )
        self.layer_widths = dict(state_dict.get("layer_widths", {}))
        self.neuron_indices = dict(state_dict.get("neuron_indices", {}))
        if state_dict.get("series_names"):
            self.series_names = list(state_dict["series_names"])
        self._history = [dict(row) for row in state_dict.get("history", [])]
        self._measurements = int(state_dict.get("measurements", 0))
        self.measurements = {}

    # ------------------------------------------------------------------------------ results
    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per measured evaluation: epoch, global step, every logged value, each layer's clipped fraction.

        After a fit under a spawning strategy (``ddp_spawn``), the measurements were made in the worker
        processes; the main process reads them back from rank 0 here.
        """
        self._collect_spawned_results()
        return self._history

    @history.setter
    def history(self, rows: list[dict[str, Any]]) -> None:
        self._history = rows

    def layer_results(self, dataloader_idx: int = 0) -> dict[str, LayerResult]:
        """The per-layer results (entropy vectors, MI matrices) of the latest measurement of a dataloader."""
        self._collect_spawned_results()
        return self.results.get(dataloader_idx, {})

    @property
    def entropy_metrics(self) -> dict[str, NeuronEntropy]:
        """The per-layer entropy metrics of the latest measurement of dataloader 0 (empty before the first)."""
        measurement = self.measurements.get(0)
        return {} if measurement is None else measurement.entropy_metrics

    @property
    def mutual_info_metrics(self) -> dict[str, NeuronMutualInformation]:
        """The per-layer MI metrics of the latest measurement of dataloader 0 (empty before the first)."""
        measurement = self.measurements.get(0)
        return {} if measurement is None else measurement.mutual_info_metrics

    @property
    def measurement(self) -> Optional[ActivationMeasurement]:
        """The latest measurement of dataloader 0 (``None`` before the first)."""
        return self.measurements.get(0)

    def to_csv(self, path: Union[str, os.PathLike]) -> str:
        """Write `history` (one row per measured evaluation) to a CSV file; returns the path.

        Raises ``ValueError`` (rather than write an empty file) when nothing was measured, saying why.
        """
        if not self.history:
            raise ValueError(
                f"InformationMeasures has measured nothing yet, so there is no curve to write: {self._why()}"
            )
        return write_csv(self.history, path)

    def _why(self) -> str:
        if not self._fit_validations:
            return (
                "no validation epoch ran with this callback (no val_dataloader, limit_val_batches=0, or the run "
                "happened in other processes, e.g. under ddp_spawn, whose rank 0 sent nothing back)"
            )
        if not any(measured for _, measured in self._fit_validations):
            epochs = [epoch for epoch, _ in self._fit_validations]
            return (
                f"validation ran at epochs {epochs}, none of which is measured with every_n_epochs="
                f"{self.every_n_epochs} (measured: epochs e with (e + 1) % {self.every_n_epochs} == 0)"
            )
        return "validation ran, but no activation reached the monitored layers (see the earlier warning)"

    def _key(self, *parts: str, loader: Optional[int] = None) -> str:
        key = join_key(self.prefix, *parts)
        return key if loader is None or self._num_loaders <= 1 else f"{key}/dataloader_idx_{loader}"

    def _settings(self) -> MeasurementSettings:
        return self.settings

    # ----------------------------------------------------------------------------- lifecycle
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        chosen = choose_default_layers(pl_module) if self.layers is None else None
        self.layer_names = (
            chosen.names if chosen is not None and chosen.names else resolve_layers(pl_module, self.layers)
        )
        self._shared = set()  # observed on the first measured batch: the layers applied several times per call
        self.readings.clear()  # observed again on this stage's first measured batch (the hooks hold this dict)
        bases = [name.partition(".application_")[0] for name in self.series_names]
        if list(dict.fromkeys(bases)) != self.layer_names:  # not fixed yet, or fixed for other layers
            self.series_names = list(self.layer_names)
        self._announce(pl_module, chosen)
        self._check_state_budget(pl_module)
        self._check_monitors(trainer)
        if stage == "fit":
            self._fit_measurements = 0
            self._fit_validations = []

    def _announce(self, pl_module: LightningModule, chosen: Optional[DefaultLayers]) -> None:
        """Print the monitored layers once, as ``ModelSummary`` prints the model."""
        if self._announced:
            return
        self._announced = True
        how = chosen.description if chosen is not None else f"layers={self.layers!r}"
        shown = ", ".join(self.layer_names[:12]) + (", ..." if len(self.layer_names) > 12 else "")
        if chosen is not None and chosen.family == "conv" and "before" in chosen.description:
            self._warn_once(
                "pre-activation",
                f"InformationMeasures: {chosen.description}; pass layers=[...] naming the modules whose outputs "
                "are the activations to measure (or output_transform=torch.relu)",
            )
        rank_zero_info(f"InformationMeasures: monitoring {len(self.layer_names)} layer(s), {how}: {shown}")

    def _announce_readings(self) -> None:
        """Print how each layer is read, as observed on the first measured batch, and what had to be assumed."""
        groups: dict[str, list[str]] = {}
        for name in self.layer_names:
            reading = self.readings.get(name)
            if reading is not None:
                how = reading.describe()
                if name in self._shared:
                    how += f", applied {self._applications[name]} times per call: one series per application"
                groups.setdefault(how, []).append(name)
        said = "; ".join(f"{', '.join(names)}: {how}" for how, names in groups.items())
        rank_zero_info(f"InformationMeasures: read as observed on the first measured batch: {said}")
        for reading in self.readings.values():
            for note in reading.notes:
                self._warn_once(f"reading:{note}", f"InformationMeasures: {note}")

    def _check_state_budget(self, pl_module: LightningModule) -> None:
        """Refuse, before any epoch runs, a layer whose entropy or MI state would exceed ``max_state_bytes``.

        Possible where the width is known from the module (``nn.Linear``, convolutions, norms,
        embeddings); other layers are checked at their first activations.
        """
        modules = dict(named_layers(pl_module))
        for name in self.layer_names:
            width = self.layer_widths.get(name) or module_output_width(modules[name])
            if width is None:
                continue
            num_neurons = width if self.max_neurons is None else min(width, self.max_neurons)
            for metric, bins, argument in (
                (NeuronEntropy, self.entropy_bins, "entropy_bins"),
                (NeuronMutualInformation, self.mutual_info_bins, "mutual_info_bins"),
            ):
                try:
                    metric.check_state_size(num_neurons, bins, self.max_state_bytes)
                except StateTooLargeError as error:
                    raise StateTooLargeError(
                        f"InformationMeasures: layer {name!r} ({num_neurons} monitored neurons): {error} "
                        f"(num_bins is the {argument} of InformationMeasures' settings, and so is max_state_bytes: "
                        f"settings=MeasurementSettings({argument}=..., max_state_bytes=...); max_neurons is an "
                        "InformationMeasures argument)"
                    ) from None

    def _is_own_key(self, key: Optional[str]) -> bool:
        if not key:
            return False
        key = _LOADER_SUFFIX.sub("", key)
        stats = ("entropy", "mutual_info", "effective_rank")
        own = {self._key(stat) for stat in stats}
        own |= {self._key(name, stat) for name in self.layer_names for stat in stats}
        own |= {self._key(name, stat) for name in self.series_names for stat in stats}
        if key in own:
            return True
        application = _APPLICATION.match(key)  # a shared layer's application, known once it has run
        return bool(application) and self._key(application["layer"], application["stat"]) in own

    def _check_monitors(self, trainer: Trainer) -> None:
        """With ``every_n_epochs > 1`` the keys are missing after unmeasured epochs: refuse monitors that would fail."""
        if self.every_n_epochs == 1:
            return
        for callback in trainer.callbacks:
            if isinstance(callback, EarlyStopping) and self._is_own_key(callback.monitor) and callback.strict:
                raise ValueError(
                    f"EarlyStopping(monitor={callback.monitor!r}) needs the key at every validation, but "
                    f"InformationMeasures(every_n_epochs={self.every_n_epochs}) logs it only at measured epochs: "
                    "pass EarlyStopping(..., strict=False) (patience then counts measurements), or measure at "
                    "every validation and set Trainer(check_val_every_n_epoch=...) instead"
                )
            if isinstance(callback, ModelCheckpoint) and self._is_own_key(callback.monitor):
                every = callback.every_n_epochs or 0
                # ModelCheckpoint has no public accessor for its step and time triggers (its state_key reads them)
                by_steps = callback._every_n_train_steps or callback._train_time_interval
                if by_steps or every % self.every_n_epochs != 0:
                    raise ValueError(
                        f"ModelCheckpoint(monitor={callback.monitor!r}) checks at epochs where InformationMeasures("
                        f"every_n_epochs={self.every_n_epochs}) logs nothing: pass ModelCheckpoint(..., every_n_epochs="
                        f"{self.every_n_epochs}) (or a multiple), or measure at every validation and set "
                        "Trainer(check_val_every_n_epoch=...) instead"
                    )

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hooks()
        self._measuring = not trainer.sanity_checking and self._should_measure(trainer)
        num_batches = trainer.num_val_batches if not trainer.sanity_checking else trainer.num_sanity_val_batches
        self._num_loaders = max(1, len(num_batches) if isinstance(num_batches, Sequence) else 1)
        unknown = [i for i in (self.dataloaders or []) if i >= self._num_loaders]
        if unknown:
            raise ValueError(
                f"InformationMeasures(dataloaders={self.dataloaders}): {unknown} name no validation dataloader; "
                f"this validation has {self._num_loaders} (indices 0 to {self._num_loaders - 1})"
            )
        self._called: set[str] = set()
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._fit_validations.append((trainer.current_epoch, self._measuring))
        if self._measuring:
            self._world_size = max(1, int(trainer.world_size))
            self._distributed = (
                self._world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
            )
            for measurement in self.measurements.values():
                measurement.reset()
        # The hooks are in place at every validation epoch, the sanity check included, so that a model
        # compiled with torch.compile traces them into its evaluation graph at its first evaluation.
        modules = dict(named_layers(pl_module))
        for name in self.layer_names:
            self._handles.append(modules[name].register_forward_hook(self._hook_for(name, modules[name], pl_module)))

    @override
    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._masks[0] = batch_masks(batch)
        if self._measuring:
            for problem in mask_problems(batch, self._masks[0]):
                self._warn_once(f"mask:{problem.split(':')[0][:40]}", f"InformationMeasures: {problem}")
            empty = empty_rows(self._masks[0])
            if empty is not None:
                self._empty_rows = empty if self._empty_rows is None else self._empty_rows + empty
        if self._measuring and not self.readings and self._probe is None:
            modules = dict(named_layers(pl_module))
            self._probe = ReadingProbe(pl_module, {n: modules[n] for n in self.layer_names}, self.output_transform)
            self._probe.start()

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._probe is not None:
            self._observe_readings(batch)
        with limited_threads(self.threads):
            self._drain(dataloader_idx)

    def _observe_readings(self, batch: Any) -> None:
        """Observe how to read each layer on the recorded batch (`ReadingProbe`), then read that batch's outputs."""
        probe, self._probe = self._probe, None
        assert probe is not None
        probe.stop()
        if not probe.calls:
            return  # the monitored modules did not run in this batch: the next one is observed
        batch_size = batch_size_of(batch)
        result = probe.observe(batch_size, self._masks[0]) if batch_size else None
        readings = result.readings if result is not None else {}
        for name in self.layer_names:
            reading = readings.get(name, Reading())
            if self.sequence_reduction != "auto" and reading.layout == "sequence":
                reading = dataclasses.replace(reading, token=self.sequence_reduction)
            self.readings[name] = reading
        if probe.failures:
            self._warn_once(
                "probe-failed",
                f"InformationMeasures: running the model's call again to observe how to read its layers failed "
                f"({probe.failures[0]}); the layers it holds are read by convention (batch first, the first tensor, "
                "channels first, the first token); pass output_transform=... / sequence_reduction=... if that is wrong",
            )
        if result is not None:
            self._applications = dict(result.applications)
            self._shared = {name for name, count in result.applications.items() if count > 1}
        if result is not None and result.bypassed:
            self._bypassed = set(result.bypassed)
            self._warn_once(
                "bypassed",
                f"InformationMeasures: the forward hooks of {result.bypassed} never fire: their submodules ran, so the "
                "model calls their forward directly (module.forward(x) instead of module(x)), which skips hooks. Call "
                "the module itself, or monitor submodules that are called (layers=[...])",
            )
        self._announce_readings()

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        empty, self._empty_rows = self._empty_rows, None
        if empty is not None and int(empty):  # one host round trip per evaluation
            self._warn_once(
                "empty-rows",
                f"InformationMeasures: {int(empty)} sample(s) of this evaluation have no real token in their mask: "
                "they are left out of the measurement (their values are undefined, not a pad token's)",
            )
        try:
            if self._measuring:
                with limited_threads(self.threads):
                    row = self._compute_and_log(trainer, pl_module)
                if row is not None:
                    self._history.append(row)
                    self._measurements += 1
                    if trainer.state.fn == "fit":
                        self._fit_measurements += 1
        finally:
            self._remove_hooks()

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._fit_measurements == 0:
            self._warn_once("nothing", f"InformationMeasures measured nothing in this fit: {self._why()}")

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()
        self._probe = None
        # A finished Trainer sits in reference cycles (its own and Lightning's) until Python's cyclic collector
        # runs, and it holds its callbacks: in a loop of fits each old one kept its metric states (66 MB a fit for a
        # 3 x 256 MLP at the defaults). Collecting here frees the earlier fits' states; this one's stay readable.
        gc.collect()
        if trainer.global_rank == 0 and self._spawned.in_worker():
            self._spawned.send(self._result_state())

    def _should_measure(self, trainer: Trainer) -> bool:
        if trainer.state.fn != "fit":
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _remove_hooks(self) -> None:
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for store in self._stash.values():
            store.clear()

    # ------------------------------------------------------------------------------ sampling
    def _hook_for(self, name: str, module: nn.Module, model: nn.Module) -> Callable[..., None]:
        """The forward hook of a layer, one function object per layer for the whole run.

        It only keeps the output: one list append, which torch.compile traces into the model's graph (no graph
        break, no guard on callback state, so no recompilation when measuring starts or stops, or once the readings
        are observed). After the batch, each output is read as the layer's `Reading` says.
        """
        hook = self._hook_for_cache.get(name)
        if hook is None:
            store = self._stash.setdefault(name, [])

            def hook(module: nn.Module, args: Any, output: Any) -> None:
                store.append(output)

            self._hook_for_cache[name] = hook
        return hook

    def _unmatched_mask_warning(self, name: str) -> Callable[[str], None]:
        return lambda problem: self._warn_once(f"unmatched-mask:{name}", f"InformationMeasures: {name}: {problem}")

    def _drain(self, loader: int) -> None:
        """Hand the activations kept during the last batch to the measurement of its dataloader."""
        measuring = self._measuring and (self.dataloaders is None or loader in self.dataloaders)
        outputs: dict[str, list[Tensor]] = {}
        for name in self.layer_names:
            store = self._stash.get(name)
            if store:
                outputs[name] = list(store)
                store.clear()
        if not measuring or not outputs:
            return
        for name, kept in outputs.items():
            reading = self.readings.get(name)
            unmatched = self._unmatched_mask_warning(name)
            outputs[name] = [
                read(out, reading, self._masks[0], self.output_transform, unmatched).detach() for out in kept
            ]
        self._called.update(outputs)
        measurement = self.measurements.get(loader)
        if measurement is None or (measurement.world_size, measurement.distributed) != (
            self._world_size,
            self._distributed,
        ):
            self._fix_series(outputs)
            measurement = ActivationMeasurement(
                self.series_names,
                self._settings(),
                max_samples=self.max_samples,
                world_size=self._world_size,
                distributed=self._distributed,
            )
            self.measurements[loader] = measurement
        for name, batches in outputs.items():
            if name not in self._shared:
                for activations in batches:
                    self._observe(measurement, name, activations)
                continue
            series = [s for s in self.series_names if s == name or s.startswith(f"{name}.application_")]
            if len(batches) > len(series):
                self._warn_once(
                    f"applications:{name}",
                    f"InformationMeasures: the shared layer {name!r} ran {len(batches)} times in one validation "
                    f"batch, where the first measured batch had {len(series)} applications; the later ones are "
                    "not measured",
                )
            for series_name, activations in zip(series, batches, strict=False):
                self._observe(measurement, series_name, activations)

    def _fix_series(self, outputs: dict[str, list[Tensor]]) -> None:
        """What is measured, from the first measured batch: each monitored layer, and a layer applied several times
        in one call of the model (ALBERT's shared layer, a Siamese network's encoder, a tied module: observed by the
        probe) once per application, ``<layer>.application_<k>``. Calls in separate calls of the model (a batch run
        in chunks) are more samples of one series."""
        if any(".application_" in name for name in self.series_names):
            return  # fixed earlier in this run, or restored from a checkpoint
        series = []
        for name in self.layer_names:
            runs = self._applications.get(name, 1)
            if name in self._shared and runs > 1:
                series += [f"{name}.application_{k}" for k in range(runs)]
            else:
                series.append(name)
        self.series_names = series

    def _observe(self, measurement: ActivationMeasurement, name: str, activations: Tensor) -> None:
        if measurement.remaining(name) == 0:  # the measurement's quota of this layer is full
            return
        if not activations.is_floating_point():
            raise TypeError(
                f"layer {name!r} produced {activations.dtype} activations; monitor a layer with floating-point "
                "outputs or pass output_transform=..."
            )
        measurement.observe(name, activations, neurons=self._neuron_subset(name, int(activations.shape[1])))

    def _neuron_subset(self, name: str, width: int) -> Optional[Tensor]:
        """The monitored neurons of a layer (``None``: all), drawn once per run with ``seed``."""
        known = self.layer_widths.get(name)
        if known is not None and known != width:
            raise ValueError(
                f"layer {name!r} now has {width} neurons but the callback state was recorded with {known}; "
                "the model changed since the checkpoint (or its output width varies between batches)"
            )
        self.layer_widths[name] = width
        if name not in self.neuron_indices:
            if self.max_neurons is None or width <= self.max_neurons:
                self.neuron_indices[name] = None
            else:
                generator = torch.Generator().manual_seed(self.seed + self.series_names.index(name))
                subset = torch.randperm(width, generator=generator)[: self.max_neurons]
                self.neuron_indices[name] = subset.sort().values
        return self.neuron_indices[name]

    # ------------------------------------------------------------------------------- results
    def _compute_and_log(self, trainer: Trainer, pl_module: LightningModule) -> Optional[dict[str, Any]]:
        active = {loader: m for loader, m in self.measurements.items() if m.measured}
        if not active:
            hint = ""
            if _is_compiled(pl_module):
                hint = (
                    "; the model is compiled with torch.compile: if it ran in eval mode before the first validation, "
                    "its evaluation graph was traced without the callback's hooks, so call torch._dynamo.reset() "
                    "before fitting"
                )
            if self._called:
                why = (
                    f"the modules {sorted(self._called)} were called, but every output had 0 rows (empty batches, or "
                    "an output whose first dimension is not the batch: pass an output_transform that puts it first)"
                )
            elif self._bypassed:
                why = f"the forward of {sorted(self._bypassed)} is called directly, which skips hooks (see above)"
            else:
                why = f"the modules {self.layer_names} were not called in validation_step"
            self._warn_once(
                "missing-all",
                f"InformationMeasures: no activations reached the monitored layers during validation ({why}){hint}; "
                "nothing is logged",
            )
            return None
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        scalars: dict[str, float] = {}
        self.results = {}
        for loader in sorted(active):
            results = active[loader].results()
            self.results[loader] = results
            self._report_layers(trainer, loader, results)
            for name in self.series_names:
                if name not in results:
                    continue
                result = results[name]
                scalars[self._key(name, "entropy", loader=loader)] = result.mean_entropy
                scalars[self._key(name, "mutual_info", loader=loader)] = result.mean_mutual_info
                if self.effective_rank:
                    scalars[self._key(name, "effective_rank", loader=loader)] = result.effective_rank
                row[self._key(name, "clipped_fraction", loader=loader)] = result.clipped_fraction
            if results:
                entropy, mutual_info = summarize(results)
                scalars[self._key("entropy", loader=loader)] = entropy
                scalars[self._key("mutual_info", loader=loader)] = mutual_info
                if self.effective_rank:
                    ranks = [result.effective_rank for result in results.values()]
                    scalars[self._key("effective_rank", loader=loader)] = sum(ranks) / len(ranks)  # NaN if any is
        if not scalars:
            return None
        row.update(scalars)
        for key, value in scalars.items():
            pl_module.log(
                key,
                torch.tensor(value, dtype=torch.float32, device=pl_module.device),
                sync_dist=True,
                add_dataloader_idx=False,
            )
        self._log_histograms_and_heatmaps(trainer)
        return row

    def _report_layers(self, trainer: Trainer, loader: int, results: dict[str, LayerResult]) -> None:
        where = "" if self._num_loaders <= 1 else f" of dataloader {loader}"
        missing = [name for name in self.series_names if name not in results]
        called = getattr(self, "_called", set())
        empty = [name for name in missing if name in called or name.partition(".application_")[0] in called]
        not_called = [name for name in missing if name not in empty]
        if not_called:
            self._warn_once(
                f"missing:{loader}",
                f"InformationMeasures: no activations reached layer(s) {not_called} during validation{where} (the "
                "module was not called in validation_step); their keys are not logged",
            )
        if empty:
            self._warn_once(
                f"empty:{loader}",
                f"InformationMeasures: layer(s) {empty} were called during validation{where} but every output had "
                "0 rows (empty batches, or an output whose first dimension is not the batch: pass an "
                "output_transform that puts the batch first); their keys are not logged",
            )
        if results and all(result.defined and not result.spread for result in results.values()):
            self._warn_once(
                f"dead:{loader}",
                f"InformationMeasures: no monitored layer{where} has spread in the evaluation of epoch "
                f"{trainer.current_epoch} (every monitored neuron is constant: a dead network?); such a measurement "
                "measures nothing, so the overall keys are logged as NaN, which ModelCheckpoint ranks worst and "
                "EarlyStopping(check_finite=True) stops on",
            )
        for name, result in results.items():
            if not result.defined:
                self._warn_once(
                    f"undefined:{loader}:{name}",
                    f"InformationMeasures: layer {name!r}{where} had no finite activation (only NaN or Inf: a "
                    f"diverged model?) in the evaluation of epoch {trainer.current_epoch}; its values and the "
                    "overall values are logged as NaN, which ModelCheckpoint ranks worst and "
                    "EarlyStopping(check_finite=True) stops on",
                )
            elif not result.spread:
                self._warn_once(
                    f"constant:{loader}:{name}",
                    f"InformationMeasures: the activations of layer {name!r}{where} have no spread (every monitored "
                    f"neuron is constant over the evaluation of epoch {trainer.current_epoch}: H = I = 0); its own "
                    "keys are logged, but it is left out of the overall keys. A constant output (a [CLS] token "
                    "before attention mixes it in, a saturated unit) measures nothing about memorization; choose "
                    "another layer or sequence_reduction",
                )

    def _log_histograms_and_heatmaps(self, trainer: Trainer) -> None:
        """Per-layer histograms of H and of the pairs' I, and MI heatmaps, to every logger that shows them.

        Logged at the step of this measurement's scalars, from rank 0.
        """
        want_heatmap = (
            self.heatmap_every_n_measurements > 0 and self._measurements % self.heatmap_every_n_measurements == 0
        )
        if not (self.log_histograms or want_heatmap) or not trainer.loggers:
            return
        note = where_histograms_go(trainer.loggers, "InformationMeasures: the histograms and MI heatmaps")
        if note is not None and not self._told_where:
            self._told_where = True
            rank_zero_info(note)
        loggers = [logger for logger in trainer.loggers if shows_histograms(logger)]
        if not loggers or trainer.global_rank != 0:
            return
        step = logging_step(trainer)
        for loader, results in self.results.items():
            for name, result in results.items():
                if not result.defined:
                    continue
                if self.log_histograms:
                    entropy = result.entropy[~torch.isnan(result.entropy)]
                    if entropy.numel():
                        log_histogram(loggers, self._key(name, "entropy_per_neuron", loader=loader), entropy, step)
                    pairs = result.pairs
                    pairs = pairs[~torch.isnan(pairs)]  # each pair once
                    if pairs.numel():
                        log_histogram(loggers, self._key(name, "mutual_info_pairs", loader=loader), pairs, step)
                if want_heatmap and result.mutual_info.shape[0] > 1:
                    off = result.mutual_info.clone()
                    off.fill_diagonal_(result.mean_mutual_info)
                    image = heatmap_image(off, min_size=_HEATMAP_MIN_SIZE, colour_bar=True)
                    log_image(loggers, self._key(name, "mutual_info_matrix", loader=loader), image, step)

    # ------------------------------------------------------------------ spawned worker processes
    def _result_state(self) -> dict[str, Any]:
        """The results a worker's rank 0 sends back to the main process (plain tensors, numbers, strings)."""
        return {
            "history": self._history,
            "layer_names": self.layer_names,
            "series_names": self.series_names,
            "layer_widths": self.layer_widths,
            "neuron_indices": {k: (v.cpu() if v is not None else None) for k, v in self.neuron_indices.items()},
            "measurements": self._measurements,
            "results": {
                loader: {name: tuple(_to_cpu(value) for value in result) for name, result in results.items()}
                for loader, results in self.results.items()
            },
            "fit_validations": self._fit_validations,
        }

    def _collect_spawned_results(self) -> None:
        """Take over what the rank-0 copy of this callback measured in a spawned or forked worker, if anything."""
        state = self._spawned.receive()
        if state is None:
            return
        self._history = state["history"]
        self.layer_names = state["layer_names"]
        self.series_names = state["series_names"]
        self.layer_widths = state["layer_widths"]
        self.neuron_indices = state["neuron_indices"]
        self._measurements = state["measurements"]
        self._fit_validations = [tuple(v) for v in state["fit_validations"]]
        self.results = {
            loader: {name: LayerResult(*values) for name, values in results.items()}
            for loader, results in state["results"].items()
        }


def _is_compiled(module: nn.Module) -> bool:
    """Whether torch.compile wraps the module or any submodule, or compiled one in place."""
    return any(
        type(sub).__name__ == "OptimizedModule" or getattr(sub, "_compiled_call_impl", None) is not None
        for sub in module.modules()
    )


def _to_cpu(value: Any) -> Any:
    return value.cpu() if isinstance(value, Tensor) else value


_ESTIMATOR_KEYWORDS = {
    "entropy_bins",
    "mutual_info_bins",
    "entropy_binning",
    "mutual_info_binning",
    "binning",
    "range_quantile",
    "calibration_samples",
    "miller_madow",
    "max_state_bytes",
    "effective_rank",
}


def _with_deprecated(settings: MeasurementSettings, keywords: dict[str, Any]) -> MeasurementSettings:
    """``settings`` with the estimator keywords of earlier versions applied, each said once as deprecated."""
    unknown = sorted(set(keywords) - _ESTIMATOR_KEYWORDS)
    if unknown:
        raise TypeError(f"InformationMeasures got an unexpected keyword argument {unknown[0]!r}")
    if not keywords:
        return settings
    listed = ", ".join(f"{name}={value!r}" for name, value in keywords.items())
    warnings.warn(
        f"InformationMeasures({listed}): the estimator keywords are deprecated and will be removed in the next "
        f"release; pass settings=MeasurementSettings({listed}) (binning=... is MeasurementSettings().replace("
        "binning=...))",
        FutureWarning,
        stacklevel=3,
    )
    binning = keywords.pop("binning", None)
    return settings.replace(binning=binning, **keywords)
