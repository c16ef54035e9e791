"""Agreement between two segmentations: the adjusted Rand index (Hubert & Arabie 1985)."""
import numpy as np
import torch


def adjusted_rand_index(a, b) -> float:
    a = np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a).reshape(-1)
    b = np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b).reshape(-1)
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)

    def pairs(x):
        return (x * (x - 1) // 2).sum()
    index = pairs(table)
    rows, cols, total = pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array([a.size]))
    expected = rows * cols / total if total else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))
