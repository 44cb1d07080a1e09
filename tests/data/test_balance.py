"""Label balance: what counts as skewed, the warning's words, class weights from `train.class_weights`."""

from __future__ import annotations

import pytest

from peftkit.data.balance import check_class_weights, class_weights, rare_labels, skew_warning
from peftkit.errors import PeftkitError


def test_rare_labels_are_those_under_half_an_even_share():
    assert rare_labels({"a": 90, "b": 10}) == ["b"]
    assert rare_labels({"a": 58, "b": 42}) == []  # Rotten Tomatoes' own balance is not skewed
    assert rare_labels({"a": 50, "b": 45, "c": 5}) == ["c"]  # even share 33.3%, c has 5%
    assert rare_labels({"a": 0, "b": 0}) == []


def test_skew_warning_names_the_rare_label_and_the_fix():
    message = skew_warning({"neg": 10, "pos": 90}, where="training split", headline="accuracy")
    assert "training split: the label distribution is skewed (rare: 'neg' 10.0% of 100 examples" in message
    assert "always answering 'pos' scores 90.0% accuracy" in message
    assert "Put macro_f1 first in eval.metrics" in message
    assert "`train.class_weights: balanced`" in message


def test_no_warning_when_the_headline_metric_is_not_accuracy_or_labels_are_balanced():
    assert skew_warning({"neg": 10, "pos": 90}, where="x", headline="macro_f1") is None
    assert skew_warning({"neg": 45, "pos": 55}, where="x", headline="accuracy") is None
    # without a recipe (data show) the headline is unknown: a skewed distribution is still worth a warning
    assert "accuracy is misleading here" in skew_warning({"neg": 1, "pos": 99}, where="x", headline=None)


def test_balanced_weights_make_every_label_count_equally():
    weights = class_weights("balanced", ["neg", "pos"], [0] * 9 + [1])
    assert weights == pytest.approx([10 / 18, 5.0])
    # summed weight per label is equal: 9 × 10/18 = 1 × 5
    assert 9 * weights[0] == pytest.approx(1 * weights[1])
    assert class_weights("balanced", ["a", "b", "c"], [0, 0, 1]) == pytest.approx(
        [0.5, 1.0, 1.0]
    )  # c: no examples


def test_mapping_weights_default_to_one_and_none_means_the_plain_loss():
    assert class_weights({"pos": 3}, ["neg", "pos"], [0, 1]) == [1.0, 3.0]
    assert class_weights("none", ["neg", "pos"], [0, 1]) is None


def test_class_weights_must_name_card_labels():
    with pytest.raises(PeftkitError) as err:
        check_class_weights({"postive": 2}, ["negative", "positive"], "classification")
    assert "train.class_weights: 'postive' is not a label of the data card. Did you mean 'positive'?" in str(
        err.value
    )
    assert "labels left out keep weight 1" in str(err.value)
    check_class_weights({"positive": 2}, ["negative", "positive"], "classification")  # fine


def test_class_weights_are_refused_for_causal_lm():
    with pytest.raises(PeftkitError, match="weights classification labels, but model.task is causal_lm"):
        check_class_weights("balanced", [], "causal_lm")
    check_class_weights("none", [], "causal_lm")  # the default stays silent
