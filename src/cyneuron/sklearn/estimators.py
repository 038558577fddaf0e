"""MLPClassifier and MLPRegressor: what differs between them (targets, output layer,
loss, predictions, score); the training itself is _BaseMLP's (_base.py)."""
import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ..models import class_weight_to_sample_weight
from ._base import _BaseMLP, validate_data


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier (scikit-learn's MLPClassifier on cyneuron).

    Multiclass: softmax output and cross-entropy; binary and multilabel (an indicator
    matrix y): logistic outputs and binary cross-entropy. See the module docstring for
    the parameters; class_weight is a dict {label: weight} or "balanced".
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, dropout=0.0,
                 class_weight=None, dtype=None, distributed=False):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            dropout=dropout, dtype=dtype, distributed=distributed)
        self.class_weight = class_weight

    _score_function = staticmethod(accuracy_score)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, dtype=self._input_dtype(),
                             reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(f"warm_start can only be used where `y` has the same "
                                     f"classes as in the previous call to fit. Previously got "
                                     f"{self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        return X, y

    def _multiclass(self):
        return self._label_binarizer.y_type_ == "multiclass"

    def _encode_targets(self, y):
        """Class indices (multiclass) or a 0/1 matrix (binary, multilabel)."""
        if self._multiclass():
            # classes_ is sorted and holds every label of y (checked on input): the index
            # of each label, without the one-hot matrix LabelBinarizer would build (~2 ms)
            return np.searchsorted(self.classes_, y)
        return self._label_binarizer.transform(y).astype(np.float64)

    def _decode_targets(self, targets):
        if self._multiclass():
            return self.classes_[targets]
        return self._label_binarizer.inverse_transform(targets)

    def _loss_targets(self, targets):
        return targets

    def _stratify(self):
        return self.n_outputs_ == 1   # as scikit-learn: binary targets only

    def _output_activation(self):
        return "softmax" if self._multiclass() else "logistic"

    def _loss_name(self):
        return "sparse_categorical_crossentropy" if self._multiclass() else "binary_crossentropy"

    def _loss_scaling(self):
        # binary cross-entropy averages over the outputs; scikit-learn sums them
        return (1.0, 1.0) if self._multiclass() else (float(self.n_outputs_), 1.0)

    def _class_weights(self, y, sample_weight):
        if self.class_weight is None:
            return sample_weight
        if type_of_target(y).startswith("multilabel"):
            raise ValueError("class_weight is not supported for multilabel targets")
        indices = np.searchsorted(self.classes_, y)
        if isinstance(self.class_weight, dict):
            unknown = [c for c in self.class_weight if c not in set(self.classes_.tolist())]
            if unknown:
                raise ValueError(f"class_weight has labels {unknown} that are not classes "
                                 f"{self.classes_.tolist()}")
            mapping = {int(np.searchsorted(self.classes_, c)): w
                       for c, w in self.class_weight.items()}
            weights = class_weight_to_sample_weight(indices, mapping)
        else:
            weights = class_weight_to_sample_weight(indices, self.class_weight)
        return weights if sample_weight is None else weights * sample_weight

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y). `classes` (every label, across all calls) is required
        on the first call."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight, incremental=True)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def predict(self, X):
        """Predicted class labels (or label indicator rows for multilabel y)."""
        check_is_fitted(self)
        return self._predict(X)

    def predict_proba(self, X):
        """Class probabilities, columns in the order of classes_."""
        check_is_fitted(self)
        y_pred = self._forward_pass_fast(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multilabel": True}


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor (scikit-learn's MLPRegressor on cyneuron):
    identity output, half squared error loss; y may have several columns. `loss` comes
    first, as in scikit-learn >= 1.7; only "squared_error" is supported."""

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, dropout=0.0,
                 dtype=None, distributed=False):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            dropout=dropout, dtype=dtype, distributed=distributed)
        self.loss = loss

    _score_function = staticmethod(r2_score)

    def _check_params(self):
        if self.loss != "squared_error":
            raise ValueError(f"loss must be 'squared_error' (the only loss cyneuron's "
                             f"MLPRegressor supports), got {self.loss!r}")
        return super()._check_params()

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True,
                             dtype=self._input_dtype(), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _encode_targets(self, y):
        return y.reshape(-1, 1) if y.ndim == 1 else y

    def _decode_targets(self, targets):
        return targets

    def _loss_targets(self, targets):
        return targets

    def _stratify(self):
        return False

    def _output_activation(self):
        return "identity"

    def _loss_name(self):
        return "mean_squared_error"

    def _loss_scaling(self):
        # scikit-learn's gradient is that of 0.5 * sum over outputs; it reports
        # 0.5 * the mean over outputs
        return 0.5 * self.n_outputs_, 1.0 / self.n_outputs_

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y)."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def predict(self, X):
        """Predicted values, shape (n_samples,) or (n_samples, n_outputs)."""
        check_is_fitted(self)
        return self._predict(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multioutput": True}
