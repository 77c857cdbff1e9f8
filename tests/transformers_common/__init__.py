"""transformers' own common model tests, applied to PanoVLM.

Every in-tree transformers model passes the mixins in `tests/test_modeling_common.py`,
`tests/test_configuration_common.py` and `tests/test_processing_common.py` of the transformers repository. They are
not in transformers' wheel, but the PyPI sdist of each release ships them. Importing this package fetches them from
the sdist of the *installed* transformers version (`pip download --no-binary :all: --no-deps transformers==X`, about
11 MB, once; a version change fetches again) into `upstream/`, unmodified. They are Apache-2.0 licensed, copyright
The HuggingFace Team (see the header of each file); they are not committed here.

The sdist does not ship three modules those files import; `upstream/` holds stand-ins written for PanoVLM:
`generation/test_utils.py` (PanoVLM's own generation conformance tests, under the `GenerationTesterMixin` name the
common tests require of generative models), `exporters/test_export.py` (an empty `ExportTesterMixin`: export
tests are not run) and `utils/test_configuration_utils.py` (used only for configs without sub-configs, which
PanoVLM's tests do not give to `ConfigTester`).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers


UPSTREAM = Path(__file__).parent / "upstream"
FILES = ("test_modeling_common.py", "test_configuration_common.py", "test_processing_common.py")
STAMP = UPSTREAM / "FETCHED_FROM"


def fetch_common_tests(version: str = transformers.__version__) -> None:
    """Extract `FILES` from the sdist of transformers `version` into `upstream/`, unless already there."""
    source = f"transformers=={version} (PyPI sdist)"
    if STAMP.is_file() and STAMP.read_text().strip() == source and all((UPSTREAM / f).is_file() for f in FILES):
        return
    with tempfile.TemporaryDirectory() as download:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps"]
        result = subprocess.run(
            [*command, "--dest", download, f"transformers=={version}"], capture_output=True, text=True, timeout=600
        )
        archives = list(Path(download).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or len(archives) != 1:
            raise RuntimeError(
                f"cannot fetch transformers' common tests from the {source}: pip download said\n{result.stderr[-2000:]}"
            )
        with tarfile.open(archives[0]) as archive:
            for name in FILES:
                member = archive.getmember(f"{archives[0].name.removesuffix('.tar.gz')}/tests/{name}")
                # Written to a temporary name, then renamed: concurrent test runs never see a partial file.
                partial = UPSTREAM / f".{name}.partial"
                partial.write_bytes(archive.extractfile(member).read())
                partial.replace(UPSTREAM / name)
    STAMP.write_text(source + "\n")


fetch_common_tests()
