"""scikit-learn estimators on cyneuron's kernels: MLPClassifier and MLPRegressor.

Drop-in replacements for sklearn.neural_network.MLPClassifier / MLPRegressor with the
"sgd" and "adam" solvers: the same parameter names, defaults and training algorithm
(Glorot-uniform initialization drawn from `random_state` in scikit-learn's order,
per-epoch shuffling, L2 penalty alpha * ||W||^2 / (2 * batch weight), loss_curve_,
tol / n_iter_no_change stopping, early_stopping on a validation_fraction split,
"constant" / "invscaling" / "adaptive" learning rates, warm_start, partial_fit), so a
model fitted with the same random_state follows scikit-learn's trajectory up to
floating-point rounding, and the forward / backward passes and optimizer steps run in
cyneuron's compiled kernels.

Beyond scikit-learn:
  activation  one name or a list with one per hidden layer; scikit-learn's names
              ("identity", "logistic", "tanh", "relu") or any cyneuron activation
              ("gelu", "leaky_relu", "swish", ...).
  dropout     a rate, or one per hidden layer (0 = none), applied after each hidden layer.
  class_weight (MLPClassifier) a dict {class label: weight} or "balanced".
  dtype       None (float32 input stays float32, anything else becomes float64, as in
              scikit-learn), "float32" (faster) or "float64".
  model_      the fitted cn.Sequential (save it with model_.save(path)).
  distributed True under mpirun: data-parallel training over MPI (cyneuron.distributed).
              Every rank calls fit with the whole data set; each step's batch is split
              between the ranks and their gradients summed with one all-reduce, so the
              fit follows the single-process one (same random_state) up to rounding.

Not supported: solver="lbfgs" and sparse input (both raise a clear error).

Where things are: _base.py (parameters, their checks, the network and the fit loop
shared by both estimators), _steps.py (one mini-batch step; the MPI split of a step),
estimators.py (MLPClassifier, MLPRegressor: targets, outputs, scores).
"""
from .estimators import MLPClassifier, MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]

# the public path (pickles, reprs, documentation) stays cyneuron.sklearn.<name>
MLPClassifier.__module__ = MLPRegressor.__module__ = __name__
