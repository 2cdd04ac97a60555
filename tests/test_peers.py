"""The label-free peers against their papers' definitions, written out with numpy; the study's constructions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_infomem.demos.families import PAD, SHORTCUT_1, StagedCNN, TokenTransformer, patch_digits, token_task
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
    from lightning_infomem.callbacks.layers import choose_default_layers, resolved_sequence_reduction

    cnn = StagedCNN(1, 10)
    assert cnn(torch.rand(4, 64)).shape == (4, 10)
    assert choose_default_layers(cnn).family == "stages"
    transformer = TokenTransformer(4)
    ids, _, _ = token_task(4, torch.Generator().manual_seed(0), binary=False)
    assert transformer(ids).shape == (4, 4)
    assert resolved_sequence_reduction("auto", transformer.encoder.layers[0], transformer) == "first"  # [CLS]
