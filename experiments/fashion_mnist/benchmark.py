"""Published figures the report compares against: the convolutional rows of the benchmark table in the
Fashion-MNIST repository's README (zalandoresearch/fashion-mnist, README.md at commit 02cf067). They are quoted,
not measured here; the table's own note says the maintainers have not tested them and that "test accuracy may
differ due to the number of epoch, batch size, etc."."""

from __future__ import annotations

from typing import NamedTuple

SOURCE = "https://github.com/zalandoresearch/fashion-mnist/blob/02cf0676df9403f820db28474248ba7d7d1060bb/README.md"


class Row(NamedTuple):
    classifier: str  # as the table names it
    preprocessing: str
    test_acc: float  # "Fashion test accuracy" (the 10,000 test images)
    submitter: str


ROWS = (
    Row("2 Conv Layers with max pooling (Keras)", "None", 0.876, "Kashif Rasul"),
    Row("2 Conv Layers with max pooling (Tensorflow) >300 epochs", "None", 0.916, "Tensorflow's doc"),
    Row("2 Conv Layers with max pooling and ELU activation (PyTorch)", "None", 0.903, "@AbhirajHinge"),
    Row(
        "2 Conv Layers net",
        "Normalization, random horizontal flip, random vertical flip, random translation, random rotation.",
        0.919,
        "Kyriakos Efthymiadis",
    ),
    Row("2 Conv Layers net <100K parameters", "None", 0.925, "@hardmaru"),
    Row("2 Conv Layers 113K parameters", "Normalization", 0.922, "Abel G."),
    Row("2 Conv Layers with 3 FC 1.8M parameters", "Normalization", 0.932, "@Xfan1025"),
    Row("3 Conv Layers and 2 FC", "None", 0.907, "@Cenk Bircanoğlu"),
    Row("3 Conv Layers+pooling+BN", "None", 0.903, "@meghanabhange"),
    Row("3 Conv+pooling and 2 FC+dropout", "None", 0.926, "@Umberto Griffo"),
)
