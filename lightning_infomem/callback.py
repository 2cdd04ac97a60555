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
from typing import Any, Literal, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from lightning_infomem.functional.binning import calibrate_value_range
from lightning_infomem.functional.mutual_information import mean_off_diagonal
from lightning_infomem.layers import (
    LayerSpec,
    OutputTransform,
    SequenceReduction,
    resolve_layers,
    to_neuron_activations,
)
from lightning_infomem.metrics import (
    DEFAULT_MAX_STATE_BYTES,
    NeuronEntropy,
    NeuronMutualInformation,
    gather_calibration_samples,
)
from lightning_infomem.reporting import heatmap_image, write_csv

__all__ = ["Binning", "InformationMeasures"]

Binning = Literal["layer", "neuron", "global"]


class InformationMeasures(Callback):
    """Log the entropy H and mutual information I of neuron activations at validation epochs.

    Logged through ``pl_module.log`` at the end of each measured validation epoch (keys use ``prefix``):

    - ``infomem/entropy``: mean per-neuron entropy over all monitored neurons of all layers;
    - ``infomem/mutual_info``: mean pairwise MI over all monitored pairs (pairs within a layer,
      diagonal left out);
    - ``infomem/<layer>/entropy`` and ``infomem/<layer>/mutual_info``: the same per layer.

    Shortcut memorization shows low H and high I (monitor ``mode="min"`` on ``mutual_info`` or
    ``mode="max"`` on ``entropy`` to avoid it); fitting noisy labels shows high H and low I.

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
        max_state_bytes: memory budget of each layer's MI histogram state.

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
        max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
    ) -> None:
        for name, value in (("entropy_bins", entropy_bins), ("mutual_info_bins", mutual_info_bins)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, received {value!r}")
        for name, value in (("max_samples", max_samples), ("max_neurons", max_neurons)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, received {value!r}")
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive integer, received {every_n_epochs!r}")
        if binning not in ("layer", "neuron", "global"):
            raise ValueError(f"binning must be 'layer', 'neuron' or 'global', received {binning!r}")
        if not 0.0 <= range_quantile < 0.5:
            raise ValueError(f"range_quantile must be in [0, 0.5), received {range_quantile}")
        if not isinstance(calibration_samples, int) or calibration_samples < 1:
            raise ValueError(f"calibration_samples must be a positive integer, received {calibration_samples!r}")
        if sequence_reduction not in ("first", "mean"):
            raise ValueError(f"sequence_reduction must be 'first' or 'mean', received {sequence_reduction!r}")
        if heatmap_every_n_epochs < 0:
            raise ValueError(f"heatmap_every_n_epochs must be >= 0, received {heatmap_every_n_epochs}")
        self.layers = layers
        self.entropy_bins = entropy_bins
        self.mutual_info_bins = mutual_info_bins
        self.max_samples = max_samples
        self.max_neurons = max_neurons
        self.every_n_epochs = every_n_epochs
        self.binning = binning
        self.range_quantile = range_quantile
        self.calibration_samples = calibration_samples
        self.miller_madow = miller_madow
        self.sequence_reduction = sequence_reduction
        self.output_transform = output_transform
        self.log_histograms = log_histograms
        self.heatmap_every_n_epochs = heatmap_every_n_epochs
        self.prefix = prefix
        self.seed = seed
        self.max_state_bytes = max_state_bytes

        self.history: list[dict[str, Any]] = []
        self.layer_names: list[str] = []
        self.neuron_indices: dict[str, Optional[Tensor]] = {}
        self.layer_widths: dict[str, int] = {}
        self.entropy_metrics: dict[str, NeuronEntropy] = {}
        self.mutual_info_metrics: dict[str, NeuronMutualInformation] = {}
        self._measurements = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._active = False
        self._seen: dict[str, int] = {}
        self._held_back: dict[str, list[Tensor]] = {}
        self._ranges_fixed = False
        self._calibrated: set[str] = set()
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
        self.entropy_metrics.clear()
        self.mutual_info_metrics.clear()

    # ----------------------------------------------------------------------------- lifecycle
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.layer_names = resolve_layers(pl_module, self.layers)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self._should_measure(trainer):
            return
        self._remove_hooks()
        modules = dict(pl_module.named_modules())
        self._seen = {name: 0 for name in self.layer_names}
        self._held_back = {name: [] for name in self.layer_names}
        self._ranges_fixed = False
        for metric in (*self.entropy_metrics.values(), *self.mutual_info_metrics.values()):
            metric.reset()
        for name in self.layer_names:
            self._handles.append(modules[name].register_forward_hook(self._make_hook(name)))
        self._active = True

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active:
            return
        try:
            if not self._ranges_fixed:
                self._fix_ranges()
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
    def _world_size(self) -> int:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size()
        return 1

    def _quota(self, total: Optional[int]) -> Optional[int]:
        return None if total is None else -(-total // self._world_size())

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._active:
                self._observe(name, module, output)

        return hook

    def _observe(self, name: str, module: nn.Module, output: Any) -> None:
        quota = self._quota(self.max_samples)
        seen = self._seen[name]
        if quota is not None and seen >= quota:
            return
        activations = to_neuron_activations(output, module, self.output_transform, self.sequence_reduction)
        if not activations.is_floating_point():
            raise TypeError(
                f"layer {name!r} produced {activations.dtype} activations; monitor a layer with floating-point "
                "outputs or pass output_transform=..."
            )
        if quota is not None:
            activations = activations[: quota - seen]
        self._seen[name] = seen + activations.shape[0]
        if name not in self.entropy_metrics:
            self._init_layer(name, activations)
        index = self.neuron_indices[name]
        if index is not None:
            activations = activations.index_select(1, index.to(activations.device))
        activations = activations.detach()
        if self._ranges_fixed:
            self._update(name, activations)
            return
        self._held_back[name].append(activations)
        target = min(self._quota(self.calibration_samples), quota if quota is not None else 2**62)
        if all(self._seen[layer] >= target for layer in self.layer_names):
            self._fix_ranges()

    def _init_layer(self, name: str, activations: Tensor) -> None:
        width = activations.shape[1]
        known = self.layer_widths.get(name)
        if known is not None and known != width:
            raise ValueError(
                f"layer {name!r} now has {width} neurons but the restored callback state was recorded with {known}; "
                "the model changed since the checkpoint"
            )
        self.layer_widths[name] = width
        if name not in self.neuron_indices:
            if self.max_neurons is None or width <= self.max_neurons:
                self.neuron_indices[name] = None
            else:
                generator = torch.Generator().manual_seed(self.seed + self.layer_names.index(name))
                subset = torch.randperm(width, generator=generator)[: self.max_neurons]
                self.neuron_indices[name] = subset.sort().values
        index = self.neuron_indices[name]
        num_neurons = width if index is None else int(index.shape[0])
        common = {"miller_madow": self.miller_madow, "sync_on_compute": True}
        entropy = NeuronEntropy(num_neurons, self.entropy_bins, **common)
        mutual_info = NeuronMutualInformation(
            num_neurons, self.mutual_info_bins, max_state_bytes=self.max_state_bytes, **common
        )
        self.entropy_metrics[name] = entropy.to(activations.device)
        self.mutual_info_metrics[name] = mutual_info.to(activations.device)

    def _update(self, name: str, activations: Tensor) -> None:
        self.entropy_metrics[name].update(activations)
        self.mutual_info_metrics[name].update(activations)

    def _fix_ranges(self) -> None:
        """Calibrate the binning ranges from the held-back samples (of all processes) and count them."""
        calibration = self._quota(self.calibration_samples)
        samples: dict[str, Tensor] = {}
        for name in self.layer_names:
            if name in self.entropy_metrics:
                metric = self.entropy_metrics[name]
                samples[name], _ = gather_calibration_samples(
                    self._held_back[name], calibration, metric.num_neurons, metric.counts.device
                )
        # a layer measured at an earlier evaluation but not reached in this one has nothing to calibrate on
        samples = {name: s for name, s in samples.items() if s.shape[0] > 0}
        self._calibrated = set(samples)
        if self.binning == "global" and samples:
            pooled = torch.cat([s.reshape(-1, 1) for s in samples.values()])
            low, high = calibrate_value_range(pooled, quantile=self.range_quantile)
            ranges = {name: (low, high) for name in samples}
        else:
            ranges = {
                name: calibrate_value_range(s, per_neuron=self.binning == "neuron", quantile=self.range_quantile)
                for name, s in samples.items()
            }
        for name, (low, high) in ranges.items():
            self.entropy_metrics[name].set_value_range(low, high)
            self.mutual_info_metrics[name].set_value_range(low, high)
            for activations in self._held_back[name]:
                self._update(name, activations)
        self._held_back = {name: [] for name in self.layer_names}
        self._ranges_fixed = True

    # ------------------------------------------------------------------------------- results
    def _compute_and_log(self, trainer: Trainer, pl_module: LightningModule) -> Optional[dict[str, Any]]:
        # layers that received activations in this evaluation, on any process (earlier layers' metrics persist)
        measured = [name for name in self.layer_names if name in self._calibrated]
        missing = [name for name in self.layer_names if name not in measured]
        if missing:
            self._warn_once(
                "missing",
                f"InformationMeasures: no activations reached layer(s) {missing} during validation (the module "
                "was not called in validation_step); their keys are not logged",
            )
        if not measured:
            return None
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        entropies, pair_sums, pair_counts, per_layer = [], 0.0, 0, {}
        for name in measured:
            entropy = self.entropy_metrics[name].compute()
            mutual_info = self.mutual_info_metrics[name].compute()
            per_layer[name] = (entropy, mutual_info)
            entropies.append(entropy)
            n = mutual_info.shape[0]
            pair_sums += float(mutual_info.sum() - mutual_info.diagonal().sum())
            pair_counts += n * (n - 1)
            row[f"{self.prefix}/{name}/entropy"] = float(entropy.mean())
            row[f"{self.prefix}/{name}/mutual_info"] = float(mean_off_diagonal(mutual_info))
            with self.entropy_metrics[name].sync_context():  # all processes' counters (a small state)
                row[f"{self.prefix}/{name}/clipped_fraction"] = self.entropy_metrics[name].clipped_fraction
        row[f"{self.prefix}/entropy"] = float(torch.cat(entropies).mean())
        row[f"{self.prefix}/mutual_info"] = pair_sums / pair_counts if pair_counts else 0.0
        for key, value in row.items():
            if key.endswith("/entropy") or key.endswith("/mutual_info"):
                pl_module.log(key, torch.tensor(value, dtype=torch.float32, device=pl_module.device), sync_dist=True)
        self._log_tensorboard(trainer, per_layer)
        return row

    def _log_tensorboard(self, trainer: Trainer, per_layer: dict[str, tuple[Tensor, Tensor]]) -> None:
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
            for name, (entropy, mutual_info) in per_layer.items():
                if self.log_histograms:
                    writer.add_histogram(f"{self.prefix}/{name}/entropy_per_neuron", entropy.float().cpu(), step)
                    n = mutual_info.shape[0]
                    if n > 1:
                        off_diagonal = mutual_info[~torch.eye(n, dtype=torch.bool, device=mutual_info.device)]
                        writer.add_histogram(
                            f"{self.prefix}/{name}/mutual_info_pairs", off_diagonal.float().cpu(), step
                        )
                if want_heatmap:
                    off = mutual_info.clone()
                    off.fill_diagonal_(float(mean_off_diagonal(mutual_info)) if off.shape[0] > 1 else 0.0)
                    image = heatmap_image(off)
                    writer.add_image(f"{self.prefix}/{name}/mutual_info_matrix", image, step, dataformats="HWC")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=2)

    # ------------------------------------------------------------------------------- export
    def to_csv(self, path: Union[str, os.PathLike]) -> str:
        """Write `history` (one row per measured evaluation) to a CSV file; returns the path."""
        return write_csv(self.history, path)
