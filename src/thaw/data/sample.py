"""The embedded demo dataset: a small Fashion-MNIST subset shipped inside the package.

``thaw fit --data sample`` style demos and the quick-start use it so that a first run needs no download.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from thaw.errors import DataError

__all__ = ["SAMPLE_CREDIT", "SAMPLE_CLASSES", "sample_data_dir"]

logger = logging.getLogger(__name__)

#: Attribution to show wherever the demo data is used (full licence in ``sample/fashion/LICENSE.txt``).
SAMPLE_CREDIT = (
    "Demo images: a subset of Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando Research, MIT licence), "
    "via Debian's dataset-fashion-mnist package."
)

#: The ten class folder names, in Fashion-MNIST label order.
SAMPLE_CLASSES: tuple[str, ...] = (
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
)


def sample_data_dir() -> Path:
    """Return the folder of the embedded demo dataset.

    The folder holds ``train/``, ``val/`` and ``test/``, each with one sub-folder per class of 28x28
    grayscale PNGs (40, 20 and 30 images per class).

    Returns:
        Path to the dataset folder (inside the installed package; treat it as read-only).

    Raises:
        DataError: If the package was installed without its data files.

    Example:
        >>> from thaw.data.sample import sample_data_dir
        >>> sorted(p.name for p in sample_data_dir().iterdir() if p.is_dir())
        ['test', 'train', 'val']
    """
    # importlib.resources finds the files whether thaw runs from a checkout or an installed wheel.
    # Wheels install as plain directories, so the Traversable is a real filesystem path.
    root = resources.files("thaw.data").joinpath("sample", "fashion")
    path = Path(str(root))
    if not (path / "train").is_dir():
        raise DataError(
            f"the embedded demo dataset is missing at {path}: reinstall thaw from a wheel or checkout that "
            "includes src/thaw/data/sample/ (pip install --force-reinstall thaw)"
        )
    logger.debug("sample data at %s", path)
    return path
