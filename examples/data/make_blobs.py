"""Writes examples/data/blobs.csv, the small tabular data set of examples/tabular_csv.py (deterministic).

    python examples/data/make_blobs.py

600 rows of 5 numeric features and an integer label (3 classes). The classes are Gaussian blobs that
overlap a little (a good model scores about 0.9, not 1.0), and the features have very different scales
(about 1, 100 and 10,000), which is why the example standardises them.
"""

from pathlib import Path

import numpy as np

ROWS, FEATURES, CLASSES = 600, 5, 3
SCALES = np.array([1.0, 1.0, 100.0, 100.0, 10_000.0])  # per-feature unit, as raw measurements come


def make(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, size=(CLASSES, FEATURES))
    labels = rng.integers(0, CLASSES, size=ROWS)
    x = (centres[labels] + rng.normal(size=(ROWS, FEATURES))) * SCALES + 3 * SCALES  # offsets too
    return x, labels


def write(path: Path) -> None:
    x, labels = make()
    header = ",".join(f"x{i}" for i in range(FEATURES)) + ",label"
    rows = [",".join(f"{v:.6g}" for v in row) + f",{label}" for row, label in zip(x, labels)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def main() -> None:
    path = Path(__file__).with_name("blobs.csv")
    write(path)
    print(f"wrote {path}: {ROWS} rows, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
