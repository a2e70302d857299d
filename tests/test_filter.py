"""Filter-KD's table (`labels.filter_path`) against the official code's per-sample loop, and the
methods registry's input checks.

The reference below is written the way the paper's `_Update_Teach_Table` works: a Python
loop over samples and epochs, in float64, where a sample's first visit copies its prediction
and every later visit does q = (1 - a) q + a p.
"""
import numpy as np
import pytest
import torch

from filterkd_ray import InputError
from filterkd_ray.labels import (METHODS, TeacherOutputs, build_target, check_hparams,
                                 filter_path, get_method)


def reference_filter(path, a, upto):
    e, n, k = path.shape
    table = np.zeros((n, k), np.float64)
    visited = np.zeros(n, bool)
    for t in range(upto):
        for i in range(n):
            p = path[t, i].astype(np.float64)
            if not visited[i]:
                table[i] = p
                visited[i] = True
            else:
                table[i] = (1 - a) * table[i] + a * p
    return table


def random_path(epochs=7, n=40, k=5, seed=0, dtype=np.float16):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(k, 0.5), size=(epochs, n)).astype(dtype)


@pytest.mark.parametrize("a", [0.02, 0.05, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("upto", [1, 2, 4, 7, None])
def test_filter_equals_per_sample_reference(a, upto):
    path = random_path()
    got = filter_path(path, a, upto)
    want = reference_filter(path, a, 7 if upto is None else upto)
    assert got.dtype == np.float32 and got.shape == (40, 5)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_rate_one_is_the_last_prediction_and_upto_one_the_first():
    path = random_path(dtype=np.float32)
    for upto in (1, 3, 7):
        assert np.array_equal(filter_path(path, 1.0, upto), path[upto - 1])
    for a in (0.05, 0.5):
        assert np.array_equal(filter_path(path, a, 1), path[0])   # first visit copies


def test_read_only_float16_input_is_accepted_and_left_alone():
    path = random_path(dtype=np.float16)
    before = path.copy()
    path.flags.writeable = False      # what ray.get hands a worker
    q = filter_path(path, 0.1)
    assert np.array_equal(path, before)
    np.testing.assert_allclose(q, reference_filter(before, 0.1, 7), atol=1e-6)
    # The EMA of probability vectors is a probability vector (up to float16 rounding).
    np.testing.assert_allclose(q.sum(1), 1.0, atol=5e-3)


@pytest.mark.parametrize("a", [0.0, -0.1, 1.5, float("nan")])
def test_bad_ema_rate_raises(a):
    with pytest.raises(InputError, match="ema_rate"):
        filter_path(random_path(), a)


@pytest.mark.parametrize("upto", [0, -1, 8])
def test_bad_upto_raises(upto):
    with pytest.raises(InputError, match="upto"):
        filter_path(random_path(), 0.1, upto)


def test_bad_path_shape_raises():
    with pytest.raises(InputError, match="path"):
        filter_path(random_path()[0], 0.1)


def test_filter_kd_method_uses_the_best_epoch_snapshot():
    path = random_path(epochs=6, n=30, k=4, seed=2)
    y = np.arange(30) % 4
    teacher = TeacherOutputs(path=path, best_epoch=2)
    hp = {"ema_rate": 0.3, "temperature": 1.0, "distill_weight": 0.5}
    best = build_target("filter_kd", {**hp, "snapshot": "best"}, y, 4, teacher, None, "cpu")
    last = build_target("filter_kd", {**hp, "snapshot": "last"}, y, 4, teacher, None, "cpu")
    q_best, q_last = reference_filter(path, 0.3, 3), reference_filter(path, 0.3, 6)
    # At T = 1 the table shown is softmax(log q) = q renormalised.
    np.testing.assert_allclose(best.table, q_best / q_best.sum(1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(last.table, q_last / q_last.sum(1, keepdims=True), atol=1e-5)
    # The batch lookup is by sample index.
    idx = torch.tensor([5, 0, 29, 5])
    np.testing.assert_allclose(best.batch(idx, None).exp().numpy(), q_best[[5, 0, 29, 5]],
                               atol=1e-6)
    assert best.weight == 0.5 and best.temperature == 1.0


# --- bad input to the methods registry ---------------------------------------------------

def test_unknown_method_names_the_argument():
    with pytest.raises(InputError, match="method.*'nope'"):
        get_method("nope")
    assert {"oht", "ls", "kd", "eskd", "filter_kd"} <= set(METHODS)


@pytest.mark.parametrize("hp, word", [
    ({"ema_rate": 0.0}, "ema_rate"), ({"ema_rate": 1.01}, "ema_rate"),
    ({"temperature": 0.0}, "temperature"), ({"temperature": -2.0}, "temperature"),
    ({"distill_weight": -0.1}, "distill_weight"), ({"distill_weight": 1.5}, "distill_weight"),
    ({"ls_epsilon": 1.0}, "ls_epsilon"), ({"snapshot": "middle"}, "snapshot"),
])
def test_bad_hyperparameters_name_the_argument(hp, word):
    with pytest.raises(InputError, match=word):
        check_hparams(hp)
    full = {"ema_rate": 0.1, "temperature": 2.0, "distill_weight": 0.5, "snapshot": "best", **hp}
    teacher = TeacherOutputs(path=random_path(), best_epoch=0)
    with pytest.raises(InputError, match=word):
        build_target("filter_kd" if word != "ls_epsilon" else "ls",
                     {**full, "ls_epsilon": hp.get("ls_epsilon", 0.1)},
                     np.zeros(40, int), 5, teacher, None, "cpu")


def test_build_target_missing_hyperparameter_or_teacher():
    with pytest.raises(InputError, match="ema_rate"):
        build_target("filter_kd", {"temperature": 1.0, "distill_weight": 1.0, "snapshot": "last"},
                     np.zeros(40, int), 5, TeacherOutputs(path=random_path()), None, "cpu")
    with pytest.raises(InputError, match="teacher"):
        build_target("kd", {"temperature": 1.0, "distill_weight": 1.0}, np.zeros(4, int), 5,
                     None, None, "cpu")
