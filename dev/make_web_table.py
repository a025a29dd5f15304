"""Write web/layer_table.json, the layers and weight-type presets the layer weights editor draws, from the
library (ipadapter/editor_table.py):

    .venv/bin/python dev/make_web_table.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from harness import REPO_ROOT, runtime

TABLE = REPO_ROOT / "web" / "layer_table.json"


def table_text() -> str:
    from ipadapter_next.ipadapter.editor_table import layer_table

    return json.dumps(layer_table(), indent=1) + "\n"


def main() -> int:
    runtime.boot(Path(tempfile.mkdtemp(prefix="ipadapter-web-table-")))
    runtime.init_nodes(load_pack=True)
    TABLE.write_text(table_text())
    print(f"wrote {TABLE.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
