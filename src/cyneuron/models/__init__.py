"""Models: one graph engine. `Model(inputs, outputs)` runs a graph of layers (the Keras
functional API); `Sequential` is its linear case and runs on the same engine.

At build the engine works out, once: the topological order of the nodes, a slot per
tensor, which layers run a second time (a replica per extra call: the same weights, its
own buffers, its gradients added into the layer's after the backward pass), the fused
pairs (softmax / sigmoid output + cross-entropy on the logits; a Dense layer's
input-gradient GEMM applying the previous Dense layer's activation derivative in its
epilogue), and where gradients meet at a fan-out (summed into a buffer of the engine).

All trainable parameters of the graph, nested models included, live in one flat buffer
`_params` (and their gradients in `_grads`): each layer's trainable weights are views
into it, a nested model's parameters a contiguous slice, so the optimizer step is one
fused kernel over the whole model (the KANN design). Non-trainable weights (moving
statistics) stay with their layers; get_weights() lists both, in layer order.

Per-call state (what one forward/backward pass writes, so what two concurrent passes
must not share): the engine's per-slot lists `_vals` / `_masks`, its fan-out sums
`_acc`, fit's gather buffers `_batch_buffers`, and in every layer its `_buffers` and the
attributes its last forward left for backward (`_x`, `_y`, masks...). `model._replica()`
returns a model sharing every weight array with fresh per-call state (replicas of every
layer): a thread running inference on its own replica leaves the others' passes alone.

Threads. predict / evaluate / model(x) run on the model itself when its per-call state
is free (one uncontended lock: the single-threaded path), else on an idle replica from a
small pool (made on first need, kept for reuse). Weights are guarded by a readers-writer
lock: passes on replicas read under it, every writer (the optimizer step, set_weights,
apply_gradients, a training forward pass that moves BatchNormalization statistics) holds
it alone and also holds the model's own state, so a pass on the model itself needs no
read lock. One thread trains at a time: fit / train_on_batch from a second thread raise
RuntimeError. Ctrl-C during fit is deferred to the end of the current step (Keras 3:
the KeyboardInterrupt then propagates; the model and model.history stay consistent).

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
