"""Group metrics, the critical-neuron probe and masked consistency training."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import Tensor, nn

from lightning_infomem.callbacks.masked_consistency import MaskedConsistency, MaskedConsistencyModule
from lightning_infomem.functional.groups import group_accuracy_counts
from lightning_infomem.functional.spurious import (
    Unit,
    critical_units,
    magnitude_mask,
    masked_consistency_loss,
    masked_forward,
    nt_xent,
    random_units,
    supported_layers,
    top_weights,
)
from lightning_infomem.metrics.groups import GroupAccuracy, GroupMemorizationGap, WorstGroupAccuracy
from lightning_infomem.spurious import modify_copy, probe_critical_neurons
from tests.lightning_helpers import DigitsCNN, DigitsMLP, digits_loaders, digits_tensors, fast_trainer

# ----------------------------------------------------------------------------------------------- groups


def test_group_metrics_match_manual_and_batching() -> None:
    gen = torch.Generator().manual_seed(0)
    preds = torch.randn(100, 3, generator=gen)
    target = torch.randint(0, 3, (100,), generator=gen)
    groups = torch.randint(0, 4, (100,), generator=gen)
    metric, worst = GroupAccuracy(4), WorstGroupAccuracy(4)
    for chunk in range(0, 100, 17):
        metric.update(preds[chunk : chunk + 17], target[chunk : chunk + 17], groups[chunk : chunk + 17])
        worst.update(preds[chunk : chunk + 17], target[chunk : chunk + 17], groups[chunk : chunk + 17])
    hit = preds.argmax(1) == target
    expected = torch.tensor([hit[groups == g].double().mean() for g in range(4)], dtype=torch.float64)
    torch.testing.assert_close(metric.compute(), expected)
    torch.testing.assert_close(worst.compute(), expected.min())


def test_group_accuracy_empty_group_is_nan_and_worst_ignores_it() -> None:
    metric, worst = GroupAccuracy(3), WorstGroupAccuracy(3)
    for m in (metric, worst):
        m.update(torch.tensor([1, 1]), torch.tensor([1, 0]), torch.tensor([0, 2]))
    acc = metric.compute()
    assert acc[0] == 1 and torch.isnan(acc[1]) and acc[2] == 0
    assert worst.compute() == 0


def test_memorization_gap() -> None:
    metric = GroupMemorizationGap(2)
    metric.update(torch.tensor([1, 1, 1, 1]), torch.tensor([1, 1, 1, 1]), torch.tensor([0, 0, 1, 1]), train=True)
    metric.update(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 1, 1, 1]), torch.tensor([0, 0, 1, 1]), train=False)
    torch.testing.assert_close(metric.compute(), torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(metric.test_accuracy, torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="train must be True"):
        metric.update(torch.tensor([1]), torch.tensor([1]), torch.tensor([0]), train="yes")  # type: ignore[arg-type]


def test_group_metric_errors() -> None:
    with pytest.raises(ValueError, match="num_groups must be an integer >= 1"):
        GroupAccuracy(0)
    with pytest.raises(ValueError, match=r"group ids must be in \[0, 2\)"):
        group_accuracy_counts(torch.tensor([0]), torch.tensor([0]), torch.tensor([2]), 2)
    with pytest.raises(ValueError, match="same number of samples"):
        group_accuracy_counts(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([0]), 2)
    with pytest.raises(ValueError, match="integer group ids"):
        group_accuracy_counts(torch.tensor([0]), torch.tensor([0]), torch.tensor([0.0]), 2)


def test_group_metric_in_lightning_module(tmp_path) -> None:
    class Module(DigitsMLP):
        def __init__(self) -> None:
            super().__init__()
            self.val_group_acc = WorstGroupAccuracy(2)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.val_group_acc.update(self(x), y, (y % 2))
            self.log("val_worst", self.val_group_acc)

    trainer = fast_trainer(tmp_path, max_epochs=1)
    module = Module()
    train, val = digits_loaders()
    trainer.fit(module, train, val)
    # the logged epoch value equals the worst group's accuracy of the final model, computed directly
    x, y = digits_tensors("val")
    with torch.no_grad():
        correct = module(x).argmax(1) == y
    accuracies = [float(correct[(y % 2) == g].double().mean()) for g in (0, 1)]
    assert float(trainer.callback_metrics["val_worst"]) == pytest.approx(min(accuracies), abs=1e-6)


# ------------------------------------------------------------------------------------------------ probe


def _trained_mlp() -> nn.Module:
    torch.manual_seed(0)
    x, y = digits_tensors("train")
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def test_supported_layers_errors() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="LayerNorm, which is not supported"):
        supported_layers(model, ["1"])
    with pytest.raises(ValueError, match="not a submodule"):
        supported_layers(model, ["7"])
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv"):
        supported_layers(nn.Sequential(nn.ReLU()))


def direct_gradient_scores(model: nn.Module, x: Tensor, y: Tensor, num_samples: int) -> dict[tuple[str, int], float]:
    """The gradient criterion written out: the cross-entropy on the ``num_samples`` samples of lowest true-class
    probability, and for every output unit the L2 norm of its weight row (or filter) and bias gradient."""
    model.eval()
    with torch.no_grad():
        prob = model(x).softmax(1)[torch.arange(len(y)), y]
    hardest = sorted(range(len(y)), key=lambda i: float(prob[i]))[:num_samples]
    model.zero_grad()
    nn.functional.cross_entropy(model(x[hardest]), y[hardest]).backward()
    scores = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            for i in range(module.weight.shape[0]):
                square = float(module.weight.grad[i].pow(2).sum()) + float(module.bias.grad[i] ** 2)
                scores[(name, i)] = square**0.5
    model.zero_grad(set_to_none=True)
    return scores


def test_critical_units_linear_and_conv() -> None:
    x, y = digits_tensors("train", image=True)
    cnn = DigitsCNN()
    units = critical_units(cnn, x[:100], y[:100], k=3, num_samples=50)
    assert len(units) == 3 and all(u.layer.startswith("net.") for u in units)
    reference = direct_gradient_scores(copy.deepcopy(cnn), x[:100], y[:100], 50)
    top = sorted(reference, key=reference.__getitem__, reverse=True)[:3]
    assert [(u.layer, u.index) for u in units] == top
    assert [u.score for u in units] == pytest.approx([reference[key] for key in top], rel=1e-5)
    assert all(p.grad is None for p in cnn.parameters())  # the probe does not leave gradients behind
    weight_units = critical_units(cnn, k=2, method="weight")
    norms = {
        (n, i): float(m.weight[i].detach().norm())
        for n, m in supported_layers(cnn).items()
        for i in range(len(m.weight))
    }
    assert weight_units[0].score == pytest.approx(max(norms.values()))
    with pytest.raises(ValueError, match='method must be "gradient" or "weight"'):
        critical_units(cnn, x, y, method="hessian")
    with pytest.raises(ValueError, match="needs the samples"):
        critical_units(cnn, k=2)


def test_top_weights_and_random_units() -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    masks = top_weights(model, 0.1)
    assert sum(int(m.sum()) for m in masks.values()) == 20
    everything = torch.cat([model[0].weight.abs().flatten(), model[1].weight.abs().flatten()])
    chosen = torch.cat([model[0].weight.abs()[masks["0"]], model[1].weight.abs()[masks["1"]]])
    assert chosen.min() >= everything.sort(descending=True).values[19]
    units = random_units(model, 5, torch.Generator().manual_seed(1))
    assert len(set(units)) == 5
    with pytest.raises(ValueError, match="k must be between"):
        random_units(model, 21)


@pytest.mark.parametrize("modification", ["zero", "reinit", "rewind"])
def test_modify_copy_leaves_original_unchanged(modification: str) -> None:
    cnn = DigitsCNN()
    earlier = copy.deepcopy(cnn.state_dict())
    with torch.no_grad():
        for p in cnn.parameters():
            p.add_(1.0)
    before = copy.deepcopy(cnn.state_dict())
    units = [Unit("net.0", 2), Unit("net.6", 4)]
    new = modify_copy(cnn, units, modification, sigma=0.01, rewind_state=earlier)
    for key, value in cnn.state_dict().items():
        assert torch.equal(value, before[key]), key
    w = new.net[0].weight[2]
    if modification == "zero":
        assert w.abs().sum() == 0 and new.net[0].bias[2] == 0
    elif modification == "reinit":
        assert 0 < w.std() < 0.05
    else:
        assert torch.equal(w, earlier["net.0.weight"][2]) and torch.equal(new.net[6].bias[4], earlier["net.6.bias"][4])
    # the other units are untouched
    assert torch.equal(new.net[0].weight[3], cnn.net[0].weight[3])
    # single weights
    masks = top_weights(cnn, 0.01)
    new = modify_copy(cnn, masks, "zero")
    assert all(bool((dict(new.named_modules())[n].weight[m] == 0).all()) for n, m in masks.items())
    with pytest.raises(ValueError, match="needs rewind_state"):
        modify_copy(cnn, units, "rewind")
    with pytest.raises(ValueError, match="out of range"):
        modify_copy(cnn, [Unit("net.0", 99)])


def test_probe_leaves_model_unchanged_and_reports(tmp_path) -> None:
    model = _trained_mlp()
    state = copy.deepcopy(model.state_dict())
    x, y = digits_tensors("train")
    xv, yv = digits_tensors("val")
    groups, groups_v = (y >= 5).long(), (yv >= 5).long()
    result = probe_critical_neurons(
        model,
        (x, y, groups),
        (xv, yv, groups_v),
        num_groups=2,
        k=2,
        modifications=("zero", "reinit", "rewind"),
        weight_fraction=0.01,
        repeats=2,
        rewind_state=state,
        num_samples=50,
    )
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    # 2 groups x (gradient, random) x 3 + weight x 3 + top weights x 3
    assert len(result.rows) == 18
    rewinds = [r for r in result.rows if r["modification"] == "rewind"]
    assert all(r["after"] == pytest.approx(result.before) for r in rewinds)  # rewound to itself: no change
    zeroed = [r for r in result.rows if r["selection"] == "gradient" and r["modification"] == "zero"]
    assert any(min(r["change"]) < 0 for r in zeroed)
    data = json.loads(result.to_json(str(tmp_path / "probe.json")))
    assert data["before"] == result.before and (tmp_path / "probe.json").exists()
    assert "| g0 | gradient | zero |" in result.markdown()
    with pytest.raises(ValueError, match="selections must be among"):
        probe_critical_neurons(model, (x, y, groups), (xv, yv, groups_v), 2, selections=("best",))


# ----------------------------------------------------------------------------------- masked consistency


def test_magnitude_mask_prunes_smallest_fraction() -> None:
    model = DigitsCNN()
    masks = magnitude_mask(model, 0.05)
    total = sum(m.numel() for m in masks.values())
    pruned = torch.cat([(~m).flatten() for m in masks.values()])
    assert int(pruned.sum()) == round(0.05 * total)
    weights = torch.cat([mod.weight.detach().abs().flatten() for mod in supported_layers(model).values()])
    assert weights[pruned].max() <= weights[~pruned].min()
    largest = magnitude_mask(model, 0.05, prune="largest")
    pruned_l = torch.cat([(~m).flatten() for m in largest.values()])
    assert weights[pruned_l].min() >= weights[~pruned_l].max()
    with pytest.raises(ValueError, match="fraction must be in"):
        magnitude_mask(model, 1.5)


def test_masked_view_really_uses_the_mask() -> None:
    model = DigitsCNN()
    x, _ = digits_tensors("train", image=True)
    x = x[:16]
    state = copy.deepcopy(model.state_dict())
    masks = magnitude_mask(model, 0.3)
    masked = masked_forward(model, masks, x)
    # the same as a copy whose weights are multiplied by the mask
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in supported_layers(reference).items():
            module.weight.mul_(masks[name])
    torch.testing.assert_close(masked, reference(x))
    assert not torch.allclose(masked, model(x))
    # an all-ones mask gives the full view; the weights are not changed
    ones = {n: torch.ones_like(m) for n, m in masks.items()}
    torch.testing.assert_close(masked_forward(model, ones, x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    # gradients reach the original weights through the mask only
    masked_forward(model, masks, x).sum().backward()
    grad = model.net[0].weight.grad
    assert grad is not None and bool((grad[~masks["net.0"]] == 0).all())
    with pytest.raises(ValueError, match="recompute the masks"):
        masked_forward(model, {"net.0": torch.ones(3, 3, dtype=torch.bool)}, x)


def nt_xent_written_out(anchor: Tensor, positive: Tensor, temperature: float) -> float:
    """SimCLR's NT-Xent, one anchor at a time: 2B anchors, each against its positive and the 2B - 2 other rows."""
    rows = [[c / math.sqrt(sum(d * d for d in v)) for c in v] for v in (anchor.tolist() + positive.tolist())]
    b, total = len(anchor), 0.0
    for i in range(2 * b):
        partner = i + b if i < b else i - b
        similarity = [sum(p * q for p, q in zip(rows[i], rows[j], strict=True)) / temperature for j in range(2 * b)]
        denominator = sum(math.exp(similarity[j]) for j in range(2 * b) if j != i)
        total += -math.log(math.exp(similarity[partner]) / denominator)
    return total / (2 * b)


def test_nt_xent_and_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    other = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    for temperature in (0.5, 0.1, 2.0):
        assert float(nt_xent(z, other, temperature)) == pytest.approx(nt_xent_written_out(z, other, temperature))
    assert float(nt_xent(z, z)) == pytest.approx(nt_xent_written_out(z, z, 0.5))
    z = z.float()
    with pytest.raises(ValueError, match="temperature must be positive"):
        nt_xent(z, z, 0.0)
    model = nn.Linear(5, 3)
    y = torch.randint(0, 3, (8,))
    masks = magnitude_mask(model, 0.2)
    loss, parts = masked_consistency_loss(model, z, y, masks, ce_weight=0.2)
    torch.testing.assert_close(loss.detach(), parts["consistency"] + 0.2 * parts["cross_entropy"])
    loss.backward()
    assert model.weight.grad is not None
    mlp = DigitsMLP()
    x, y = digits_tensors("train")
    masks = magnitude_mask(mlp, 0.3)
    loss_feat, parts = masked_consistency_loss(mlp, x[:32], y[:32], masks, feature_layer="net.3")
    full = mlp.net[:4](x[:32])
    masked = masked_forward(mlp, masks, x[:32])  # noqa: F841 (the logits; features checked below)
    reference = copy.deepcopy(mlp)
    with torch.no_grad():
        for name, module in supported_layers(reference).items():
            module.weight.mul_(masks[name])
    expected = 0.5 * (nt_xent(full, reference.net[:4](x[:32]).detach()) + nt_xent(reference.net[:4](x[:32]), full))
    torch.testing.assert_close(parts["consistency"], expected.detach())
    with pytest.raises(ValueError, match="not a submodule"):
        masked_consistency_loss(mlp, x[:4], y[:4], masks, feature_layer="nope")


def test_wrapper_and_callback_train(tmp_path) -> None:
    train, val = digits_loaders(num_val=64)
    wrapped = MaskedConsistencyModule(DigitsMLP(), fraction=0.05)
    before = copy.deepcopy(wrapped.module.state_dict())
    trainer = fast_trainer(tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(wrapped, train, val)
    assert wrapped.consistency.mask_updates == 2
    assert "train_consistency" in trainer.callback_metrics
    assert "val_loss" in trainer.callback_metrics  # the wrapped module's own validation logging works
    assert not torch.equal(before["net.0.weight"], wrapped.module.net[0].weight)

    class Module(DigitsMLP):
        def __init__(self, callback: MaskedConsistency) -> None:
            super().__init__()
            self.callback = callback

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.callback.loss(self, x, y)[0]

    callback = MaskedConsistency(fraction=0.02)
    trainer = fast_trainer(tmp_path, max_epochs=3, limit_train_batches=2, callbacks=[callback])
    trainer.fit(Module(callback), train)
    assert callback.mask_updates == 3
    with pytest.raises(ValueError, match="not supported"):
        MaskedConsistencyModule(DigitsMLP(), layers=["net.1"])


def test_worst_group_accuracy_is_never_nan() -> None:
    from lightning_infomem.metrics.groups import WorstGroupAccuracy

    metric = WorstGroupAccuracy(num_groups=2)
    with pytest.warns(RuntimeWarning, match="no group has samples"):
        value = metric.compute()
    assert float(value) == 0.0
