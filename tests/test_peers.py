"""The label-free peers against their papers' definitions, written out with numpy; the study's constructions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from study.families import PAD, SHORTCUT_1, StagedCNN, TokenTransformer, patch_digits, token_task

from lightning_infomem.functional.peers import (
    label_wave_stop,
    mean_max_softmax,
    prediction_changes,
    prediction_disagreement,
    softmax_nuclear_norm,
)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("shape", [(50, 4), (3, 10), (200, 2)])
def test_softmax_peers_against_numpy(shape):
    logits = np.random.default_rng(0).normal(scale=3.0, size=shape)
    probabilities = _softmax(logits)
    samples, classes = shape
    nuclear = np.linalg.norm(probabilities, ord="nuc") / np.sqrt(samples * min(samples, classes))
    assert softmax_nuclear_norm(torch.from_numpy(logits)) == pytest.approx(nuclear, rel=1e-12)
    assert mean_max_softmax(torch.from_numpy(logits)) == pytest.approx(probabilities.max(axis=1).mean(), rel=1e-12)


def test_nuclear_norm_is_one_for_confident_balanced_predictions_and_lower_when_collapsed():
    balanced = torch.eye(4).repeat(5, 1) * 60.0
    collapsed = torch.zeros(20, 4)
    collapsed[:, 0] = 60.0
    assert softmax_nuclear_norm(balanced) == pytest.approx(1.0, abs=1e-9)
    assert softmax_nuclear_norm(collapsed) == pytest.approx(1.0 / 2.0, abs=1e-9)  # one class: sqrt(20) / sqrt(80)
    with pytest.raises(ValueError, match=r"\[samples, classes\]"):
        softmax_nuclear_norm(torch.zeros(5))


def test_disagreement_and_prediction_changes_count_by_hand():
    a, b = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([0, 2, 2, 0, 0])
    assert prediction_disagreement(a, b) == pytest.approx(2 / 5)
    assert prediction_changes(a, b) == 2
    with pytest.raises(ValueError, match="one length"):
        prediction_disagreement(a, b[:3])


def test_label_wave_stops_at_the_first_local_minimum_of_the_moving_average():
    changes = [100, 80, 60, 40, 30, 35, 50, 45, 20]
    assert label_wave_stop(changes, window=1) == 4
    # a window of 3: averages 100, 90, 80, 60, 43.3, 35, 38.3, ...: the minimum at index 5
    assert label_wave_stop(changes, window=3) == 5
    assert label_wave_stop([5, 4, 3, 2, 1]) is None  # never rises again: no stop


def test_patch_and_token_shortcuts_agree_with_the_label_as_specified():
    generator = torch.Generator().manual_seed(0)
    x, digits = torch.rand(20_000, 64), torch.randint(0, 10, (20_000,), generator=generator)
    for alpha in (0.0, 0.5, 1.0):
        images, labels, bits = patch_digits(x, digits, alpha, generator)
        clean = (digits >= 5).long()
        assert abs(float((labels != clean).double().mean()) - 0.25) < 0.01
        assert abs(float((bits == labels).double().mean()) - (1 + alpha) / 2) < 0.01
        assert bool((images[bits == 1, 0, :2, :2] == 1).all()) and bool((images[bits == 0, 0, :2, 6:] == 1).all())
        ids, labels, clean = token_task(20_000, generator, binary=True, alpha=alpha)
        assert abs(float((labels != clean).double().mean()) - 0.25) < 0.01
        assert abs(float(((ids[:, 1] == SHORTCUT_1).long() == labels).double().mean()) - (1 + alpha) / 2) < 0.01
    ids, labels, clean = token_task(2000, generator, binary=False)
    assert torch.equal(labels, clean) and set(labels.tolist()) == {0, 1, 2, 3} and not bool((ids == PAD).any())
    groups = torch.nn.functional.one_hot((ids[:, 2:] - 4) // 5, 4).sum(dim=1)
    assert torch.equal(groups.argmax(dim=1), labels)  # the most frequent group, by construction unique


def test_the_study_models_run_and_have_default_layers():
    from lightning_helpers import observed_readings

    from lightning_infomem.introspection.layers import choose_default_layers

    cnn = StagedCNN(1, 10)
    assert cnn(torch.rand(4, 64)).shape == (4, 10)
    assert choose_default_layers(cnn).family == "stages"
    transformer = TokenTransformer(4)
    ids, _, _ = token_task(4, torch.Generator().manual_seed(0), binary=False)
    assert transformer(ids).shape == (4, 4)
    reading = observed_readings(transformer, ["encoder.layers.0"], ids)["encoder.layers.0"]
    assert (reading.causal, reading.token) == (False, "first")  # token ids, not causal: the [CLS] token


# ----------------------------------------------------------------------- the metric and the callback
def test_streaming_metric_equals_the_functional_on_all_samples():
    from lightning_infomem import SoftmaxPeers

    logits = torch.from_numpy(np.random.default_rng(1).normal(scale=2.0, size=(300, 5)))
    metric = SoftmaxPeers(num_classes=5)
    for chunk in logits.split(70):
        metric.update(chunk)
    result = metric.compute()
    assert float(result["nuclear_norm"]) == pytest.approx(softmax_nuclear_norm(logits), rel=1e-10)
    assert float(result["max_softmax"]) == pytest.approx(mean_max_softmax(logits), rel=1e-12)
    metric.update(torch.full((2, 5), float("nan")))  # a diverged model: reported as NaN, not a value
    assert all(bool(torch.isnan(v)) for v in metric.compute().values())
    with pytest.raises(ValueError, match=r"\[samples, 5\]"):
        metric.update(torch.zeros(3, 4))


def test_prediction_peers_logs_the_validation_softmax_statistics(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning_helpers import DigitsMLP, digits_loaders, digits_tensors, fast_trainer

    from lightning_infomem import PredictionPeers

    peers = PredictionPeers()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="peers/nuclear_norm", mode="max")
    model = DigitsMLP()
    trainer = fast_trainer(tmp_path, callbacks=[peers, checkpoint], enable_checkpointing=True, max_epochs=2)
    trainer.fit(model, *digits_loaders())
    assert [row["epoch"] for row in peers.history] == [0, 1]
    x, _ = digits_tensors("val")
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert peers.history[-1]["peers/nuclear_norm"] == pytest.approx(softmax_nuclear_norm(logits), rel=1e-5)
    assert peers.history[-1]["peers/max_softmax"] == pytest.approx(mean_max_softmax(logits), rel=1e-5)
    assert checkpoint.best_model_score is not None
    assert float(checkpoint.best_model_score) == pytest.approx(max(r["peers/nuclear_norm"] for r in peers.history))


def test_prediction_peers_reads_a_sequence_classifiers_pooled_logits(tmp_path):
    from lightning.pytorch import LightningModule
    from lightning_helpers import fast_trainer, tiny_gpt2_classifier

    from lightning_infomem import PredictionPeers

    class Classifier(LightningModule):
        def __init__(self):
            super().__init__()
            self.model = tiny_gpt2_classifier(num_labels=3)

        def validation_step(self, batch, batch_idx):
            return self.model(input_ids=batch[0]).logits

    ids = torch.randint(2, 50, (64, 8), generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids), batch_size=16)
    peers = PredictionPeers()
    model = Classifier()
    fast_trainer(tmp_path, callbacks=[peers]).validate(model, loader, verbose=False)
    assert peers._chosen[0] == "model"  # the score head gives per-token logits: the model's pooled ones instead
    model.eval()
    with torch.no_grad():
        logits = model.model(input_ids=ids).logits
    assert peers.history[-1]["peers/nuclear_norm"] == pytest.approx(softmax_nuclear_norm(logits), rel=1e-5)
    per_token = PredictionPeers(logits_module="model.score")  # [batch, tokens, classes]: said, not silent
    with pytest.warns(UserWarning, match=r"'model.score' are \[16, 8, 3\], not \[batch, classes\]"):
        fast_trainer(tmp_path, callbacks=[per_token]).validate(model, loader, verbose=False)
    assert per_token.history == []


@pytest.mark.parametrize(
    "path, name",
    [
        ("lightning_infomem.metrics.predictions", "SoftmaxPeers"),
        ("lightning_infomem.callbacks.prediction_peers", "PredictionPeers"),
    ],
)
def test_the_earlier_module_paths_of_the_peers_still_import_with_a_warning(path, name):
    import importlib
    import sys

    sys.modules.pop(path, None)
    with pytest.warns(FutureWarning, match="next release"):
        module = importlib.import_module(path)
    import lightning_infomem

    assert getattr(module, name) is getattr(lightning_infomem, name)
