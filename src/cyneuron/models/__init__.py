"""Models: one graph engine. `Model(inputs, outputs)` runs a graph of layers (the Keras
functional API); `Sequential` is its linear case and runs on the same engine.

The engine (its plan, the fused pairs, the one flat parameter buffer of the whole
graph) is described in _graph.py.

Per-call state (what one forward/backward pass writes, so what two concurrent passes
must not share): the engine's per-slot lists `_vals` / `_masks`, its fan-out sums
`_acc`, fit's gather buffers `_batch_buffers`, and in every layer its `_buffers` and the
attributes its last forward left for backward (`_x`, `_y`, masks...). `model._replica()`
returns a model sharing every weight array with fresh per-call state (replicas of every
layer): a thread running inference on its own replica leaves the others' passes alone.

Threads (_threads.py): inference runs on the model or on an idle replica, weights are
guarded by a readers-writer lock, one thread trains at a time. Ctrl-C during fit is
deferred to the end of the current step (Keras 3: the KeyboardInterrupt then
propagates; the model and model.history stay consistent).

Where things are: _graph.py (construction, flat buffers, plan, forward / backward),
_threads.py (locks, replica pool, deferred Ctrl-C), _training.py (compile, one step,
custom loops), _loops.py (fit / evaluate / predict / summary), model.py (Model: state,
weights, configuration, files), sequential.py (Sequential).
"""
from .. import saving
from ._loops import DEFAULT_PREDICT_BATCH, class_weight_to_sample_weight  # noqa: F401
from ._threads import MAX_IDLE_REPLICAS  # noqa: F401
from .model import Model, _deserialize, _serialize, model_from_config  # noqa: F401
from .sequential import Sequential  # noqa: F401

saving.register_model_builder(model_from_config)
from ..gan import GAN, ConditionalGAN  # noqa: E402,F401  (cn.models.GAN: built on the API above)
