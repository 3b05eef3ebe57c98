"""PEP 517 build backend: setuptools' own, plus our ``.pth`` file at the root of every wheel.

The ``.pth`` (``reason_plugins.pth`` beside this file) arms, at every interpreter start and at next to
no cost, the registrations that make an install usable with nothing of ours imported: ``steered_vllm``
in lm-eval's model registry (``lm_eval_tasks.autoload``), the DeepSeek-R1-Distill names in
TransformerLens and our releases in SAELens (``sae_lens_ext.loading.autoload``).

A ``.pth`` file only runs from the root of a site directory. setuptools cannot put one there:
``data-files`` land under the install prefix, and editable (PEP 660) wheels skip data files and
``build_py`` output altogether. A wheel's root *is* site-packages (purelib), so after setuptools has
built a wheel — regular or editable — this backend adds the ``.pth`` to it and to its RECORD (wheel
format, PEP 427). Every other hook is setuptools' unchanged. pip then installs and uninstalls the
``.pth`` like any other file of the distribution.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every other PEP 517 hook, unchanged)

PTH_FILES = (Path(__file__).with_name("reason_plugins.pth"),)


def _add_to_wheel(wheel_path: Path, files=PTH_FILES) -> None:
    tmp = wheel_path.with_name(wheel_path.name + ".tmp")
    with zipfile.ZipFile(wheel_path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        record = src.read(record_name).decode().rstrip("\n").split("\n")
        for item in src.infolist():
            if item.filename != record_name:
                dst.writestr(item, src.read(item.filename))
        for path in files:
            data = path.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            dst.writestr(path.name, data)
            record.append(f"{path.name},sha256={digest},{len(data)}")
        dst.writestr(record_name, "\n".join(record) + "\n")  # RECORD stays the last entry
    os.replace(tmp, wheel_path)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    _add_to_wheel(Path(wheel_directory) / name)
    return name


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    _add_to_wheel(Path(wheel_directory) / name)
    return name
