"""Count the lines of plugin code, leaving out the documentation strings: ``python tools/plugin_lines.py [ROOT]``.

Every ``plugins/**/*.py`` file is read; the module-level DOCUMENTATION, EXAMPLES and RETURN strings (what
ansible-doc renders) are left out, and so are doc fragments, which are nothing but documentation. The rest is
counted as it stands, blank lines and comments included: ``lines``; and without them: ``code``. Prints a line
per file and the totals, so that two trees (before and after a change) can be compared.
"""

import ast
import sys
from pathlib import Path

DOC_STRINGS = frozenset(("DOCUMENTATION", "EXAMPLES", "RETURN"))


def count(path):
    """``(lines, code)`` of one file, documentation strings left out."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    skipped = set()
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) in DOC_STRINGS for target in node.targets):
            skipped.update(range(node.lineno, node.end_lineno + 1))
    kept = [line for number, line in enumerate(lines, 1) if number not in skipped]
    code = [line for line in kept if line.strip() and not line.strip().startswith("#")]
    return len(kept), len(code)


def main(argv):
    root = Path(argv[1] if len(argv) > 1 else ".").resolve()
    total_lines = total_code = 0
    for path in sorted((root / "plugins").rglob("*.py")):
        if "doc_fragments" in path.parts:
            continue
        lines, code = count(path)
        total_lines += lines
        total_code += code
        print("%6d %6d  %s" % (lines, code, path.relative_to(root)))
    print("%6d %6d  total (lines without documentation strings; of them, code without blank lines and comments)"
          % (total_lines, total_code))


if __name__ == "__main__":
    main(sys.argv)
