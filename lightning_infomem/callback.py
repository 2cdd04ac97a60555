"""The ``InformationMeasures`` callback: activation entropy and mutual information at every validation.

Forward hooks on the monitored modules exist only while a validation epoch runs. Each batch's
activations update streaming `NeuronEntropy` and
`NeuronMutualInformation` metrics on the model's device; at the end of the
epoch the callback logs the diversity curves through ``pl_module.log`` so that ``ModelCheckpoint``
and ``EarlyStopping`` can monitor them.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from lightning_infomem.checks import check_float, check_int, check_optional_int
from lightning_infomem.layers import (
    LayerSpec,
    OutputTransform,
    SequenceReduction,
    module_output_width,
    resolve_layers,
    to_neuron_activations,
)
from lightning_infomem.measurement import (
    ActivationMeasurement,
    Binning,
    LayerResult,
    MeasurementSettings,
    summarize,
)
from lightning_infomem.metrics import (
    DEFAULT_MAX_STATE_BYTES,
    NeuronEntropy,
    NeuronMutualInformation,
    StateTooLargeError,
)
from lightning_infomem.reporting import heatmap_image, write_csv

__all__ = ["Binning", "InformationMeasures"]


class InformationMeasures(Callback):
    """Log the entropy H and mutual information I of neuron activations at validation epochs.

    Logged through ``pl_module.log`` at the end of each measured validation epoch (keys use ``prefix``):

    - ``infomem/entropy``: mean per-neuron entropy over all monitored neurons of all layers;
    - ``infomem/mutual_info``: mean pairwise MI over all monitored pairs (pairs within a layer,
      diagonal left out);
    - ``infomem/<layer>/entropy`` and ``infomem/<layer>/mutual_info``: the same per layer.

    Shortcut memorization shows low H and high I (monitor ``mode="min"`` on ``mutual_info`` or
    ``mode="max"`` on ``entropy`` to avoid it); fitting noisy labels shows high H and low I.

    A layer with no finite activation in an evaluation (a diverged model) logs NaN for its keys and
    for the overall ones, with one warning; ``ModelCheckpoint`` ranks NaN worst and
    ``EarlyStopping(check_finite=True)`` stops on it. A layer of one monitored neuron logs its
    entropy and an MI of 0 (no pairs). With ``prefix=""`` keys have no prefix (``entropy``).

    Args:
        layers: modules to monitor: exact names (``"net.0"``), glob patterns (``"encoder.layer.*"``),
            module types (``nn.Linear``), or a list of these. ``None``: up to four ``nn.Linear`` /
            convolution layers, evenly spaced, without the output layer
            (see `default_layers`).
        entropy_bins: equal-width bins for entropy (the paper uses 100).
        mutual_info_bins: bins per neuron for MI; the plug-in bias of MI grows like
            ``(bins - 1)**2 / (2 * samples)``, so MI uses fewer bins than entropy.
        max_samples: samples per evaluation (over all processes); ``None`` for the whole set.
        max_neurons: neurons per layer; a layer with more is monitored through a random subset
            drawn once with ``seed``, kept for the whole run and stored in checkpoints. ``None`` for all.
        every_n_epochs: measure when ``(epoch + 1) % every_n_epochs == 0`` (``trainer.validate()``
            always measures). Give ``ModelCheckpoint`` / ``EarlyStopping`` a matching schedule.
        binning: the range of the equal-width bins, re-calibrated at every evaluation on its first
            ``calibration_samples`` samples: ``"layer"`` one range per layer, ``"neuron"`` one per
            neuron, ``"global"`` one over all monitored layers (the paper's choice; one outlying layer
            then compresses the others).
        range_quantile: calibrate with the ``q`` / ``1 - q`` quantiles instead of min / max.
        calibration_samples: samples used to fix the range; later outliers go to the edge bins.
        miller_madow: Miller-Madow bias correction of entropy and MI.
        sequence_reduction: for ``[batch, tokens, features]`` outputs, ``"first"`` token or ``"mean"``.
        output_transform: function from a module's output to the activation tensor (for outputs
            that are not tensors, tuples or dicts with the tensor first).
        log_histograms: log TensorBoard histograms of per-neuron H and of pairwise I per layer.
        heatmap_every_n_epochs: log an MI-matrix heatmap image per layer every this many
            measurements (0 disables).
        prefix: first part of every logged key; two instances with different prefixes coexist.
        seed: seed of the neuron subsets.
        max_state_bytes: memory budget of each layer's MI histogram state (``None``: no budget);
            checked at setup where the module gives its width (``nn.Linear``, convolutions).

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
        >>> callback = InformationMeasures(layers=["net.0"], calibration_samples=32)
        >>> trainer = Trainer(callbacks=[callback], logger=False, enable_progress_bar=False,
        ...                   enable_model_summary=False, enable_checkpointing=False)
        >>> _ = trainer.validate(Net(), data, verbose=False)
        >>> print(", ".join(sorted(callback.history[-1])[:4]))
        epoch, global_step, infomem/entropy, infomem/mutual_info
    """

    def __init__(
        self,
        layers: LayerSpec = None,
        *,
        entropy_bins: int = 100,
        mutual_info_bins: int = 16,
        max_samples: Optional[int] = 2048,
        max_neurons: Optional[int] = 128,
        every_n_epochs: int = 1,
        binning: Binning = "layer",
        range_quantile: float = 0.0,
        calibration_samples: int = 512,
        miller_madow: bool = False,
        sequence_reduction: SequenceReduction = "first",
        output_transform: Optional[OutputTransform] = None,
        log_histograms: bool = True,
        heatmap_every_n_epochs: int = 5,
        prefix: str = "infomem",
        seed: int = 0,
        max_state_bytes: Optional[int] = DEFAULT_MAX_STATE_BYTES,
    ) -> None:
        if binning not in ("layer", "neuron", "global"):
            raise ValueError(f"binning must be 'layer', 'neuron' or 'global', received {binning!r}")
        if sequence_reduction not in ("first", "mean"):
            raise ValueError(f"sequence_reduction must be 'first' or 'mean', received {sequence_reduction!r}")
        if not isinstance(prefix, str) or prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"prefix must be a string without a leading or trailing '/', received {prefix!r}")
        self.layers = layers
        self.entropy_bins = check_int(entropy_bins, "entropy_bins", minimum=1)
        self.mutual_info_bins = check_int(mutual_info_bins, "mutual_info_bins", minimum=1)
        self.max_samples = check_optional_int(max_samples, "max_samples", minimum=1)
        self.max_neurons = check_optional_int(max_neurons, "max_neurons", minimum=1)
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", minimum=1)
        self.binning = binning
        self.range_quantile = check_float(
            range_quantile, "range_quantile", minimum=0.0, maximum=0.5, exclusive_maximum=True
        )
        self.calibration_samples = check_int(calibration_samples, "calibration_samples", minimum=1)
        self.miller_madow = bool(miller_madow)
        self.sequence_reduction = sequence_reduction
        self.output_transform = output_transform
        self.log_histograms = bool(log_histograms)
        self.heatmap_every_n_epochs = check_int(heatmap_every_n_epochs, "heatmap_every_n_epochs", minimum=0)
        self.prefix = prefix
        self.seed = check_int(seed, "seed")
        self.max_state_bytes = check_optional_int(max_state_bytes, "max_state_bytes", minimum=1)

        self.history: list[dict[str, Any]] = []
        self.layer_names: list[str] = []
        self.neuron_indices: dict[str, Optional[Tensor]] = {}
        self.layer_widths: dict[str, int] = {}
        self.measurement: Optional[ActivationMeasurement] = None
        self.results: dict[str, LayerResult] = {}
        self._measurements = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._active = False
        self._warned: set[str] = set()

    @classmethod
    def paper(cls, layers: LayerSpec = None, **overrides: Any) -> InformationMeasures:
        """The estimator settings of Bansal et al. (2022), as one switch.

        One global binning range over all monitored layers, calibrated on the whole evaluation set;
        100 bins for entropy; every neuron and every sample. With ``layers=None`` an MLP is monitored
        at the pre-activation outputs of its hidden linear layers, as in the paper. The paper's MI
        numbers use the KSG kNN estimator, an offline computation
        (`ksg_mutual_information`); the histogram MI logged
        here keeps ``mutual_info_bins=16``, since 100 bins per neuron would make the plug-in MI
        mostly bias. Any argument can be overridden.

        Example:
            >>> callback = InformationMeasures.paper(layers=["net.0", "net.2"])
            >>> callback.binning, callback.entropy_bins, callback.max_neurons
            ('global', 100, None)
        """
        settings: dict[str, Any] = {
            "binning": "global",
            "entropy_bins": 100,
            "max_samples": None,
            "max_neurons": None,
            "calibration_samples": 2**31 - 1,
            "prefix": "infomem_paper",
        }
        settings.update(overrides)
        return cls(layers, **settings)

    # ------------------------------------------------------------------------------ identity
    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def state_dict(self) -> dict[str, Any]:
        return {
            "layer_names": list(self.layer_names),
            "layer_widths": dict(self.layer_widths),
            "neuron_indices": {k: (v.cpu() if v is not None else None) for k, v in self.neuron_indices.items()},
            "history": [dict(row) for row in self.history],
            "measurements": self._measurements,
            "seed": self.seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.layer_widths = dict(state_dict.get("layer_widths", {}))
        self.neuron_indices = dict(state_dict.get("neuron_indices", {}))
        self.history = [dict(row) for row in state_dict.get("history", [])]
        self._measurements = int(state_dict.get("measurements", 0))
        self.seed = int(state_dict.get("seed", self.seed))
        self.measurement = None

    # ------------------------------------------------------------------------------ metrics
    @property
    def entropy_metrics(self) -> dict[str, NeuronEntropy]:
        """The per-layer entropy metrics of the latest measurement (empty before the first)."""
        return {} if self.measurement is None else self.measurement.entropy_metrics

    @property
    def mutual_info_metrics(self) -> dict[str, NeuronMutualInformation]:
        """The per-layer MI metrics of the latest measurement (empty before the first)."""
        return {} if self.measurement is None else self.measurement.mutual_info_metrics

    def _key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts) if self.prefix else parts)

    def _settings(self) -> MeasurementSettings:
        return MeasurementSettings(
            entropy_bins=self.entropy_bins,
            mutual_info_bins=self.mutual_info_bins,
            binning=self.binning,
            range_quantile=self.range_quantile,
            calibration_samples=self.calibration_samples,
            miller_madow=self.miller_madow,
            max_state_bytes=self.max_state_bytes,
        )

    # ----------------------------------------------------------------------------- lifecycle
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.layer_names = resolve_layers(pl_module, self.layers)
        self._check_state_budget(pl_module)

    def _check_state_budget(self, pl_module: LightningModule) -> None:
        """Refuse, before any epoch runs, a layer whose MI state would exceed ``max_state_bytes``.

        Possible where the width is known from the module (``nn.Linear``, convolutions, norms,
        embeddings); other layers are checked at their first activations.
        """
        modules = dict(pl_module.named_modules())
        for name in self.layer_names:
            width = self.layer_widths.get(name) or module_output_width(modules[name])
            if width is None:
                continue
            num_neurons = width if self.max_neurons is None else min(width, self.max_neurons)
            try:
                NeuronMutualInformation.check_state_size(num_neurons, self.mutual_info_bins, self.max_state_bytes)
            except StateTooLargeError as error:
                raise StateTooLargeError(
                    f"InformationMeasures: layer {name!r} ({num_neurons} monitored neurons): {error} "
                    "(max_neurons and mutual_info_bins are InformationMeasures arguments)"
                ) from None

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self._should_measure(trainer):
            return
        self._remove_hooks()
        world_size = max(1, int(trainer.world_size))
        distributed = world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
        self.measurement = ActivationMeasurement(
            self.layer_names,
            self._settings(),
            max_samples=self.max_samples,
            world_size=world_size,
            distributed=distributed,
        )
        modules = dict(pl_module.named_modules())
        for name in self.layer_names:
            self._handles.append(modules[name].register_forward_hook(self._make_hook(name)))
        self._active = True

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active:
            return
        try:
            row = self._compute_and_log(trainer, pl_module)
            if row is not None:
                self.history.append(row)
                self._measurements += 1
        finally:
            self._remove_hooks()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()

    def _should_measure(self, trainer: Trainer) -> bool:
        if trainer.state.fn != "fit":
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._active = False

    # ------------------------------------------------------------------------------ sampling
    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._active:
                self._observe(name, module, output)

        return hook

    def _observe(self, name: str, module: nn.Module, output: Any) -> None:
        measurement = self.measurement
        assert measurement is not None
        remaining = measurement.remaining(name)
        if remaining == 0:
            return
        activations = to_neuron_activations(output, module, self.output_transform, self.sequence_reduction)
        if not activations.is_floating_point():
            raise TypeError(
                f"layer {name!r} produced {activations.dtype} activations; monitor a layer with floating-point "
                "outputs or pass output_transform=..."
            )
        if remaining is not None:
            activations = activations[:remaining]
        index = self._neuron_subset(name, int(activations.shape[1]))
        if index is not None:
            activations = activations.index_select(1, index.to(activations.device))
        measurement.observe(name, activations.detach())

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
                generator = torch.Generator().manual_seed(self.seed + self.layer_names.index(name))
                subset = torch.randperm(width, generator=generator)[: self.max_neurons]
                self.neuron_indices[name] = subset.sort().values
        return self.neuron_indices[name]

    # ------------------------------------------------------------------------------- results
    def _compute_and_log(self, trainer: Trainer, pl_module: LightningModule) -> Optional[dict[str, Any]]:
        measurement = self.measurement
        assert measurement is not None
        results = measurement.results()
        measured = [name for name in self.layer_names if name in results]
        missing = [name for name in self.layer_names if name not in results]
        if missing:
            self._warn_once(
                "missing",
                f"InformationMeasures: no activations reached layer(s) {missing} during validation (the module "
                "was not called in validation_step); their keys are not logged",
            )
        if not measured:
            return None
        for name in measured:
            if not results[name].defined:
                self._warn_once(
                    f"undefined:{name}",
                    f"InformationMeasures: layer {name!r} had no finite activation (only NaN or Inf: a diverged "
                    f"model?) in the evaluation of epoch {trainer.current_epoch}; its values and the overall "
                    "values are logged as NaN, which ModelCheckpoint ranks worst and EarlyStopping(check_finite=True) "
                    "stops on",
                )
        self.results = results
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        scalars: dict[str, float] = {}
        for name in measured:
            result = results[name]
            scalars[self._key(name, "entropy")] = result.mean_entropy
            scalars[self._key(name, "mutual_info")] = result.mean_mutual_info
            row[self._key(name, "entropy")] = result.mean_entropy
            row[self._key(name, "mutual_info")] = result.mean_mutual_info
            row[self._key(name, "clipped_fraction")] = result.clipped_fraction
        entropy, mutual_info = summarize(results)
        scalars[self._key("entropy")] = row[self._key("entropy")] = entropy
        scalars[self._key("mutual_info")] = row[self._key("mutual_info")] = mutual_info
        for key, value in scalars.items():
            pl_module.log(key, torch.tensor(value, dtype=torch.float32, device=pl_module.device), sync_dist=True)
        self._log_tensorboard(trainer, results)
        return row

    def _log_tensorboard(self, trainer: Trainer, results: dict[str, LayerResult]) -> None:
        want_heatmap = self.heatmap_every_n_epochs > 0 and self._measurements % self.heatmap_every_n_epochs == 0
        if not (self.log_histograms or want_heatmap) or not trainer.loggers:
            return
        writers = [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not writers:
            self._warn_once(
                "logger",
                "InformationMeasures: histograms and MI heatmaps need a TensorBoardLogger; the scalars are logged "
                "and reach ModelCheckpoint/EarlyStopping, the rest is skipped",
            )
            return
        if trainer.global_rank != 0:
            return
        step = trainer.global_step
        for writer in writers:
            for name, result in results.items():
                if not result.defined:
                    continue
                n = result.mutual_info.shape[0]
                off_diagonal = result.mutual_info[~torch.eye(n, dtype=torch.bool, device=result.mutual_info.device)]
                if self.log_histograms:
                    entropy = result.entropy[~torch.isnan(result.entropy)]
                    if entropy.numel():
                        writer.add_histogram(self._key(name, "entropy_per_neuron"), entropy.float().cpu(), step)
                    pairs = off_diagonal[~torch.isnan(off_diagonal)]
                    if pairs.numel():
                        writer.add_histogram(self._key(name, "mutual_info_pairs"), pairs.float().cpu(), step)
                if want_heatmap and n > 1:
                    off = result.mutual_info.clone()
                    off.fill_diagonal_(result.mean_mutual_info)
                    image = heatmap_image(off)
                    writer.add_image(self._key(name, "mutual_info_matrix"), image, step, dataformats="HWC")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=2)

    # ------------------------------------------------------------------------------- export
    def to_csv(self, path: Union[str, os.PathLike]) -> str:
        """Write `history` (one row per measured evaluation) to a CSV file; returns the path."""
        return write_csv(self.history, path)
