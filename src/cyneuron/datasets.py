"""Small real data sets (no download) and generators."""
import numpy as np


def load_digits(test_size=0.2, random_state=0):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).

    Pixels are scaled to [0, 1]. Returns ((x_train, y_train), (x_test, y_test)),
    split with stratification. Needs scikit-learn: pip install "cyneuron[demo]".
    """
    try:
        from sklearn.datasets import load_digits as _load
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise ImportError("load_digits needs scikit-learn: pip install 'cyneuron[demo]'") from exc
    x, y = _load(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size,
                                              random_state=random_state, stratify=y)
    return (x_tr, y_tr), (x_te, y_te)


def make_xor(dtype=np.float32):
    """The four points of XOR: x (4, 2) and labels y (4,)."""
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=dtype)
    y = np.array([0, 1, 1, 0], dtype=np.int64)
    return x, y
