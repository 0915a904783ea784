"""``python -m loadtest.observability``: regenerate the stack's generated files in the repository.

Writes ``prometheus/prometheus.yml`` and ``grafana/dashboards/*.json`` from their generators
(:mod:`loadtest.observability.prometheus`, :mod:`loadtest.observability.dashboards`); tests fail
when the committed files and the generators disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from loadtest.observability.dashboards import DASHBOARD_FILES, dump_dashboard
from loadtest.observability.prometheus import compose_targets, write_config


def write_repo_files(root: Path) -> list[Path]:
    """Write the generated configuration files under the repository ``root``; return their paths."""
    written = [write_config(root / "prometheus" / "prometheus.yml", compose_targets())]
    for name, build in DASHBOARD_FILES.items():
        path = root / "grafana" / "dashboards" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_dashboard(build()))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    """``[REPO_ROOT]`` (default: the current folder); ``-h``/``--help`` explains instead of writing a folder of that name."""
    if any(arg.startswith("-") for arg in argv) or len(argv) > 1:
        print("usage: python -m loadtest.observability [REPO_ROOT]\n\n" + (__doc__ or "").strip())
        return 0 if set(argv) & {"-h", "--help"} else 2
    repo = Path(argv[0]) if argv else Path.cwd()
    for written_path in write_repo_files(repo):
        print(f"wrote {written_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
